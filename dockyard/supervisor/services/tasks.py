"""containerd.services.tasks.v1.Tasks: a container's processes, through its shim.

containerd's ``services/tasks/local.go``: each call finds the container
record, then its task in the shim manager, and asks the shim; the shim's
error codes pass through unchanged. The service itself publishes nothing:
the shim publishes the task events (create, start, exit, delete, exec, pause,
resume, oom) over ttrpc, and the manager publishes the exit and delete of a
task whose shim died.

A task is created with the container's spec and runtime (shim) name; its
options are the request's, else the container's runtime options
(``containerd.runc.v1.Options``: which OCI runtime binary, its root, ...),
with the ``[runtimes.<name>]`` config's ``binary_name``/``root`` filling
what neither sets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from google.protobuf import any_pb2, empty_pb2

from dockyard.api import typeurl
from dockyard.api.convert import mount_to_proto, now_timestamp
from dockyard.api.runc.options import oci_pb2
from dockyard.api.runtime.task.v2 import shim_pb2
from dockyard.api.services.tasks.v1 import tasks_pb2 as pb
from dockyard.api.services.tasks.v1 import tasks_pb2_grpc
from dockyard.api.types import metrics_pb2, mount_pb2
from dockyard.api.types.task import task_pb2
from dockyard.errors import DockyardError, InvalidArgument, NotFound, Unsupported
from dockyard.filters import matcher
from dockyard.identifiers import validate_identifier
from dockyard.supervisor import ttrpc_events
from dockyard.supervisor.daemon import snapshot_key
from dockyard.supervisor.grpcutil import namespace, rpc, typed_any
from dockyard.supervisor.metadata import Container
from dockyard.supervisor.shims import (
    CALL_TIMEOUT,
    STATE_TIMEOUT,
    CreateOptions,
    Shim,
    ShimManager,
)

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor

log = logging.getLogger("dockyard.supervisor.tasks")

RUNC_OPTIONS = typeurl.type_url(oci_pb2.Options())
EMPTY = empty_pb2.Empty()


class TasksService(tasks_pb2_grpc.TasksServicer):
    def __init__(self, sup: Supervisor, shims: ShimManager) -> None:
        self.sup = sup
        self.shims = shims

    # -- lookups -------------------------------------------------------------

    def _container(self, context: grpc.ServicerContext, cid: str) -> tuple[str, Container]:
        ns = namespace(context)
        return ns, self.sup.metadata.get_container(ns, cid)

    def _task(self, context: grpc.ServicerContext, cid: str) -> Shim:
        ns, c = self._container(context, cid)
        return self.shims.get(ns, c.id)

    def _options(self, c: Container, request: pb.CreateTaskRequest) -> any_pb2.Any | None:
        """The request's options, else the container's, completed from the config."""
        opts: any_pb2.Any | None = None
        if request.HasField("options") and request.options.type_url:
            opts = request.options
        elif c.runtime_options:
            opts = typed_any(c.runtime_options)
        defaults = self.sup.config.runtimes.get(c.runtime)
        if opts is not None and opts.type_url.rsplit("/", 1)[-1] == RUNC_OPTIONS:
            runc = typeurl.unpack_to(opts, oci_pb2.Options)
        elif opts is None and defaults is not None and (defaults.binary_name or defaults.root):
            runc = oci_pb2.Options()
        else:
            return opts
        if runc.criu_image_path or runc.criu_work_path:
            raise Unsupported(f"create task {c.id}: restoring from a checkpoint is not supported")
        if defaults is not None:
            runc.binary_name = runc.binary_name or defaults.binary_name
            runc.root = runc.root or defaults.root
        return typeurl.pack(runc)

    def _rootfs(
        self, ns: str, c: Container, request: pb.CreateTaskRequest
    ) -> list[mount_pb2.Mount]:
        if request.rootfs:
            return list(request.rootfs)
        if not c.snapshot_key:
            return []  # the spec's root.path is the rootfs, as it is
        mounts = self.sup.snapshotter(c.snapshotter).mounts(snapshot_key(ns, c.snapshot_key))
        return [mount_to_proto(m) for m in mounts]

    # -- the task ------------------------------------------------------------------

    @rpc
    def Create(
        self, request: pb.CreateTaskRequest, context: grpc.ServicerContext
    ) -> pb.CreateTaskResponse:
        ns, c = self._container(context, request.container_id)
        if request.HasField("checkpoint") and request.checkpoint.digest:
            raise Unsupported(f"create task {c.id}: restoring from a checkpoint is not supported")
        if not c.spec:
            raise InvalidArgument(f"create task {c.id}: the container has no spec")
        opts = CreateOptions(
            spec=c.spec.value,
            rootfs=self._rootfs(ns, c, request),
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
            terminal=request.terminal,
            options=self._options(c, request),
            runtime=request.runtime_path or c.runtime,
        )
        _, pid = self.shims.create(ns, c.id, opts)
        return pb.CreateTaskResponse(container_id=c.id, pid=pid)

    @rpc
    def Start(self, request: pb.StartRequest, context: grpc.ServicerContext) -> pb.StartResponse:
        shim = self._task(context, request.container_id)
        resp = shim.call(
            "Start",
            shim_pb2.StartRequest(id=shim.id, exec_id=request.exec_id),
            shim_pb2.StartResponse,
            _time_left(context),
        )
        return pb.StartResponse(pid=resp.pid)

    @rpc
    def Delete(
        self, request: pb.DeleteTaskRequest, context: grpc.ServicerContext
    ) -> pb.DeleteResponse:
        ns, c = self._container(context, request.container_id)
        exit_ = self.shims.delete(ns, c.id)
        resp = pb.DeleteResponse(pid=exit_.pid, exit_status=exit_.status)
        if exit_.exited_at is not None:  # else exited_at stays absent, not a zero Timestamp
            resp.exited_at.CopyFrom(exit_.exited_at)
        return resp

    @rpc
    def DeleteProcess(
        self, request: pb.DeleteProcessRequest, context: grpc.ServicerContext
    ) -> pb.DeleteResponse:
        shim = self._task(context, request.container_id)
        if not request.exec_id:
            raise InvalidArgument(f"delete process of task {shim.id}: exec id cannot be empty")
        resp = shim.call(
            "Delete",
            shim_pb2.DeleteRequest(id=shim.id, exec_id=request.exec_id),
            shim_pb2.DeleteResponse,
            _time_left(context),
        )
        return pb.DeleteResponse(
            id=request.exec_id, pid=resp.pid, exit_status=resp.exit_status, exited_at=resp.exited_at
        )

    @rpc
    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.GetResponse:
        shim = self._task(context, request.container_id)
        return pb.GetResponse(process=_process_state(shim, request.exec_id))

    @rpc
    def List(
        self, request: pb.ListTasksRequest, context: grpc.ServicerContext
    ) -> pb.ListTasksResponse:
        ns = namespace(context)
        match = _matcher(request.filter)
        resp = pb.ListTasksResponse()
        for shim in self.shims.tasks(ns):
            try:
                process = _process_state(shim, "")
            except NotFound:
                continue  # deleted meanwhile
            if match(process):
                resp.tasks.append(process)
        return resp

    @rpc
    def Kill(self, request: pb.KillRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        shim = self._task(context, request.container_id)
        shim.call(
            "Kill",
            shim_pb2.KillRequest(
                id=shim.id,
                exec_id=request.exec_id,
                signal=request.signal,
                # all applies to the task's init process only
                all=request.all and not request.exec_id,
            ),
            empty_pb2.Empty,
            _time_left(context),
        )
        return EMPTY

    @rpc
    def Exec(
        self, request: pb.ExecProcessRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        if not request.exec_id:
            raise InvalidArgument("exec id cannot be empty")
        shim = self._task(context, request.container_id)
        validate_identifier("exec", request.exec_id)
        shim.call(
            "Exec",
            shim_pb2.ExecProcessRequest(
                id=shim.id,
                exec_id=request.exec_id,
                terminal=request.terminal,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
                spec=request.spec,
            ),
            empty_pb2.Empty,
            _time_left(context),
        )
        return EMPTY

    @rpc
    def ResizePty(
        self, request: pb.ResizePtyRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        shim = self._task(context, request.container_id)
        shim.call(
            "ResizePty",
            shim_pb2.ResizePtyRequest(
                id=shim.id, exec_id=request.exec_id, width=request.width, height=request.height
            ),
            empty_pb2.Empty,
            _time_left(context),
        )
        return EMPTY

    @rpc
    def CloseIO(self, request: pb.CloseIORequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        shim = self._task(context, request.container_id)
        if request.stdin:
            shim.call(
                "CloseIO",
                shim_pb2.CloseIORequest(id=shim.id, exec_id=request.exec_id, stdin=True),
                empty_pb2.Empty,
                _time_left(context),
            )
        return EMPTY

    @rpc
    def Pause(self, request: pb.PauseTaskRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        shim = self._task(context, request.container_id)
        shim.call("Pause", shim_pb2.PauseRequest(id=shim.id), empty_pb2.Empty, _time_left(context))
        return EMPTY

    @rpc
    def Resume(
        self, request: pb.ResumeTaskRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        shim = self._task(context, request.container_id)
        shim.call(
            "Resume", shim_pb2.ResumeRequest(id=shim.id), empty_pb2.Empty, _time_left(context)
        )
        return EMPTY

    @rpc
    def ListPids(
        self, request: pb.ListPidsRequest, context: grpc.ServicerContext
    ) -> pb.ListPidsResponse:
        shim = self._task(context, request.container_id)
        resp = shim.call(
            "Pids", shim_pb2.PidsRequest(id=shim.id), shim_pb2.PidsResponse, _time_left(context)
        )
        return pb.ListPidsResponse(processes=resp.processes)

    @rpc
    def Checkpoint(
        self, request: pb.CheckpointTaskRequest, context: grpc.ServicerContext
    ) -> pb.CheckpointTaskResponse:
        shim = self._task(context, request.container_id)
        raise Unsupported(f"checkpoint task {shim.id}: checkpoints are not supported (no CRIU)")

    @rpc
    def Update(
        self, request: pb.UpdateTaskRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        shim = self._task(context, request.container_id)
        shim.call(
            "Update",
            shim_pb2.UpdateTaskRequest(
                id=shim.id, resources=request.resources, annotations=request.annotations
            ),
            empty_pb2.Empty,
            _time_left(context),
        )
        return EMPTY

    @rpc
    def Metrics(
        self, request: pb.MetricsRequest, context: grpc.ServicerContext
    ) -> pb.MetricsResponse:
        ns = namespace(context)
        match = matcher(request.filters)
        resp = pb.MetricsResponse()
        for shim in self.shims.tasks(ns):

            def field(path: list[str], shim: Shim = shim) -> str | None:
                if path == ["id"]:
                    return shim.id
                if path == ["namespace"]:
                    return shim.namespace
                if path == ["runtime"]:
                    return shim.runtime
                return None

            if not match(field):
                continue
            collected = now_timestamp()
            try:
                stats = shim.call(
                    "Stats",
                    shim_pb2.StatsRequest(id=shim.id),
                    shim_pb2.StatsResponse,
                    STATE_TIMEOUT,
                )
            except DockyardError as e:
                if e.grpc_code != "NOT_FOUND":
                    log.error("collect metrics of task %s/%s: %s", ns, shim.id, e)
                continue
            resp.metrics.append(
                metrics_pb2.Metric(timestamp=collected, id=shim.id, data=stats.stats)
            )
        return resp

    @rpc
    def Wait(self, request: pb.WaitRequest, context: grpc.ServicerContext) -> pb.WaitResponse:
        shim = self._task(context, request.container_id)

        def on_cancel(wake: Callable[[], None]) -> None:
            if not context.add_callback(wake):
                wake()  # the call has ended already

        resp = shim.wait(request.exec_id, on_cancel)
        return pb.WaitResponse(exit_status=resp.exit_status, exited_at=resp.exited_at)


def _time_left(context: grpc.ServicerContext) -> float | None:
    """The client's deadline, passed on to the shim; the manager's limit without one."""
    left = context.time_remaining()
    return CALL_TIMEOUT if left is None else min(max(left, 0.001), CALL_TIMEOUT)


def _process_state(shim: Shim, exec_id: str) -> task_pb2.Process:
    """containerd's getProcessState: a shim that does not answer in time is UNKNOWN."""
    process = task_pb2.Process(container_id=shim.id, id=exec_id or shim.id)
    try:
        state = shim.state(exec_id, timeout=STATE_TIMEOUT)
    except DockyardError as e:
        if e.grpc_code == "NOT_FOUND":
            raise
        log.error("get state of %s/%s: %s", shim.namespace, exec_id or shim.id, e)
        process.status = task_pb2.UNKNOWN
        return process
    process.pid = state.pid
    process.status = state.status
    process.stdin = state.stdin
    process.stdout = state.stdout
    process.stderr = state.stderr
    process.terminal = state.terminal
    process.exit_status = state.exit_status
    process.exited_at.CopyFrom(state.exited_at)
    return process


def _matcher(text: str) -> Callable[[task_pb2.Process], bool]:
    """A filter over id, container_id, pid and status (containerd 1.6 ignores it)."""
    match = matcher([text] if text.strip() else [])

    def process_matches(p: task_pb2.Process) -> bool:
        def field(path: list[str]) -> str | None:
            if path == ["id"]:
                return p.id
            if path == ["container_id"]:
                return p.container_id
            if path == ["pid"]:
                return str(p.pid)
            if path == ["status"]:
                return task_pb2.Status.Name(p.status)
            return None

        return match(field)

    return process_matches


def register(server: grpc.Server, sup: Supervisor) -> None:
    # Shims publish to the ttrpc endpoint: it serves before any shim is loaded.
    ttrpc_events.serve(sup)
    shims = ShimManager(sup)
    sup.tasks = shims
    sup.on_close(shims.close)
    shims.load()
    tasks_pb2_grpc.add_TasksServicer_to_server(TasksService(sup, shims), server)
    sup.add_plugin("io.containerd.runtime.v2", "task")
    sup.add_plugin("io.containerd.grpc.v1", "tasks")
