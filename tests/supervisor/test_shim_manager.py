"""The shim manager's guard between a container's delete and its task's create,
run in-process against a stand-in supervisor, so that each interleaving can
be forced: a delete refuses while a task is being created, and a create that
was waiting while a delete ran finds the container gone and starts nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from dockyard.errors import FailedPrecondition, NotFound
from dockyard.supervisor.shims import CreateOptions, ShimManager


class Records:
    """The supervisor's container records, as far as the manager reads them."""

    def __init__(self) -> None:
        self.ids = {("ns", "c1")}

    def get_container(self, ns: str, cid: str) -> object:
        if (ns, cid) not in self.ids:
            raise NotFound(f"container {cid!r}: not found")
        return object()


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
    m = ShimManager(SimpleNamespace(config=config, metadata=records))  # type: ignore[arg-type]
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
