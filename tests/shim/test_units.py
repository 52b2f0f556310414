"""The shim's parts that need no container: flags, names, options, stdio, state, events."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.api import typeurl
from dockyard.api.runc.options import oci_pb2
from dockyard.api.runtime.linux.runctypes import runc_pb2
from dockyard.api.runtimeoptions.v1 import api_pb2 as runtimeoptions
from dockyard.errors import FailedPrecondition, InvalidArgument, NotFound, Unsupported
from dockyard.shim import manager, messages, options, stats
from dockyard.shim.container import kill_all_on_exit
from dockyard.shim.main import parse_flags
from dockyard.shim.process import CREATED, PAUSED, RUNNING, STOPPED, Init
from dockyard.shim.publisher import Publisher
from dockyard.shim.reaper import Exit
from dockyard.shim.runtime import OCIRuntime, RuntimeFailure, default_root, find_binary, last_error
from dockyard.shim.stdio import ProcessIO, Stdio
from tests.compat import host
from tests.shim.harness import short_dir

# -- the command line ---------------------------------------------------------


def test_flags_as_containerd_passes_them() -> None:
    f = parse_flags(
        [
            *("-namespace", "ns", "-address", "/run/c.sock"),
            *("-publish-binary", "/bin/containerd", "-id", "abc", "-debug", "start"),
        ]
    )
    assert (f.namespace, f.address, f.publish_binary, f.id, f.debug, f.action) == (
        "ns",
        "/run/c.sock",
        "/bin/containerd",
        "abc",
        True,
        "start",
    )
    f = parse_flags(["--namespace=ns", "-id=x", "-bundle", "/b", "-debug=false", "delete"])
    assert (f.namespace, f.id, f.bundle, f.debug, f.action) == ("ns", "x", "/b", False, "delete")
    assert parse_flags(["-namespace", "ns"]).action == ""
    with pytest.raises(InvalidArgument, match="not defined: -nope"):
        parse_flags(["-nope"])
    with pytest.raises(InvalidArgument, match="needs an argument: -id"):
        parse_flags(["-id"])


def test_socket_address_is_runc_shims() -> None:
    """The same address containerd-shim-runc-v2 1.6 picks for the same container."""
    host.need("containerd-shim-runc-v2")
    bundle = short_dir("dysock")
    cid = "x" + uuid.uuid4().hex[:10]
    (bundle / "config.json").write_text('{"ociVersion": "1.0.2"}')
    ours = manager.socket_address("/run/x/containerd.sock", "ns1", cid)
    try:
        p = subprocess.run(
            [
                *("containerd-shim-runc-v2", "-namespace", "ns1", "-id", cid),
                *("-address", "/run/x/containerd.sock", "start"),
            ],
            cwd=bundle,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == ours
    finally:
        for pid in host.pids_mentioning(f"-id {cid} "):
            host.stop_pid(pid)
        manager.remove_socket(ours)
        host.remove_tree(bundle)
    assert ours.startswith("unix:///run/containerd/s/") and len(ours) == len("unix://") + 18 + 64


def test_group_annotation_shares_a_shim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text(
        '{"annotations": {"io.kubernetes.cri.sandbox-id": "pod1"}}'
    )
    assert manager._grouping("c1") == "pod1"
    (tmp_path / "config.json").write_text('{"annotations": {}}')
    assert manager._grouping("c1") == "c1"


def test_address_file_round_trip(tmp_path: Path) -> None:
    manager.write_address("unix:///run/containerd/s/abc", str(tmp_path))
    assert manager.read_address(str(tmp_path)) == "unix:///run/containerd/s/abc"
    assert sorted(os.listdir(tmp_path)) == ["address"]


@pytest.mark.parametrize(
    ("config", "kill_all"),
    [
        ('{"linux": {"namespaces": [{"type": "pid"}]}}', False),  # the kernel kills the rest
        ('{"linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}}', True),
        ('{"linux": {"namespaces": [{"type": "mount"}]}}', True),
        ("{}", True),
        ("not json", True),
        (None, True),  # no config.json
    ],
)
def test_kill_all_on_exit_unless_a_new_pid_namespace(
    tmp_path: Path, config: str | None, kill_all: bool
) -> None:
    if config is not None:
        (tmp_path / "config.json").write_text(config)
    assert kill_all_on_exit(str(tmp_path)) is kill_all


# -- runtime options ------------------------------------------------------------


def _any(msg: Any) -> messages.Any:
    """A generated message (as a client encodes it) in the shim's Any."""
    packed = typeurl.pack(msg)
    return messages.Any(type_url=packed.type_url, value=packed.value)


def test_options_of_every_kind(tmp_path: Path) -> None:
    assert options.parse(None).binary_name == ""
    runc = options.parse(_any(oci_pb2.Options(binary_name="runc", root="/r", io_uid=7)))
    assert (runc.binary_name, runc.root, runc.io_uid) == ("runc", "/r", 7)
    legacy = options.parse(_any(runc_pb2.CreateOptions(no_pivot_root=True, io_gid=3)))
    assert (legacy.no_pivot_root, legacy.io_gid) == (True, 3)
    old = options.parse(_any(runc_pb2.RuncOptions(runtime="crun", runtime_root="/c")))
    assert (old.binary_name, old.root) == ("crun", "/c")
    config = tmp_path / "runtime.toml"
    config.write_text('BinaryName = "runc"\nroot = "/x"\nNoNewKeyring = true\n')
    generic = options.parse(_any(runtimeoptions.Options(config_path=str(config))))
    assert (generic.binary_name, generic.root, generic.no_new_keyring) == ("runc", "/x", True)


def test_bad_options_are_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not known"):
        options.parse(messages.Any(type_url="example.com/Other", value=b""))
    config = tmp_path / "runtime.toml"
    config.write_text("BinaryNam = 'runc'\n")
    with pytest.raises(InvalidArgument, match="unknown option 'BinaryNam'"):
        options.read_config(str(config))
    config.write_text("IoUid = 'root'\n")
    with pytest.raises(InvalidArgument, match="must be a int"):
        options.read_config(str(config))
    with pytest.raises(InvalidArgument, match="runtime config"):
        options.read_config(str(tmp_path / "missing.toml"))


def test_saved_options_round_trip(tmp_path: Path) -> None:
    options.save(str(tmp_path), "/bin/runc", "/run/r/ns", False)
    assert options.load(str(tmp_path)) == {
        "runtime": "/bin/runc",
        "root": "/run/r/ns",
        "systemd_cgroup": False,
    }
    assert options.load(str(tmp_path / "none")) is None


# -- the runtime driver ---------------------------------------------------------


def test_runtime_binary_and_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    beside = tmp_path / "bin"
    beside.mkdir()
    ours = beside / "dockyard-runtime"
    ours.write_text("#!/bin/sh\n")
    ours.chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_binary("dockyard-runtime", str(beside)) == str(ours)
    with pytest.raises(NotFound, match="'runc'"):
        find_binary("runc", str(beside))
    assert find_binary("/opt/x/runc") == "/opt/x/runc"
    assert default_root("/x/dockyard-runtime", "ns") == "/run/dockyard/runtime/ns"
    assert default_root("/usr/sbin/runc", "ns") == "/run/containerd/runc/ns"
    assert default_root("/usr/sbin/runc", "ns", "/mine") == "/mine/ns"


def test_last_error_of_a_json_log(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    log.write_text(
        '{"level":"error","msg":"first","time":"t"}\n'
        '{"level":"warning","msg":"later warning","time":"t"}\n'
        "not json\n"
        '{"level":"error","msg":"  container_linux.go: the real one \\n","time":"t"}\n'
        '{"level":"info","msg":"info","time":"t"}\n'
    )
    assert last_error(str(log)) == "container_linux.go: the real one"
    assert last_error(str(tmp_path / "missing")) == ""


# -- stdio ----------------------------------------------------------------------


@pytest.fixture
def fifo_dir() -> Iterator[Path]:
    d = short_dir("dyio")
    try:
        yield d
    finally:
        host.remove_tree(d)


def test_pipes_copy_to_fifos_and_stdin_ends_on_close_io(fifo_dir: Path) -> None:
    paths = {n: str(fifo_dir / n) for n in ("in", "out", "err")}
    for p in paths.values():
        os.mkfifo(p)
    io = ProcessIO(Stdio(paths["in"], paths["out"], paths["err"]))
    out_r = os.open(paths["out"], os.O_RDONLY | os.O_NONBLOCK)
    err_r = os.open(paths["err"], os.O_RDONLY | os.O_NONBLOCK)
    try:
        child = io.open_pipes()
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None
        # What the container holds: dups of its ends, as a forked process would.
        c_in, c_out, c_err = os.dup(child.stdin), os.dup(child.stdout), os.dup(child.stderr)
        io.after_start()
        os.write(c_out, b"to stdout\n")
        os.write(c_err, b"to stderr\n")
        client = os.open(paths["in"], os.O_WRONLY)
        os.write(client, b"typed\n")
        os.close(client)
        assert _read_exactly(c_in, 6) == b"typed\n"
        io.close_stdin()  # the shim's own writer: EOF reaches the container now
        assert os.read(c_in, 10) == b""
        os.close(c_out)
        os.close(c_err)
        assert io.wait_output()
        assert os.read(out_r, 100) == b"to stdout\n"
        assert os.read(err_r, 100) == b"to stderr\n"
        os.close(c_in)
    finally:
        io.close()
        os.close(out_r)
        os.close(err_r)


def test_output_is_awaited_while_a_slow_client_takes_it(
    fifo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle means no byte copied: bytes taken by a slow client are progress
    too, though the copy reads nothing from the process meanwhile."""
    import fcntl

    from dockyard.shim import stdio

    monkeypatch.setattr(stdio, "IDLE_LIMIT", 1.0)
    path = str(fifo_dir / "slow")
    os.mkfifo(path)
    client = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(client, fcntl.F_SETPIPE_SZ, 4096)  # a page: each read frees room for one
    data = os.urandom(40 * 1024)
    got = bytearray()

    def read_slowly() -> None:
        # 4 KiB each 0.2 s: a 32 KiB chunk of the copy takes 1.6 s to go through.
        while len(got) < len(data):
            time.sleep(0.2)
            try:
                got.extend(os.read(client, 4096))
            except BlockingIOError:
                pass

    io = ProcessIO(Stdio("", path))
    reader = threading.Thread(target=read_slowly, daemon=True)
    try:
        child = io.open_pipes()
        assert child.stdout is not None
        c_out = os.dup(child.stdout)
        io.after_start()
        reader.start()
        os.write(c_out, data)  # fits the pipe's 64 KiB
        os.close(c_out)
        assert io.wait_output()
        reader.join(10)
        assert bytes(got) == data
    finally:
        io.close()
        reader.join(10)
        os.close(client)


def test_output_written_just_before_the_exit_is_awaited(
    fifo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However long the process was quiet before it, its last bytes get
    IDLE_LIMIT from the exit to come through: on a loaded host the copy may
    run late (here each of its reads waits 0.3 s)."""
    path = str(fifo_dir / "late")
    os.mkfifo(path)
    client = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    read = os.read

    def late_read(fd: int, n: int) -> bytes:
        if threading.current_thread().name == "stdout":
            time.sleep(0.3)
        return read(fd, n)

    io = ProcessIO(Stdio("", path))
    try:
        child = io.open_pipes()
        assert child.stdout is not None
        c_out = os.dup(child.stdout)
        monkeypatch.setattr(os, "read", late_read)
        io.after_start()
        io.progress -= 10  # the process printed nothing for 10 s
        os.write(c_out, b"last words\n")
        os.close(c_out)  # and exited
        assert io.wait_output()
        monkeypatch.undo()
        assert os.read(client, 100) == b"last words\n"
    finally:
        monkeypatch.undo()
        io.close()
        os.close(client)


def _read_exactly(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        assert chunk, "unexpected end of file"
        data += chunk
    return data


def test_file_output_gets_both_streams(fifo_dir: Path) -> None:
    target = fifo_dir / "sub" / "log"
    io = ProcessIO(Stdio("", f"file://{target}", f"file://{target}"))
    try:
        child = io.open_pipes()
        assert child.stdout is not None and child.stderr is not None
        out, err = os.dup(child.stdout), os.dup(child.stderr)
        io.after_start()
        os.write(out, b"a\n")
        os.close(out)
        os.write(err, b"b\n")
        os.close(err)
        assert io.wait_output()
    finally:
        io.close()
    assert sorted(target.read_text().splitlines()) == ["a", "b"]


def test_resize_after_close_touches_no_other_pty() -> None:
    """close() frees the pty master's fd number: a resize after it (a Delete
    whose runtime delete failed, or a ResizePty racing the Delete) must not
    act on the fd that reuses the number."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    os.close(slave)
    io = ProcessIO(Stdio(terminal=True))
    io.attach_console(master)
    io.close()
    other_master, other_slave = os.openpty()
    if other_master != master:  # another pty's master gets the number
        os.dup2(other_master, master)
        os.close(other_master)
    try:
        io.resize(100, 50)
        size = fcntl.ioctl(other_slave, termios.TIOCGWINSZ, bytes(8))
        assert struct.unpack("HHHH", size)[:2] == (0, 0)
    finally:
        os.close(master)
        os.close(other_slave)


def test_console_master_arrives_close_on_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pty master is close-on-exec from the moment it is received: a
    runtime command another thread spawns meanwhile must not inherit it."""
    import socket

    from dockyard.shim.stdio import ConsoleSocket

    inheritable: list[bool] = []
    recvmsg = socket.socket.recvmsg

    def spy(self: socket.socket, *args: Any) -> Any:
        received = recvmsg(self, *args)
        for level, kind, data in received[1]:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds = memoryview(data).cast("i").tolist()
                inheritable.extend(os.get_inheritable(fd) for fd in fds)
        return received

    monkeypatch.setattr(socket.socket, "recvmsg", spy)
    console = ConsoleSocket()
    master, slave = os.openpty()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as runtime:
            runtime.connect(console.path)
            socket.send_fds(runtime, [b"m"], [master])
        os.close(console.receive_master(timeout=10))
        assert inheritable == [False]
    finally:
        console.close()
        os.close(master)
        os.close(slave)


def test_file_uri_is_read_as_containerd_parses_it(fifo_dir: Path) -> None:
    """A file:// URI as Go's url.URL.String() writes it (cio.LogURI, ctr's
    --log-uri): percent-escapes decoded, a query or fragment no part of the path."""
    target = fifo_dir / "my logs" / "100%" / "out.log"
    io = ProcessIO(Stdio("", f"file://{fifo_dir}/my%20logs/100%25/out.log?x=1#f"))
    try:
        child = io.open_pipes()
        assert child.stdout is not None
        out = os.dup(child.stdout)
        io.after_start()
        os.write(out, b"a\n")
        os.close(out)
        assert io.wait_output()
    finally:
        io.close()
    assert target.read_text() == "a\n"
    with pytest.raises(InvalidArgument, match="escape"):
        ProcessIO(Stdio("", f"file://{fifo_dir}/bad%2")).open_pipes()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    ("call", "failing"),
    [("fchown", 1), ("fchown", 2), ("pipe2", 1), ("pipe2", 2), ("dup", 1)],
)
def test_stdio_that_fails_to_open_leaves_no_fd(
    fifo_dir: Path, monkeypatch: pytest.MonkeyPatch, call: str, failing: int
) -> None:
    """Every fd opened before a failure (fchown to an unmapped io_uid, no fd
    left for a pipe or a dup) is closed again."""
    paths = {n: str(fifo_dir / n) for n in ("in", "out")}
    for p in paths.values():
        os.mkfifo(p)
    client = os.open(paths["out"], os.O_RDONLY | os.O_NONBLOCK)
    master, slave = os.openpty()
    io = ProcessIO(Stdio(paths["in"], paths["out"], terminal=call == "dup"))
    given = os.dup(master) if call == "dup" else -1  # what attach_console takes over
    before = _open_fds() - {str(given)}
    real = getattr(os, call)
    calls = 0

    def fail_once(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == failing:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real(*args)

    monkeypatch.setattr(os, call, fail_once)
    try:
        with pytest.raises(OSError):
            if call == "dup":
                io.attach_console(given)
            else:
                io.open_pipes()
        monkeypatch.undo()
        left = _open_fds() - before
        assert not left, [os.readlink(f"/proc/self/fd/{fd}") for fd in left]
    finally:
        monkeypatch.undo()
        io.close()
        for fd in (client, master, slave):
            os.close(fd)


def test_bad_stdio_is_refused(fifo_dir: Path) -> None:
    with pytest.raises(Unsupported, match="binary://"):
        ProcessIO(Stdio("", "binary:///bin/logger")).open_pipes()
    with pytest.raises(InvalidArgument, match="unknown stdio scheme 'ftp'"):
        ProcessIO(Stdio("", "ftp://x/y")).open_pipes()
    with pytest.raises(InvalidArgument, match="open stdout"):
        ProcessIO(Stdio("", str(fifo_dir / "missing"))).open_pipes()


# -- process state, with a runtime that does what the test says -------------------


class FakeRuntime(OCIRuntime):
    def __init__(self) -> None:
        self.binary = "fake"
        self.root = "/fake"
        self.calls: list[str] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.block = ""

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.block:
            self.entered.set()
            assert self.gate.wait(30)

    def create(self, cid: str, bundle: str, **kw: Any) -> None:
        self._call("create")
        Path(kw["pid_file"]).write_text("4242")

    def start(self, cid: str) -> None:
        self._call("start")

    def pause(self, cid: str) -> None:
        self._call("pause")

    def resume(self, cid: str) -> None:
        self._call("resume")

    def kill(self, cid: str, signal: int, all: bool = False) -> None:
        self._call(f"kill {signal}{' all' if all else ''}")
        raise RuntimeFailure(f"OCI runtime kill failed: container {cid!r} is not running")

    def delete(self, cid: str, force: bool = False) -> None:
        self._call(f"delete{' --force' if force else ''}")


def _init(tmp_path: Path, rt: FakeRuntime) -> Init:
    p = Init("c1", str(tmp_path), Stdio(), rt)
    p.create()
    assert (p.pid, p.status()) == (4242, CREATED)
    return p


def test_state_answers_while_start_runs_and_an_early_exit_wins(tmp_path: Path) -> None:
    rt = FakeRuntime()
    p = _init(tmp_path, rt)
    rt.block = "start"
    t = threading.Thread(target=p.start)
    t.start()
    assert rt.entered.wait(30)
    # The runtime is still starting it: State and Wait are not held up.
    assert p.status() == CREATED
    assert not p.wait(0)
    p.set_exited(7, 123)  # reaped before the runtime's start returned
    rt.gate.set()
    t.join()
    assert (p.status(), p.exit_status, p.exited_at_ns) == (STOPPED, 7, 123)
    assert p.wait(0)


def test_pause_resume_delete_transitions(tmp_path: Path) -> None:
    rt = FakeRuntime()
    p = _init(tmp_path, rt)
    with pytest.raises(FailedPrecondition):
        p.pause()
    p.start()
    p.pause()
    assert p.status() == PAUSED
    with pytest.raises(FailedPrecondition):
        p.delete()
    p.resume()
    assert p.status() == RUNNING
    p.pause()
    p.set_exited(137, 1)  # killed while paused: its cgroup is thawed
    assert rt.calls[-1] == "resume"
    with pytest.raises(NotFound, match="already finished"):
        p.kill(15)
    p.delete()
    assert rt.calls[-1] == "delete"
    with pytest.raises(NotFound):
        p.delete()


def test_created_init_is_deleted_with_force(tmp_path: Path) -> None:
    rt = FakeRuntime()
    p = _init(tmp_path, rt)
    p.delete()
    assert rt.calls == ["create", "delete --force"]
    assert p.wait(0)


# -- exits that come before the pid is known ----------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.published: list[tuple[str, Any]] = []

    def publish(self, topic: str, event: Any) -> None:
        self.published.append((topic, event))


def test_exit_reaped_before_the_pid_is_known_is_matched(tmp_path: Path) -> None:
    from dockyard.shim.container import Container
    from dockyard.shim.service import TaskService

    recorder = _Recorder()
    service = TaskService("ns", recorder, None, lambda: None)  # type: ignore[arg-type]
    rt = FakeRuntime()
    init = Init("c1", str(tmp_path), Stdio(), rt)
    container = Container("c1", str(tmp_path), init, "")
    service._containers["c1"] = container

    service._begin_start()
    service.on_exit(Exit(4242, 3, 99))  # nobody has pid 4242 yet
    service.on_exit(Exit(777, 1, 99))  # an orphan of the container
    init.create()  # the pid file says 4242
    early = service._end_start(container, init)
    assert early is not None and (early.pid, early.status) == (4242, 3)
    assert service._early == {} and service._by_pid == {}
    # With no start under way, an unknown pid's exit is an orphan's: dropped.
    service.on_exit(Exit(4243, 0, 1))
    assert service._early == {}


# -- events ---------------------------------------------------------------------------


class _FlakyClient:
    """A ttrpc client whose first calls fail, as a restarting containerd's would."""

    failures = 2
    sent: list[str] = []

    def __init__(self, address: str) -> None:
        self.closed = False

    def call_typed(self, service: str, method: str, req: Any, cls: Any, **kw: Any) -> Any:
        assert (service, method) == ("containerd.services.events.ttrpc.v1.Events", "Forward")
        if _FlakyClient.failures:
            _FlakyClient.failures -= 1
            raise ConnectionError("connection refused")
        _FlakyClient.sent.append(req.envelope.topic)
        return messages.Empty()

    def close(self) -> None:
        self.closed = True


def test_publisher_retries_in_order_and_drains_on_close() -> None:
    _FlakyClient.sent = []
    pub = Publisher("/run/x.sock", "ns", connect=_FlakyClient, retry_pause=0.01)  # type: ignore[arg-type]
    pub.publish("/tasks/create", messages.TaskCreate(container_id="c"))
    pub.publish("/tasks/start", messages.TaskStart(container_id="c"))
    pub.publish("/tasks/exit", messages.TaskExit(container_id="c"))
    assert pub.close(30)
    assert _FlakyClient.sent == ["/tasks/create", "/tasks/start", "/tasks/exit"]


# -- stats ----------------------------------------------------------------------------


def test_v1_stats_become_v1_metrics() -> None:
    data = {
        "cpu": {
            "usage": {"total": 900, "kernel": 300, "user": 600, "percpu": [400, 500]},
            "throttling": {"periods": 4, "throttledPeriods": 1, "throttledTime": 20},
        },
        "memory": {
            "usage": {"usage": 4096, "max": 8192, "limit": 1 << 30, "failcnt": 2},
            "swap": {"usage": 4096, "limit": 1 << 31, "failcnt": 0},
            "kernel": {"limit": 0, "failcnt": 0},
            "kernelTCP": {"limit": 0, "failcnt": 0},
            "raw": {"cache": 10, "rss": 20, "pgfault": 30, "total_pgmajfault": 40},
        },
        "pids": {"current": 3, "limit": 100},
        "blkio": {"ioServiceBytesRecursive": [{"major": 8, "minor": 0, "op": "Read", "value": 5}]},
        "hugetlb": {"2MB": {"usage": 1, "max": 2, "failcnt": 0}},
    }
    m: Any = stats._v1(data)
    assert (m.cpu.usage.total, m.cpu.usage.kernel, list(m.cpu.usage.per_cpu)) == (
        900,
        300,
        [400, 500],
    )
    assert m.cpu.throttling.throttled_time == 20
    assert (m.memory.usage.usage, m.memory.usage.max, m.memory.usage.failcnt) == (4096, 8192, 2)
    assert (m.memory.cache, m.memory.rss, m.memory.pg_fault, m.memory.total_pg_maj_fault) == (
        10,
        20,
        30,
        40,
    )
    assert (m.pids.current, m.pids.limit) == (3, 100)
    entry = m.blkio.io_service_bytes_recursive[0]
    assert (entry.major, entry.op, entry.value) == (8, "Read", 5)
    assert (m.hugetlb[0].pagesize, m.hugetlb[0].max) == ("2MB", 2)
    assert messages.pack(m).type_url == "io.containerd.cgroups.v1.Metrics"


def test_v2_stats_become_v2_metrics() -> None:
    data = {
        "cpu": {"usage": {"total": 5000, "user": 3000, "kernel": 2000}, "throttling": {}},
        "memory": {
            "usage": {"usage": 1000, "limit": 2000, "failcnt": 1},
            "swap": {"usage": 1500, "limit": 4000},
            "raw": {"anon": 7, "file": 8, "pgfault": 9},
        },
        "pids": {"current": 2, "limit": 10},
        "blkio": {
            "ioServiceBytesRecursive": [
                {"major": 8, "minor": 0, "op": "Read", "value": 100},
                {"major": 8, "minor": 0, "op": "Write", "value": 200},
            ]
        },
    }
    m: Any = stats._v2(data)
    assert (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec) == (5, 3, 2)
    assert (m.memory.usage, m.memory.usage_limit, m.memory.swap_usage) == (1000, 2000, 500)
    assert (m.memory.anon, m.memory.file, m.memory.pgfault) == (7, 8, 9)
    assert (m.pids.current, m.pids.limit) == (2, 10)
    assert [(e.major, e.rbytes, e.wbytes) for e in m.io.usage] == [(8, 100, 200)]
    assert messages.pack(m).type_url == "io.containerd.cgroups.v2.Metrics"


# -- the reaper (in a process of its own: it reaps every child of its process) ----------------

REAPER_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading
    from dockyard.runtime import libc
    from dockyard.shim.reaper import Reaper, spawn

    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    others = []
    reaper = Reaper(on_exit=others.append)
    done = threading.Event()

    def loop():
        while not done.is_set():
            if signal.sigtimedwait({signal.SIGCHLD}, 0.2) is not None:
                reaper.reap()

    t = threading.Thread(target=loop)
    t.start()
    # A command: its exit goes to its waiter, even if it exits at once.
    results = [reaper.launch(["/bin/sh", "-c", f"exit {i}"]).wait() for i in range(20)]
    killed = reaper.launch(["/bin/sh", "-c", "kill -9 $$"]).wait()
    # An orphan: the child exits, its child is reparented here and reaped.
    r, w = os.pipe()
    cmd = reaper.launch(["/bin/sh", "-c", "sleep 1000 & echo $!"], stdout=w)
    os.close(w)
    assert cmd.wait() == 0
    orphan = int(os.read(r, 100))
    # Not blocked in the command: its signal mask was reset.
    blocked = open(f"/proc/{orphan}/status").read().split("SigBlk:")[1].split()[0]
    os.kill(orphan, signal.SIGTERM)
    while not any(e.pid == orphan for e in others):
        signal.sigtimedwait((), 0.05)
    done.set()
    t.join()
    status = [e.status for e in others if e.pid == orphan][0]
    print(results == list(range(20)), killed, status, int(blocked, 16))
    """
)


def test_reaper_hands_each_exit_to_its_waiter_or_on_exit() -> None:
    p = subprocess.run(
        [sys.executable, "-c", REAPER_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])),
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "137", str(128 + 15), "0"]


def test_init_whose_console_socket_fails_leaves_no_fd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminal's console socket that cannot be made (here: no $TMPDIR) fails
    the create before the runtime runs, and the stdio opened for it is closed."""
    rt = FakeRuntime()
    p = Init("c1", str(tmp_path), Stdio(terminal=True), rt)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    before = _open_fds()
    with pytest.raises(OSError):
        p.create()
    assert _open_fds() == before
    assert rt.calls == []


def test_resize_takes_sizes_past_16_bits_as_containerd_does() -> None:
    """The request's sizes are uint32, a winsize's 16 bits: cut, as Go's uint16()."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    io = ProcessIO(Stdio(terminal=True))
    try:
        io.attach_console(os.dup(master))
        io.resize(65536 + 100, 65536 * 3 + 40)
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))
        assert (cols, rows) == (100, 40)
    finally:
        io.close()
        os.close(master)
        os.close(slave)


# -- the task service over processes whose runtime is fake ------------------------------


class _OOMRecorder:
    def __init__(self) -> None:
        self.watched: list[str] = []

    def add(self, container_id: str, paths: dict[str, str]) -> None:
        self.watched.append(container_id)

    def remove(self, container_id: str) -> None:
        self.watched = [c for c in self.watched if c != container_id]


def _service_with(tmp_path: Path, rt: FakeRuntime) -> tuple[Any, Any]:
    from dockyard.shim.container import Container
    from dockyard.shim.service import TaskService

    service = TaskService("ns", _Recorder(), None, lambda: None)  # type: ignore[arg-type]
    container = Container("c1", str(tmp_path), _init(tmp_path, rt), "")
    service._containers["c1"] = container
    return service, container


def test_oom_is_watched_once_and_only_for_a_start_that_may_run(tmp_path: Path) -> None:
    """A Start refused (started already, or deleted by a Delete that got there
    first) adds no second watch: it would publish each OOM kill twice, or keep
    a deleted container's cgroup watched for ever."""
    service, container = _service_with(tmp_path, FakeRuntime())
    container.cgroup_paths = {"": str(tmp_path)}
    oom = service._oom = _OOMRecorder()
    service.start(messages.StartRequest(id="c1"), None)
    with pytest.raises(FailedPrecondition):
        service.start(messages.StartRequest(id="c1"), None)
    assert oom.watched == ["c1"]

    # Start racing Delete: the Delete ran first, the Start still holds the container.
    service, container = _service_with(tmp_path, FakeRuntime())
    container.cgroup_paths = {"": str(tmp_path)}
    oom = service._oom = _OOMRecorder()
    container.init.delete()
    with pytest.raises(FailedPrecondition):
        service.start(messages.StartRequest(id="c1"), None)
    assert oom.watched == []


def test_exec_reaped_but_not_yet_reported_is_not_signalled(tmp_path: Path) -> None:
    """Between the reap of an exec and its reported exit (its output still being
    copied) its pid is free for the kernel to give to another process: a Kill
    must not signal that pid (containerd marks the exec exited when reaped)."""

    service, container = _service_with(tmp_path, FakeRuntime())
    container.init.start()
    ex = container.add_exec("e1", Stdio(), {})
    # A process that got the exec's pid after the exec was reaped.
    other = subprocess.Popen(["sleep", "60"])
    released = threading.Event()
    try:
        ex.pid, ex.state = other.pid, RUNNING
        ex.wait_output = lambda: released.wait(30)
        service._by_pid[ex.pid] = (container, ex)
        service.on_exit(Exit(ex.pid, 0, 1))
        with pytest.raises(NotFound, match="already finished"):
            ex.kill(9)
        assert other.poll() is None, "the signal went to another process"
    finally:
        released.set()
        other.kill()
        other.wait()
    assert ex.wait(30)
    assert [t for t, _ in service.publisher.published] == ["/tasks/exit"]


def test_wait_on_a_never_started_exec_returns_when_its_container_is_deleted(
    tmp_path: Path,
) -> None:
    """Once the init is deleted nothing can start or delete its execs: a Wait on
    one never started would hang for ever (a shim serving a sandbox lives on)."""
    service, container = _service_with(tmp_path, FakeRuntime())
    container.init.start()
    ex = container.add_exec("never", Stdio(), {})
    container.init.set_exited(0, 1)
    service.delete(messages.DeleteRequest(id="c1"), None)
    assert ex.wait(5), "Wait on the exec never returns"
    assert ex.status() == STOPPED
    with pytest.raises(FailedPrecondition):
        ex.start()
