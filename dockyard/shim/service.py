"""containerd's shim v2 task API (``containerd.task.v2.Task``) over the shim's containers.

Each method decodes its request, acts on a ``Container`` and its processes,
publishes the events containerd expects (runtime/v2/README.md "Events") and
answers. Errors are dockyard's, mapped to gRPC codes by the ttrpc server;
a runtime failure carries the runtime's own message.

Exits come from the reaper: ``on_exit`` matches the pid to a process. An
exit can arrive before the pid is known (a process that ends while
``runtime create`` or ``runtime exec`` is still running): while such a start
is under way, exits of unknown pids are kept and matched once its pid is
read, as containerd 1.7's runc shim does. The process's output is copied
through before it counts as stopped and its ``/tasks/exit`` is published,
and a start's event is always published before that process's exit event.
"""

from __future__ import annotations

import os
import threading
import time

from dockyard.api.topics import (
    TASK_CREATE,
    TASK_DELETE,
    TASK_EXEC_ADDED,
    TASK_EXEC_STARTED,
    TASK_EXIT,
    TASK_OOM,
    TASK_PAUSED,
    TASK_RESUMED,
    TASK_START,
)
from dockyard.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from dockyard.identifiers import validate_identifier
from dockyard.shim import log
from dockyard.shim import messages as m
from dockyard.shim import options as shim_options
from dockyard.shim.container import Container
from dockyard.shim.messages import timestamp
from dockyard.shim.process import STOPPED, Exec, Init, Process
from dockyard.shim.stdio import Stdio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dockyard.shim.codec import Message
    from dockyard.shim.oom import OOMWatcher
    from dockyard.shim.publisher import Publisher
    from dockyard.shim.reaper import Exit, Launcher
    from dockyard.ttrpc import Context

TASK_SERVICE = "containerd.task.v2.Task"

_STATUS = {
    "created": m.CREATED,
    "running": m.RUNNING,
    "stopped": m.STOPPED,
    "deleted": m.STOPPED,
    "paused": m.PAUSED,
    "pausing": m.PAUSING,
}

_EMPTY = m.Empty()


class TaskService:
    """The shim's task service: its containers, their processes, their events."""

    def __init__(
        self,
        namespace: str,
        publisher: Publisher,
        launcher: Launcher,
        shutdown: Callable[[], None],
    ) -> None:
        self.namespace = namespace
        self.publisher = publisher
        self.launcher = launcher
        self._shutdown = shutdown
        # Guards the maps below; held only for lookups and updates, never
        # across a runtime command.
        self._lock = threading.Lock()
        self._containers: dict[str, Container] = {}
        self._creating: set[str] = set()
        self._by_pid: dict[int, tuple[Container, Process]] = {}
        # Starts whose pid is not known yet, and the exits of unknown pids
        # reaped meanwhile.
        self._starting = 0
        self._early: dict[int, Exit] = {}
        self._oom: OOMWatcher | None = None

    # -- plumbing ----------------------------------------------------------

    def handlers(self) -> dict[str, tuple[Any, Any]]:
        """The methods for ``ttrpc.Server.register_typed``."""
        return {
            "State": (m.StateRequest, self.state),
            "Create": (m.CreateTaskRequest, self.create),
            "Start": (m.StartRequest, self.start),
            "Delete": (m.DeleteRequest, self.delete),
            "Pids": (m.PidsRequest, self.pids),
            "Pause": (m.PauseRequest, self.pause),
            "Resume": (m.ResumeRequest, self.resume),
            "Checkpoint": (m.CheckpointTaskRequest, self.checkpoint),
            "Kill": (m.KillRequest, self.kill),
            "Exec": (m.ExecProcessRequest, self.exec),
            "ResizePty": (m.ResizePtyRequest, self.resize_pty),
            "CloseIO": (m.CloseIORequest, self.close_io),
            "Update": (m.UpdateTaskRequest, self.update),
            "Wait": (m.WaitRequest, self.wait),
            "Stats": (m.StatsRequest, self.stats),
            "Connect": (m.ConnectRequest, self.connect),
            "Shutdown": (m.ShutdownRequest, self.shutdown),
        }

    def _publish(self, topic: str, event: Message) -> None:
        self.publisher.publish(topic, event)

    def _serves(self, c: Container) -> bool:
        with self._lock:
            return self._containers.get(c.id) is c

    def _container(self, id: str) -> Container:
        with self._lock:
            c = self._containers.get(id)
        if c is None:
            raise NotFound(f"container {id}: not created")
        return c

    def _begin_start(self) -> None:
        with self._lock:
            self._starting += 1

    def _end_start(self, c: Container | None, p: Process | None) -> Exit | None:
        """A start is over: register the pid; the exit reaped before, if any."""
        with self._lock:
            self._starting -= 1
            early = None
            if c is not None and p is not None and p.pid:
                self._by_pid[p.pid] = (c, p)
                early = self._early.pop(p.pid, None)
                if early is not None:
                    del self._by_pid[p.pid]
            if self._starting == 0:
                self._early.clear()
        return early

    # -- exits ---------------------------------------------------------------

    def on_exit(self, e: Exit) -> None:
        """Called by the reaper for every exit it did not start itself; never blocks."""
        with self._lock:
            found = self._by_pid.pop(e.pid, None)
            if found is None:
                if self._starting:
                    self._early[e.pid] = e
                return
        self._exited(found[0], found[1], e)

    def _exited(self, c: Container, p: Process, e: Exit) -> None:
        # At once: an exec's Kill must not signal a pid the kernel may reuse.
        p.mark_reaped()
        # A thread per exit: it may run the runtime (kill --all), whose own
        # exit only the reaper can collect, and it waits for the output.
        threading.Thread(
            target=self._finish_exit, args=(c, p, e), name=f"exit-{e.pid}", daemon=True
        ).start()

    def _finish_exit(self, c: Container, p: Process, e: Exit) -> None:
        if p is c.init and c.kill_all_on_exit:
            c.init.kill_all()
        p.wait_output()
        log.debug(f"process {p.id} (pid {e.pid}) exited with status {e.status}")
        # Stopped and published as one step for a Delete, which takes the same
        # lock: its /tasks/delete can not overtake this /tasks/exit.
        with p.lifecycle_lock:
            if p.deleted():
                return  # deleted meanwhile (a created task, killed by delete): no exit
            p.set_exited(e.status, e.timestamp_ns)
            self._publish(
                TASK_EXIT,
                m.TaskExit(
                    container_id=c.id,
                    id=p.id,
                    pid=e.pid,
                    exit_status=e.status,
                    exited_at=timestamp(e.timestamp_ns),
                ),
            )
        if p is not c.init and not self._serves(c):
            p.release_io()  # an exec that outlived its container's delete: nobody will

    # -- the task API --------------------------------------------------------

    def create(self, req: m.CreateTaskRequest, ctx: Context) -> m.CreateTaskResponse:
        validate_identifier("container id", req.id)
        if req.checkpoint:
            from dockyard.errors import Unsupported

            raise Unsupported(f"create {req.id} from a checkpoint: checkpoints are not supported")
        if not req.bundle or not os.path.isabs(req.bundle):
            raise InvalidArgument(f"create {req.id}: bundle {req.bundle!r} is not an absolute path")
        if not os.path.isdir(req.bundle):
            raise NotFound(f"create {req.id}: bundle {req.bundle} does not exist")
        options = shim_options.parse(req.options)
        from dockyard.spec.mount import Mount

        mounts = [
            Mount(type=x.type, source=x.source, options=list(x.options), target=x.target)
            for x in req.rootfs
        ]
        stdio = Stdio(req.stdin, req.stdout, req.stderr, req.terminal)
        with self._lock:
            if req.id in self._containers or req.id in self._creating:
                raise AlreadyExists(f"container {req.id}: already created")
            self._creating.add(req.id)
            self._starting += 1
        try:
            c = Container.create(
                req.id, req.bundle, self.namespace, stdio, mounts, options, self.launcher
            )
        except BaseException:
            with self._lock:
                self._creating.discard(req.id)
            self._end_start(None, None)
            raise
        # Held until /tasks/create is out: the init's start and exit events wait.
        with c.init.lifecycle_lock:
            with self._lock:
                self._creating.discard(req.id)
                self._containers[req.id] = c
            early = self._end_start(c, c.init)
            try:
                from dockyard.shim.stats import cgroup_paths

                c.cgroup_paths = cgroup_paths(c.init.pid)
            except Exception as e:
                log.warn(f"cgroup of {req.id}: {e}")
            self._publish(
                TASK_CREATE,
                m.TaskCreate(
                    container_id=req.id,
                    bundle=req.bundle,
                    rootfs=req.rootfs,
                    io=m.TaskIO(
                        stdin=req.stdin,
                        stdout=req.stdout,
                        stderr=req.stderr,
                        terminal=req.terminal,
                    ),
                    checkpoint=req.checkpoint,
                    pid=c.init.pid,
                ),
            )
            if early is not None:
                self._exited(c, c.init, early)
        return m.CreateTaskResponse(pid=c.init.pid)

    def start(self, req: m.StartRequest, ctx: Context) -> m.StartResponse:
        c = self._container(req.id)
        p = c.process(req.exec_id)
        # The start event is published from inside the process's start (under its
        # lifecycle lock), so the process's exit event can only follow it.
        if isinstance(p, Exec):
            self._begin_start()
            registered = False

            def exec_started() -> None:
                nonlocal registered
                early = self._end_start(c, p)
                registered = True
                self._publish(
                    TASK_EXEC_STARTED,
                    m.TaskExecStarted(container_id=c.id, exec_id=p.exec_id, pid=p.pid),
                )
                if early is not None:
                    self._exited(c, p, early)

            try:
                p.start(exec_started)
            finally:
                if not registered:
                    self._end_start(None, None)
        else:

            def started() -> None:
                self._publish(TASK_START, m.TaskStart(container_id=c.id, pid=p.pid))

            # Watched before it runs: a kill between the start and the watch
            # would count in the watch's starting point (v2) or be missed (v1).
            # Only by a start that may run: a second Start would watch it twice
            # (each OOM published twice), one after its Delete for ever.
            c.init.start(started, starting=lambda: self._watch_oom(c))
        return m.StartResponse(pid=p.pid)

    def _watch_oom(self, c: Container) -> None:
        if not c.cgroup_paths:
            return
        if self._oom is None:
            from dockyard.shim.oom import OOMWatcher

            self._oom = OOMWatcher(self._on_oom)
        self._oom.add(c.id, c.cgroup_paths)

    def _on_oom(self, container_id: str) -> None:
        log.info(f"container {container_id} ran out of memory")
        self._publish(TASK_OOM, m.TaskOOM(container_id=container_id))

    def delete(self, req: m.DeleteRequest, ctx: Context) -> m.DeleteResponse:
        c = self._container(req.id)
        p = c.process(req.exec_id)
        p.delete()  # after the exit's event, if it exited (see _finish_exit)
        with self._lock:
            if self._by_pid.get(p.pid, (None, None))[1] is p:
                del self._by_pid[p.pid]
            if isinstance(p, Exec):
                c.remove_exec(p.exec_id)
            else:
                self._containers.pop(c.id, None)
        if isinstance(p, Init):
            # The container is gone, and with it any way to delete its execs:
            # those that exited give back their stdio now (a shim serving a
            # sandbox lives on), the others once they exit (_finish_exit).
            for ex in c.execs():
                ex.abandon()  # one never started: its Wait returns
                if ex.status() == STOPPED:
                    ex.release_io()
            if self._oom is not None:
                self._oom.remove(c.id)
            self._publish(
                TASK_DELETE,
                m.TaskDelete(
                    container_id=c.id,
                    pid=p.pid,
                    exit_status=p.exit_status,
                    exited_at=timestamp(p.exited_at_ns),
                ),
            )
        return m.DeleteResponse(
            pid=p.pid, exit_status=p.exit_status, exited_at=timestamp(p.exited_at_ns)
        )

    def exec(self, req: m.ExecProcessRequest, ctx: Context) -> m.Empty:
        c = self._container(req.id)
        state = c.init.status()
        if state not in ("created", "running"):
            raise FailedPrecondition(f"cannot exec in container {req.id}: it is {state}")
        if req.spec is None or req.spec.type_url != m.PROCESS_URL:
            raise InvalidArgument(
                f"exec {req.exec_id}: spec must be a {m.PROCESS_URL}, "
                f"not {req.spec.type_url if req.spec else 'nothing'!r}"
            )
        from dockyard import jsonio

        try:
            spec = jsonio.loads(req.spec.value)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"exec {req.exec_id}: spec: {e}") from None
        if not isinstance(spec, dict):
            raise InvalidArgument(f"exec {req.exec_id}: spec is not a JSON object")
        stdio = Stdio(req.stdin, req.stdout, req.stderr, req.terminal)
        p = c.add_exec(req.exec_id, stdio, spec)
        self._publish(TASK_EXEC_ADDED, m.TaskExecAdded(container_id=c.id, exec_id=p.exec_id))
        return _EMPTY

    def state(self, req: m.StateRequest, ctx: Context) -> m.StateResponse:
        c = self._container(req.id)
        p = c.process(req.exec_id)
        status = p.status()
        return m.StateResponse(
            id=p.id,
            bundle=c.bundle,
            pid=p.pid,
            status=_STATUS.get(status, m.UNKNOWN),
            stdin=p.stdio.stdin,
            stdout=p.stdio.stdout,
            stderr=p.stdio.stderr,
            terminal=p.stdio.terminal,
            exit_status=p.exit_status,
            exited_at=timestamp(p.exited_at_ns),
            exec_id=req.exec_id,
        )

    def pids(self, req: m.PidsRequest, ctx: Context) -> m.PidsResponse:
        c = self._container(req.id)
        pids = c.init.runtime.ps(c.id)
        by_pid = {p.pid: p for p in c.execs() if p.pid}
        out = m.PidsResponse()
        for pid in pids:
            p = by_pid.get(pid)
            details = m.pack(m.ProcessDetails(exec_id=p.exec_id)) if p is not None else None
            out.processes.append(m.ProcessInfo(pid=pid, info=details))
        return out

    def pause(self, req: m.PauseRequest, ctx: Context) -> m.Empty:
        c = self._container(req.id)
        c.init.pause()
        self._publish(TASK_PAUSED, m.TaskPaused(container_id=c.id))
        return _EMPTY

    def resume(self, req: m.ResumeRequest, ctx: Context) -> m.Empty:
        c = self._container(req.id)
        c.init.resume()
        self._publish(TASK_RESUMED, m.TaskResumed(container_id=c.id))
        return _EMPTY

    def checkpoint(self, req: m.CheckpointTaskRequest, ctx: Context) -> m.Empty:
        from dockyard.errors import Unsupported

        self._container(req.id)
        raise Unsupported(f"checkpoint {req.id}: checkpoints are not supported by this shim")

    def kill(self, req: m.KillRequest, ctx: Context) -> m.Empty:
        c = self._container(req.id)
        p = c.process(req.exec_id)
        if req.signal <= 0 or req.signal > 64:
            raise InvalidArgument(f"kill {p.id}: invalid signal {req.signal}")
        p.kill(req.signal, req.all)
        return _EMPTY

    def resize_pty(self, req: m.ResizePtyRequest, ctx: Context) -> m.Empty:
        c = self._container(req.id)
        c.process(req.exec_id).resize(req.width, req.height)
        return _EMPTY

    def close_io(self, req: m.CloseIORequest, ctx: Context) -> m.Empty:
        c = self._container(req.id)
        p = c.process(req.exec_id)
        if req.stdin:
            p.close_io()
        return _EMPTY

    def update(self, req: m.UpdateTaskRequest, ctx: Context) -> m.Empty:
        c = self._container(req.id)
        if req.resources is None:
            raise InvalidArgument(f"update {req.id}: no resources given")
        if req.resources.type_url != m.LINUX_RESOURCES_URL:
            raise InvalidArgument(
                f"update {req.id}: resources must be a {m.LINUX_RESOURCES_URL}, "
                f"not {req.resources.type_url!r}"
            )
        c.init.update(req.resources.value)
        return _EMPTY

    def wait(self, req: m.WaitRequest, ctx: Context) -> m.WaitResponse:
        c = self._container(req.id)
        p = c.process(req.exec_id)
        p.wait()
        return m.WaitResponse(exit_status=p.exit_status, exited_at=timestamp(p.exited_at_ns))

    def stats(self, req: m.StatsRequest, ctx: Context) -> m.StatsResponse:
        c = self._container(req.id)
        if not c.cgroup_paths:
            raise NotFound(f"stats of {req.id}: cgroup does not exist")
        from dockyard.runtime.cgroups import load_manager
        from dockyard.shim import stats

        metrics = stats.metrics(load_manager(c.cgroup_paths))
        return m.StatsResponse(stats=m.pack(metrics))

    def connect(self, req: m.ConnectRequest, ctx: Context) -> m.ConnectResponse:
        with self._lock:
            c = self._containers.get(req.id)
        return m.ConnectResponse(shim_pid=os.getpid(), task_pid=c.init.pid if c is not None else 0)

    def shutdown(self, req: m.ShutdownRequest, ctx: Context) -> m.Empty:
        with self._lock:
            busy = bool(self._containers or self._creating)
        if busy and not req.now:
            return _EMPTY  # still serving containers: containerd asks again later
        self._shutdown()
        return _EMPTY

    # -- for the server's end --------------------------------------------------

    def idle(self) -> bool:
        with self._lock:
            return not self._containers and not self._creating

    def wait_exits(self, timeout: float) -> None:
        """Give exits being handled a moment to publish (the shim is ending)."""
        deadline = time.monotonic() + timeout
        for t in threading.enumerate():
            if t.name.startswith("exit-"):
                t.join(max(0.0, deadline - time.monotonic()))
