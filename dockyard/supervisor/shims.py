"""The runtime v2 shim manager: the supervisor's side of the shim v2 contract.

containerd's ``runtime/v2`` (manager.go, binary.go, bundle.go, shim.go,
shim_load.go) on the caller's side, and its README's rules:

- a task's bundle is ``<state>/io.containerd.runtime.v2.task/<ns>/<id>``
  (``config.json`` from the container's spec, an empty ``rootfs/`` for the
  shim to mount on, a ``work`` link to ``<root>/io.containerd.runtime.v2.task/
  <ns>/<id>`` for state that survives reboots), made 0700;
- the shim binary is named by the runtime: ``io.containerd.runc.v2`` runs
  ``containerd-shim-runc-v2``, found on PATH or beside this program; an
  absolute path is used as it is;
- ``<shim> -namespace <ns> -address <grpc> -publish-binary <self> -id <id>
  start``, in the bundle, with ``TTRPC_ADDRESS`` in its environment and the
  task's runtime options (a marshalled ``Any``) on stdin, prints the ttrpc
  address it serves; the manager keeps one connection per task;
- ``... -id <id> -bundle <bundle> delete`` cleans up after a shim that died
  and prints a ``DeleteResponse`` with the exit it recorded;
- the shim's own log is the ``log`` FIFO in the bundle; the manager holds it
  open for reading (so the shim never blocks on it) and copies it to the
  supervisor's log.

Tasks outlive the supervisor: on start, ``load`` walks the bundles,
reconnects to each shim through the bundle's ``address`` file, and cleans up
after each shim that is gone (publishing the exit it reports). A shim that
hangs up while we hold its connection is cleaned up the same way.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import select
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from dockyard.api import topics
from dockyard.api.convert import now_timestamp
from dockyard.api.events import task_pb2 as task_events
from dockyard.api.runtime.task.v2 import shim_pb2
from dockyard.api.types import mount_pb2
from dockyard.errors import (
    AlreadyExists,
    DockyardError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SystemFailure,
)
from dockyard.identifiers import validate_identifier
from dockyard.shim.manager import read_address
from dockyard.shim.template import SHIM_NAME as TEMPLATE_SHIM
from dockyard.shim.template import Template, TemplateError
from dockyard.ttrpc import Client, ConnectionClosed, Error, codes

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor

log = logging.getLogger("dockyard.supervisor.shims")
shim_log = logging.getLogger("dockyard.shim")

# The runtime v2 plugin's directory under both the root and the state dir.
TASK_DIR = "io.containerd.runtime.v2.task"
# How long the shim template may take to import everything and serve.
TEMPLATE_START_TIMEOUT = 30.0
TASK_SERVICE = "containerd.task.v2.Task"
# containerd's ttrpc namespace header (namespaces/ttrpc.go).
TTRPC_NAMESPACE_KEY = "containerd-namespace-ttrpc"

# Time limits (s), containerd's io.containerd.timeout.shim.* defaults where
# it has one: loading a shim, cleaning up after one, shutting one down, and
# reading a task's state for a listing.
LOAD_TIMEOUT = 5.0
CLEANUP_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 3.0
STATE_TIMEOUT = 2.0
# The shim's start command (it forks the shim and prints its address) and
# any task call the client set no deadline for: a hung shim must not hold a
# gRPC worker for ever. Wait has no limit: it lasts as long as the process.
START_TIMEOUT = 60.0
CALL_TIMEOUT = 120.0

# What a shim that is gone without a word is reported to have exited with.
DEAD_SHIM_STATUS = 255

_M = TypeVar("_M", bound=Message)


def binary_name(runtime: str) -> str:
    """``containerd-shim-<name>-<version>`` of ``io.containerd.<name>.<version>``."""
    parts = runtime.split(".")
    if len(parts) < 2 or not parts[-2] or not parts[-1]:
        raise InvalidArgument(
            f"runtime {runtime!r}: name must look like io.containerd.runc.v2 "
            "or be an absolute path to a shim binary"
        )
    return f"containerd-shim-{parts[-2]}-{parts[-1]}"


def resolve_binary(runtime: str) -> str:
    """The shim binary of a runtime name (or absolute path), as containerd finds it."""
    if not runtime:
        raise InvalidArgument("runtime: no runtime name")
    if os.path.isabs(runtime):
        if not os.path.exists(runtime):
            raise NotFound(f"runtime {runtime}: no such shim binary")
        return runtime
    name = binary_name(runtime)
    found = shutil.which(name)
    if not found:
        # Beside this program, as containerd looks beside its own executable:
        # our shim is installed next to the supervisor.
        beside = os.path.join(os.path.dirname(sys.executable), name)
        if os.access(beside, os.X_OK):
            found = beside
    if not found:
        raise NotFound(f"runtime {runtime!r}: shim binary {name} is not installed")
    return os.path.abspath(found)


def publish_binary() -> str:
    """What shims get as ``-publish-binary``: this daemon's command (v2 shims
    publish over ttrpc and only record it)."""
    beside = os.path.join(os.path.dirname(sys.executable), "dockyard-supervisor")
    return beside if os.path.exists(beside) else sys.executable


# --- bundles -------------------------------------------------------------------


@dataclass
class Bundle:
    """A task's bundle directory (runtime/v2/bundle.go)."""

    id: str
    namespace: str
    path: str

    @classmethod
    def create(cls, state: str, root: str, ns: str, cid: str, spec: bytes) -> Bundle:
        """Make the bundle and its work dir; all of it removed again on failure."""
        validate_identifier("task", cid)
        b = cls(cid, ns, os.path.join(state, ns, cid))
        work = os.path.join(root, ns, cid)
        made: list[str] = []
        try:
            os.makedirs(os.path.dirname(b.path), mode=0o711, exist_ok=True)
            try:
                os.mkdir(b.path, 0o700)
            except FileExistsError:
                raise AlreadyExists(f"bundle {b.path}: already exists") from None
            made.append(b.path)
            gid = _remapped_gid(spec)
            if gid:
                # The container's root, remapped, must reach its rootfs.
                os.chown(b.path, -1, gid)
                os.chmod(b.path, 0o710)
            os.mkdir(os.path.join(b.path, "rootfs"), 0o711)
            os.makedirs(os.path.dirname(work), mode=0o711, exist_ok=True)
            try:
                os.mkdir(work, 0o711)
            except FileExistsError:
                shutil.rmtree(work)
                os.mkdir(work, 0o711)
            made.append(work)
            os.symlink(work, os.path.join(b.path, "work"))
            fd = os.open(
                os.path.join(b.path, "config.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666
            )
            with os.fdopen(fd, "wb") as f:
                f.write(spec)
        except BaseException:
            for path in made:
                shutil.rmtree(path, ignore_errors=True)
            raise
        return b

    def delete(self) -> None:
        """Unmount and remove the rootfs dir, then the bundle and its work dir.

        The rootfs is only ever removed empty: if something is still there
        (a mount that would not go) the bundle stays, for a later try.
        """
        from dockyard.spec.mount import unmount_all

        try:
            work: str | None = os.readlink(os.path.join(self.path, "work"))
        except OSError:
            work = None
        rootfs = os.path.join(self.path, "rootfs")
        try:
            unmount_all(rootfs)
        except OSError as e:
            raise SystemFailure(f"unmount rootfs {rootfs}: {e.strerror or e}") from None
        try:
            os.rmdir(rootfs)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise SystemFailure(f"remove bundle rootfs {rootfs}: {e.strerror or e}") from None
        _atomic_delete(self.path)
        if work is not None:
            _atomic_delete(work)

    def read(self, name: str) -> str:
        with open(os.path.join(self.path, name)) as f:
            return f.read()


def _remapped_gid(spec: bytes) -> int:
    """The host gid of the container's gid 0 under user namespaces, 0 without."""
    try:
        doc = json.loads(spec)
    except ValueError as e:
        raise InvalidArgument(f"container spec: not valid JSON: {e}") from None
    linux = doc.get("linux") if isinstance(doc, dict) else None
    for m in (linux or {}).get("gidMappings") or []:
        if isinstance(m, dict) and m.get("containerID") == 0:
            return int(m.get("hostID", 0))
    return 0


def _atomic_delete(path: str) -> None:
    """Rename to a hidden name first, so a half-removed dir is never loaded."""
    hidden = os.path.join(os.path.dirname(path), "." + os.path.basename(path))
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        shutil.rmtree(hidden, ignore_errors=True)  # a leftover of an earlier try
        os.rename(path, hidden)
    shutil.rmtree(hidden)


# --- the shims' logs --------------------------------------------------------------


_LEVEL = re.compile(r'\blevel=(\w+)|"level":\s*"(\w+)"')
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}
MAX_LOG_LINE = 64 << 10


class LogDrain:
    """Copies every shim's ``log`` FIFO to the supervisor's log, in one thread.

    Each FIFO is opened read-write and non-blocking, as containerd opens it:
    the shim's own open for writing never blocks, and a shim that exits does
    not make the FIFO look closed (the manager closes it with the bundle).
    """

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._ops: list[tuple[str, int, str]] = []
        self._buffers: dict[int, bytearray] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="shim-logs", daemon=True)
        self._thread.start()

    def open(self, path: str, label: str) -> int:
        """Open (making it if needed) the FIFO at ``path``; its lines go out as ``label``."""
        try:
            os.mkfifo(path, 0o700)
        except FileExistsError:
            pass
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._queue("add", fd, label)
        return fd

    def close_fd(self, fd: int) -> None:
        """Copy what is left in the FIFO, then close it."""
        self._queue("remove", fd, "")

    def _queue(self, op: str, fd: int, label: str) -> None:
        with self._lock:
            if self._closed:
                if op == "add":
                    os.close(fd)
                return
            self._ops.append((op, fd, label))
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def close(self) -> None:
        with self._lock:
            self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass
        self._thread.join()

    def _loop(self) -> None:
        while True:
            for key, _ in self._sel.select():
                if key.fd == self._wake_r:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    if not self._apply_ops():
                        return
                else:
                    self._copy(key.fd, key.data)

    def _apply_ops(self) -> bool:
        with self._lock:
            ops, self._ops = self._ops, []
            closed = self._closed
        for op, fd, label in ops:
            if op == "add":
                self._buffers[fd] = bytearray()
                self._sel.register(fd, selectors.EVENT_READ, label)
            else:
                self._drop(fd)
        if closed:
            for key in list(self._sel.get_map().values()):
                if key.fd != self._wake_r:
                    self._drop(key.fd)
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            return False
        return True

    def _drop(self, fd: int) -> None:
        try:
            key = self._sel.unregister(fd)
        except (KeyError, ValueError):
            return
        self._copy(fd, key.data)
        rest = self._buffers.pop(fd, bytearray())
        if rest:
            self._emit(key.data, bytes(rest))
        os.close(fd)

    def _copy(self, fd: int, label: str) -> None:
        buf = self._buffers.setdefault(fd, bytearray())
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # BlockingIOError: all read for now
                break
            if not data:
                break
            buf += data
            *lines, rest = bytes(buf).split(b"\n")
            buf[:] = rest[-MAX_LOG_LINE:]
            for line in lines:
                self._emit(label, line)

    @staticmethod
    def _emit(label: str, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        if not line:
            return
        m = _LEVEL.search(line)
        level = _LEVELS.get((m.group(1) or m.group(2)).lower(), logging.INFO) if m else logging.INFO
        shim_log.log(level, "%s: %s", label, line)


# --- one shim -------------------------------------------------------------------------


@dataclass
class Exit:
    """How a task's process ended, as a shim's or its binary's delete reports it."""

    pid: int
    status: int
    # the shim's Timestamp as it is: a datetime would drop its nanoseconds,
    # and the task's Delete would then disagree with its Wait and Get
    exited_at: timestamp_pb2.Timestamp | None


def _exit(resp: shim_pb2.DeleteResponse) -> Exit:
    """A shim's delete answer; no exit time when it gave none (a zero Timestamp)."""
    ts = resp.exited_at
    exited_at = None if ts.seconds == 0 and ts.nanos == 0 else ts
    return Exit(int(resp.pid), int(resp.exit_status), exited_at)


@dataclass
class _Wait:
    """One Wait call to the shim that any number of callers share."""

    done: threading.Event = field(default_factory=threading.Event)
    listeners: list[threading.Event] = field(default_factory=list)
    response: shim_pb2.WaitResponse | None = None
    error: BaseException | None = None


class Shim:
    """A running shim and the task it serves; the connection is ours to keep."""

    def __init__(self, bundle: Bundle, binary: str, runtime: str = "") -> None:
        self.bundle = bundle
        self.binary = binary
        self.runtime = runtime
        self.client: Client | None = None
        self.shim_pid = 0
        self.log_fd: int | None = None
        # Set once the task is deleted on purpose or cleaned up: the
        # connection ending after that is expected, not a dead shim.
        self.gone = threading.Event()
        # Whether it was marked gone because it died (its cleanup runs, the
        # binary's delete first), and set once that cleanup is done: whoever
        # else finds it dead waits for that one cleanup.
        self.dead = False
        self.cleaned = threading.Event()
        self._lock = threading.Lock()
        self._waits: dict[str, _Wait] = {}

    @property
    def id(self) -> str:
        return self.bundle.id

    @property
    def namespace(self) -> str:
        return self.bundle.namespace

    def call(
        self,
        method: str,
        request: Message,
        response_class: type[_M],
        timeout: float | None = CALL_TIMEOUT,
    ) -> _M:
        """One call of the shim's task API; its errors keep the shim's status code."""
        client = self.client
        if client is None:
            raise FailedPrecondition(f"task {self.id}: shim is not connected")
        payload = client.call(
            TASK_SERVICE,
            method,
            request.SerializeToString(),
            timeout=timeout,
            metadata={TTRPC_NAMESPACE_KEY: self.namespace},
        )
        try:
            return response_class.FromString(payload)
        except DecodeError as e:
            raise Error(codes.INTERNAL, f"decode shim {method} response: {e}") from None

    def state(
        self, exec_id: str = "", timeout: float | None = CALL_TIMEOUT
    ) -> shim_pb2.StateResponse:
        """The process's state; a closed connection means the task is gone (NotFound)."""
        try:
            return self.call(
                "State",
                shim_pb2.StateRequest(id=self.id, exec_id=exec_id),
                shim_pb2.StateResponse,
                timeout,
            )
        except ConnectionClosed:
            raise NotFound(f"task {self.id}: shim is gone") from None

    def connect(self, timeout: float | None = CALL_TIMEOUT) -> int:
        """The task's pid; remembers the shim's own (to see it exit after Shutdown)."""
        resp = self.call(
            "Connect", shim_pb2.ConnectRequest(id=self.id), shim_pb2.ConnectResponse, timeout
        )
        self.shim_pid = int(resp.shim_pid)
        return int(resp.task_pid)

    def wait(
        self, exec_id: str = "", on_cancel: Callable[[Callable[[], None]], object] | None = None
    ) -> shim_pb2.WaitResponse:
        """Block until the process exits.

        Callers waiting on one process share one Wait call to the shim; a
        caller that goes away (``on_cancel`` registers its wake-up) stops
        waiting without cancelling the others'.
        """
        mine = threading.Event()
        with self._lock:
            w = self._waits.get(exec_id)
            if w is None:
                w = self._waits[exec_id] = _Wait()
                threading.Thread(
                    target=self._wait_call, args=(exec_id, w), name="shim-wait", daemon=True
                ).start()
            w.listeners.append(mine)
        if on_cancel is not None:
            on_cancel(mine.set)
        mine.wait()
        if not w.done.is_set():
            raise FailedPrecondition(f"wait for task {self.id}: the caller went away")
        if w.error is not None:
            raise w.error
        assert w.response is not None
        return w.response

    def _wait_call(self, exec_id: str, w: _Wait) -> None:
        try:
            w.response = self.call(
                "Wait",
                shim_pb2.WaitRequest(id=self.id, exec_id=exec_id),
                shim_pb2.WaitResponse,
                timeout=None,
            )
        except BaseException as e:
            w.error = e
        finally:
            # Forgotten once answered: a later exec of the same id waits anew.
            with self._lock:
                if self._waits.get(exec_id) is w:
                    del self._waits[exec_id]
                w.done.set()
                for listener in w.listeners:
                    listener.set()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


# --- the manager ------------------------------------------------------------------------


@dataclass
class CreateOptions:
    """What a task is created with (containerd's runtime.CreateOpts)."""

    spec: bytes
    rootfs: list[mount_pb2.Mount] = field(default_factory=list)
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    options: any_pb2.Any | None = None
    runtime: str = ""


class ShimManager:
    """Starts, tracks, reloads and cleans up the shims of every namespace."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        config = sup.config
        self.state = os.path.join(config.state, TASK_DIR)
        self.root = os.path.join(config.root, TASK_DIR)
        for d in (self.state, self.root):
            os.makedirs(d, mode=0o711, exist_ok=True)
        self.address = config.address
        self.ttrpc_address = config.ttrpc_address
        self._lock = threading.Lock()
        self._shims: dict[tuple[str, str], Shim] = {}
        self._starting: set[tuple[str, str]] = set()
        self._closing = False
        self._logs = LogDrain()
        # The shim template starts with the first task of dockyard's shim: a
        # supervisor that runs none keeps no template (and its memory).
        self.template: Template | None = None
        self._template_wanted = config.shim_template
        self._template_lock = threading.Lock()
        self._template_stop = threading.Event()
        self._template_thread: threading.Thread | None = None
        if config.shim_template:
            _stop_stale_template(*self._template_paths())

    # -- the shim template ---------------------------------------------------------

    def _template_paths(self) -> tuple[str, str]:
        directory = os.path.join(self.sup.config.state, "shim-template")
        return os.path.join(directory, "pid"), directory

    def _ensure_template(self) -> Template | None:
        """The process dockyard's shims are forked from (``dockyard.shim.template``),
        started on first use. Shims forked from it start without an interpreter
        start and share its pages. Without it every shim starts as a command:
        nothing fails."""
        with self._template_lock:
            if self._template_thread is None and self._template_wanted and not self._closing:
                ready = threading.Event()
                # A thread of its own starts it and lives as long as it does:
                # the template's parent-death signal follows the thread that
                # started it, so it ends with the supervisor, even a killed one.
                self._template_thread = threading.Thread(
                    target=self._run_template, args=(ready,), name="shim-template", daemon=True
                )
                self._template_thread.start()
                ready.wait(TEMPLATE_START_TIMEOUT + 5)
            template = self.template
        return template if template is not None and template.alive() else None

    def _run_template(self, ready: threading.Event) -> None:
        pid_file, directory = self._template_paths()
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        template = Template(os.path.join(directory, "template.sock"), die_with_parent=True)
        try:
            template.start(timeout=TEMPLATE_START_TIMEOUT)
        except DockyardError as e:
            log.warning("shim template: %s; dockyard's shims start as commands", e)
            self._template_wanted = False
            ready.set()
            return
        with open(pid_file, "w") as f:
            f.write(str(template.pid))
        log.info("shim template %d serving on %s", template.pid, template.socket_path)
        self.template = template
        ready.set()
        self._template_stop.wait()
        self.template = None
        # the shims it forked keep running
        template.stop()
        try:
            os.unlink(pid_file)
        except FileNotFoundError:
            pass

    def _template_for(self, binary: str) -> Template | None:
        """The template to fork ``binary``'s shims from: only dockyard's shim has one."""
        if os.path.basename(binary) != TEMPLATE_SHIM:
            return None
        return self._ensure_template()

    # -- the task list --------------------------------------------------------

    def get(self, ns: str, cid: str) -> Shim:
        with self._lock:
            shim = self._shims.get((ns, cid))
        if shim is None:
            raise NotFound(f"task {cid}: not found")
        return shim

    @contextlib.contextmanager
    def without_task(self, ns: str, cid: str) -> Iterator[None]:
        """Run the body (a container's delete) while container ``cid`` has no task and
        none can be created; FailedPrecondition if it has one. A ``create`` that
        waited meanwhile finds the container gone (it checks after registering)."""
        with self._lock:
            if (ns, cid) in self._shims or (ns, cid) in self._starting:
                raise FailedPrecondition(
                    f"container {cid!r}: cannot delete a container with a task; "
                    "delete the task first"
                )
            yield

    def tasks(self, ns: str | None = None) -> list[Shim]:
        with self._lock:
            return [s for (n, _), s in sorted(self._shims.items()) if ns is None or n == ns]

    def _remove(self, shim: Shim) -> bool:
        """Take ``shim`` off the list; False if it was not (or no longer) on it."""
        with self._lock:
            key = (shim.namespace, shim.id)
            if self._shims.get(key) is shim:
                del self._shims[key]
                return True
            return False

    # -- create --------------------------------------------------------------------

    def create(self, ns: str, cid: str, opts: CreateOptions) -> tuple[Shim, int]:
        """Start a shim for the task and have it create the task: (shim, pid)."""
        validate_identifier("task", cid)
        key = (ns, cid)
        with self._lock:
            if self._closing:
                raise FailedPrecondition(f"create task {cid}: the supervisor is stopping")
            if key in self._shims or key in self._starting:
                raise AlreadyExists(f"task {cid}: already exists")
            self._starting.add(key)
        try:
            # Registered: a container delete now waits or refuses. One that came
            # first, since the caller read the container, leaves nothing to run.
            self.sup.metadata.get_container(ns, cid)
            binary = resolve_binary(opts.runtime)
            shim = self._start(ns, cid, binary, opts)
            try:
                resp = shim.call(
                    "Create",
                    shim_pb2.CreateTaskRequest(
                        id=cid,
                        bundle=shim.bundle.path,
                        rootfs=opts.rootfs,
                        stdin=opts.stdin,
                        stdout=opts.stdout,
                        stderr=opts.stderr,
                        terminal=opts.terminal,
                        options=opts.options,
                    ),
                    shim_pb2.CreateTaskResponse,
                )
            except BaseException:
                self._discard(shim)
                raise
            with self._lock:
                # A shim that died since is being cleaned up without events:
                # it must not be listed now.
                if not shim.gone.is_set():
                    self._shims[key] = shim
            if shim.gone.is_set():
                shim.cleaned.wait(CLEANUP_TIMEOUT + SHUTDOWN_TIMEOUT)
                raise SystemFailure(f"create task {cid}: the shim exited")
            return shim, int(resp.pid)
        finally:
            with self._lock:
                self._starting.discard(key)

    def _start(self, ns: str, cid: str, binary: str, opts: CreateOptions) -> Shim:
        bundle = Bundle.create(self.state, self.root, ns, cid, opts.spec)
        shim = Shim(bundle, binary, opts.runtime)
        try:
            shim.log_fd = self._logs.open(os.path.join(bundle.path, "log"), f"{ns}/{cid}")
            payload = opts.options.SerializeToString() if opts.options is not None else b""
            debug = logging.getLogger("dockyard.supervisor").isEnabledFor(logging.DEBUG)
            address = self._start_from_template(bundle, binary, payload, debug)
            if not address:
                args = ["-id", cid, *(["-debug"] if debug else [])]
                out = self._run_binary(bundle, binary, [*args, "start"], payload, START_TIMEOUT)
                address = _shim_address(out.decode(errors="replace"))
            shim.client = Client(address, on_close=lambda: self._disconnected(shim))
            shim.connect(timeout=LOAD_TIMEOUT)
            with open(os.path.join(bundle.path, "shim-binary-path"), "w") as f:
                f.write(binary)
            return shim
        except BaseException:
            self._discard(shim)
            raise

    def _discard(self, shim: Shim) -> None:
        """Undo a create that failed half-way: the task, the shim, the bundle.

        A shim that died on the way (its connection closed) may have had the
        runtime make the container: it is cleaned up as any dead shim is, by
        the binary's delete, once, here or by its connection's close (then
        waited for), so that nothing is left when the create returns."""
        if not self._claim(shim):
            return
        died = shim.client is not None and shim.client.closed
        if shim.client is not None and not died:
            try:
                shim.call(
                    "Delete",
                    shim_pb2.DeleteRequest(id=shim.id),
                    shim_pb2.DeleteResponse,
                    timeout=CLEANUP_TIMEOUT,
                )
            except ConnectionClosed:
                died = True
            except Error as e:
                log.debug("delete half-created task %s: %s", shim.id, e)
            if not died:
                self._shutdown(shim)
        if died:
            shim.dead = True
            self._clean_up_dead(shim)
            return
        # the socket of a shim that died before it was reached
        address = _address(shim.bundle)
        shim.close()
        self._close_log(shim)
        self._remove_bundle(shim, address)

    def _remove_bundle(self, shim: Shim, address: str = "") -> None:
        """Remove the task's bundle, then the socket at ``address`` if nobody
        serves on it any more (a shim removes its own only when it shuts down
        in order). A bundle that will not go is logged and left for later."""
        try:
            shim.bundle.delete()
        except (OSError, DockyardError) as e:
            log.error("remove bundle of task %s/%s: %s", shim.namespace, shim.id, e)
        if address:
            _remove_dead_socket(address)

    def _start_from_template(self, bundle: Bundle, binary: str, options: bytes, debug: bool) -> str:
        """Our own shim's ``start`` bootstrap, done here: the same socket, ``address``
        file and flags, the shim forked by the template, without starting an
        interpreter to run the binary's ``start`` (about 15 ms of every task
        start). Empty when the template cannot: then the binary starts it."""
        template = self._template_for(binary)
        if template is None:
            return ""
        try:
            return template.start_shim(
                namespace=bundle.namespace,
                id=bundle.id,
                address=self.address,
                bundle=bundle.path,
                env=self._shim_env(template),
                options=options,
                debug=debug,
            )
        except TemplateError as e:
            log.warning("shim template for task %s: %s; running the shim's start", bundle.id, e)
            return ""

    def _shim_env(self, template: Template | None) -> dict[str, str]:
        """The environment of a shim and of its start and delete commands."""
        env = dict(os.environ)
        env["TTRPC_ADDRESS"] = self.ttrpc_address
        if template is not None:
            env.update(template.env())
        env.setdefault("GOMAXPROCS", "2")
        return env

    def _run_binary(
        self, bundle: Bundle, binary: str, args: list[str], stdin: bytes, timeout: float
    ) -> bytes:
        """Run the shim binary's start or delete command in the bundle; its stdout.

        Output goes to a file, not a pipe: the shim the start command leaves
        running must not be able to hold our read open.
        """
        argv = [
            binary,
            "-namespace",
            bundle.namespace,
            "-address",
            self.address,
            "-publish-binary",
            publish_binary(),
            *args,
        ]
        env = self._shim_env(self._template_for(binary))
        what = f"shim {os.path.basename(binary)} {args[-1]} for task {bundle.id}"
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=bundle.path,
                    env=env,
                    process_group=0,
                )
            except OSError as e:
                raise SystemFailure(f"{what}: {e.strerror or e}") from None
            # A blocking wait with a timer to end it: Popen.wait(timeout) polls
            # with sleeps of up to 50 ms, which every task start would pay.
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                if proc.poll() is None:
                    proc.kill()

            timer = threading.Timer(timeout, expire)
            timer.start()
            try:
                proc.communicate(stdin or None)
            finally:
                timer.cancel()
            if expired.is_set():
                raise SystemFailure(f"{what}: no answer in {timeout:.0f}s")
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if args[-1] == "start":
            # start prints its errors with its address, on either stream
            stdout, stderr = stdout + stderr, b""
        if proc.returncode != 0:
            detail = (stdout + stderr).decode(errors="replace").strip()
            raise SystemFailure(f"{what}: exit status {proc.returncode}: {detail}")
        if stderr.strip():
            log.warning("%s: %s", what, stderr.decode(errors="replace").strip())
        return stdout

    # -- delete --------------------------------------------------------------------

    def delete(self, ns: str, cid: str) -> Exit:
        """Delete the task in its shim, shut the shim down, remove the bundle."""
        shim = self.get(ns, cid)
        shim_error: Error | None = None
        resp = None
        try:
            resp = shim.call("Delete", shim_pb2.DeleteRequest(id=cid), shim_pb2.DeleteResponse)
        except ConnectionClosed:
            if self._closing:
                raise  # closed by us, stopping: the next start loads the shim
            # The shim died: containerd leaves its task to the cleanup after
            # a dead shim, which publishes the exit. That cleanup, once: run
            # here, or waited for if the connection's close started it.
            self._cleanup_after_dead_shim(shim)
            if not shim.dead:
                raise NotFound(f"task {cid}: deleted meanwhile") from None
            raise
        except Error as e:
            if e.code != codes.NOT_FOUND:
                raise
            shim_error = e
        if shim_error is None:
            # The shim published the task's exit and delete itself; the task
            # leaves the list now, not after its shim has shut down.
            shim.gone.set()
            self._remove(shim)
        address = _address(shim.bundle)
        self._shutdown(shim)
        # Again for a shim that did not answer its Delete (both are idempotent).
        shim.gone.set()
        shim.close()
        self._close_log(shim)
        self._remove_bundle(shim, address)
        self._remove(shim)
        if shim_error is not None or resp is None:
            raise shim_error or SystemFailure(f"delete task {cid}: no answer")
        return _exit(resp)

    def _shutdown(self, shim: Shim) -> None:
        """Ask the shim to exit, and give it the time to: its bundle (where it
        reads the address of the socket it removes) and the log FIFO it may
        still write to are removed only after it has gone. A shim that also
        serves other tasks (grouped: one sandbox) stays: it is not waited for."""
        pidfd = -1
        if shim.shim_pid and not self._serves_others(shim):
            try:
                pidfd = os.pidfd_open(shim.shim_pid)
            except OSError:
                pass  # gone already
        try:
            try:
                shim.call(
                    "Shutdown",
                    shim_pb2.ShutdownRequest(id=shim.id),
                    empty_pb2.Empty,
                    timeout=SHUTDOWN_TIMEOUT,
                )
            except ConnectionClosed:
                pass  # it went as asked, before answering
            except Error as e:
                log.error("shut down shim of task %s: %s", shim.id, e)
                return
            if pidfd >= 0 and not select.select([pidfd], [], [], SHUTDOWN_TIMEOUT)[0]:
                log.warning("shim of task %s: still running after its shutdown", shim.id)
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def _serves_others(self, shim: Shim) -> bool:
        """Whether the process serving ``shim``'s task serves another listed task."""
        with self._lock:
            return any(
                other is not shim and other.shim_pid == shim.shim_pid
                for other in self._shims.values()
            )

    def _close_log(self, shim: Shim) -> None:
        if shim.log_fd is not None:
            self._logs.close_fd(shim.log_fd)
            shim.log_fd = None

    # -- dead shims ----------------------------------------------------------------

    def _disconnected(self, shim: Shim) -> None:
        """The connection to a shim ended (runs in its reader thread)."""
        if shim.gone.is_set() or self._closing:
            return
        log.info("shim of task %s/%s disconnected", shim.namespace, shim.id)
        threading.Thread(
            target=self._cleanup_after_dead_shim, args=(shim,), name="shim-cleanup", daemon=True
        ).start()

    def _claim(self, shim: Shim, dead: bool = False) -> bool:
        """Mark ``shim`` gone, as the one to clean up after it; False if it was
        already (deleted, or its cleanup as a dead shim, which is waited for)."""
        with self._lock:
            claimed = not shim.gone.is_set()
            if claimed:
                shim.gone.set()
                shim.dead = dead
        if not claimed and shim.dead:
            shim.cleaned.wait(CLEANUP_TIMEOUT + SHUTDOWN_TIMEOUT)
        return claimed

    def _cleanup_after_dead_shim(self, shim: Shim) -> None:
        """containerd's cleanupAfterDeadShim: the binary's delete, then the exit events."""
        if self._claim(shim, dead=True):
            self._clean_up_dead(shim)

    def _clean_up_dead(self, shim: Shim) -> None:
        try:
            log.warning("cleaning up after shim of task %s/%s", shim.namespace, shim.id)
            exit_ = self._binary_delete(shim)
            shim.close()
            self._close_log(shim)
            if self._remove(shim):  # else never listed, or deleted meanwhile
                self._publish_exit(shim, exit_)
        finally:
            shim.cleaned.set()

    def _binary_delete(self, shim: Shim) -> Exit:
        """``<shim> -id <id> -bundle <bundle> delete``, then remove the bundle and
        the socket the dead shim left."""
        address = _address(shim.bundle)
        try:
            out = self._run_binary(
                shim.bundle,
                shim.binary,
                ["-id", shim.id, "-bundle", shim.bundle.path, "delete"],
                b"",
                CLEANUP_TIMEOUT,
            )
            resp = shim_pb2.DeleteResponse.FromString(out)
            exit_ = _exit(resp)
        except (DockyardError, DecodeError) as e:
            log.warning("clean up after shim of task %s/%s: %s", shim.namespace, shim.id, e)
            exit_ = Exit(0, DEAD_SHIM_STATUS, now_timestamp())
        self._remove_bundle(shim, address)
        return exit_

    def _publish_exit(self, shim: Shim, exit_: Exit) -> None:
        exited_at = exit_.exited_at if exit_.exited_at is not None else now_timestamp()
        events = self.sup.events
        events.publish(
            shim.namespace,
            topics.TASK_EXIT,
            task_events.TaskExit(
                container_id=shim.id,
                id=shim.id,
                pid=exit_.pid,
                exit_status=exit_.status,
                exited_at=exited_at,
            ),
        )
        events.publish(
            shim.namespace,
            topics.TASK_DELETE,
            task_events.TaskDelete(
                container_id=shim.id,
                pid=exit_.pid,
                exit_status=exit_.status,
                exited_at=exited_at,
            ),
        )

    # -- reload after a restart -------------------------------------------------------

    def load(self) -> None:
        """Reconnect to the shims of every namespace; clean up after those that are gone."""
        for ns in _subdirs(self.state):
            try:
                validate_identifier("namespace", ns)
            except InvalidArgument:
                continue
            for cid in _subdirs(os.path.join(self.state, ns)):
                try:
                    self._load_one(ns, cid)
                except Exception:
                    log.exception("load task %s/%s", ns, cid)
            self._cleanup_work_dirs(ns)

    def _load_one(self, ns: str, cid: str) -> None:
        bundle = Bundle(cid, ns, os.path.join(self.state, ns, cid))
        if not os.listdir(bundle.path):
            bundle.delete()
            return
        # The shim binary the task was started with, and the runtime name the
        # container asked for (what filters and listings show, as before the restart).
        try:
            started_with = bundle.read("shim-binary-path")
        except (FileNotFoundError, ValueError):  # ValueError: not text
            started_with = ""
        try:
            name = self.sup.metadata.get_container(ns, cid).runtime
        except NotFound:
            name = ""
        if not started_with and not name:
            log.warning("task %s/%s: no container record; removing its bundle", ns, cid)
            bundle.delete()
            return
        try:
            binary = resolve_binary(started_with or name)
        except DockyardError as e:
            log.error("task %s/%s: %s; removing its bundle", ns, cid, e)
            bundle.delete()
            return
        shim = Shim(bundle, binary, name or started_with)
        try:
            address = bundle.read("address").strip()
            shim.log_fd = self._logs.open(os.path.join(bundle.path, "log"), f"{ns}/{cid}")
            # A bounded connect: a hung shim's full backlog must not hold the
            # load, and the supervisor serves only once loaded.
            shim.client = Client(
                address, connect_timeout=LOAD_TIMEOUT, on_close=lambda: self._disconnected(shim)
            )
            shim.connect(timeout=LOAD_TIMEOUT)  # is anyone there? (containerd's check)
        except (OSError, ValueError, DockyardError) as e:  # ValueError: an address not text
            self._load_failed(shim, e)
            return
        try:
            shim.call("State", shim_pb2.StateRequest(id=cid), shim_pb2.StateResponse, LOAD_TIMEOUT)
        except Error as e:
            if e.code == codes.NOT_FOUND:
                # The supervisor stopped between starting the shim and its
                # task's create: nobody knows of the task, it only blocks the id.
                log.warning("task %s/%s: its shim has no task; removing it", ns, cid)
                self._discard(shim)
                return
            # otherwise a slow shim is still the task's (listed UNKNOWN meanwhile)
        with self._lock:
            if not shim.gone.is_set():  # else it hung up already, and is cleaned up
                self._shims[(ns, cid)] = shim
        log.info("task %s/%s: reconnected to its shim", ns, cid)

    def _load_failed(self, shim: Shim, e: BaseException) -> None:
        log.warning("task %s/%s: shim is gone (%s)", shim.namespace, shim.id, e)
        if not self._claim(shim, dead=True):
            return  # its connection's close found it dead first: cleaned up (waited for)
        try:
            shim.close()
            self._close_log(shim)
            exit_ = self._binary_delete(shim)
            # containerd publishes nothing here; whoever tracks the task must
            # still learn it ended while nobody was listening.
            self._publish_exit(shim, exit_)
        finally:
            shim.cleaned.set()

    def _cleanup_work_dirs(self, ns: str) -> None:
        # Work dirs of tasks not loaded (the state dir went with a reboot).
        for cid in _subdirs(os.path.join(self.root, ns)):
            with self._lock:
                loaded = (ns, cid) in self._shims
            if not loaded:
                shutil.rmtree(os.path.join(self.root, ns, cid), ignore_errors=True)

    # -- stopping ----------------------------------------------------------------------

    def close(self) -> None:
        """Let go of every shim (they and their containers keep running)."""
        with self._lock:
            self._closing = True
            shims = list(self._shims.values())
        for shim in shims:
            shim.close()
        self._logs.close()
        with self._template_lock:
            thread = self._template_thread
        self._template_stop.set()
        if thread is not None:
            thread.join(30)


def _stop_stale_template(pid_file: str, directory: str) -> None:
    """End the template a supervisor killed before could not stop (found by the pid
    it recorded, and only if that process still names our socket directory)."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return
    if pid <= 1:
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return
    if directory.encode() not in cmdline:
        return  # the pid was reused by something else
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    log.info("stopped the shim template %d a previous supervisor left running", pid)


def _address(bundle: Bundle) -> str:
    """The address a bundle's shim wrote, "" if none (or not text)."""
    try:
        return read_address(bundle.path).strip()
    except ValueError:
        return ""


def _subdirs(path: str) -> Iterator[str]:
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for e in entries:
        if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
            yield e.name


def _remove_dead_socket(address: str) -> None:
    """Remove a shim's socket file if nobody serves on it any more."""
    path = address.removeprefix("unix://")
    if not path.startswith("/"):
        return  # abstract: the kernel removes it with its last holder
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)  # a full backlog fails at once, not blocks: someone listens
    try:
        s.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    except OSError:
        pass
    finally:
        s.close()


def _shim_address(output: str) -> str:
    """The address a shim's start printed (plain, or newer shims' bootstrap JSON)."""
    text = output.strip()
    if text.startswith("{"):
        try:
            params: Any = json.loads(text)
        except ValueError:
            params = None
        if isinstance(params, dict) and isinstance(params.get("address"), str):
            if params.get("protocol", "ttrpc") != "ttrpc":
                raise SystemFailure(f"shim speaks {params.get('protocol')!r}, not ttrpc")
            return str(params["address"])
    if not text or "\n" in text:
        raise SystemFailure(f"shim start printed no address: {text[:200]!r}")
    return text
