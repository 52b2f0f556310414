"""The shim manager's guard between a container's delete and its task's create,
run in-process against a stand-in supervisor, so that each interleaving can
be forced: a delete refuses while a task is being created, and a create that
was waiting while a delete ran finds the container gone and starts nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf import empty_pb2

from dockyard.api.runtime.task.v2 import shim_pb2
from dockyard.errors import FailedPrecondition, NotFound
from dockyard.supervisor.shims import (
    TASK_SERVICE,
    Bundle,
    CreateOptions,
    Exit,
    Shim,
    ShimManager,
)
from dockyard.ttrpc import Error, Server, codes
from tests.compat import host


class Records:
    """The supervisor's container records, as far as the manager reads them."""

    def __init__(self) -> None:
        self.ids = {("ns", "c1")}
        self.runtime = ""

    def get_container(self, ns: str, cid: str) -> object:
        if (ns, cid) not in self.ids:
            raise NotFound(f"container {cid!r}: not found")
        return SimpleNamespace(id=cid, runtime=self.runtime)


class Events:
    """The supervisor's event exchange: what the manager published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, Any]] = []

    def publish(self, namespace: str, topic: str, event: Any) -> None:
        self.published.append((namespace, topic, event))


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[ShimManager, Records]]:
    records = Records()
    config = SimpleNamespace(
        state=str(tmp_path / "state"),
        root=str(tmp_path / "root"),
        address=str(tmp_path / "sup.sock"),
        ttrpc_address=str(tmp_path / "sup.sock.ttrpc"),
        shim_template=False,
    )
    sup = SimpleNamespace(config=config, metadata=records, events=Events())
    m = ShimManager(sup)  # type: ignore[arg-type]
    yield m, records
    if not m._closing:  # a test may have stopped it
        m.close()


def _no_start(*args: object) -> None:
    raise AssertionError("no shim may be started for a deleted container")


def test_delete_refuses_while_a_task_is_being_created(
    manager: tuple[ShimManager, Records],
) -> None:
    m, records = manager
    m._starting.add(("ns", "c1"))
    refused = pytest.raises(FailedPrecondition, match="cannot delete a container with a task")
    with refused, m.without_task("ns", "c1"):
        records.ids.discard(("ns", "c1"))
    assert ("ns", "c1") in records.ids, "the body did not run"


def test_a_create_that_waited_for_a_delete_finds_the_container_gone(
    manager: tuple[ShimManager, Records], monkeypatch: pytest.MonkeyPatch
) -> None:
    m, records = manager
    monkeypatch.setattr(m, "_start", _no_start)
    outcome: list[BaseException] = []
    waiting = threading.Event()

    def create() -> None:
        waiting.set()
        try:
            m.create("ns", "c1", CreateOptions(spec=b"{}"))
        except BaseException as e:
            outcome.append(e)

    with m.without_task("ns", "c1"):
        t = threading.Thread(target=create)
        t.start()
        waiting.wait(5)
        t.join(0.3)
        assert t.is_alive(), "create waits while the delete holds the guard"
        records.ids.discard(("ns", "c1"))
    t.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], NotFound), outcome
    assert ("ns", "c1") not in m._starting
    # and the container's id is free for a new record and task
    records.ids.add(("ns", "c1"))
    with m.without_task("ns", "c1"):
        pass


# --- a stand-in shim: the lifecycle's failures, each forced at its step --------------

DELETED = shim_pb2.DeleteResponse(pid=42, exit_status=7)


class FakeShim:
    """A shim's task API served in-process on a unix socket, with a binary (a script)
    whose ``start`` prints its address and whose ``delete`` records that it ran and
    reports ``DELETED``. ``handlers`` override a method; ``die()`` hangs up as a
    killed shim does, leaving its socket file."""

    def __init__(self, directory: Path) -> None:
        self.socket_path = str(directory / "shim.sock")
        self.address = "unix://" + self.socket_path
        self.binary = directory / "fake-shim"
        self.ran = directory / "ran"
        self.binary.write_text(
            f"#!{sys.executable}\n"
            "import sys\n"
            f"with open({str(self.ran)!r}, 'a') as f:\n"
            "    f.write(sys.argv[-1] + '\\n')\n"
            "if sys.argv[-1] == 'start':\n"
            f"    open('address', 'w').write({self.address!r})\n"
            f"    print({self.address!r})\n"
            "else:\n"
            f"    sys.stdout.buffer.write({DELETED.SerializeToString()!r})\n"
        )
        self.binary.chmod(0o755)
        self.calls: list[str] = []
        self.handlers: dict[str, Callable[[Any], Any]] = {}
        self.server = Server()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        listener.listen(16)
        methods: dict[str, tuple[Any, Callable[[Any, Any], Any]]] = {}
        for name, req, default in (
            ("Connect", shim_pb2.ConnectRequest, lambda r: shim_pb2.ConnectResponse(task_pid=42)),
            ("Create", shim_pb2.CreateTaskRequest, lambda r: shim_pb2.CreateTaskResponse(pid=42)),
            ("Delete", shim_pb2.DeleteRequest, lambda r: DELETED),
            ("State", shim_pb2.StateRequest, lambda r: shim_pb2.StateResponse(id=r.id, pid=42)),
            ("Kill", shim_pb2.KillRequest, lambda r: empty_pb2.Empty()),
            ("Shutdown", shim_pb2.ShutdownRequest, self._shutdown),
        ):
            methods[name] = (req, self._handler(name, default))
        self.server.register_typed(TASK_SERVICE, methods)
        self.server.serve_in_thread(listener)

    def _handler(self, name: str, default: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
        def handle(req: Any, ctx: Any) -> Any:
            self.calls.append(name)
            return self.handlers.get(name, default)(req)

        return handle

    def _shutdown(self, req: Any) -> Any:
        self.server.shutdown()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        return empty_pb2.Empty()

    def die(self) -> None:
        threading.Thread(target=self.server.close, daemon=True).start()

    def runs(self) -> list[str]:
        """The binary's actions so far (start, delete)."""
        return self.ran.read_text().split() if self.ran.exists() else []

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def fake_shim() -> Iterator[FakeShim]:
    # a short path: a unix socket's is at most 107 bytes
    directory = Path(tempfile.mkdtemp(prefix="dy-shim-"))
    shim = FakeShim(directory)
    yield shim
    shim.close()
    shutil.rmtree(directory, ignore_errors=True)


def _create(m: ShimManager, shim: FakeShim) -> tuple[Shim, int]:
    return m.create("ns", "c1", CreateOptions(spec=b"{}", runtime=str(shim.binary)))


def _leftovers(m: ShimManager, shim: FakeShim) -> list[str]:
    """What a task that is gone must not leave behind."""
    left = []
    if os.path.exists(os.path.join(m.state, "ns", "c1")):
        left.append("bundle")
    if os.path.exists(os.path.join(m.root, "ns", "c1")):
        left.append("work dir")
    if os.path.exists(shim.socket_path):
        left.append("socket")
    if m.tasks():
        left.append("record")
    if m._starting:
        left.append("starting")
    return left


def _published(m: ShimManager) -> list[tuple[str, str, Any]]:
    events: Any = m.sup.events
    published: list[tuple[str, str, Any]] = events.published
    return published


def _hold(m: ShimManager, name: str, gate: threading.Event, thread: str = "") -> None:
    """Make the manager's method ``name`` wait for ``gate`` before running (only in
    the thread named ``thread`` if given)."""
    original = getattr(m, name)

    def held(*args: Any) -> Any:
        if not thread or threading.current_thread().name == thread:
            gate.wait(10)
        return original(*args)

    setattr(m, name, held)


@pytest.mark.parametrize("first", ["create", "disconnect"])
@pytest.mark.parametrize("step", ["Connect", "Create"])
def test_a_shim_that_dies_before_answering_create_leaves_nothing(
    manager: tuple[ShimManager, Records], fake_shim: FakeShim, step: str, first: str
) -> None:
    """The runtime may have made the container before the shim died: the binary's
    delete cleans it up, whichever of the create's undo and the connection's close
    comes first; the create returns once all is gone, and nothing is published."""
    m, _ = manager
    gate = threading.Event()
    # the other one waits until the first has run
    _hold(m, "_discard" if first == "disconnect" else "_cleanup_after_dead_shim", gate)
    if first == "disconnect":
        cleanup = m._cleanup_after_dead_shim

        def cleanup_then_release(shim: Shim) -> None:
            gate.set()
            cleanup(shim)

        m._cleanup_after_dead_shim = cleanup_then_release  # type: ignore[method-assign]

    def die(req: Any) -> Any:
        fake_shim.die()
        time.sleep(5)  # never answers
        return shim_pb2.CreateTaskResponse()

    fake_shim.handlers[step] = die
    with pytest.raises(Error) as failed:
        _create(m, fake_shim)
    gate.set()
    assert failed.value.code == codes.UNAVAILABLE
    assert fake_shim.runs() == ["start", "delete"]
    assert _leftovers(m, fake_shim) == []
    time.sleep(0.3)  # a late cleanup would publish now
    assert _published(m) == []
    assert fake_shim.runs() == ["start", "delete"]


def _die(shim: FakeShim) -> Callable[[Any], Any]:
    def die(req: Any) -> Any:
        shim.die()
        time.sleep(5)  # never answers
        return empty_pb2.Empty()

    return die


@pytest.mark.parametrize("first", ["delete", "disconnect"])
def test_a_shim_that_dies_during_delete_is_cleaned_up_and_its_exit_published_once(
    manager: tuple[ShimManager, Records], fake_shim: FakeShim, first: str
) -> None:
    """containerd leaves a task whose shim's Delete found the connection closed to
    the cleanup after the dead shim, which publishes its exit: here too, whichever
    of the delete and the connection's close comes first, and the delete fails
    (UNAVAILABLE) once the task, its bundle and socket are gone."""
    m, _ = manager
    shim, _ = _create(m, fake_shim)
    gate = threading.Event()
    if first == "delete":
        # only the one the connection's close starts
        _hold(m, "_cleanup_after_dead_shim", gate, thread="shim-cleanup")
    else:
        cleanup, call = m._cleanup_after_dead_shim, shim.call

        def cleanup_then_release(shim: Shim) -> None:
            gate.set()
            cleanup(shim)

        def call_then_wait(*args: Any, **kw: Any) -> Any:
            try:
                return call(*args, **kw)
            finally:
                gate.wait(10)

        m._cleanup_after_dead_shim = cleanup_then_release  # type: ignore[method-assign]
        shim.call = call_then_wait  # type: ignore[method-assign]
    fake_shim.handlers["Delete"] = _die(fake_shim)
    with pytest.raises(Error) as failed:
        m.delete("ns", "c1")
    gate.set()
    assert failed.value.code == codes.UNAVAILABLE
    assert _leftovers(m, fake_shim) == []
    time.sleep(0.3)  # a late cleanup would publish now
    published = [(topic, e.pid, e.exit_status) for _, topic, e in _published(m)]
    assert published == [("/tasks/exit", 42, 7), ("/tasks/delete", 42, 7)]
    assert fake_shim.runs() == ["start", "delete"]


def test_two_deletes_at_once_one_returns_the_exit_the_other_not_found(
    manager: tuple[ShimManager, Records], fake_shim: FakeShim
) -> None:
    """The second Delete is still with the shim when the first shuts it down: the
    task was deleted, not lost with a dead shim (no cleanup, no events)."""
    m, _ = manager
    _create(m, fake_shim)
    both = threading.Barrier(2, timeout=10)
    first = threading.Lock()

    def delete(req: Any) -> Any:
        both.wait()
        if first.acquire(blocking=False):
            return DELETED
        host.wait_for(lambda: "Shutdown" in fake_shim.calls, 10, "the first delete's shutdown")
        fake_shim.die()  # the shim exits once shut down, this call unanswered
        time.sleep(5)
        return DELETED

    fake_shim.handlers["Delete"] = delete
    outcomes: list[object] = []

    def run() -> None:
        try:
            outcomes.append(m.delete("ns", "c1"))
        except Exception as e:
            outcomes.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    exits = [o for o in outcomes if isinstance(o, Exit)]
    errors = [o for o in outcomes if not isinstance(o, Exit)]
    assert [(e.pid, e.status) for e in exits] == [(42, 7)], outcomes
    assert len(errors) == 1 and isinstance(errors[0], NotFound), outcomes
    assert _leftovers(m, fake_shim) == []
    assert _published(m) == []
    assert fake_shim.runs() == ["start"]


def test_a_delete_cut_off_by_the_supervisor_stopping_leaves_the_task(
    manager: tuple[ShimManager, Records], fake_shim: FakeShim
) -> None:
    """Stopping closes the connections to the shims, which live on: a Delete in
    flight fails, and the task is not cleaned up as if its shim had died."""
    m, _ = manager
    _create(m, fake_shim)
    started = threading.Event()

    def delete(req: Any) -> Any:
        started.set()
        time.sleep(5)
        return DELETED

    fake_shim.handlers["Delete"] = delete
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            m.delete("ns", "c1")
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(10)
    m.close()
    t.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], Error), outcome
    assert outcome[0].code == codes.UNAVAILABLE
    assert fake_shim.runs() == ["start"]
    assert os.path.exists(os.path.join(m.state, "ns", "c1", "config.json"))
    assert _published(m) == []


def _bundle(m: ShimManager, shim: FakeShim, address: bytes | None) -> str:
    """A bundle as a supervisor killed in a create may leave it: ``address`` (if
    not None) as the bundle's address file."""
    path = Bundle.create(m.state, m.root, "ns", "c1", b"{}").path
    with open(os.path.join(path, "shim-binary-path"), "w") as f:
        f.write(str(shim.binary))
    if address is not None:
        with open(os.path.join(path, "address"), "wb") as f:
            f.write(address)
    return path


@pytest.mark.parametrize(
    "address",
    [
        None,
        b"",
        b"garbage",
        b"unix:///no/such/socket",
        b"tcp://1.2.3.4:5",
        b"\xff\xfe\n",
        b"x" * 200,
    ],
    ids=["missing", "empty", "text", "no-socket", "tcp", "not-utf8", "too-long"],
)
def test_a_bundle_whose_address_is_missing_or_garbage_is_cleaned_up_on_load(
    manager: tuple[ShimManager, Records], fake_shim: FakeShim, address: bytes | None
) -> None:
    m, _ = manager
    _bundle(m, fake_shim, address)
    m.load()
    assert fake_shim.runs() == ["delete"]
    assert _leftovers(m, fake_shim) == ["socket"]  # the stand-in shim's, still serving


def test_a_shim_that_never_accepts_does_not_block_the_load(
    manager: tuple[ShimManager, Records], fake_shim: FakeShim
) -> None:
    """A hung shim whose listen backlog is full: the load gives up on it in
    bounded time (the supervisor serves only once loaded), as containerd's
    dialer does."""
    m, _ = manager
    path = os.path.join(os.path.dirname(fake_shim.socket_path), "hung.sock")
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    queued: list[socket.socket] = []
    try:
        hung.bind(path)
        hung.listen(0)
        while True:  # fill its backlog
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            queued.append(s)
            try:
                s.connect(path)
            except BlockingIOError:
                break
        _bundle(m, fake_shim, ("unix://" + path).encode())
        t = threading.Thread(target=m.load, daemon=True)
        t.start()
        t.join(20)
        assert not t.is_alive(), "the load is stuck connecting to the hung shim"
        assert fake_shim.runs() == ["delete"]
        assert not os.path.exists(os.path.join(m.state, "ns", "c1"))
    finally:
        hung.close()  # the connect stuck on it, if any, fails now
        for s in queued:
            s.close()


def test_a_shim_that_dies_as_it_is_loaded_is_cleaned_up_once(
    manager: tuple[ShimManager, Records], fake_shim: FakeShim
) -> None:
    """Its connection's close and the load's failure both find it dead: one
    cleanup, one binary delete."""
    m, _ = manager
    _bundle(m, fake_shim, fake_shim.address.encode())
    fake_shim.handlers["Connect"] = _die(fake_shim)
    gate = threading.Event()
    _hold(m, "_load_failed", gate)
    cleanup = m._cleanup_after_dead_shim

    def cleanup_then_release(shim: Shim) -> None:
        gate.set()
        cleanup(shim)

    m._cleanup_after_dead_shim = cleanup_then_release  # type: ignore[method-assign]
    m.load()
    time.sleep(0.3)  # a late cleanup would run now
    assert fake_shim.runs() == ["delete"]
    assert _leftovers(m, fake_shim) == []
