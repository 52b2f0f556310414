"""The shim template: shims forked from it, and ``start`` without it.

containerd never sets ``DOCKYARD_SHIM_TEMPLATE`` (dockyard-supervisor does),
so these tests drive the shim binary's ``start`` action with it set, as the
supervisor runs it, and the task API over ttrpc as in test_task_api.py.
Each test that ends a template has one of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockyard.api.runtime.task.v2 import shim_pb2 as api
from dockyard.api.types.task import task_pb2 as task_types
from dockyard.shim import template as tpl
from dockyard.shim.template import Template, TemplateError, fork_shim
from tests.compat import host
from tests.compat.host import ppid
from tests.conftest import Bundle
from tests.shim.conftest import ShimEnv
from tests.shim.harness import ShimUnderTest, rmtree, runc_options, shim_binary, short_dir

Started = Callable[..., ShimUnderTest]


def session(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[3])


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if ppid(int(name)) == pid:
                    found.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def gone(pid: int) -> bool:
    """Exited and reaped: no zombie is left."""
    return not os.path.exists(f"/proc/{pid}")


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


@pytest.fixture
def own_template() -> Iterator[Template]:
    """A template for one test (which may end it)."""
    base = short_dir("dyt")
    t = Template(str(base / "template.sock"), shim_binary=shim_binary())
    try:
        t.start()
        yield t
    finally:
        spares = children(t.pid) if t.alive() else []
        t.stop()
        for pid in spares:
            host.stop_pid(pid)
        rmtree(base)


def _env(base: Path, template_socket: str) -> ShimEnv:
    return ShimEnv(base, {tpl.ENV: template_socket})


@pytest.fixture
def templated(own_template: Template) -> Iterator[ShimEnv]:
    """Shims started through ``own_template``."""
    created = host.CreatedDirs("/run/containerd", "/run/containerd/s")
    base = short_dir("dys")
    env = _env(base, own_template.socket_path)
    try:
        yield env
    finally:
        try:
            env.cleanup()
        finally:
            rmtree(base)
            created.cleanup()


def create(shim: ShimUnderTest, env: ShimEnv, bundle: Bundle) -> int:
    req = api.CreateTaskRequest(
        id=shim.id, bundle=str(bundle.path), options=runc_options(root=str(env.runtime_root))
    )
    return shim.call("Create", req, api.CreateTaskResponse).pid


def run_to_exit(shim: ShimUnderTest, env: ShimEnv, bundle: Bundle, *args: str) -> int:
    bundle.set_args(*args).write()
    create(shim, env, bundle)
    shim.start_task()
    status = shim.wait().exit_status
    shim.delete()
    return status


def test_shim_is_forked_by_the_template(
    templated: ShimEnv, own_template: Template, bundle: Bundle
) -> None:
    bundle.set_args("sh", "-c", "exit 7").write()
    shim = templated.shim(bundle)
    shim.start()
    # The template's child, in a session of its own, in the bundle.
    assert ppid(shim.pid) == own_template.pid
    assert session(shim.pid) == shim.pid
    assert os.readlink(f"/proc/{shim.pid}/cwd") == str(bundle.path)
    # ps shows it as the shim it is, not as the template.
    with open(f"/proc/{shim.pid}/cmdline", "rb") as f:
        argv = f.read().rstrip(b"\0").decode().split("\0")
    assert argv[0] == shim_binary() and argv[argv.index("-id") + 1] == shim.id, argv
    with open(f"/proc/{shim.pid}/comm") as f:
        assert f.read().strip() == "containerd-shim"
    # Its stdio is /dev/null (no log FIFO here); nothing of the template's is open.
    for fd in ("0", "1", "2"):
        assert os.readlink(f"/proc/{shim.pid}/fd/{fd}") == "/dev/null"
    assert not socket_inodes(shim.pid) & socket_inodes(own_template.pid)
    pid = create(shim, templated, bundle)
    shim.start_task()
    assert shim.wait().exit_status == 7
    shim.delete()
    # Its environment is start's: the events went to TTRPC_ADDRESS.
    templated.sink.wait_for(shim.id, "/tasks/delete")
    topics = [t for t, _ in templated.sink.events(shim.id)]
    assert topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    exited = next(e for t, e in templated.sink.events(shim.id) if t == "/tasks/exit")
    assert exited.pid == pid


def test_each_shim_is_its_own_and_the_template_reaps_them(
    templated: ShimEnv, own_template: Template, make_bundle: Callable[[], Bundle]
) -> None:
    bundles = [make_bundle().set_args("true").write() for _ in range(3)]
    shims = [templated.shim(b) for b in bundles]
    for s in shims:
        s.start()
    assert len({s.pid for s in shims}) == 3
    assert all(ppid(s.pid) == own_template.pid for s in shims)
    for s, b in zip(shims, bundles, strict=True):
        assert run_to_exit(s, templated, b, "true") == 0
    first = shims[0]
    first.empty("Shutdown", api.ShutdownRequest(id=first.id))
    host.wait_for(lambda: gone(first.pid), 30, "the template to reap the shim")
    assert all(s.alive() for s in shims[1:])


def test_shims_outlive_the_template_and_start_falls_back(
    templated: ShimEnv, own_template: Template, make_bundle: Callable[[], Bundle]
) -> None:
    before = make_bundle()
    before.set_args("sleep", "1000").write()
    running = templated.shim(before)
    running.start()
    create(running, templated, before)
    running.start_task()
    spares = [p for p in children(own_template.pid) if p != running.pid]
    assert spares, "the template keeps a spare"

    # The template dies without cleaning up: its socket file stays behind.
    os.kill(own_template.pid, signal.SIGKILL)
    host.wait_for(lambda: not own_template.alive(), 30, "the template to die")
    assert os.path.exists(own_template.socket_path)
    for spare in spares:
        host.wait_for(lambda s=spare: not host.alive(s), 30, "the spare to die with it")  # type: ignore[misc]

    assert running.alive()
    assert running.state().status == task_types.RUNNING
    running.kill(signal.SIGKILL)
    assert running.wait().exit_status == 137
    running.delete()

    # A new shim is started as a command: start never fails for the template.
    after = make_bundle().set_args("true").write()
    fallback = templated.shim(after)
    fallback.start()
    assert ppid(fallback.pid) != own_template.pid
    assert run_to_exit(fallback, templated, after, "sh", "-c", "exit 3") == 3


def test_no_template_answering_is_a_warning_in_the_log(bundle: Bundle, tmp_path: Path) -> None:
    """A template that is not there: start spawns the shim, and says so in the log FIFO."""
    created = host.CreatedDirs("/run/containerd", "/run/containerd/s")
    base = short_dir("dys")
    env = _env(base, str(base / "no-such-template.sock"))
    bundle.set_args("true").write()
    log = bundle.path / "log"
    os.mkfifo(log)
    reader = os.open(log, os.O_RDONLY | os.O_NONBLOCK)
    try:
        shim = env.shim(bundle)
        shim.start()
        assert ppid(shim.pid) != os.getpid()
        assert run_to_exit(shim, env, bundle, "true") == 0
        text = os.read(reader, 65536).decode()
        assert "level=warning" in text and "shim template" in text, text
        assert "starting the shim as a command" in text
    finally:
        os.close(reader)
        try:
            env.cleanup()
        finally:
            rmtree(base)
            created.cleanup()


def test_start_shim_in_process(
    templated: ShimEnv, own_template: Template, make_bundle: Callable[[], Bundle]
) -> None:
    """``Template.start_shim``: start's work done by the supervisor itself."""
    bundle = make_bundle().set_args("sh", "-c", "exit 5").write()
    shim = templated.shim(bundle)
    address = own_template.start_shim(
        namespace=shim.namespace,
        id=shim.id,
        address=shim.containerd_address,
        bundle=str(bundle.path),
        env=shim.env,
    )
    assert (bundle.path / "address").read_text() == address
    shim.attach(address)
    assert ppid(shim.pid) == own_template.pid
    with open(f"/proc/{shim.pid}/oom_score_adj") as f, open("/proc/self/oom_score_adj") as g:
        assert int(f.read()) == min(int(g.read()) + 1, 1000)
    assert run_to_exit(shim, templated, bundle, "sh", "-c", "exit 5") == 5
    templated.sink.wait_for(shim.id, "/tasks/delete")
    # The same container again: the shim serving it already is the answer.
    again = own_template.start_shim(
        namespace=shim.namespace,
        id=shim.id,
        address=shim.containerd_address,
        bundle=str(bundle.path),
        env=shim.env,
    )
    assert again == address

    # A template that is gone: an error, and nothing left behind.
    other = make_bundle().set_args("true").write()
    late = templated.shim(other)
    own_template.stop()
    with pytest.raises(TemplateError):
        own_template.start_shim(
            namespace=late.namespace,
            id=late.id,
            address=late.containerd_address,
            bundle=str(other.path),
            env=late.env,
        )
    socket_file = (other.path / "address").read_text().removeprefix("unix://")
    assert not os.path.exists(socket_file)


def _listener(base: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(base / f"l{uuid.uuid4().hex[:6]}.sock"))
    s.listen()
    return s


def test_template_refuses_what_is_not_a_shim_start(own_template: Template, tmp_path: Path) -> None:
    shim = shim_binary()
    good = [shim, "-namespace", "ns", "-id", "c1", "-address", "/x.sock"]
    base = short_dir("dyr")
    cwd = os.getcwd()
    os.chdir(base)
    try:
        with _listener(base) as listening:
            cases = {
                "this template forks": ["/bin/sh", *good[1:]],
                "not the long-running shim's": [*good, "start"],
                "-socket": [*good[:-2], "-socket", "/tmp/x.sock"],
                "flag provided but not defined": [*good, "-evil", "1"],
            }
            for needle, argv in cases.items():
                with pytest.raises(TemplateError) as refused:
                    fork_shim(own_template.socket_path, argv, listening.fileno())
                assert needle in str(refused.value) or "long-running" in str(refused.value)
            with (
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unbound,
                pytest.raises(TemplateError, match="not listening"),
            ):
                fork_shim(own_template.socket_path, good, unbound.fileno())
            r, w = os.pipe()
            try:
                with pytest.raises(TemplateError, match="not a unix stream socket"):
                    fork_shim(own_template.socket_path, good, r)
            finally:
                os.close(r)
                os.close(w)
            # Raw requests: not JSON, no fd, a relative cwd.
            for payload, fds, needle in (
                (b"\x00\x00\x00\x03abc", [], "not JSON"),
                (None, [], "got 0 fds"),
                ({"argv": good, "env": {}, "cwd": "rel", "umask": 18}, [listening.fileno()], "cwd"),
                (
                    {"argv": good, "env": {"A=B": "x"}, "cwd": "/", "umask": 18},
                    [listening.fileno()],
                    "env",
                ),
            ):
                assert needle in _raw(own_template.socket_path, payload, fds, good)

            # Still serving: a good request is forked, and ends when start goes away.
            forked = fork_shim(own_template.socket_path, good, listening.fileno())
            assert ppid(forked.pid) == own_template.pid
            forked.cancel()
            host.wait_for(lambda: gone(forked.pid), 30, "the cancelled shim to end")
    finally:
        os.chdir(cwd)
        rmtree(base)


def _raw(path: str, payload: object, fds: list[int], argv: list[str]) -> str:
    """Send one raw request; the template's error message."""
    from dockyard import jsonio

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        if payload is None:
            payload = {"argv": argv, "env": {}, "cwd": "/", "umask": 18}
        if isinstance(payload, dict):
            body = jsonio.dumps(payload).encode()
            payload = len(body).to_bytes(4, "big") + body
        assert isinstance(payload, bytes)
        if fds:
            socket.send_fds(s, [payload], fds)
        else:
            s.sendall(payload)
        size = int.from_bytes(s.recv(4), "big")
        reply = jsonio.loads(s.recv(size))
    assert isinstance(reply, dict) and "error" in reply, reply
    return str(reply["error"])


PEER = """
import os, socket, sys, time
if sys.argv[2] == "nobody":
    os.setgid(65534)
    os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
time.sleep(30)
"""


@pytest.mark.parametrize(
    ("how", "needle"),
    [("nobody", "only root may use"), ("unshare", "another mnt namespace")],
)
def test_only_root_in_the_template_s_namespaces_may_ask(how: str, needle: str) -> None:
    host.need("unshare")
    base = short_dir("dyp")
    os.chmod(base, 0o755)
    path = str(base / "peer.sock")
    spare = tpl._Spare(None, shim_binary())
    prefix = ["unshare", "--mount"] if how == "unshare" else []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen()
        server.settimeout(30)
        peer = subprocess.Popen([*prefix, sys.executable, "-c", PEER, path, how])
        try:
            conn, _ = server.accept()
            with conn, pytest.raises(TemplateError, match=needle):
                spare._check_peer(conn)
        finally:
            host.stop_process(peer)
    rmtree(base)


def test_template_socket_is_private_and_stop_leaves_nothing(own_template: Template) -> None:
    path = own_template.socket_path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert os.stat(path).st_uid == 0
    pid = own_template.pid
    host.wait_for(lambda: bool(children(pid)), 30, "the template's spare")
    spares = children(pid)
    assert len(spares) == 1
    own_template.stop()
    assert not os.path.exists(path)
    assert gone(pid)
    for spare in spares:
        host.wait_for(lambda s=spare: not host.alive(s), 30, "the spare to end")  # type: ignore[misc]


def test_template_ends_with_the_thread_that_started_it() -> None:
    """die_with_parent: a supervisor that dies without stopping its template leaves none."""
    base = short_dir("dyd")
    t = Template(str(base / "t.sock"), shim_binary=shim_binary(), die_with_parent=True)
    release = threading.Event()

    def starter() -> None:
        t.start()
        release.wait(60)

    thread = threading.Thread(target=starter, daemon=True)
    spares: list[int] = []
    try:
        thread.start()
        host.wait_for(lambda: t.pid > 0 and bool(children(t.pid)), 30, "the template's spare")
        spares = children(t.pid)
        assert t.alive()
        release.set()
        thread.join(60)
        host.wait_for(lambda: not t.alive(), 30, "the template to end with its starter")
        assert not os.path.exists(t.socket_path)
        for spare in spares:
            host.wait_for(lambda s=spare: not host.alive(s), 30, "the spare to end")  # type: ignore[misc]
    finally:
        release.set()
        t.stop()
        for pid in spares:
            host.stop_pid(pid)
        rmtree(base)


def test_template_refuses_an_open_directory() -> None:
    base = short_dir("dyo")
    os.chmod(base, 0o755)
    t = Template(str(base / "t.sock"), shim_binary=shim_binary(), stderr=subprocess.DEVNULL)
    try:
        with pytest.raises(Exception, match="exited before it was ready"):
            t.start()
        assert not t.alive()
    finally:
        t.stop()
        rmtree(base)


def test_type_cache_reset_runs_no_class_code() -> None:
    """The template's type-cache reset looks a missing name up on every class
    (for their version tags): in a fresh interpreter, with a metaclass whose
    ``__getattr__`` and a class whose ``__getattribute__`` would record the
    call, nothing of theirs runs and lookups still work afterwards."""
    code = """
import sys
from dockyard.shim import template
calls = []
class Meta(type):
    def __getattr__(cls, name):
        calls.append(("meta", name))
        raise AttributeError(name)
class Loud(metaclass=Meta):
    def __getattribute__(self, name):
        calls.append(("instance", name))
        return object.__getattribute__(self, name)
    value = 7
class Child(Loud):
    pass
template._reset_type_cache()
assert calls == [], calls
assert Child.value == 7 and int.__add__(2, 3) == 5
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
