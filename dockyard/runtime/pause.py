"""``pause`` / ``resume``: freeze and thaw every process of the container."""

from __future__ import annotations

from dockyard.errors import FailedPrecondition
from dockyard.runtime import state as st


def _manager(s: st.ContainerState):  # type: ignore[no-untyped-def]
    from dockyard.runtime.cgroups import new_manager

    return new_manager((s.config.get("linux") or {}).get("cgroupsPath") or None, s.id)


def pause(root: str, cid: str) -> None:
    s = st.load(root, cid)
    status = s.status()
    if status not in (st.RUNNING, st.CREATED):
        raise FailedPrecondition(f"cannot pause container {cid!r}: it is {status}")
    _manager(s).freeze()
    s.data["paused"] = True
    s.save()


def resume(root: str, cid: str) -> None:
    s = st.load(root, cid)
    status = s.status()
    if status != st.PAUSED:
        raise FailedPrecondition(f"cannot resume container {cid!r}: it is {status}, not paused")
    _manager(s).thaw()
    s.data["paused"] = False
    s.save()
