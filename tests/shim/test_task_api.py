"""The shim's task API, called directly over ttrpc as containerd calls it.

Each test starts the shim with its ``start`` action in a busybox bundle,
with a fake containerd events service recording what the shim publishes,
and checks the answers, the container's stdio and the events (topics,
order, fields) against what containerd-shim-runc-v2 does.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard.api import typeurl
from dockyard.api.cgroups.v1 import metrics_pb2 as v1_metrics
from dockyard.api.runc.options import oci_pb2
from dockyard.api.runtime.task.v2 import shim_pb2 as api
from dockyard.api.types.task import task_pb2 as task_types
from dockyard.ttrpc import Error, codes
from tests.compat import host
from tests.conftest import Bundle
from tests.shim.conftest import ShimEnv
from tests.shim.harness import FifoReader, ShimUnderTest, make_fifos, runc_options

Started = Callable[..., ShimUnderTest]


def create(
    shim: ShimUnderTest, env: ShimEnv, bundle: Bundle, **fields: object
) -> api.CreateTaskResponse:
    fields.setdefault("options", runc_options(root=str(env.runtime_root)))
    req = api.CreateTaskRequest(id=shim.id, bundle=str(bundle.path), **fields)  # type: ignore[arg-type]
    return shim.call("Create", req, api.CreateTaskResponse)


def exec_spec(bundle: Bundle, *args: str) -> dict[str, object]:
    process = dict(bundle.config["process"])
    process["args"] = list(args)
    return process


def test_run_to_exit_output_and_events(shim_env: ShimEnv, started: Started, bundle: Bundle) -> None:
    bundle.set_args("sh", "-c", "echo hello; echo oops >&2; exit 3").write()
    shim = started(bundle)
    fifos = make_fifos(shim_env.base, "out", "err")
    out, err = FifoReader(fifos["out"]), FifoReader(fifos["err"])
    try:
        pid = create(shim, shim_env, bundle, stdout=fifos["out"], stderr=fifos["err"]).pid
        assert pid > 0
        assert shim.state().status == task_types.CREATED
        assert shim.start_task() == pid
        waited = shim.wait()
        assert waited.exit_status == 3
        # All output is in the FIFOs once the exit is reported.
        assert out.drain() == "hello\n"
        assert err.drain() == "oops\n"
        st = shim.state()
        assert (st.status, st.pid, st.exit_status) == (task_types.STOPPED, pid, 3)
        assert st.exited_at.ToNanoseconds() == waited.exited_at.ToNanoseconds() > 0
        assert (st.stdout, st.stderr, st.bundle) == (fifos["out"], fifos["err"], str(bundle.path))
        deleted = shim.delete()
        assert (deleted.pid, deleted.exit_status) == (pid, 3)
        shim_env.sink.wait_for(shim.id, "/tasks/delete")
    finally:
        out.close()
        err.close()
    events = shim_env.sink.events(shim.id)
    assert [t for t, _ in events] == [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ]
    created, started_ev, exited, deleted_ev = (e for _, e in events)
    assert (created.pid, created.bundle, created.io.stdout) == (pid, str(bundle.path), fifos["out"])
    assert started_ev.pid == pid
    assert (exited.id, exited.pid, exited.exit_status) == (shim.id, pid, 3)
    assert (deleted_ev.pid, deleted_ev.exit_status) == (pid, 3)
    # containerd's envelope: the namespace and containerd's bare type URLs.
    envelope = shim_env.sink.envelopes[0]
    assert envelope.namespace == shim_env.namespace
    assert envelope.event.type_url == "containerd.events.TaskCreate"
    with pytest.raises(Error) as e:
        shim.state()
    assert e.value.code == codes.NOT_FOUND


def test_exec_kill_pids_and_exec_events(
    shim_env: ShimEnv, started: Started, bundle: Bundle
) -> None:
    bundle.set_args("sleep", "1000").write()
    shim = started(bundle)
    pid = create(shim, shim_env, bundle).pid
    shim.start_task()
    assert shim.state().status == task_types.RUNNING

    fifos = make_fifos(shim_env.base, "xout")
    out = FifoReader(fifos["xout"])
    try:
        spec = typeurl.pack_json(typeurl.PROCESS, exec_spec(bundle, "sh", "-c", "echo in; exit 5"))
        shim.empty(
            "Exec",
            api.ExecProcessRequest(id=shim.id, exec_id="e1", stdout=fifos["xout"], spec=spec),
        )
        assert shim.state("e1").status == task_types.CREATED
        with pytest.raises(Error) as dup:
            shim.exec("e1", exec_spec(bundle, "true"))
        assert dup.value.code == codes.ALREADY_EXISTS
        epid = shim.start_task("e1")
        waited = shim.wait("e1")
        assert waited.exit_status == 5
        assert out.drain() == "in\n"
        st = shim.state("e1")
        assert (st.status, st.pid, st.exit_status, st.id) == (task_types.STOPPED, epid, 5, "e1")
        shim.delete("e1")
        with pytest.raises(Error) as gone:
            shim.state("e1")
        assert gone.value.code == codes.NOT_FOUND
    finally:
        out.close()

    # A long-running exec: Pids names it with its exec id.
    shim.exec("sleeper", exec_spec(bundle, "sleep", "1000"))
    spid = shim.call(
        "Start", api.StartRequest(id=shim.id, exec_id="sleeper"), api.StartResponse
    ).pid
    pids = shim.call("Pids", api.PidsRequest(id=shim.id), api.PidsResponse).processes
    by_pid = {p.pid: p for p in pids}
    assert pid in by_pid and spid in by_pid
    assert not by_pid[pid].HasField("info")
    details = typeurl.unpack_to(by_pid[spid].info, oci_pb2.ProcessDetails)
    assert details.exec_id == "sleeper"

    shim.kill(signal.SIGKILL, "sleeper")
    assert (
        shim.call(
            "Wait", api.WaitRequest(id=shim.id, exec_id="sleeper"), api.WaitResponse
        ).exit_status
        == 137
    )
    with pytest.raises(Error) as finished:
        shim.kill(signal.SIGKILL, "sleeper")
    assert finished.value.code == codes.NOT_FOUND

    shim.kill(signal.SIGKILL)
    assert shim.wait().exit_status == 137
    with pytest.raises(Error) as stopped:
        shim.kill(signal.SIGTERM)
    assert stopped.value.code == codes.NOT_FOUND
    shim.delete()

    topics = [
        (t, getattr(e, "exec_id", "") or getattr(e, "id", ""))
        for t, e in shim_env.sink.events(shim.id)
    ]
    for name in ("e1", "sleeper"):
        mine = [t for t, i in topics if i == name]
        assert mine == ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"], topics
        assert len(mine) == 3


def test_pause_resume(shim_env: ShimEnv, started: Started, bundle: Bundle) -> None:
    bundle.set_args("sleep", "1000").write()
    shim = started(bundle)
    create(shim, shim_env, bundle)
    shim.start_task()
    shim.exec("x", exec_spec(bundle, "sleep", "1000"))
    shim.start_task("x")

    shim.empty("Pause", api.PauseRequest(id=shim.id))
    assert shim.state().status == task_types.PAUSED
    assert shim.state("x").status == task_types.PAUSED
    with pytest.raises(Error) as again:
        shim.empty("Pause", api.PauseRequest(id=shim.id))
    assert again.value.code == codes.FAILED_PRECONDITION
    shim.empty("Resume", api.ResumeRequest(id=shim.id))
    assert shim.state().status == task_types.RUNNING
    assert shim.state("x").status == task_types.RUNNING

    # A paused container can still be killed.
    shim.empty("Pause", api.PauseRequest(id=shim.id))
    shim.kill(signal.SIGKILL, all=True)
    assert shim.wait().exit_status == 137
    shim.delete()
    topics = [t for t, _ in shim_env.sink.events(shim.id)]
    assert topics.count("/tasks/paused") == 2
    assert topics.index("/tasks/paused") < topics.index("/tasks/resumed")


def test_terminal_resize_and_stdin(shim_env: ShimEnv, started: Started, bundle: Bundle) -> None:
    bundle.config["process"]["terminal"] = True
    bundle.set_args("sh", "-c", "read line; stty size; echo got-$line; exit 2").write()
    shim = started(bundle)
    fifos = make_fifos(shim_env.base, "in", "out")
    out = FifoReader(fifos["out"])
    stdin = os.open(fifos["in"], os.O_RDWR)
    try:
        create(shim, shim_env, bundle, terminal=True, stdin=fifos["in"], stdout=fifos["out"])
        st = shim.state()
        assert st.terminal and st.stdin == fifos["in"]
        shim.start_task()
        shim.resize(123, 45)
        os.write(stdin, b"word\n")
        assert shim.wait().exit_status == 2
        text = out.drain()
        # The pty echoes the input and turns \n into \r\n.
        assert "45 123\r\n" in text, text
        assert "got-word\r\n" in text, text
        shim.delete()
    finally:
        os.close(stdin)
        out.close()


def test_exec_with_terminal(shim_env: ShimEnv, started: Started, bundle: Bundle) -> None:
    bundle.set_args("sleep", "1000").write()
    shim = started(bundle)
    create(shim, shim_env, bundle)
    shim.start_task()
    fifos = make_fifos(shim_env.base, "tin", "tout")
    out = FifoReader(fifos["tout"])
    stdin = os.open(fifos["tin"], os.O_RDWR)
    try:
        spec = exec_spec(bundle, "sh", "-c", "read x; tty; stty size")
        shim.exec("tty", spec, terminal=True, stdin=fifos["tin"], stdout=fifos["tout"])
        shim.start_task("tty")
        shim.empty(
            "ResizePty", api.ResizePtyRequest(id=shim.id, exec_id="tty", width=77, height=11)
        )
        os.write(stdin, b"\n")
        assert (
            shim.call(
                "Wait", api.WaitRequest(id=shim.id, exec_id="tty"), api.WaitResponse
            ).exit_status
            == 0
        )
        text = out.drain()
        assert "/dev/pts/" in text and "11 77" in text, text
        with pytest.raises(Error) as exited:
            shim.empty(
                "ResizePty", api.ResizePtyRequest(id=shim.id, exec_id="tty", width=1, height=1)
            )
        assert exited.value.code == codes.FAILED_PRECONDITION
    finally:
        os.close(stdin)
        out.close()


def test_terminal_output_after_the_process_reopens_its_tty(
    shim_env: ShimEnv, started: Started, bundle: Bundle
) -> None:
    """A process that closes every fd of its terminal and opens /dev/tty again
    (a daemon reopening its console): the master reads EIO in between, but
    only the process's exit ends the copy, as containerd's epoll console."""
    bundle.config["process"]["terminal"] = True
    bundle.set_args(
        "sh", "-c", "echo before; exec </dev/null >/dev/null 2>&1; sleep 0.5; echo after >/dev/tty"
    ).write()
    shim = started(bundle)
    fifos = make_fifos(shim_env.base, "rout")
    out = FifoReader(fifos["rout"])
    try:
        create(shim, shim_env, bundle, terminal=True, stdout=fifos["rout"])
        shim.start_task()
        assert shim.wait().exit_status == 0
        text = out.drain()
        assert "before\r\n" in text and "after\r\n" in text, text
        shim.delete()
    finally:
        out.close()


def test_close_io_ends_stdin(shim_env: ShimEnv, started: Started, bundle: Bundle) -> None:
    bundle.set_args("sh", "-c", "cat; echo end").write()
    shim = started(bundle)
    fifos = make_fifos(shim_env.base, "cin", "cout")
    out = FifoReader(fifos["cout"])
    try:
        create(shim, shim_env, bundle, stdin=fifos["cin"], stdout=fifos["cout"])
        shim.start_task()
        # The client writes its input and closes its end, as ctr does...
        w = os.open(fifos["cin"], os.O_WRONLY)
        os.write(w, b"some input\n")
        os.close(w)
        out.wait_for("some input\n")
        assert shim.state().status == task_types.RUNNING  # ...the shim's own writer keeps it open
        shim.empty("CloseIO", api.CloseIORequest(id=shim.id, stdin=True))
        assert shim.wait().exit_status == 0
        assert out.drain() == "some input\nend\n"
        shim.delete()
    finally:
        out.close()


def test_file_stdio_and_binary_refused(shim_env: ShimEnv, started: Started, bundle: Bundle) -> None:
    bundle.set_args("sh", "-c", "echo to-out; echo to-err >&2").write()
    shim = started(bundle)
    with pytest.raises(Error) as refused:
        create(shim, shim_env, bundle, stdout="binary:///usr/bin/logger?x=1")
    assert refused.value.code == codes.UNIMPLEMENTED
    assert "binary://" in refused.value.message
    log = shim_env.base / "logs" / "out.log"
    create(shim, shim_env, bundle, stdout=f"file://{log}", stderr=f"file://{log}")
    shim.start_task()
    assert shim.wait().exit_status == 0
    assert sorted(log.read_text().splitlines()) == ["to-err", "to-out"]
    shim.delete()


def test_runtime_error_carries_its_message(
    shim_env: ShimEnv, started: Started, bundle: Bundle
) -> None:
    bundle.config["process"]["cwd"] = "relative/dir"
    bundle.write()
    shim = started(bundle)
    with pytest.raises(Error) as failed:
        create(shim, shim_env, bundle)
    assert "OCI runtime create failed" in failed.value.message
    assert "process.cwd" in failed.value.message, failed.value.message
    # Nothing was created: the same id can be created once the bundle is right.
    bundle.config["process"]["cwd"] = "/"
    bundle.set_args("true").write()
    create(shim, shim_env, bundle)
    shim.delete()


def test_created_task_can_be_deleted(shim_env: ShimEnv, started: Started, bundle: Bundle) -> None:
    bundle.set_args("true").write()
    shim = started(bundle)
    pid = create(shim, shim_env, bundle).pid
    deleted = shim.delete()
    assert deleted.pid == pid
    shim_env.sink.wait_for(shim.id, "/tasks/delete")
    # Never started: no start and no exit, as containerd's runc shim.
    assert [t for t, _ in shim_env.sink.events(shim.id)] == ["/tasks/create", "/tasks/delete"]


def mounted(path: Path) -> bool:
    from tests.compat import host

    return str(path) in host.mounts_under(path)


def _prepare_rootfs_elsewhere(bundle: Bundle, where: Path) -> None:
    """Move the bundle's rootfs away: the shim must mount it at <bundle>/rootfs."""
    os.rename(bundle.rootfs, where)
    bundle.rootfs.mkdir()


def test_rootfs_mounts_are_mounted_and_unmounted(
    shim_env: ShimEnv, started: Started, bundle: Bundle
) -> None:
    from dockyard.api.types import mount_pb2

    source = shim_env.base / "snapshot"
    _prepare_rootfs_elsewhere(bundle, source)
    bundle.set_args("cat", "/etc/group").write()
    shim = started(bundle)
    fifos = make_fifos(shim_env.base, "mout")
    out = FifoReader(fifos["mout"])
    try:
        mount = mount_pb2.Mount(type="bind", source=str(source), options=["rbind", "rw"])
        create(shim, shim_env, bundle, rootfs=[mount], stdout=fifos["mout"])
        assert mounted(bundle.rootfs)
        shim.start_task()
        assert shim.wait().exit_status == 0
        assert "root:x:0:" in out.drain()
        shim.delete()
        assert not mounted(bundle.rootfs)
    finally:
        out.close()


@pytest.mark.parametrize(
    ("mount", "needle"),
    [
        ({"type": "nosuchfs", "source": "none"}, "unknown filesystem type 'nosuchfs'"),
        (
            {"type": "overlay", "source": "overlay", "options": ["lowerdir=/nonexistent-dir"]},
            "rootfs",
        ),
        ({"type": "tmpfs", "source": "tmpfs", "options": ["size=not-a-size"]}, "invalid argument"),
    ],
)
def test_bad_rootfs_mounts_are_invalid_argument(
    shim_env: ShimEnv, started: Started, bundle: Bundle, mount: dict[str, object], needle: str
) -> None:
    from dockyard.api.types import mount_pb2

    bundle.set_args("true").write()
    shim = started(bundle)
    first = mount_pb2.Mount(type="tmpfs", source="tmpfs")
    with pytest.raises(Error) as bad:
        create(shim, shim_env, bundle, rootfs=[first, mount_pb2.Mount(**mount)])  # type: ignore[arg-type]
    assert bad.value.code == codes.INVALID_ARGUMENT, bad.value
    assert needle in bad.value.message
    assert not mounted(bundle.rootfs), "a mount was left behind"


def test_stats_and_update(shim_env: ShimEnv, started: Started, bundle: Bundle) -> None:
    from dockyard.runtime.cgroups import detect_mode

    bundle.set_args("sleep", "1000").write()
    shim = started(bundle)
    create(shim, shim_env, bundle)
    shim.start_task()
    resources = typeurl.pack_json(typeurl.LINUX_RESOURCES, {"pids": {"limit": 42}})
    shim.empty("Update", api.UpdateTaskRequest(id=shim.id, resources=resources))
    stats = shim.call("Stats", api.StatsRequest(id=shim.id), api.StatsResponse).stats
    if detect_mode() == "v2":
        from dockyard.api.cgroups.v2 import metrics_pb2 as v2_metrics

        assert stats.type_url == "io.containerd.cgroups.v2.Metrics"
        m2 = typeurl.unpack_to(stats, v2_metrics.Metrics)
        assert (m2.pids.current, m2.pids.limit) == (1, 42)
        assert m2.memory.usage > 0 and m2.cpu.usage_usec > 0
    else:
        assert stats.type_url == "io.containerd.cgroups.v1.Metrics"
        m1 = typeurl.unpack_to(stats, v1_metrics.Metrics)
        assert (m1.pids.current, m1.pids.limit) == (1, 42)
        assert m1.memory.usage.usage > 0 and m1.cpu.usage.total > 0
    shim.kill(signal.SIGKILL)
    shim.wait()
    with pytest.raises(Error) as stopped:
        shim.empty("Update", api.UpdateTaskRequest(id=shim.id, resources=resources))
    assert stopped.value.code == codes.FAILED_PRECONDITION
    shim.delete()


def test_quick_execs_are_all_reported(shim_env: ShimEnv, started: Started, bundle: Bundle) -> None:
    """Processes that exit before the runtime's exec returns (the exit comes first)."""
    bundle.set_args("sleep", "1000").write()
    shim = started(bundle)
    create(shim, shim_env, bundle)
    shim.start_task()
    for i in range(10):
        shim.exec(f"q{i}", exec_spec(bundle, "sh", "-c", f"exit {i}"))
        shim.start_task(f"q{i}")
        w = shim.wait(f"q{i}")
        assert w.exit_status == i
        shim.delete(f"q{i}")
    shim_env.sink.wait_for(shim.id, "/tasks/exit", count=10)
    exits = [e for t, e in shim_env.sink.events(shim.id) if t == "/tasks/exit"]
    assert sorted((e.id, e.exit_status) for e in exits) == sorted((f"q{i}", i) for i in range(10))
    shim.kill(signal.SIGKILL)
    shim.wait()
    shim.delete()


def test_connect_and_shutdown(shim_env: ShimEnv, started: Started, bundle: Bundle) -> None:
    bundle.set_args("sleep", "1000").write()
    shim = started(bundle)
    socket_path = shim.address.removeprefix("unix://")
    pid = create(shim, shim_env, bundle).pid
    connected = shim.call("Connect", api.ConnectRequest(id=shim.id), api.ConnectResponse)
    assert (connected.shim_pid, connected.task_pid) == (shim.pid, pid)
    # The shim is a child subreaper: the init the runtime forked and left is its child.
    status = Path(f"/proc/{pid}/status").read_text()
    assert f"\nPPid:\t{shim.pid}\n" in status
    # Busy with a container: Shutdown without `now` is ignored.
    shim.empty("Shutdown", api.ShutdownRequest(id=shim.id))
    assert shim.alive()
    assert shim.state().status == task_types.CREATED
    shim.delete()
    shim.empty("Shutdown", api.ShutdownRequest(id=shim.id))
    from tests.compat import host

    host.wait_for(lambda: not shim.alive(), 30, "the shim to exit")
    assert not os.path.exists(socket_path)


def test_start_finds_the_running_shim(shim_env: ShimEnv, started: Started, bundle: Bundle) -> None:
    bundle.set_args("true").write()
    shim = started(bundle)
    again = shim.action("start")
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode() == shim.address
    assert (bundle.path / "address").read_text() == shim.address


def test_delete_action_after_the_shim_died(
    shim_env: ShimEnv, started: Started, bundle: Bundle
) -> None:
    from dockyard.api.types import mount_pb2
    from tests.compat import host

    source = shim_env.base / "snap"
    _prepare_rootfs_elsewhere(bundle, source)
    bundle.set_args("sleep", "1000").write()
    shim = started(bundle)
    mount = mount_pb2.Mount(type="bind", source=str(source), options=["rbind"])
    pid = create(shim, shim_env, bundle, rootfs=[mount]).pid
    shim.start_task()
    os.kill(shim.pid, signal.SIGKILL)
    host.wait_for(lambda: not shim.alive(), 30, "the shim to die")
    p = shim.action("delete")
    assert p.returncode == 0, p.stderr
    response = api.DeleteResponse.FromString(p.stdout)
    assert (response.pid, response.exit_status) == (pid, 137)
    assert response.exited_at.ToNanoseconds() > 0
    assert not mounted(bundle.rootfs)
    host.wait_for(lambda: not host.alive(pid), 30, "the container to be killed")
    assert not os.path.exists(shim.address.removeprefix("unix://"))
    state_dir = shim_env.runtime_root / shim_env.namespace / shim.id
    assert not state_dir.exists()


def test_runc_is_used_when_the_options_name_it(
    shim_env: ShimEnv, started: Started, bundle: Bundle
) -> None:
    import shutil
    import subprocess

    runc = shutil.which("runc")
    assert runc, "runc is not installed"
    bundle.set_args("sleep", "1000").write()
    shim = started(bundle)
    root = shim_env.base / "runc"
    create(shim, shim_env, bundle, options=runc_options(binary_name="runc", root=str(root)))
    listed = subprocess.run(
        [runc, "--root", str(root / shim_env.namespace), "list", "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert listed.stdout.split() == [shim.id]
    shim.start_task()
    shim.kill(signal.SIGKILL)
    assert shim.wait().exit_status == 137
    shim.delete()


def test_unknown_options_and_bad_requests(
    shim_env: ShimEnv, started: Started, bundle: Bundle
) -> None:
    from google.protobuf import any_pb2

    bundle.set_args("true").write()
    shim = started(bundle)
    with pytest.raises(Error) as unknown:
        create(shim, shim_env, bundle, options=any_pb2.Any(type_url="example.com/Nope", value=b""))
    assert unknown.value.code == codes.INVALID_ARGUMENT
    with pytest.raises(Error) as relative:
        shim.call("Create", api.CreateTaskRequest(id=shim.id, bundle="rel"), api.CreateTaskResponse)
    assert relative.value.code == codes.INVALID_ARGUMENT
    with pytest.raises(Error) as missing:
        shim.call("Start", api.StartRequest(id="nope"), api.StartResponse)
    assert missing.value.code == codes.NOT_FOUND
    with pytest.raises(Error) as checkpoint:
        create(shim, shim_env, bundle)
        shim.empty("Checkpoint", api.CheckpointTaskRequest(id=shim.id, path="/x"))
    assert checkpoint.value.code == codes.UNIMPLEMENTED
    shim.delete()


def test_oom_kill_is_published(shim_env: ShimEnv, started: Started, bundle: Bundle) -> None:
    limit = 16 << 20
    bundle.config["linux"]["resources"]["memory"] = {"limit": limit, "swap": limit}
    # dd's block buffer alone is four times the limit: the kernel OOM-kills it.
    bundle.set_args("dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1").write()
    shim = started(bundle)
    create(shim, shim_env, bundle)
    shim.start_task()
    assert shim.wait().exit_status == 137
    shim_env.sink.wait_for(shim.id, "/tasks/oom")
    shim.delete()
    topics = [t for t, _ in shim_env.sink.events(shim.id)]
    assert topics.count("/tasks/oom") >= 1


def _pipes(pid: int) -> set[str]:
    links = (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    return {link for link in links if link.startswith("pipe:")}


def test_deleting_the_init_releases_its_execs_stdio(
    shim_env: ShimEnv, started: Started, bundle: Bundle
) -> None:
    """Execs nobody deleted give back their stdio when their container's init is
    deleted: a shim that serves a sandbox outlives the container."""
    bundle.set_args("sleep", "1000").write()
    shim = started(bundle)
    create(shim, shim_env, bundle)
    shim.start_task()
    before_exec = _pipes(shim.pid)
    fifos = make_fifos(shim_env.base, "eout")
    out = FifoReader(fifos["eout"])
    try:
        shim.exec("e1", exec_spec(bundle, "echo", "done"), stdout=fifos["eout"])
        shim.start_task("e1")
        assert shim.wait("e1").exit_status == 0
        assert out.drain() == "done\n"
        held = _pipes(shim.pid) - before_exec
        assert held, "the exec's stdio is held while it can be deleted"
        shim.kill(signal.SIGKILL)
        shim.wait()
        shim.delete()
        host.wait_for(lambda: not held & _pipes(shim.pid), 10, "the exec's stdio released")
    finally:
        out.close()
