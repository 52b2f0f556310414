"""The tasks service with real shims, driven by the real ``ctr``.

Each lifecycle test runs with containerd's own runc shim and two OCI
runtimes behind it (runc, and dockyard-runtime as its ``BinaryName``): the
supervisor's side of the shim contract must work with the reference shim.
The bad-input tests check the status codes containerd answers with, and that
the daemon keeps serving after each.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import termios
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, empty_pb2

from dockyard.api import typeurl
from dockyard.api.events import task_pb2 as task_events
from dockyard.api.runc.options import oci_pb2
from dockyard.api.services.containers.v1 import containers_pb2
from dockyard.api.services.tasks.v1 import tasks_pb2
from dockyard.api.services.ttrpc.events.v1 import events_pb2 as ttrpc_events_pb2
from dockyard.api.types.task import task_pb2
from dockyard.errors import Unsupported
from dockyard.supervisor.config import Config, RuntimeConfig
from dockyard.supervisor.metadata import Container, Typed
from dockyard.supervisor.services.tasks import TasksService
from dockyard.ttrpc import Client, Error
from tests.compat import host
from tests.supervisor.conftest import Supervisor
from tests.supervisor.taskutil import (
    DOCKYARD_SHIM,
    RUNC_SHIM,
    EventLog,
    Runner,
    catches,
    ensure_image,
    grpc_code,
    shim_pids,
    wait_for_status,
)


def test_run_rm_prints_the_output_and_passes_the_exit_code(runner: Runner) -> None:
    cid, p = runner.run("sh", "-c", "echo hi; echo oops >&2; exit 3", flags=("--rm",))
    assert p.stdout == "hi\n", p.stderr
    assert "oops" in p.stderr
    assert p.returncode == 3
    # --rm: the task, the container and its snapshot are gone, and so is the shim
    assert cid not in runner.sup.tasks()
    assert cid not in runner.ctr("container", "ls", "--quiet").stdout.split()
    assert cid not in runner.ctr("snapshot", "ls").stdout
    assert not runner.bundle(cid).exists()
    assert not runner.work_dir(cid).exists()
    host.wait_for(lambda: not shim_pids(cid), 10, f"the shim of {cid} to exit")


def test_start_of_a_container_with_its_own_rootfs(runner: Runner) -> None:
    """A container whose spec names its root (no snapshot): nothing to mount."""
    cid = runner.container("sh", "-c", "echo hi; exit 3")
    p = runner.start(cid, check=False)
    assert (p.returncode, p.stdout) == (3, "hi\n"), p.stderr
    # ctr deleted the task once it exited: bundle, work dir and shim are gone
    assert cid not in runner.sup.tasks()
    assert not runner.bundle(cid).exists()
    assert not runner.work_dir(cid).exists()
    host.wait_for(lambda: not shim_pids(cid), 10, f"the shim of {cid} to exit")
    runner.ctr("container", "rm", cid)
    assert cid not in runner.ctr("container", "ls", "--quiet").stdout.split()


def test_detached_task_lifecycle(runner: Runner) -> None:
    cid, p = runner.run("sleep", "1000", flags=("--detach",), check=True)
    listed = runner.ctr("task", "ls").stdout.splitlines()
    row = next(line.split() for line in listed if line.split()[0] == cid)
    pid = int(row[1])
    assert row[2] == "RUNNING"
    assert host.alive(pid)
    assert len(shim_pids(cid)) == 1
    # the shim's own log (the bundle's log FIFO) is copied to the supervisor's
    label = f"{runner.sup.namespace}/{cid}: "
    host.wait_for(lambda: label in runner.sup.log.read_text(), 10, "the shim's log lines")
    assert (runner.bundle(cid) / "config.json").exists()
    assert os.readlink(runner.bundle(cid) / "work") == str(runner.work_dir(cid))
    # the shim mounted the snapshot on the bundle's rootfs
    assert (runner.bundle(cid) / "rootfs" / "bin" / "busybox").exists()
    assert str(pid) in runner.ctr("task", "ps", cid).stdout.split()

    p = runner.exec(cid, "e1", "echo", "from exec")
    assert (p.returncode, p.stdout) == (0, "from exec\n"), p.stderr
    assert runner.exec(cid, "e2", "sh", "-c", "exit 7").returncode == 7

    runner.ctr("task", "pause", cid)
    assert runner.sup.tasks()[cid] == "PAUSED"
    runner.ctr("task", "resume", cid)
    assert runner.sup.tasks()[cid] == "RUNNING"

    metrics = runner.ctr("task", "metrics", cid).stdout
    assert cid in metrics and "memory" in metrics

    runner.ctr("task", "kill", "--signal", "SIGKILL", cid)
    wait_for_status(runner, cid, "STOPPED")
    assert not host.alive(pid)
    resp = runner.tasks_api().Delete(
        tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=runner.sup.md()
    )
    assert (resp.pid, resp.exit_status) == (pid, 137)
    assert cid not in runner.sup.tasks()
    assert not runner.bundle(cid).exists()
    assert not runner.work_dir(cid).exists()
    assert cid in runner.ctr("container", "ls", "--quiet").stdout.split()
    runner.ctr("container", "rm", cid)
    assert cid not in runner.ctr("container", "ls", "--quiet").stdout.split()
    host.wait_for(lambda: not shim_pids(cid), 10, f"the shim of {cid} to exit")


def test_containers_of_one_sandbox_share_a_shim(shim: Runner) -> None:
    """containerd's shim grouping: a container whose spec names a sandbox
    (io.kubernetes.cri.sandbox-id) is served by the shim already serving that
    sandbox, not a new one; the shim outlives the deletion of the task that
    started it and ends with the last task it serves."""
    group = {"io.kubernetes.cri.sandbox-id": "pod-" + shim.new_id()}
    first = shim.container("sleep", "1000", annotations=group)
    second = shim.container("sleep", "1000", annotations=group)
    shim.start(first, detach=True)
    shim.start(second, detach=True)
    assert shim.sup.tasks()[first] == shim.sup.tasks()[second] == "RUNNING"
    [serving] = shim_pids(first)  # started with the first task's id
    assert shim_pids(second) == []
    assert host.alive(serving)

    shim.ctr("task", "kill", "--signal", "SIGKILL", first)
    wait_for_status(shim, first, "STOPPED")
    shim.ctr("task", "delete", first)
    assert first not in shim.sup.tasks()
    assert host.alive(serving)
    # the supervisor knew the shim stays for the other task: it did not wait for it to end
    waited = [ln for ln in shim.sup.log.read_text().splitlines() if f"task {first}: still" in ln]
    assert not waited, waited
    assert shim.sup.tasks()[second] == "RUNNING"
    p = shim.exec(second, "e1", "echo", "still served")
    assert (p.returncode, p.stdout) == (0, "still served\n"), p.stderr

    shim.ctr("task", "kill", "--signal", "SIGKILL", second)
    wait_for_status(shim, second, "STOPPED")
    shim.ctr("task", "delete", second)
    host.wait_for(lambda: not host.alive(serving), 10, "the grouped shim to exit")


def test_kill_all_ends_the_execs_too(runner: Runner) -> None:
    cid = runner.container("sleep", "1000")
    runner.start(cid, detach=True)
    runner.ctr(
        "task",
        "exec",
        "--detach",
        "--fifo-dir",
        str(runner.fifo_dir),
        "--exec-id",
        "bg",
        cid,
        "sleep",
        "999",
    )
    pids = runner.tasks_api().ListPids(
        tasks_pb2.ListPidsRequest(container_id=cid), metadata=runner.sup.md()
    )
    assert len(pids.processes) == 2
    runner.ctr("task", "kill", "--all", "--signal", "SIGKILL", cid)
    wait_for_status(runner, cid, "STOPPED")
    host.wait_for(
        lambda: not any(host.alive(p.pid) for p in pids.processes), 10, "the processes to end"
    )
    runner.ctr("task", "delete", cid)


def test_wait_returns_the_exit_status(runc: Runner) -> None:
    cid = runc.container("sh", "-c", "trap 'exit 5' TERM; while true; do sleep 0.1; done")
    api, md = runc.tasks_api(), runc.sup.md()
    api.Create(tasks_pb2.CreateTaskRequest(container_id=cid), metadata=md)
    # Wait is unary: it answers when the process exits.
    waiting = api.Wait.future(tasks_pb2.WaitRequest(container_id=cid), metadata=md)
    started = api.Start(tasks_pb2.StartRequest(container_id=cid), metadata=md)
    host.wait_for(lambda: catches(started.pid, signal.SIGTERM), 20, "the trap to be set")
    assert not waiting.done()
    api.Kill(tasks_pb2.KillRequest(container_id=cid, signal=15), metadata=md)
    assert waiting.result(timeout=30).exit_status == 5
    # a second waiter gets the same answer at once
    again = api.Wait(tasks_pb2.WaitRequest(container_id=cid), metadata=md, timeout=30)
    assert again.exit_status == 5
    got = api.Get(tasks_pb2.GetRequest(container_id=cid), metadata=md).process
    assert (got.status, got.exit_status) == (task_pb2.STOPPED, 5)
    api.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=md)


def test_a_cancelled_wait_leaves_the_others(runc: Runner) -> None:
    cid = runc.container("sleep", "1000")
    api, md = runc.tasks_api(), runc.sup.md()
    api.Create(tasks_pb2.CreateTaskRequest(container_id=cid), metadata=md)
    api.Start(tasks_pb2.StartRequest(container_id=cid), metadata=md)
    first = api.Wait.future(tasks_pb2.WaitRequest(container_id=cid), metadata=md)
    second = api.Wait.future(tasks_pb2.WaitRequest(container_id=cid), metadata=md)
    first.cancel()
    api.Kill(tasks_pb2.KillRequest(container_id=cid, signal=9), metadata=md)
    assert second.result(timeout=30).exit_status == 137
    assert first.cancelled()
    api.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=md)


def test_the_shims_events_reach_subscribers(shim: Runner) -> None:
    """Task events travel shim -> ttrpc Forward -> the exchange -> a gRPC subscriber."""
    ttrpc_socket = os.stat(shim.sup.address + ".ttrpc")
    assert ttrpc_socket.st_mode & 0o777 == 0o660
    events = EventLog(shim.sup, 'topic~="^/tasks/"').start()
    try:
        cid = shim.container("sh", "-c", "exit 4")
        assert shim.start(cid, check=False).returncode == 4
        events.wait(cid, "/tasks/delete")
        assert events.topics(cid) == [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
        ]
        exit_ = events.event(cid, "/tasks/exit")
        assert (exit_.id, exit_.exit_status) == (cid, 4)
        assert exit_.pid > 0
    finally:
        events.close()


def test_forwarded_envelopes_are_published_as_they_came(supervisor: Supervisor) -> None:
    """The ttrpc Forward endpoint, called as a shim calls it."""
    events = EventLog(supervisor, 'topic=="/tasks/oom"').start()
    envelope = ttrpc_events_pb2.Envelope(
        namespace=supervisor.namespace,
        topic="/tasks/oom",
        event=typeurl.pack(task_events.TaskOOM(container_id="forwarded")),
    )
    envelope.timestamp.FromDatetime(datetime(2020, 1, 2, tzinfo=UTC))
    with Client(supervisor.address + ".ttrpc") as client:
        for bad in (
            ttrpc_events_pb2.Envelope(namespace=supervisor.namespace, topic="no-slash"),
            ttrpc_events_pb2.Envelope(namespace="", topic="/tasks/oom"),
        ):
            with pytest.raises(Error) as e:
                client.call_typed(
                    "containerd.services.events.ttrpc.v1.Events",
                    "Forward",
                    ttrpc_events_pb2.ForwardRequest(envelope=bad),
                    empty_pb2.Empty,
                    timeout=10,
                )
            assert e.value.grpc_code == "INVALID_ARGUMENT"
        client.call_typed(
            "containerd.services.events.ttrpc.v1.Events",
            "Forward",
            ttrpc_events_pb2.ForwardRequest(envelope=envelope),
            empty_pb2.Empty,
            timeout=10,
        )
    try:
        events.wait("forwarded", "/tasks/oom")
        (got,) = [e for e in events.envelopes if e.topic == "/tasks/oom"]
        assert got.timestamp == envelope.timestamp
        assert got.namespace == supervisor.namespace
    finally:
        events.close()


def test_tasks_are_per_namespace(runc: Runner) -> None:
    other = "dy-other-" + runc.new_id()
    a = runc.container("sleep", "1000")
    b = runc.container("sleep", "1000", cid=a, namespace=other)
    runc.start(a, detach=True)
    runc.ctr("task", "start", "--fifo-dir", str(runc.fifo_dir), "-d", b, namespace=other)
    assert runc.get(a).process.pid != runc.get(b, namespace=other).process.pid
    runc.ctr("task", "kill", "-s", "SIGKILL", a)
    wait_for_status(runc, a, "STOPPED")
    runc.ctr("task", "delete", a)
    # the other namespace's task of the same id runs on
    assert runc.get(b, namespace=other).process.status == task_pb2.RUNNING
    runc.sup.remove(b, other)
    runc.ctr("namespace", "rm", other, namespace=other)


# --- bad input ----------------------------------------------------------------------


def test_bad_requests_are_refused_and_the_daemon_keeps_serving(shim: Runner) -> None:
    api, md = shim.tasks_api(), shim.sup.md()

    def code(method: str, request: Any, metadata: Any = md) -> grpc.StatusCode:
        return grpc_code(lambda: getattr(api, method)(request, metadata=metadata, timeout=30))

    # no such container; no namespace at all
    assert (
        code("Create", tasks_pb2.CreateTaskRequest(container_id="nosuch"))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code("Create", tasks_pb2.CreateTaskRequest(container_id="nosuch"), [])
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    cid = shim.container("sleep", "1000")
    # a container without a task
    for method, request in [
        ("Get", tasks_pb2.GetRequest(container_id=cid)),
        ("Start", tasks_pb2.StartRequest(container_id=cid)),
        ("Kill", tasks_pb2.KillRequest(container_id=cid, signal=9)),
        ("Delete", tasks_pb2.DeleteTaskRequest(container_id=cid)),
        ("Wait", tasks_pb2.WaitRequest(container_id=cid)),
    ]:
        assert code(method, request) == grpc.StatusCode.NOT_FOUND, method

    created = api.Create(tasks_pb2.CreateTaskRequest(container_id=cid), metadata=md)
    assert created.pid > 0
    assert (
        code("Create", tasks_pb2.CreateTaskRequest(container_id=cid))
        == grpc.StatusCode.ALREADY_EXISTS
    )
    assert shim.get(cid).process.status == task_pb2.CREATED
    api.Start(tasks_pb2.StartRequest(container_id=cid), metadata=md)
    # containerd's runc shim answers a second start with an untyped error
    again = code("Start", tasks_pb2.StartRequest(container_id=cid))
    if shim.runtime == DOCKYARD_SHIM:
        assert again == grpc.StatusCode.FAILED_PRECONDITION
    else:
        assert again == grpc.StatusCode.UNKNOWN

    process = typeurl.pack_json(
        typeurl.PROCESS, {"args": ["sleep", "999"], "cwd": "/", "env": ["PATH=/bin"]}
    )
    exec_ = tasks_pb2.ExecProcessRequest(container_id=cid, exec_id="", spec=process)
    assert code("Exec", exec_) == grpc.StatusCode.INVALID_ARGUMENT
    exec_.exec_id = "not an id!"
    assert code("Exec", exec_) == grpc.StatusCode.INVALID_ARGUMENT
    exec_.exec_id = "e1"
    api.Exec(exec_, metadata=md)
    assert code("Exec", exec_) == grpc.StatusCode.ALREADY_EXISTS
    assert (
        code("Get", tasks_pb2.GetRequest(container_id=cid, exec_id="nosuch"))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code("Checkpoint", tasks_pb2.CheckpointTaskRequest(container_id=cid))
        == grpc.StatusCode.UNIMPLEMENTED
    )
    # a running task is not deleted (containerd's runc shim: an untyped error again)
    refused = code("Delete", tasks_pb2.DeleteTaskRequest(container_id=cid))
    if shim.runtime == DOCKYARD_SHIM:
        assert refused == grpc.StatusCode.FAILED_PRECONDITION
    else:
        assert refused == grpc.StatusCode.UNKNOWN
    assert shim.get(cid).process.status == task_pb2.RUNNING

    api.Kill(tasks_pb2.KillRequest(container_id=cid, signal=9, all=True), metadata=md)
    assert (
        api.Wait(tasks_pb2.WaitRequest(container_id=cid), metadata=md, timeout=30).exit_status
        == 137
    )
    deleted = api.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=md)
    assert deleted.exit_status == 137
    assert not shim.bundle(cid).exists()
    assert "dockyard" in shim.ctr("version").stdout


def test_an_unknown_runtime_is_not_found_and_leaves_nothing(runc: Runner) -> None:
    api, md = runc.tasks_api(), runc.sup.md()
    cid = runc.new_id()
    spec = typeurl.pack_json(typeurl.SPEC, runc.spec(cid, ["true"], runc.sup.namespace))
    runc.containers().Create(
        containers_pb2.CreateContainerRequest(
            container=containers_pb2.Container(
                id=cid,
                runtime=containers_pb2.Container.Runtime(name="io.containerd.nosuch.v1"),
                spec=spec,
            )
        ),
        metadata=md,
    )
    runc.ids.append((runc.sup.namespace, cid))
    request = tasks_pb2.CreateTaskRequest(container_id=cid)
    for _ in range(2):  # and again: the failed create left no half task behind
        assert grpc_code(lambda: api.Create(request, metadata=md)) == grpc.StatusCode.NOT_FOUND
    assert not runc.bundle(cid).exists()


def test_a_failing_shim_or_runtime_leaves_nothing(runc: Runner, tmp_path: Path) -> None:
    api, md = runc.tasks_api(), runc.sup.md()
    # a "shim" that fails at start
    broken = tmp_path / "containerd-shim-broken-v1"
    broken.write_text("#!/bin/sh\necho cannot start >&2\nexit 1\n")
    broken.chmod(0o755)
    cid = runc.new_id()
    spec = typeurl.pack_json(typeurl.SPEC, runc.spec(cid, ["true"], runc.sup.namespace))
    runc.containers().Create(
        containers_pb2.CreateContainerRequest(
            container=containers_pb2.Container(
                id=cid, runtime=containers_pb2.Container.Runtime(name=str(broken)), spec=spec
            )
        ),
        metadata=md,
    )
    runc.ids.append((runc.sup.namespace, cid))
    with pytest.raises(grpc.RpcError) as e:
        api.Create(tasks_pb2.CreateTaskRequest(container_id=cid), metadata=md)
    assert "cannot start" in (e.value.details() or "")
    assert not runc.bundle(cid).exists()

    # the OCI runtime fails: the shim is shut down and the bundle removed
    cid = runc.container("/no/such/program")
    with pytest.raises(grpc.RpcError):
        api.Create(tasks_pb2.CreateTaskRequest(container_id=cid), metadata=md)
    assert not runc.bundle(cid).exists()
    assert not runc.work_dir(cid).exists()
    host.wait_for(lambda: not shim_pids(cid), 10, f"the shim of {cid} to exit")
    assert cid not in runc.sup.tasks()


# --- task options -----------------------------------------------------------------------


def _service(runtimes: dict[str, RuntimeConfig]) -> TasksService:
    config = Config(root="/r", state="/s", address="/a.sock", runtimes=runtimes)
    return TasksService(SimpleNamespace(config=config), None)  # type: ignore[arg-type]


def _runc_options(any_: any_pb2.Any | None) -> oci_pb2.Options:
    assert any_ is not None
    return typeurl.unpack_to(any_, oci_pb2.Options)


def test_task_options_come_from_the_request_the_container_then_the_config() -> None:
    svc = _service({RUNC_SHIM: RuntimeConfig(binary_name="crun", root="/run/crun-root")})
    stored = typeurl.pack(oci_pb2.Options(binary_name="runc"))
    c = Container(
        id="c",
        runtime=RUNC_SHIM,
        spec=Typed(typeurl.SPEC, b"{}"),
        runtime_options=Typed(stored.type_url, stored.value),
    )
    # the container's options, completed from the config where they are empty
    got = _runc_options(svc._options(c, tasks_pb2.CreateTaskRequest()))
    assert (got.binary_name, got.root) == ("runc", "/run/crun-root")
    # the request's options win over the container's
    request = tasks_pb2.CreateTaskRequest(options=typeurl.pack(oci_pb2.Options(binary_name="x")))
    assert _runc_options(svc._options(c, request)).binary_name == "x"
    # none at all: the config's
    bare = Container(id="c", runtime=RUNC_SHIM, spec=Typed(typeurl.SPEC, b"{}"))
    assert _runc_options(svc._options(bare, tasks_pb2.CreateTaskRequest())).binary_name == "crun"
    # no config for the runtime: nothing is made up
    assert _service({})._options(bare, tasks_pb2.CreateTaskRequest()) is None
    # options of another kind pass as they are
    other = any_pb2.Any(type_url="example.Options", value=b"\x01")
    assert svc._options(bare, tasks_pb2.CreateTaskRequest(options=other)) == other
    # a restore is refused clearly
    criu = tasks_pb2.CreateTaskRequest(options=typeurl.pack(oci_pb2.Options(criu_image_path="/x")))
    with pytest.raises(Unsupported):
        svc._options(bare, criu)


def test_the_bundle_has_the_containers_spec(runc: Runner) -> None:
    cid = runc.container("sleep", "1000")
    runc.start(cid, detach=True)
    spec = json.loads((runc.bundle(cid) / "config.json").read_text())
    assert spec["process"]["args"] == ["sleep", "1000"]
    assert spec["hostname"] == cid
    assert oct(runc.bundle(cid).stat().st_mode & 0o777) == oct(0o700)
    runc.ctr("task", "kill", "-s", "SIGKILL", cid)
    wait_for_status(runc, cid, "STOPPED")
    runc.ctr("task", "delete", cid)


def test_a_task_without_rootfs_mounts_gets_its_containers_snapshot(supervisor: Supervisor) -> None:
    """CreateTaskRequest.rootfs empty: the supervisor asks the container's snapshotter."""
    runner = Runner(supervisor, DOCKYARD_SHIM, "")
    try:
        ensure_image(supervisor)
        cid = runner.new_id()
        flags = [f for f in runner.run_flags() if f != "--fifo-dir" and f != str(runner.fifo_dir)]
        runner.ids.append((supervisor.namespace, cid))
        runner.ctr(
            "container",
            "create",
            *flags,
            supervisor.image.ref,
            cid,
            "--",  # ctr's container create would take the args' flags as its own
            "sh",
            "-c",
            "test -x /bin/busybox && exit 6",
        )
        api, md = runner.tasks_api(), supervisor.md()
        api.Create(tasks_pb2.CreateTaskRequest(container_id=cid), metadata=md)
        api.Start(tasks_pb2.StartRequest(container_id=cid), metadata=md)
        waited = api.Wait(tasks_pb2.WaitRequest(container_id=cid), metadata=md, timeout=30)
        assert waited.exit_status == 6
        api.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=md)
        assert not runner.bundle(cid).exists()
    finally:
        runner.cleanup()


def test_run_with_a_terminal_has_its_size(shim: Runner) -> None:
    """``ctr run -t``: the task's stdio is a pty the shim holds, and ctr's
    ResizePty gives it the size of ctr's own terminal."""
    ensure_image(shim.sup)
    cid = shim.new_id()
    shim.ids.append((shim.sup.namespace, cid))
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        argv = ["ctr", "--address", shim.sup.address, "--namespace", shim.sup.namespace, "run"]
        argv += [*shim.run_flags(), "--tty", "--rm", shim.sup.image.ref, cid]
        # ctr resizes the pty after the start: the size may not be there at once.
        # The task then runs on: ctr cancels its copy when the task exits, so
        # the last output of a task that exits at once may never be shown.
        # (busybox's stty says nothing on stdout, and exits 0, until it has a size)
        script = 'until s=$(stty size 2>/dev/null) && [ -n "$s" ]; do sleep 0.05; done'
        argv += ["sh", "-c", script + '; echo "$s"; exec sleep 1000']
        proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
        slave = -1

        def read_until(done: Callable[[bytes], bool]) -> bytes:
            out = b""
            while not done(out):
                ready, _, _ = select.select([master], [], [], host.COMMAND_TIMEOUT)
                if not ready:
                    break
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: every holder of the slave side has closed it
                    break
                if not data:
                    break
                out += data
            return out

        try:
            out = read_until(lambda out: b"\n" in out)
            assert out.split() == [b"30", b"100"], out
            shim.ctr("task", "kill", "--signal", "SIGKILL", cid)
            read_until(lambda out: False)
            assert proc.wait(host.COMMAND_TIMEOUT) == 137
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
