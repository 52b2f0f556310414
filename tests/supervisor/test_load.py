"""Many tasks at once: 50 containers started concurrently all run, and all go.

Each ``ctr run --detach`` runs in its own thread, so the supervisor makes
snapshots, records containers, starts shims and creates tasks for many at
once; then
every task is killed and deleted concurrently, and nothing is left: no task,
no bundle, no work dir, no shim.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from dockyard.api.services.tasks.v1 import tasks_pb2
from tests.compat import host
from tests.supervisor.taskutil import Runner, ensure_image, shim_pids

COUNT = 50


def test_fifty_concurrent_containers_run_and_are_cleaned_up(shim: Runner) -> None:
    ensure_image(shim.sup)
    ids = [shim.new_id() for _ in range(COUNT)]

    def start(cid: str) -> str:
        _, p = shim.run("sleep", "1000", cid=cid, flags=("--detach",))
        return "" if p.returncode == 0 else f"{cid}: {p.stderr.strip()}"

    def stop(cid: str) -> str:
        kill = shim.ctr("task", "kill", "--signal", "SIGKILL", cid, check=False)
        if kill.returncode != 0:
            return f"kill {cid}: {kill.stderr.strip()}"
        # ctr's delete waits for nothing: wait for the exit through the API
        shim.tasks_api().Wait(
            tasks_pb2.WaitRequest(container_id=cid),
            metadata=shim.sup.md(),
            timeout=60,
        )
        delete = shim.ctr("task", "delete", cid, check=False)
        if delete.returncode != 0:
            return f"delete {cid}: {delete.stderr.strip()}"
        # ctr's container rm takes the snapshot with it
        rm = shim.ctr("container", "rm", cid, check=False)
        return "" if rm.returncode == 0 else f"rm {cid}: {rm.stderr.strip()}"

    with ThreadPoolExecutor(COUNT) as pool:
        errors = [e for e in pool.map(start, ids) if e]
    assert not errors, errors
    tasks = shim.sup.tasks()
    assert {cid: tasks.get(cid) for cid in ids} == {cid: "RUNNING" for cid in ids}
    pids = {int(line.split()[1]) for line in shim.ctr("task", "ls").stdout.splitlines()[1:]}
    sockets = {(shim.bundle(cid) / "address").read_text().removeprefix("unix://") for cid in ids}
    assert len(pids) == COUNT and all(host.alive(pid) for pid in pids)

    with ThreadPoolExecutor(COUNT) as pool:
        errors = [e for e in pool.map(stop, ids) if e]
    assert not errors, errors
    shim.ids.clear()
    assert shim.sup.tasks() == {}
    assert not any(host.alive(pid) for pid in pids)
    assert shim.ctr("container", "ls", "--quiet").stdout.split() == []
    assert not any(cid in shim.ctr("snapshot", "ls").stdout for cid in ids)
    ns_state = shim.bundle(ids[0]).parent
    ns_work = shim.work_dir(ids[0]).parent
    assert sorted(p.name for p in ns_state.iterdir()) == []
    assert sorted(p.name for p in ns_work.iterdir()) == []
    host.wait_for(lambda: not any(shim_pids(cid) for cid in ids), 30, "every shim to exit")
    # each shim removed its socket as it went
    assert [path for path in sockets if os.path.exists(path)] == []
