"""The container handle: a record, its rootfs snapshot, and the task made from it.

Modelled on the Go client's ``Container``: ``new_task`` mounts nothing
itself, it asks the snapshotter for the rootfs mounts and hands them to the
daemon with the stdio of the task; ``delete`` refuses while a task exists
and removes the rootfs snapshot with the record (``WithSnapshotCleanup``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from dockyard.client import cio
from dockyard.client.containers import ContainerRecord
from dockyard.client.tasks import Task, attached
from dockyard.errors import FailedPrecondition, InvalidArgument, NotFound
from dockyard.image.images import Image
from dockyard.spec.mount import Mount

if TYPE_CHECKING:
    from dockyard.client.client import Client


class Container:
    def __init__(self, client: Client, id: str) -> None:
        self._client = client
        self.id = id

    def __repr__(self) -> str:
        return f"Container({self.id!r})"

    def info(self) -> ContainerRecord:
        return self._client.containers.get(self.id)

    def spec(self) -> dict[str, Any]:
        spec = self.info().spec
        if spec is None:
            raise NotFound(f"container {self.id!r}: has no spec")
        return spec

    def image(self) -> Image:
        name = self.info().image
        if not name:
            raise NotFound(f"container {self.id!r}: not made from an image")
        return self._client.images.get(name)

    def set_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        return self._client.containers.set_labels(self.id, labels)

    def process_spec(
        self,
        args: Sequence[str],
        *,
        env: Sequence[str] | None = None,
        cwd: str | None = None,
        terminal: bool = False,
    ) -> dict[str, Any]:
        """An exec's ``process``: the container's own, with these args (and env, cwd)."""
        process: dict[str, Any] = copy.deepcopy(self.spec().get("process") or {})
        process["args"] = list(args)
        process["terminal"] = terminal
        if env is not None:
            process["env"] = list(env)
        if cwd is not None:
            process["cwd"] = cwd
        return process

    def rootfs(self) -> list[Mount]:
        """The mounts of the container's rootfs snapshot (none if it has none)."""
        record = self.info()
        if not record.snapshot_key:
            return []
        if not record.snapshotter:
            raise InvalidArgument(
                f"container {self.id!r}: snapshot key {record.snapshot_key!r} without a snapshotter"
            )
        return self._client.snapshots(record.snapshotter).mounts(record.snapshot_key)

    def new_task(
        self,
        creator: cio.Creator = cio.null_io,
        *,
        options: Message | None = None,
        rootfs: Sequence[Mount] = (),
        runtime_path: str = "",
    ) -> Task:
        """Create the container's task (not started) with stdio from ``creator``.

        ``options`` are the shim's options for this task (runc's ``Options``);
        ``rootfs`` mounts come after the snapshot's.
        """
        io = creator(self.id)
        try:
            mounts = [*self.rootfs(), *rootfs]
            pid = self._client.tasks.create(
                self.id,
                rootfs=mounts,
                stdin=io.config.stdin,
                stdout=io.config.stdout,
                stderr=io.config.stderr,
                terminal=io.config.terminal,
                options=options,
                runtime_path=runtime_path,
            )
        except BaseException:
            io.cancel()
            io.close()
            raise
        return Task(self._client.tasks, self.id, io, pid)

    def task(self, attach: cio.Attach | None = None) -> Task:
        """The container's existing task (reattached to its FIFOs if ``attach``)."""
        state, io = attached(self._client.tasks, self.id, "", attach)
        task = Task(self._client.tasks, self.id, io, state.pid)
        task.watch_stdin()
        return task

    def delete(self, *, snapshot: bool = True) -> None:
        """Delete the record, and with ``snapshot`` its rootfs snapshot.

        FailedPrecondition while the container has a task: delete that first.
        """
        try:
            self._client.tasks.get(self.id)
        except NotFound:
            pass
        else:
            raise FailedPrecondition(
                f"delete container {self.id!r}: it has a task: delete it first"
            )
        self._delete_record(snapshot)

    def _delete_record(self, snapshot: bool) -> None:
        record = self.info()
        if snapshot and record.snapshot_key and record.snapshotter:
            try:
                self._client.snapshots(record.snapshotter).remove(record.snapshot_key)
            except NotFound:
                pass
        self._client.containers.delete(self.id)

    def remove(self, timeout: float | None = None) -> None:
        """Whatever state it is in: kill and delete its task, then delete it and
        its snapshot. ``timeout`` bounds the wait for the task to die."""
        try:
            task = self.task()
        except NotFound:
            pass
        else:
            try:
                task.delete(force=True, timeout=timeout)
            except NotFound:
                pass
        try:
            self._delete_record(snapshot=True)  # its task is gone: no need to ask again
        except NotFound:
            pass
