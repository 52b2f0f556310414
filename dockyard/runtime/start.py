"""``start``: let a created container's init run the user's program."""

from __future__ import annotations

import os
import select

from dockyard.errors import FailedPrecondition, SystemFailure
from dockyard.runtime import state as st


def start(root: str, cid: str, s: st.ContainerState | None = None) -> None:
    """Start ``cid``; ``s``: its state when the caller has loaded it."""
    if s is None:
        s = st.load(root, cid)
    status = s.status()
    if status != st.CREATED:
        raise FailedPrecondition(f"cannot start container {cid!r}: it is {status}, not created")
    if not s.config.get("process"):
        # runtime.md "start": an error; the init, which has nothing to run, ends
        try:
            os.kill(s.pid, st.SIGKILL)
        except ProcessLookupError:
            pass
        raise FailedPrecondition(f"cannot start container {cid!r}: its config has no process")
    try:
        fd = os.open(s.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FailedPrecondition(f"cannot start container {cid!r}: already started") from None
    try:
        # init is blocked opening the fifo for writing; our open released it.
        # Wait for its byte, but give up if init died meanwhile.
        # poll, not select: the shim runs this in its thread, where fd numbers
        # pass select's limit of 1024 once it holds enough containers' stdio.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            if poller.poll(50):
                data = os.read(fd, 1)
                if data:
                    break
            if not s.alive():
                raise SystemFailure(f"start container {cid!r}: its init exited before start")
    finally:
        os.close(fd)
    os.unlink(s.fifo)
    hooks = (s.config.get("hooks") or {}).get("poststart")
    if hooks:
        from dockyard.runtime.hooks import run_hooks

        run_hooks(s.config, "poststart", s.oci_state())
