"""OOM kills in a container's cgroup, reported as ``/tasks/oom`` (as runc's shim does).

cgroup v1: an eventfd registered on the memory cgroup's ``memory.oom_control``
through ``cgroup.event_control`` counts OOM events (and fires once more when
the cgroup is removed). cgroup v2: ``memory.events`` is pollable (POLLPRI on
change); an increase of its ``oom_kill`` count is an OOM kill. One thread
polls every watched container of the shim, started with the first.
"""

from __future__ import annotations

import os
import select
import threading

from dockyard.shim import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def _oom_kills(fd: int) -> int:
    try:
        text = os.pread(fd, 4096, 0).decode()
    except OSError:
        return -1
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


class _Watch:
    __slots__ = ("cgroup", "container_id", "fd", "kills", "owned", "v2")

    def __init__(self, container_id: str, cgroup: str, fd: int, v2: bool) -> None:
        self.container_id = container_id
        self.cgroup = cgroup
        self.fd = fd
        self.v2 = v2
        self.kills = _oom_kills(fd) if v2 else 0
        self.owned: list[int] = []  # other fds to close with it


class OOMWatcher:
    """Calls ``on_oom(container_id)`` for each OOM event of a watched cgroup."""

    def __init__(self, on_oom: Callable[[str], None]) -> None:
        self.on_oom = on_oom
        self._lock = threading.Lock()
        self._watches: dict[int, _Watch] = {}
        self._poll = select.poll()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._poll.register(self._wake_r, select.POLLIN)
        self._thread: threading.Thread | None = None

    def add(self, container_id: str, paths: dict[str, str]) -> None:
        """Watch the container's memory cgroup (``paths`` from ``stats.cgroup_paths``)."""
        try:
            if "" in paths and "memory" not in paths:
                watch = self._watch_v2(container_id, paths[""])
            elif "memory" in paths:
                watch = self._watch_v1(container_id, paths["memory"])
            else:
                return
        except OSError as e:
            log.warn(f"watch {container_id} for oom: {e}")
            return
        with self._lock:
            self._watches[watch.fd] = watch
            self._poll.register(watch.fd, select.POLLPRI if watch.v2 else select.POLLIN)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="oom", daemon=True)
                self._thread.start()
        os.write(self._wake_w, b"x")

    def remove(self, container_id: str) -> None:
        with self._lock:
            for fd, w in list(self._watches.items()):
                if w.container_id == container_id:
                    self._drop(fd)
        os.write(self._wake_w, b"x")  # the poll picks up the change

    @staticmethod
    def _watch_v1(container_id: str, cgroup: str) -> _Watch:
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            control = os.open(
                os.path.join(cgroup, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC
            )
            try:
                with open(os.path.join(cgroup, "cgroup.event_control"), "w") as f:
                    f.write(f"{efd} {control}")
            except BaseException:
                os.close(control)
                raise
        except BaseException:
            os.close(efd)
            raise
        w = _Watch(container_id, cgroup, efd, False)
        w.owned.append(control)
        return w

    @staticmethod
    def _watch_v2(container_id: str, cgroup: str) -> _Watch:
        fd = os.open(os.path.join(cgroup, "memory.events"), os.O_RDONLY | os.O_CLOEXEC)
        return _Watch(container_id, cgroup, fd, True)

    def _drop(self, fd: int) -> None:
        w = self._watches.pop(fd, None)
        if w is None:
            return
        try:
            self._poll.unregister(fd)
        except KeyError:
            pass
        for f in (fd, *w.owned):
            try:
                os.close(f)
            except OSError:
                pass

    def _run(self) -> None:
        while True:
            for fd, _ in self._poll.poll():
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 512)
                    except OSError:
                        pass
                    continue
                with self._lock:
                    w = self._watches.get(fd)
                    if w is None:
                        continue
                    fired = self._check(w)
                    if not os.path.isdir(w.cgroup):
                        self._drop(fd)  # the cgroup is gone (v1 signals that too)
                        fired = False
                if fired:
                    self.on_oom(w.container_id)

    @staticmethod
    def _check(w: _Watch) -> bool:
        if w.v2:
            kills = _oom_kills(w.fd)
            fired = kills > w.kills
            w.kills = max(kills, w.kills)
            return fired
        try:
            return int.from_bytes(os.read(w.fd, 8), "little") > 0
        except OSError:  # BlockingIOError too: no event counted yet
            return False
