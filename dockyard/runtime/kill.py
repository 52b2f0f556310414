"""``kill``: send a signal to the container's init (or, with --all, every process)."""

from __future__ import annotations

import os
import signal

from dockyard.errors import FailedPrecondition, InvalidArgument
from dockyard.runtime import state as st


def parse_signal(sig: str) -> int:
    """A signal by number ("9"), name ("KILL", "SIGKILL") or "RTMIN+3"."""
    s = sig.strip().upper()
    if s.isdigit():
        n = int(s)
        if 0 < n < signal.NSIG:
            return n
        raise InvalidArgument(f"invalid signal {sig!r}")
    if not s.startswith("SIG"):
        s = "SIG" + s
    if s.startswith(("SIGRTMIN+", "SIGRTMAX-")):
        _base, _, off = s.partition("+") if "+" in s else s.partition("-")
        if off.isdigit():
            n = (signal.SIGRTMIN + int(off)) if "+" in s else (signal.SIGRTMAX - int(off))
            if signal.SIGRTMIN <= n <= signal.SIGRTMAX:
                return int(n)
    try:
        return int(signal.Signals[s])
    except KeyError:
        raise InvalidArgument(f"invalid signal {sig!r}") from None


def kill(root: str, cid: str, sig: str = "SIGTERM", all_processes: bool = False) -> None:
    s = st.load(root, cid)
    signum = parse_signal(sig)
    status = s.status()
    # a pid of 0 (no init yet) is either creating or, its creator dead, stopped
    if status == st.CREATING:
        raise FailedPrecondition(f"cannot kill container {cid!r}: it is still being created")
    if status == st.STOPPED:
        raise FailedPrecondition(f"cannot kill container {cid!r}: it is not running")
    if all_processes:
        cg = s.cgroup()
        cg.kill_all(signum)
        if status == st.PAUSED and signum == signal.SIGKILL:
            cg.thaw()
        return
    os.kill(s.pid, signum)
