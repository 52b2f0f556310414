"""Many tasks at once: 50 containers started concurrently all run, and all go.

Each ``ctr run --detach`` runs in its own thread, so the supervisor makes
snapshots, records containers, starts shims and creates tasks for many at
once; then
every task is killed and deleted concurrently, and nothing is left: no task,
no bundle, no work dir, no shim.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from dockyard.api.services.tasks.v1 import tasks_pb2
from tests.compat import host
from tests.supervisor.conftest import Supervisor
from tests.supervisor.taskutil import RUNTIMES, Runner, ensure_image, runner_for, shim_pids

COUNT = 50


# The reference pair and ours all the way down; the mixed pairs are covered
# by the lifecycle tests.
@pytest.fixture(params=[RUNTIMES[0], RUNTIMES[2]])
def runner(supervisor: Supervisor, request: pytest.FixtureRequest) -> Iterator[Runner]:
    yield from runner_for(supervisor, request.param)


def test_fifty_concurrent_containers_run_and_are_cleaned_up(runner: Runner) -> None:
    ensure_image(runner.sup)
    ids = [runner.new_id() for _ in range(COUNT)]

    def start(cid: str) -> str:
        _, p = runner.run("sleep", "1000", cid=cid, flags=("--detach",))
        return "" if p.returncode == 0 else f"{cid}: {p.stderr.strip()}"

    def stop(cid: str) -> str:
        kill = runner.ctr("task", "kill", "--signal", "SIGKILL", cid, check=False)
        if kill.returncode != 0:
            return f"kill {cid}: {kill.stderr.strip()}"
        # ctr's delete waits for nothing: wait for the exit through the API
        runner.tasks_api().Wait(
            tasks_pb2.WaitRequest(container_id=cid),
            metadata=runner.sup.md(),
            timeout=60,
        )
        delete = runner.ctr("task", "delete", cid, check=False)
        if delete.returncode != 0:
            return f"delete {cid}: {delete.stderr.strip()}"
        # ctr's container rm takes the snapshot with it
        rm = runner.ctr("container", "rm", cid, check=False)
        return "" if rm.returncode == 0 else f"rm {cid}: {rm.stderr.strip()}"

    with ThreadPoolExecutor(COUNT) as pool:
        errors = [e for e in pool.map(start, ids) if e]
    assert not errors, errors
    tasks = runner.sup.tasks()
    assert {cid: tasks.get(cid) for cid in ids} == {cid: "RUNNING" for cid in ids}
    pids = {int(line.split()[1]) for line in runner.ctr("task", "ls").stdout.splitlines()[1:]}
    sockets = {(runner.bundle(cid) / "address").read_text().removeprefix("unix://") for cid in ids}
    assert len(pids) == COUNT and all(host.alive(pid) for pid in pids)

    with ThreadPoolExecutor(COUNT) as pool:
        errors = [e for e in pool.map(stop, ids) if e]
    assert not errors, errors
    runner.ids.clear()
    assert runner.sup.tasks() == {}
    assert not any(host.alive(pid) for pid in pids)
    assert runner.ctr("container", "ls", "--quiet").stdout.split() == []
    assert not any(cid in runner.ctr("snapshot", "ls").stdout for cid in ids)
    ns_state = runner.bundle(ids[0]).parent
    ns_work = runner.work_dir(ids[0]).parent
    assert sorted(p.name for p in ns_state.iterdir()) == []
    assert sorted(p.name for p in ns_work.iterdir()) == []
    host.wait_for(lambda: not any(shim_pids(cid) for cid in ids), 30, "every shim to exit")
    # each shim removed its socket as it went
    assert [path for path in sockets if os.path.exists(path)] == []
