"""Containers outlive the supervisor, and a restarted supervisor finds them again.

The supervisor is stopped (SIGTERM) or killed (SIGKILL) while tasks run:
their shims and processes go on. Started again on the same root and state,
it reconnects to each shim through its bundle's ``address`` file and lists
the tasks as they are; a task that exited meanwhile is STOPPED with its exit
status. A shim that died is cleaned up through its binary's ``delete``
(containerd's cleanupAfterDeadShim), whether it died while the supervisor
was down or under its eyes. The exit of one that died under its eyes is
published; one found dead at start-up is cleaned up before the supervisor
serves, so no subscriber can see its events: its task is simply gone and its
container takes a new one.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest

from dockyard.api.runtime.task.v2 import shim_pb2
from dockyard.api.services.tasks.v1 import tasks_pb2
from dockyard.api.types.task import task_pb2
from dockyard.ttrpc import Client
from tests.compat import host
from tests.supervisor.conftest import Supervisor
from tests.supervisor.taskutil import (
    EventLog,
    Runner,
    catches,
    shim_pids,
    wait_for_status,
)

# Exits with 3 on SIGTERM (as pid 1 it ignores signals it has no handler for).
EXIT_3_ON_TERM = ["sh", "-c", "trap 'exit 3' TERM; while true; do sleep 0.1; done"]


def task_pid(runner: Runner, cid: str) -> int:
    return int(runner.get(cid).process.pid)


def gone(pid: int) -> bool:
    return not host.alive(pid)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_tasks_outlive_the_supervisor(runner: Runner, sig: signal.Signals) -> None:
    sup = runner.sup
    # one from the image (its rootfs a mounted snapshot), one with its own root
    running, _ = runner.run("sleep", "1000", flags=("--detach",), check=True)
    exiting = runner.container(*EXIT_3_ON_TERM)
    runner.start(exiting, detach=True)
    pids = {cid: task_pid(runner, cid) for cid in (running, exiting)}
    shims = {cid: shim_pids(cid) for cid in (running, exiting)}

    sup.kill(sig)
    assert all(host.alive(pid) for pid in pids.values())
    assert all(len(s) == 1 and host.alive(s[0]) for s in shims.values()), shims
    # one container exits while nobody listens
    host.wait_for(lambda: catches(pids[exiting], signal.SIGTERM), 20, "the trap to be set")
    os.kill(pids[exiting], signal.SIGTERM)
    host.wait_for(lambda: gone(pids[exiting]), 20, "the container to exit")
    sup.start()

    assert sup.tasks() == {running: "RUNNING", exiting: "STOPPED"}
    assert task_pid(runner, running) == pids[running]
    # the reloaded tasks keep their runtime name (a filter on it finds them)
    metrics = runner.tasks_api().Metrics(
        tasks_pb2.MetricsRequest(filters=[f"runtime=={runner.runtime}"]), metadata=sup.md()
    )
    assert running in {m.id for m in metrics.metrics}
    # the reconnected shims take requests as before
    p = runner.exec(running, "after", "echo", "still here")
    assert (p.returncode, p.stdout) == (0, "still here\n"), p.stderr
    api, md = runner.tasks_api(), sup.md()
    deleted = api.Delete(tasks_pb2.DeleteTaskRequest(container_id=exiting), metadata=md)
    assert (deleted.pid, deleted.exit_status) == (pids[exiting], 3)
    assert not runner.bundle(exiting).exists()
    runner.ctr("task", "kill", "--signal", "SIGKILL", running)
    wait_for_status(runner, running, "STOPPED")
    runner.ctr("task", "delete", running)
    host.wait_for(
        lambda: not shim_pids(running) and not shim_pids(exiting), 10, "the shims to exit"
    )


def test_a_shim_that_died_while_the_supervisor_was_down_is_cleaned_up(shim: Runner) -> None:
    sup = shim.sup
    cid = shim.container("sleep", "1000")
    shim.start(cid, detach=True)
    pid = task_pid(shim, cid)
    socket_path = (shim.bundle(cid) / "address").read_text().removeprefix("unix://")
    (shim_pid,) = shim_pids(cid)

    sup.kill(signal.SIGKILL)
    os.kill(shim_pid, signal.SIGKILL)
    host.wait_for(lambda: gone(shim_pid), 10, "the shim to die")
    assert host.alive(pid)  # the container outlives its shim
    sup.start()

    # the shim's delete ended the container; the task, bundle and socket are gone
    assert cid not in sup.tasks()
    host.wait_for(lambda: gone(pid), 10, "the container to be ended")
    assert not shim.bundle(cid).exists()
    assert not shim.work_dir(cid).exists()
    assert not os.path.exists(socket_path)
    # the container record stays, and takes a new task
    shim.start(cid, detach=True)
    assert sup.tasks()[cid] == "RUNNING"


def test_a_shim_that_dies_is_cleaned_up_and_its_exit_published(shim: Runner) -> None:
    events = EventLog(shim.sup, 'topic~="^/tasks/"').start()
    try:
        cid = shim.container("sleep", "1000")
        shim.start(cid, detach=True)
        pid = task_pid(shim, cid)
        socket_path = (shim.bundle(cid) / "address").read_text().removeprefix("unix://")
        (shim_pid,) = shim_pids(cid)
        os.kill(shim_pid, signal.SIGKILL)

        exit_ = events.wait(cid, "/tasks/exit")
        deleted = events.wait(cid, "/tasks/delete")
        # the shim's delete reports the container it ended with SIGKILL
        assert (exit_.id, exit_.pid, exit_.exit_status) == (cid, pid, 137)
        assert (deleted.pid, deleted.exit_status) == (pid, 137)
        host.wait_for(lambda: cid not in shim.sup.tasks(), 10, "the task to go")
        assert gone(pid)
        assert not shim.bundle(cid).exists()
        assert not os.path.exists(socket_path)
        # every other call now says the task is not there
        got = shim.ctr("task", "kill", cid, check=False)
        assert got.returncode != 0 and "not found" in got.stderr
    finally:
        events.close()


def test_a_created_task_is_found_again(shim: Runner) -> None:
    sup = shim.sup
    cid = shim.container("sleep", "1000")
    api, md = shim.tasks_api(), sup.md()
    api.Create(tasks_pb2.CreateTaskRequest(container_id=cid), metadata=md)
    sup.kill(signal.SIGKILL)
    sup.start()
    assert shim.get(cid).process.status == task_pb2.CREATED
    api = shim.tasks_api()
    api.Start(tasks_pb2.StartRequest(container_id=cid), metadata=md)
    assert shim.get(cid).process.status == task_pb2.RUNNING
    api.Kill(tasks_pb2.KillRequest(container_id=cid, signal=9), metadata=md)
    assert (
        api.Wait(tasks_pb2.WaitRequest(container_id=cid), metadata=md, timeout=30).exit_status
        == 137
    )
    api.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=md)


def test_a_shim_without_its_task_is_shut_down_on_load(shim: Runner) -> None:
    """The supervisor died between a shim's start and its task's create: on
    restart the shim has no task; it is shut down and the id is free again."""
    sup = shim.sup
    cid = shim.container("sleep", "1000")
    shim.start(cid, detach=True)
    pid = task_pid(shim, cid)
    address = (shim.bundle(cid) / "address").read_text()
    sup.kill(signal.SIGKILL)
    # what the shim has left is a shim without a task
    os.kill(pid, signal.SIGKILL)
    host.wait_for(lambda: gone(pid), 10, "the container to exit")
    with Client(address) as client:
        client.call_typed(
            "containerd.task.v2.Task",
            "Delete",
            shim_pb2.DeleteRequest(id=cid),
            shim_pb2.DeleteResponse,
            timeout=10,
        )
    assert shim_pids(cid)
    sup.start()

    assert cid not in sup.tasks()
    assert not shim.bundle(cid).exists()
    host.wait_for(lambda: not shim_pids(cid), 10, "the shim to be shut down")
    shim.start(cid, detach=True)
    assert sup.tasks()[cid] == "RUNNING"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_the_shim_template_ends_with_the_supervisor(
    supervisor: Supervisor, sig: signal.Signals
) -> None:
    """The template dockyard's shims are forked from is the supervisor's: it starts
    with the first task of our shim, and must not outlive the supervisor, even a
    killed one (a restarted supervisor starts its own when it needs one)."""
    marker = f"{supervisor.state}/shim-template/"
    supervisor.restart()
    assert not host.pids_mentioning(marker), "a template before any task of our shim"
    supervisor.ctr("images", "import", str(supervisor.image.path))
    cid = "tpl" + uuid.uuid4().hex[:8]
    out = supervisor.ctr(
        "run",
        "--rm",
        "--runtime",
        "io.containerd.dockyard.v2",
        "--fifo-dir",
        str(supervisor.base / "fifo"),
        supervisor.image.ref,
        cid,
        "echo",
        "forked",
    ).stdout
    assert out == "forked\n"
    before = host.pids_mentioning(marker)
    assert before, "the shim of the first task started no template"
    supervisor.kill(sig)
    try:
        host.wait_for(
            lambda: not any(host.alive(p) for p in before), 10, "the shim template to end"
        )
    finally:
        supervisor.start()
