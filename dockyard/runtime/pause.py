"""``pause`` / ``resume``: freeze and thaw every process of the container."""

from __future__ import annotations

from dockyard.errors import FailedPrecondition
from dockyard.runtime import state as st


def pause(root: str, cid: str) -> None:
    s = st.load(root, cid)
    status = s.status()
    if status not in (st.RUNNING, st.CREATED):
        raise FailedPrecondition(f"cannot pause container {cid!r}: it is {status}")
    s.cgroup().freeze()
    s.data["paused"] = True
    s.save()


def resume(root: str, cid: str) -> None:
    s = st.load(root, cid)
    status = s.status()
    if status != st.PAUSED:
        raise FailedPrecondition(f"cannot resume container {cid!r}: it is {status}, not paused")
    s.cgroup().thaw()
    s.data["paused"] = False
    s.save()
