"""containerd.services.tasks.v1: running containers (tasks) and their exec'd processes.

``TasksService`` is the service as it is, call for call. ``Task`` and
``Process`` are handles the engine holds, modelled on the Go client's: a
process has its stdio (``cio.IO``), and its ``delete`` ends that stdio
once the daemon has let go of the process, so no output is lost and no FIFO
is left.

Exit statuses: a process killed by a signal exits ``128 + signal``, as the
shims report it.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import enum
import signal as signals
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.message import Message

from dockyard.api import typeurl
from dockyard.api.convert import from_timestamp
from dockyard.api.services.tasks.v1 import tasks_pb2 as pb
from dockyard.api.services.tasks.v1 import tasks_pb2_grpc
from dockyard.api.types.task import task_pb2
from dockyard.client import cio
from dockyard.client.rpc import NO_TIMEOUT, Connection, from_grpc
from dockyard.client.wire import mount_to_proto, pack_any, unpack_any
from dockyard.errors import (
    DockyardError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SystemFailure,
)
from dockyard.runtime.kill import parse_signal
from dockyard.spec.mount import Mount


class TaskStatus(enum.StrEnum):
    UNKNOWN = "unknown"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    PAUSING = "pausing"


_STATUS = {
    task_pb2.UNKNOWN: TaskStatus.UNKNOWN,
    task_pb2.CREATED: TaskStatus.CREATED,
    task_pb2.RUNNING: TaskStatus.RUNNING,
    task_pb2.STOPPED: TaskStatus.STOPPED,
    task_pb2.PAUSED: TaskStatus.PAUSED,
    task_pb2.PAUSING: TaskStatus.PAUSING,
}


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: its exit code (``128 + n`` for signal ``n``) and when."""

    code: int
    exited_at: datetime | None = None
    pid: int = 0


@dataclass
class ProcessState:
    """A task's or exec's state as the daemon reports it (``types.task.Process``)."""

    container_id: str
    id: str  # the exec id; the container id for the task's init process
    pid: int
    status: TaskStatus
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    exit_status: int = 0
    exited_at: datetime | None = None


@dataclass(frozen=True)
class ProcessInfo:
    """A process in the task's cgroup; ``info`` is what the shim adds (runc's state)."""

    pid: int
    info: object | None = None


@dataclass(frozen=True)
class Metric:
    """A task's statistics: ``data`` is cgroups v1 or v2 ``Metrics``, unpacked."""

    id: str
    timestamp: datetime | None
    data: object


def _state(msg: task_pb2.Process) -> ProcessState:
    return ProcessState(
        container_id=msg.container_id,
        id=msg.id,
        pid=msg.pid,
        status=_STATUS.get(msg.status, TaskStatus.UNKNOWN),
        stdin=msg.stdin,
        stdout=msg.stdout,
        stderr=msg.stderr,
        terminal=msg.terminal,
        exit_status=msg.exit_status,
        exited_at=from_timestamp(msg.exited_at),
    )


def signal_number(sig: int | str) -> int:
    """``9``, ``"9"``, ``"KILL"``, ``"SIGKILL"`` or ``"RTMIN+3"`` -> its number."""
    return parse_signal(str(sig))


class TasksService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = conn.stub(tasks_pb2_grpc.TasksStub)

    def create(
        self,
        container_id: str,
        *,
        rootfs: Sequence[Mount] = (),
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
        options: Message | None = None,
        runtime_path: str = "",
    ) -> int:
        """Create the task of a container (its shim and its init process, not
        started); the init process's pid. ``options`` are the shim's (runc's
        ``Options``); without them the container's runtime options apply."""
        req = pb.CreateTaskRequest(
            container_id=container_id,
            rootfs=[mount_to_proto(m) for m in rootfs],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
            runtime_path=runtime_path,
        )
        if options is not None:
            req.options.CopyFrom(pack_any(options))
        return int(self._conn.call(self._stub.Create, req).pid)

    def start(self, container_id: str, exec_id: str = "") -> int:
        req = pb.StartRequest(container_id=container_id, exec_id=exec_id)
        return int(self._conn.call(self._stub.Start, req).pid)

    def delete(self, container_id: str) -> ExitStatus:
        """Delete a stopped (or never started) task; its shim goes with it."""
        resp = self._conn.call(self._stub.Delete, pb.DeleteTaskRequest(container_id=container_id))
        return ExitStatus(resp.exit_status, from_timestamp(resp.exited_at), resp.pid)

    def delete_process(self, container_id: str, exec_id: str) -> ExitStatus:
        req = pb.DeleteProcessRequest(container_id=container_id, exec_id=exec_id)
        resp = self._conn.call(self._stub.DeleteProcess, req)
        return ExitStatus(resp.exit_status, from_timestamp(resp.exited_at), resp.pid)

    def get(self, container_id: str, exec_id: str = "") -> ProcessState:
        req = pb.GetRequest(container_id=container_id, exec_id=exec_id)
        return _state(self._conn.call(self._stub.Get, req).process)

    def list(self, filter: str = "") -> list[ProcessState]:
        resp = self._conn.call(self._stub.List, pb.ListTasksRequest(filter=filter))
        return [_state(t) for t in resp.tasks]

    def kill(
        self,
        container_id: str,
        sig: int | str = signals.SIGTERM,
        *,
        exec_id: str = "",
        all: bool = False,
    ) -> None:
        """Send ``sig`` to the process (with ``all``: to every process of the task)."""
        req = pb.KillRequest(
            container_id=container_id, exec_id=exec_id, signal=signal_number(sig), all=all
        )
        self._conn.call(self._stub.Kill, req)

    def exec(
        self,
        container_id: str,
        exec_id: str,
        process: Mapping[str, Any],
        *,
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
    ) -> None:
        """Add process ``exec_id`` (an OCI ``process`` object) to a running task; not started."""
        req = pb.ExecProcessRequest(
            container_id=container_id,
            exec_id=exec_id,
            spec=typeurl.pack_json(typeurl.PROCESS, dict(process)),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
        )
        self._conn.call(self._stub.Exec, req)

    def resize_pty(self, container_id: str, width: int, height: int, exec_id: str = "") -> None:
        req = pb.ResizePtyRequest(
            container_id=container_id, exec_id=exec_id, width=width, height=height
        )
        self._conn.call(self._stub.ResizePty, req)

    def close_io(self, container_id: str, exec_id: str = "", *, stdin: bool = True) -> None:
        """Close the process's stdin (it reads end of file)."""
        req = pb.CloseIORequest(container_id=container_id, exec_id=exec_id, stdin=stdin)
        self._conn.call(self._stub.CloseIO, req)

    def pause(self, container_id: str) -> None:
        self._conn.call(self._stub.Pause, pb.PauseTaskRequest(container_id=container_id))

    def resume(self, container_id: str) -> None:
        self._conn.call(self._stub.Resume, pb.ResumeTaskRequest(container_id=container_id))

    def pids(self, container_id: str) -> builtins.list[ProcessInfo]:
        resp = self._conn.call(self._stub.ListPids, pb.ListPidsRequest(container_id=container_id))
        return [
            ProcessInfo(p.pid, unpack_any(p.info) if p.HasField("info") else None)
            for p in resp.processes
        ]

    def update(
        self,
        container_id: str,
        resources: Mapping[str, Any] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Change a running task's resources (an OCI ``linux.resources`` object)."""
        req = pb.UpdateTaskRequest(container_id=container_id, annotations=dict(annotations or {}))
        if resources is not None:
            req.resources.CopyFrom(typeurl.pack_json(typeurl.LINUX_RESOURCES, dict(resources)))
        self._conn.call(self._stub.Update, req)

    def metrics(self, *filters: str) -> builtins.list[Metric]:
        """Statistics of the tasks matching any filter (``id==<container>``), or all."""
        resp = self._conn.call(self._stub.Metrics, pb.MetricsRequest(filters=list(filters)))
        return [Metric(m.id, from_timestamp(m.timestamp), unpack_any(m.data)) for m in resp.metrics]

    def wait(self, container_id: str, exec_id: str = "") -> ExitStatus:
        """Block until the process exits (at once if it has); its exit status."""
        req = pb.WaitRequest(container_id=container_id, exec_id=exec_id)
        resp = self._conn.call(self._stub.Wait, req, timeout=NO_TIMEOUT)
        return ExitStatus(resp.exit_status, from_timestamp(resp.exited_at))

    def wait_async(
        self, container_id: str, exec_id: str = ""
    ) -> concurrent.futures.Future[ExitStatus]:
        """A future of the exit status; the wait is under way when this returns."""
        req = pb.WaitRequest(container_id=container_id, exec_id=exec_id)
        out: concurrent.futures.Future[ExitStatus] = concurrent.futures.Future()
        out.set_running_or_notify_cancel()
        call = self._stub.Wait.future(req, metadata=self._conn.metadata())
        what = f"wait for {container_id}{'/' + exec_id if exec_id else ''}"

        def done(f: Any) -> None:
            if out.done():
                return
            try:
                resp = f.result()
            except grpc.RpcError as e:
                out.set_exception(from_grpc(e, what))
            except grpc.FutureCancelledError:
                out.set_exception(FailedPrecondition(f"{what}: cancelled"))
            else:
                out.set_result(ExitStatus(resp.exit_status, from_timestamp(resp.exited_at)))

        call.add_done_callback(done)
        return out


# ---------------------------------------------------------------------------
# Handles


def attached(
    tasks: TasksService, container_id: str, exec_id: str, attach: cio.Attach | None
) -> tuple[ProcessState, cio.IO | None]:
    """An existing process's state, and its stdio reattached to its FIFOs if ``attach``."""
    state = tasks.get(container_id, exec_id)
    io = None
    if attach is not None:
        io = attach(cio.Config(state.stdin, state.stdout, state.stderr, state.terminal))
    return state, io


class Process:
    """A process of a task: the init process (``exec_id`` empty) or an exec."""

    def __init__(
        self,
        tasks: TasksService,
        container_id: str,
        exec_id: str,
        io: cio.IO | None,
        pid: int = 0,
    ) -> None:
        self._tasks = tasks
        self.container_id = container_id
        self.exec_id = exec_id
        self.io = io
        self.pid = pid

    @property
    def id(self) -> str:
        return self.exec_id or self.container_id

    def start(self) -> int:
        """Start the process; its pid."""
        try:
            self.pid = self._tasks.start(self.container_id, self.exec_id)
        except BaseException:
            if self.exec_id and self.io is not None:
                # an exec that cannot start is gone: so is its stdio
                self.io.cancel()
                self.io.close()
            raise
        self.watch_stdin()
        return self.pid

    def watch_stdin(self) -> None:
        """Close the process's stdin once the IO has sent all of it (see
        ``cio.IO.on_stdin_done``); done by ``start`` and by attaching."""
        if self.io is not None and self.io.config.stdin:
            self.io.on_stdin_done(self._close_stdin)

    def _close_stdin(self) -> None:
        # Runs in the stdin copy thread once all is sent: the process gets
        # end of file. It may have exited already, which is no error.
        try:
            self.close_io(stdin=True)
        except DockyardError:
            pass

    def kill(self, sig: int | str = signals.SIGTERM, *, all: bool = False) -> None:
        self._tasks.kill(self.container_id, sig, exec_id=self.exec_id, all=all)

    def wait(self) -> ExitStatus:
        """Block until the process exits; its exit status."""
        return self._tasks.wait(self.container_id, self.exec_id)

    def wait_async(self) -> concurrent.futures.Future[ExitStatus]:
        """The exit status to come; call before ``start`` to be sure to see a fast exit."""
        return self._tasks.wait_async(self.container_id, self.exec_id)

    def status(self) -> ProcessState:
        return self._tasks.get(self.container_id, self.exec_id)

    def close_io(self, *, stdin: bool = True) -> None:
        self._tasks.close_io(self.container_id, self.exec_id, stdin=stdin)

    def resize(self, width: int, height: int) -> None:
        self._tasks.resize_pty(self.container_id, width, height, self.exec_id)

    def _force_stop(self, status: TaskStatus, timeout: float | None) -> None:
        if status in (TaskStatus.STOPPED, TaskStatus.UNKNOWN):
            return
        exited = self.wait_async()
        try:
            # every process of a task, as the Go client's WithProcessKill
            self.kill(signals.SIGKILL, all=not self.exec_id)
        except (NotFound, FailedPrecondition):
            pass  # exited meanwhile
        try:
            exited.result(timeout)
        except concurrent.futures.TimeoutError:
            raise SystemFailure(
                f"delete process {self.id!r}: still running {timeout:g}s after SIGKILL"
            ) from None

    def delete(self, *, force: bool = False, timeout: float | None = None) -> ExitStatus:
        """Remove the stopped process and end its stdio; its exit status.

        FailedPrecondition while it runs, unless ``force``: then it is
        killed (SIGKILL) and waited for first. ``timeout`` bounds that wait
        and the wait for the output copies (whose rest is then dropped).
        """
        status = self.status().status
        if force:
            self._force_stop(status, timeout)
        elif status in (TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.PAUSING):
            raise FailedPrecondition(f"delete process {self.id!r}: it is {status}: stop it first")
        if self.io is not None:
            self.io.cancel()
        result = self._delete()
        if self.io is not None:
            # The daemon has closed its ends: the copies finish what is in
            # the FIFOs, then everything is closed and removed.
            self.io.wait(timeout)
            self.io.close()
        return result

    def _delete(self) -> ExitStatus:
        return self._tasks.delete_process(self.container_id, self.exec_id)


class Task(Process):
    """A container's task: its init process, and what concerns the whole container."""

    def __init__(
        self, tasks: TasksService, container_id: str, io: cio.IO | None, pid: int = 0
    ) -> None:
        super().__init__(tasks, container_id, "", io, pid)

    def _delete(self) -> ExitStatus:
        return self._tasks.delete(self.container_id)

    def pause(self) -> None:
        self._tasks.pause(self.container_id)

    def resume(self) -> None:
        self._tasks.resume(self.container_id)

    def pids(self) -> list[ProcessInfo]:
        return self._tasks.pids(self.container_id)

    def metrics(self) -> Metric:
        found = self._tasks.metrics(f"id=={self.container_id}")
        for m in found:
            if m.id == self.container_id:
                return m
        raise NotFound(f"metrics of task {self.container_id!r}: not found")

    def update(
        self,
        resources: Mapping[str, Any] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        self._tasks.update(self.container_id, resources, annotations)

    def exec(
        self,
        exec_id: str,
        process: Mapping[str, Any],
        creator: cio.Creator = cio.null_io,
    ) -> Process:
        """Add process ``exec_id`` (an OCI ``process`` object) with stdio from
        ``creator``; start it with ``start()``. See ``Container.process_spec``
        for one made from the container's own."""
        if not exec_id:
            raise InvalidArgument(f"exec in {self.container_id!r}: exec id must not be empty")
        io = creator(exec_id)
        spec = dict(process)
        spec["terminal"] = io.config.terminal
        try:
            self._tasks.exec(
                self.container_id,
                exec_id,
                spec,
                stdin=io.config.stdin,
                stdout=io.config.stdout,
                stderr=io.config.stderr,
                terminal=io.config.terminal,
            )
        except BaseException:
            io.cancel()
            io.close()
            raise
        return Process(self._tasks, self.container_id, exec_id, io)

    def load_process(self, exec_id: str, attach: cio.Attach | None = None) -> Process:
        """The handle of an existing exec (reattached to its FIFOs if ``attach``)."""
        state, io = attached(self._tasks, self.container_id, exec_id, attach)
        process = Process(self._tasks, self.container_id, exec_id, io, state.pid)
        process.watch_stdin()
        return process
