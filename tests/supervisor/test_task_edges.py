"""Edges of the tasks and containers services: an exec's DeleteProcess, and
the delete of a container that still has a task.

Each test runs with containerd's runc shim and with ours: DeleteProcess goes
to the shim as it is, so what it answers is the shim's; refusing the init
(an empty exec id) and a container delete while there is a task is the
supervisor's own doing, and must hold whatever the shim.
"""

from __future__ import annotations

import grpc
import pytest

from dockyard.api import typeurl
from dockyard.api.events import container_pb2 as container_events
from dockyard.api.events import task_pb2 as task_events
from dockyard.api.runc.options import oci_pb2
from dockyard.api.services.containers.v1 import containers_pb2
from dockyard.api.services.events.v1 import events_pb2, events_pb2_grpc
from dockyard.api.services.tasks.v1 import tasks_pb2
from dockyard.api.types.task import task_pb2
from tests.compat import host
from tests.supervisor.taskutil import (
    DOCKYARD_SHIM,
    EventLog,
    Runner,
    grpc_code,
    shim_pids,
)

NOT_FOUND = grpc.StatusCode.NOT_FOUND


def _exec(shim: Runner, cid: str, exec_id: str, *args: str) -> int:
    """Exec ``args`` in the task (no stdio) and start it: the process's pid."""
    api, md = shim.tasks_api(), shim.sup.md()
    process = typeurl.pack_json(
        typeurl.PROCESS, {"args": list(args), "cwd": "/", "env": ["PATH=/bin"]}
    )
    api.Exec(
        tasks_pb2.ExecProcessRequest(container_id=cid, exec_id=exec_id, spec=process),
        metadata=md,
        timeout=30,
    )
    started = api.Start(tasks_pb2.StartRequest(container_id=cid, exec_id=exec_id), metadata=md)
    assert started.pid > 0
    return int(started.pid)


def _running_task(shim: Runner, *args: str) -> tuple[str, int]:
    """A started task running ``args``: (its id, its init's pid)."""
    api, md = shim.tasks_api(), shim.sup.md()
    cid = shim.container(*args)
    api.Create(tasks_pb2.CreateTaskRequest(container_id=cid), metadata=md, timeout=30)
    started = api.Start(tasks_pb2.StartRequest(container_id=cid), metadata=md, timeout=30)
    return cid, int(started.pid)


def _pids(shim: Runner, cid: str) -> dict[int, str]:
    """The task's processes from ListPids: pid -> exec id ("" for the init and its children)."""
    listed = shim.tasks_api().ListPids(
        tasks_pb2.ListPidsRequest(container_id=cid), metadata=shim.sup.md(), timeout=30
    )
    out = {}
    for p in listed.processes:
        exec_id = ""
        if p.HasField("info"):
            exec_id = typeurl.unpack_to(p.info, oci_pb2.ProcessDetails).exec_id
        out[p.pid] = exec_id
    return out


def _refused_running(shim: Runner) -> grpc.StatusCode:
    # containerd's runc shim refuses with an untyped error ("cannot delete a running process")
    return (
        grpc.StatusCode.FAILED_PRECONDITION
        if shim.runtime == DOCKYARD_SHIM
        else grpc.StatusCode.UNKNOWN
    )


# --- DeleteProcess ------------------------------------------------------------------


def test_delete_process_of_an_exited_exec_returns_its_exit(shim: Runner) -> None:
    api, md = shim.tasks_api(), shim.sup.md()
    cid, init_pid = _running_task(shim, "sleep", "1000")

    pid = _exec(shim, cid, "e1", "sh", "-c", "exit 3")
    waited = api.Wait(
        tasks_pb2.WaitRequest(container_id=cid, exec_id="e1"), metadata=md, timeout=30
    )
    assert waited.exit_status == 3
    got = api.Get(tasks_pb2.GetRequest(container_id=cid, exec_id="e1"), metadata=md).process
    assert (got.pid, got.status, got.exit_status) == (pid, task_pb2.STOPPED, 3)

    deleted = api.DeleteProcess(
        tasks_pb2.DeleteProcessRequest(container_id=cid, exec_id="e1"), metadata=md, timeout=30
    )
    assert (deleted.id, deleted.pid, deleted.exit_status) == ("e1", pid, 3)
    assert deleted.exited_at == waited.exited_at

    # the process is gone from the task; the init runs on
    request = tasks_pb2.DeleteProcessRequest(container_id=cid, exec_id="e1")
    assert grpc_code(lambda: api.DeleteProcess(request, metadata=md, timeout=30)) == NOT_FOUND
    get_exec = tasks_pb2.GetRequest(container_id=cid, exec_id="e1")
    assert grpc_code(lambda: api.Get(get_exec, metadata=md, timeout=30)) == NOT_FOUND
    assert _pids(shim, cid) == {init_pid: ""}
    init = shim.get(cid).process
    assert (init.pid, init.status) == (init_pid, task_pb2.RUNNING)

    # its id is free again: a new exec may take it
    again = _exec(shim, cid, "e1", "sh", "-c", "exit 4")
    assert (
        api.Wait(
            tasks_pb2.WaitRequest(container_id=cid, exec_id="e1"), metadata=md, timeout=30
        ).exit_status
        == 4
    )
    deleted = api.DeleteProcess(
        tasks_pb2.DeleteProcessRequest(container_id=cid, exec_id="e1"), metadata=md, timeout=30
    )
    assert (deleted.pid, deleted.exit_status) == (again, 4)


def test_delete_process_of_a_running_exec_is_refused(shim: Runner) -> None:
    api, md = shim.tasks_api(), shim.sup.md()
    cid, init_pid = _running_task(shim, "sleep", "1000")
    pid = _exec(shim, cid, "bg", "sleep", "999")
    assert _pids(shim, cid) == {init_pid: "", pid: "bg"}

    request = tasks_pb2.DeleteProcessRequest(container_id=cid, exec_id="bg")
    assert grpc_code(lambda: api.DeleteProcess(request, metadata=md, timeout=30)) == (
        _refused_running(shim)
    )
    # refused: the process runs on, still known to the task
    assert host.alive(pid)
    assert _pids(shim, cid) == {init_pid: "", pid: "bg"}
    got = api.Get(tasks_pb2.GetRequest(container_id=cid, exec_id="bg"), metadata=md).process
    assert (got.pid, got.status) == (pid, task_pb2.RUNNING)

    # once it has exited it is deleted, with the status its signal gave it
    api.Kill(tasks_pb2.KillRequest(container_id=cid, exec_id="bg", signal=9), metadata=md)
    waited = api.Wait(
        tasks_pb2.WaitRequest(container_id=cid, exec_id="bg"), metadata=md, timeout=30
    )
    assert waited.exit_status == 137
    deleted = api.DeleteProcess(request, metadata=md, timeout=30)
    assert (deleted.id, deleted.pid, deleted.exit_status) == ("bg", pid, 137)
    assert not host.alive(pid)
    assert _pids(shim, cid) == {init_pid: ""}
    assert grpc_code(lambda: api.DeleteProcess(request, metadata=md, timeout=30)) == NOT_FOUND


def test_delete_process_of_an_exec_never_started(shim: Runner) -> None:
    """An exec created but not started has nothing to refuse for: it is deleted
    with no pid and a zero status, and is gone from the task."""
    api, md = shim.tasks_api(), shim.sup.md()
    cid, init_pid = _running_task(shim, "sleep", "1000")
    process = typeurl.pack_json(
        typeurl.PROCESS, {"args": ["sleep", "999"], "cwd": "/", "env": ["PATH=/bin"]}
    )
    api.Exec(
        tasks_pb2.ExecProcessRequest(container_id=cid, exec_id="idle", spec=process),
        metadata=md,
        timeout=30,
    )
    get = tasks_pb2.GetRequest(container_id=cid, exec_id="idle")
    assert api.Get(get, metadata=md, timeout=30).process.status == task_pb2.CREATED

    request = tasks_pb2.DeleteProcessRequest(container_id=cid, exec_id="idle")
    deleted = api.DeleteProcess(request, metadata=md, timeout=30)
    assert (deleted.id, deleted.pid, deleted.exit_status) == ("idle", 0, 0)
    assert grpc_code(lambda: api.Get(get, metadata=md, timeout=30)) == NOT_FOUND
    start = tasks_pb2.StartRequest(container_id=cid, exec_id="idle")
    assert grpc_code(lambda: api.Start(start, metadata=md, timeout=30)) == NOT_FOUND
    assert _pids(shim, cid) == {init_pid: ""}


def test_delete_process_of_an_unknown_process_is_not_found(shim: Runner) -> None:
    api, md = shim.tasks_api(), shim.sup.md()

    def code(cid: str, exec_id: str) -> grpc.StatusCode:
        request = tasks_pb2.DeleteProcessRequest(container_id=cid, exec_id=exec_id)
        return grpc_code(lambda: api.DeleteProcess(request, metadata=md, timeout=30))

    # no such container; a container without a task
    assert code("nosuch", "e1") == NOT_FOUND
    idle = shim.container("sleep", "1000")
    assert code(idle, "e1") == NOT_FOUND

    cid, _ = _running_task(shim, "sleep", "1000")
    assert code(cid, "nosuch") == NOT_FOUND
    # an exec of another task is not this task's
    _exec(shim, cid, "mine", "sleep", "999")
    other, _ = _running_task(shim, "sleep", "1000")
    assert code(other, "mine") == NOT_FOUND
    got = api.Get(tasks_pb2.GetRequest(container_id=cid, exec_id="mine"), metadata=md).process
    assert got.status == task_pb2.RUNNING
    assert shim.get(cid).process.status == task_pb2.RUNNING


def test_delete_process_of_the_init_is_refused(shim: Runner) -> None:
    """An empty exec id names the task's init, which only the task's Delete
    removes (with its shim and bundle): DeleteProcess refuses it before asking
    the shim, running or stopped, and the task is left whole."""
    api, md = shim.tasks_api(), shim.sup.md()
    cid, init_pid = _running_task(shim, "sleep", "1000")
    request = tasks_pb2.DeleteProcessRequest(container_id=cid, exec_id="")

    def refused() -> grpc.StatusCode:
        return grpc_code(lambda: api.DeleteProcess(request, metadata=md, timeout=30))

    assert refused() == grpc.StatusCode.INVALID_ARGUMENT
    init = shim.get(cid).process
    assert (init.pid, init.status) == (init_pid, task_pb2.RUNNING)
    assert host.alive(init_pid)

    api.Kill(tasks_pb2.KillRequest(container_id=cid, signal=9), metadata=md)
    waited = api.Wait(tasks_pb2.WaitRequest(container_id=cid), metadata=md, timeout=30)
    assert waited.exit_status == 137
    # stopped: a shim asked would delete the init now, behind the task's back
    assert refused() == grpc.StatusCode.INVALID_ARGUMENT
    init = shim.get(cid).process
    assert (init.pid, init.status, init.exit_status) == (init_pid, task_pb2.STOPPED, 137)
    assert (shim.bundle(cid) / "config.json").exists()

    deleted = api.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=md, timeout=30)
    assert (deleted.pid, deleted.exit_status) == (init_pid, 137)
    # the exit time the shim gave, to the nanosecond, as Wait had it
    assert deleted.exited_at == waited.exited_at
    assert not shim.bundle(cid).exists()
    host.wait_for(lambda: not shim_pids(cid), 10, f"the shim of {cid} to exit")
    # no task any more: NOT_FOUND before the exec id is looked at
    assert refused() == NOT_FOUND


# --- a container's delete while it has a task ------------------------------------------


def _container_deletes(events: EventLog, cid: str) -> int:
    """How many /containers/delete events of ``cid`` the log has."""
    n = 0
    for env in list(events.envelopes):
        if env.topic == "/containers/delete":
            msg = typeurl.unpack(env.event)
            assert isinstance(msg, container_events.ContainerDelete)
            n += msg.id == cid
    return n


def test_a_container_with_a_task_is_not_deleted(shim: Runner) -> None:
    api, md = shim.tasks_api(), shim.sup.md()
    containers = shim.containers()
    cid = shim.container("sleep", "1000")
    before = containers.Get(containers_pb2.GetContainerRequest(id=cid), metadata=md).container
    delete = containers_pb2.DeleteContainerRequest(id=cid)
    init_pid = 0

    def refused(state: str) -> None:
        with pytest.raises(grpc.RpcError) as e:
            containers.Delete(delete, metadata=md, timeout=30)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, state
        assert "task" in (e.value.details() or ""), state
        # the record is as it was, and the task still has it
        got = containers.Get(containers_pb2.GetContainerRequest(id=cid), metadata=md).container
        assert got == before, state
        assert shim.get(cid).process.pid == init_pid, state

    events = EventLog(shim.sup, 'topic=="/containers/delete"').start()
    try:
        created = api.Create(tasks_pb2.CreateTaskRequest(container_id=cid), metadata=md, timeout=30)
        init_pid = created.pid
        refused("created")
        api.Start(tasks_pb2.StartRequest(container_id=cid), metadata=md, timeout=30)
        refused("running")
        assert shim.get(cid).process.status == task_pb2.RUNNING
        api.Kill(tasks_pb2.KillRequest(container_id=cid, signal=9), metadata=md)
        api.Wait(tasks_pb2.WaitRequest(container_id=cid), metadata=md, timeout=30)
        # an exited task not yet deleted is still a task
        refused("stopped")
        assert shim.get(cid).process.status == task_pb2.STOPPED

        deleted = api.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=md, timeout=30)
        assert (deleted.pid, deleted.exit_status) == (init_pid, 137)
        containers.Delete(delete, metadata=md, timeout=30)
        get = containers_pb2.GetContainerRequest(id=cid)
        assert grpc_code(lambda: containers.Get(get, metadata=md, timeout=30)) == NOT_FOUND
        assert grpc_code(lambda: containers.Delete(delete, metadata=md, timeout=30)) == NOT_FOUND

        # one delete event, of the delete that was done: a marker published
        # after it comes back after every event published before it
        marker = "done-" + cid
        with shim.sup.channel() as channel:
            events_pb2_grpc.EventsStub(channel).Publish(
                events_pb2.PublishRequest(
                    topic="/dockyard-test/ready",
                    event=typeurl.pack(task_events.TaskStart(container_id=marker)),
                ),
                metadata=md,
                timeout=30,
            )
        events.wait(marker, "/dockyard-test/ready")
        assert _container_deletes(events, cid) == 1
    finally:
        events.close()
