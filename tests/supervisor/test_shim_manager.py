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
from dockyard.supervisor.shims import TASK_SERVICE, CreateOptions, Shim, ShimManager
from dockyard.ttrpc import Error, Server, codes


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


def _hold(m: ShimManager, name: str, gate: threading.Event) -> None:
    """Make the manager's method ``name`` wait for ``gate`` before running."""
    original = getattr(m, name)

    def held(*args: Any) -> Any:
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
