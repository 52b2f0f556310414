"""``run``: create + start; in the foreground, wait, forward signals, delete.

The foreground runtime makes itself a child subreaper before forking, so the
container's init (whose parent, stage 1, exits) is reparented to it and its
exit status can be collected.
"""

from __future__ import annotations

import _signal as signal  # type: ignore[import-not-found]  # public module imports enum
import os

from dockyard.runtime import libc
from dockyard.runtime import state as st
from dockyard.runtime.create import CreateOptions, create
from dockyard.runtime.delete import destroy
from dockyard.runtime.start import start

_NOT_FORWARDED = {signal.SIGCHLD, signal.SIGKILL, signal.SIGSTOP, signal.SIGWINCH}


def exit_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def wait_forwarding_signals(pid: int) -> int:
    """Wait for ``pid`` (our child or adopted orphan); forward signals to it."""

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in signal.valid_signals():
        if sig not in _NOT_FORWARDED and sig < signal.SIGRTMIN:
            try:
                signal.signal(sig, forward)
            except (OSError, ValueError):
                pass
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255
        if got == pid:
            return exit_status(status)


def run(root: str, cid: str, opts: CreateOptions, detach: bool) -> int:
    if not detach:
        libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    s = create(root, cid, opts)
    try:
        start(root, cid)
    except BaseException:
        _cleanup(s)
        raise
    if detach:
        return 0
    code = wait_forwarding_signals(s.pid)
    _cleanup(s)
    return code


def _cleanup(s: st.ContainerState) -> None:
    from dockyard.runtime.delete import delete

    try:
        delete(s.root, s.id, force=True)
    except Exception:
        destroy(s)
