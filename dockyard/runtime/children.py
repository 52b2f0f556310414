"""The runtime's own child processes: waiting for them, signalling, pid files.

Kept apart from create/run so that exec, which needs these too, does not
import the whole create path.
"""

from __future__ import annotations

import _signal as signal  # type: ignore[import-not-found]  # public module imports enum
import os
import time

_NOT_FORWARDED = {signal.SIGCHLD, signal.SIGKILL, signal.SIGSTOP, signal.SIGWINCH}


def exit_status(wait_status: int) -> int:
    """A ``waitpid`` status as containerd reports it: the code, or 128+signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    return 255


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


def write_pid_file(path: str, pid: int) -> None:
    from dockyard.atomicfile import replace_file

    replace_file(path, str(pid).encode(), 0o666)


def kill_and_wait(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            from dockyard.runtime.state import process_start_time

            if process_start_time(pid) is None:
                return
        time.sleep(0.005)
