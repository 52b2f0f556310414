"""A container's processes as the shim keeps them: the init and the execs.

Each process has a state (created, running, paused, stopped, deleted), its
pid once the runtime reported it, and, once reaped, its exit status and
time. ``_lock`` guards those fields only and is never held across a runtime
command, so ``State`` and ``Wait`` answer while a ``Start`` or ``Pause``
runs; ``_op`` serializes the lifecycle operations of one process, and the
shim's exit handler takes it to mark the process stopped and publish its
exit (so a start's event comes first and a delete's after). An exit can be
reaped at any point of an operation: the state moves to stopped and the
operation, when it returns, does not move it back.

The transitions follow containerd's pkg/process (init_state.go,
exec_state.go).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # not signal: see server.py
import os
import threading
import time

from dockyard import jsonio
from dockyard.errors import DockyardError, FailedPrecondition, NotFound
from dockyard.shim.rootfs import unmount_rootfs
from dockyard.shim.runtime import RuntimeFailure
from dockyard.shim.stdio import ConsoleSocket, ProcessIO, Stdio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from dockyard.shim.runtime import ChildStdio, OCIRuntime

CREATED = "created"
RUNNING = "running"
PAUSED = "paused"
PAUSING = "pausing"
STOPPED = "stopped"
DELETED = "deleted"

INIT_PID_FILE = "init.pid"


def read_pid_file(path: str) -> int:
    with open(path) as f:
        text = f.read().strip()
    try:
        pid = int(text)
    except ValueError:
        raise DockyardError(f"pid file {path}: not a pid: {text[:40]!r}") from None
    if pid <= 0:
        raise DockyardError(f"pid file {path}: not a pid: {text[:40]!r}")
    return pid


def kill_error(e: RuntimeFailure) -> DockyardError:
    """A failed kill as containerd reports it: a finished process is NotFound."""
    text = str(e).lower()
    if "not running" in text or "no such process" in text or "already finished" in text:
        return NotFound("process already finished")
    if "does not exist" in text:
        return NotFound("no such container")
    return e


class Process:
    """What the init and exec processes share: state, pid, exit, stdio."""

    def __init__(self, id: str, exec_id: str, stdio: Stdio, runtime: OCIRuntime) -> None:
        self.id = id  # the container id for the init, else the exec id
        self.exec_id = exec_id
        self.stdio = stdio
        self.runtime = runtime
        self.pid = 0
        self.state = CREATED
        self.exit_status = 0
        self.exited_at_ns = 0
        self.io: ProcessIO | None = None
        self._lock = threading.Lock()
        self._op = threading.Lock()
        self._exited = threading.Event()
        # Reaped: its pid is free, though it counts as stopped only once its
        # output is through (set_exited).
        self._reaped = False

    @property
    def lifecycle_lock(self) -> threading.Lock:
        """Held by each lifecycle operation; the exit handler holds it to mark the
        process stopped and publish its exit, so that a Delete comes after both."""
        return self._op

    # -- what State and Wait read ----------------------------------------

    def status(self) -> str:
        with self._lock:
            return self.state

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the process has exited (or its start failed)."""
        return self._exited.wait(timeout)

    def exited(self) -> bool:
        return self._exited.is_set()

    def deleted(self) -> bool:
        with self._lock:
            return self.state == DELETED

    def mark_reaped(self) -> None:
        """Its exit was reaped: its pid may already be another process's."""
        with self._lock:
            self._reaped = True

    def set_exited(self, status: int, timestamp_ns: int) -> None:
        """The reaped exit, once its output is through: stopped, and Wait returns."""
        with self._lock:
            if self._exited.is_set():
                return
            self.exit_status = status
            self.exited_at_ns = timestamp_ns
            if self.state != DELETED:
                self.state = STOPPED
            self._exited.set()

    def _unblock_failed_start(self) -> None:
        # containerd unblocks Wait when a start fails; the process never ran.
        self.set_exited(255, time.time_ns())

    # -- lifecycle (each kind of process has its own) ---------------------

    def start(self, started: Callable[[], None] | None = None) -> None:
        """Start the process; ``started`` runs once it has, still under the
        lifecycle lock (the shim publishes the start event there)."""
        raise NotImplementedError

    def kill(self, sig: int, all: bool = False) -> None:
        raise NotImplementedError

    def delete(self) -> None:
        raise NotImplementedError

    # -- stdio -------------------------------------------------------------

    def _open_io(self, uid: int, gid: int) -> tuple[ChildStdio | None, ConsoleSocket | None]:
        """The runtime command's stdio (pipes), or the console socket of a terminal."""
        self.io = ProcessIO(self.stdio)
        if self.stdio.terminal:
            return None, ConsoleSocket()
        return self.io.open_pipes(uid, gid), None

    def _attach_io(self, console: ConsoleSocket | None) -> None:
        """After the runtime command: copy the pipes, or take the pty master."""
        assert self.io is not None
        if console is not None:
            self.io.attach_console(console.receive_master())
        else:
            self.io.after_start()

    def resize(self, width: int, height: int) -> None:
        # The pty stays open until the process is deleted: a client resizing
        # as the process exits is not an error (as containerd's init).
        if self.io is not None:
            self.io.resize(width, height)

    def close_io(self) -> None:
        if self.io is not None:
            self.io.close_stdin()

    def wait_output(self) -> None:
        if self.io is not None:
            self.io.wait_output()

    def release_io(self) -> None:
        if self.io is not None:
            self.io.close()


class Init(Process):
    """The container's init process; its operations act on the whole container."""

    def __init__(
        self,
        id: str,
        bundle: str,
        stdio: Stdio,
        runtime: OCIRuntime,
        *,
        no_pivot: bool = False,
        no_new_keyring: bool = False,
        io_uid: int = 0,
        io_gid: int = 0,
        rootfs: str = "",
    ) -> None:
        super().__init__(id, "", stdio, runtime)
        self.bundle = bundle
        self.rootfs = rootfs  # mounted by the shim: unmounted on delete
        self.no_pivot = no_pivot
        self.no_new_keyring = no_new_keyring
        self.io_uid = io_uid
        self.io_gid = io_gid

    @property
    def pid_file(self) -> str:
        return os.path.join(self.bundle, INIT_PID_FILE)

    def create(self) -> None:
        """``runtime create``; the pid is known when this returns."""
        created = False
        try:
            child, console = self._open_io(self.io_uid, self.io_gid)
            try:
                self.runtime.create(
                    self.id,
                    self.bundle,
                    pid_file=self.pid_file,
                    console_socket=console.path if console else None,
                    no_pivot=self.no_pivot,
                    no_new_keyring=self.no_new_keyring,
                    stdio=child,
                )
                created = True
                self._attach_io(console)
            finally:
                if console is not None:
                    console.close()
            self.pid = read_pid_file(self.pid_file)
        except BaseException:
            self.release_io()
            if created:
                # The runtime made a container the shim cannot use: remove it.
                try:
                    self.runtime.delete(self.id, force=True)
                except DockyardError:
                    pass
            raise

    def start(
        self,
        started: Callable[[], None] | None = None,
        starting: Callable[[], None] | None = None,
    ) -> None:
        """``starting`` runs once the start is allowed, before the runtime's."""
        with self._op:
            state = self.status()
            if state != CREATED:
                raise FailedPrecondition(f"cannot start container {self.id}: it is {state}")
            if starting is not None:
                starting()
            self.runtime.start(self.id)
            with self._lock:
                if self.state == CREATED:
                    self.state = RUNNING
            if started is not None:
                started()

    def kill(self, sig: int, all: bool = False) -> None:
        # Not under _op: a kill must get through while a pause or start hangs.
        if self.status() == DELETED:
            raise NotFound(f"container {self.id}: deleted")
        try:
            self.runtime.kill(self.id, sig, all)
        except RuntimeFailure as e:
            raise kill_error(e) from None

    def kill_all(self) -> None:
        """SIGKILL every process of the container (its init has exited)."""
        try:
            self.runtime.kill(self.id, _signal.SIGKILL, all=True)
        except RuntimeFailure:
            pass  # nothing left to kill, or the container is gone

    def pause(self) -> None:
        with self._op:
            with self._lock:
                if self.state != RUNNING:
                    raise FailedPrecondition(
                        f"cannot pause container {self.id}: it is {self.state}"
                    )
                self.state = PAUSING
            try:
                self.runtime.pause(self.id)
            except BaseException:
                with self._lock:
                    if self.state == PAUSING:
                        self.state = RUNNING
                raise
            with self._lock:
                if self.state == PAUSING:
                    self.state = PAUSED
                    return
            # It exited while being paused: a frozen cgroup would keep its
            # other processes from dying.
            self._thaw_quietly()

    def resume(self) -> None:
        with self._op:
            state = self.status()
            if state != PAUSED:
                raise FailedPrecondition(f"cannot resume container {self.id}: it is {state}")
            self.runtime.resume(self.id)
            with self._lock:
                if self.state == PAUSED:
                    self.state = RUNNING

    def _thaw_quietly(self) -> None:
        try:
            self.runtime.resume(self.id)
        except RuntimeFailure:
            pass

    def set_exited(self, status: int, timestamp_ns: int) -> None:
        was = self.status()
        super().set_exited(status, timestamp_ns)
        if was in (PAUSED, PAUSING):
            self._thaw_quietly()

    def update(self, resources: bytes) -> None:
        state = self.status()
        if state in (STOPPED, DELETED):
            raise FailedPrecondition(f"cannot update container {self.id}: it is {state}")
        self.runtime.update(self.id, resources)

    def delete(self) -> None:
        """``runtime delete`` of a stopped (or never started) container."""
        with self._op:
            state = self.status()
            if state in (RUNNING, PAUSED, PAUSING):
                raise FailedPrecondition(f"cannot delete container {self.id}: it is {state}")
            if state == DELETED:
                raise NotFound(f"container {self.id}: deleted")
            # A stopped process's output is through already: it is stopped
            # only once its copies ended (or gave up).
            try:
                # A created container needs --force (runtime.md: delete of a
                # container that is not stopped is an error).
                self.runtime.delete(self.id, force=state == CREATED)
            except RuntimeFailure as e:
                # Gone already (a checkpoint, or a runtime that removes it on
                # exit) is fine: the shim still frees what it holds.
                if "does not exist" not in str(e):
                    raise
            finally:
                self.release_io()
                if self.rootfs:
                    unmount_rootfs(self.rootfs)
            with self._lock:
                self.state = DELETED
            if not self._exited.is_set():
                # A created container that never ran: it is gone now.
                self.set_exited(self.exit_status, self.exited_at_ns or time.time_ns())


class Exec(Process):
    """A process started in the running container by ``runtime exec``."""

    def __init__(self, init: Init, exec_id: str, stdio: Stdio, spec: dict[str, object]) -> None:
        super().__init__(exec_id, exec_id, stdio, init.runtime)
        self.init = init
        self.spec = spec

    @property
    def pid_file(self) -> str:
        return os.path.join(self.init.bundle, f"exec-{self.exec_id}.pid")

    @property
    def process_file(self) -> str:
        return os.path.join(self.init.bundle, f"exec-{self.exec_id}.process.json")

    def status(self) -> str:
        # A paused container's processes are paused too.
        init = self.init.status()
        if init in (PAUSED, PAUSING):
            return init
        return super().status()

    def start(self, started: Callable[[], None] | None = None) -> None:
        """``runtime exec --detach``; the pid is known when this returns."""
        with self._op:
            state = Process.status(self)
            if state != CREATED:
                raise FailedPrecondition(f"cannot start exec {self.exec_id}: it is {state}")
            init_state = self.init.status()
            if init_state not in (RUNNING, CREATED):
                self._unblock_failed_start()
                raise FailedPrecondition(
                    f"cannot exec in container {self.init.id}: it is {init_state}"
                )
            spec = dict(self.spec)
            spec["terminal"] = self.stdio.terminal
            try:
                with open(self.process_file, "w") as f:
                    f.write(jsonio.dumps(spec))
                child, console = self._open_io(self.init.io_uid, self.init.io_gid)
                try:
                    self.runtime.exec(
                        self.init.id,
                        self.process_file,
                        pid_file=self.pid_file,
                        console_socket=console.path if console else None,
                        stdio=child,
                    )
                    self._attach_io(console)
                finally:
                    if console is not None:
                        console.close()
                self.pid = read_pid_file(self.pid_file)
            except BaseException:
                self.release_io()
                self._unblock_failed_start()
                raise
            finally:
                try:
                    os.unlink(self.process_file)
                except OSError:
                    pass
            with self._lock:
                if self.state == CREATED:
                    self.state = RUNNING
            if started is not None:
                started()

    def abandon(self) -> None:
        """Its container is deleted: if never started, it never will be; Wait returns."""
        if not self._op.acquire(blocking=False):
            return  # a start under way: it fails (or not) and unblocks Wait itself
        try:
            if Process.status(self) == CREATED:
                self._unblock_failed_start()
        finally:
            self._op.release()

    def kill(self, sig: int, all: bool = False) -> None:
        with self._lock:
            pid, exited, state = self.pid, self._exited.is_set() or self._reaped, self.state
        if state == DELETED:
            raise NotFound(f"exec {self.exec_id}: deleted")
        if pid == 0:
            raise FailedPrecondition(f"exec {self.exec_id}: process not created")
        if exited:
            raise NotFound("process already finished")
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            raise NotFound("process already finished") from None

    def resize(self, width: int, height: int) -> None:
        if Process.status(self) in (STOPPED, DELETED):
            raise FailedPrecondition(f"cannot resize the console of exec {self.exec_id}: it exited")
        super().resize(width, height)

    def delete(self) -> None:
        with self._op:
            state = Process.status(self)
            if state == RUNNING:
                raise FailedPrecondition(f"cannot delete exec {self.exec_id}: it is running")
            if state == DELETED:
                raise NotFound(f"exec {self.exec_id}: deleted")
            self.release_io()
            try:
                os.unlink(self.pid_file)
            except OSError:
                pass
            with self._lock:
                self.state = DELETED
            if not self._exited.is_set():
                self.set_exited(0, time.time_ns())
