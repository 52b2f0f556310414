"""The real containerd runs dockyard's shim: ``ctr run --runtime io.containerd.dockyard.v2``.

containerd finds ``containerd-shim-dockyard-v2`` on its PATH (the venv's bin
directory first), starts it with runtime v2's ``start`` action, talks to it
over ttrpc, receives its events on its own ttrpc socket and runs its
``delete`` action once it is gone. Each test runs with the shim's default
runtime, dockyard-runtime, and with runc, named in a runtime config file
(``--runtime-config-path``: ctr 1.6 sends ``--runc-binary`` only to
io.containerd.runc.v2).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.shim import manager
from tests.compat import host
from tests.compat.daemons import Containerd, private_containerd
from tests.shim.harness import BIN_DIR, shim_binary

RUNTIME = "io.containerd.dockyard.v2"
# Where the shim's default runtime keeps its state (namespace appended).
DOCKYARD_STATE = "/run/dockyard/runtime"


@contextlib.contextmanager
def containerd_with_our_shim(base: Path, **env: str) -> Iterator[Containerd]:
    """A private containerd that finds our shim first on its PATH (``env``: more
    of its environment); the runtime state it leaves under DOCKYARD_STATE goes."""
    shim_binary()
    full_env = dict(os.environ, PATH=f"{BIN_DIR}:{os.environ.get('PATH', '')}", **env)
    created = host.CreatedDirs("/run/dockyard", DOCKYARD_STATE)
    try:
        with private_containerd(base, env=full_env) as daemon:
            try:
                yield daemon
            finally:
                # The runtime's state directory of this namespace, empty by now.
                try:
                    os.rmdir(os.path.join(DOCKYARD_STATE, daemon.namespace))
                except OSError:
                    pass
    finally:
        created.cleanup()


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    with containerd_with_our_shim(tmp_path_factory.mktemp("ctrd")) as daemon:
        yield daemon


class Runner:
    """``ctr run`` with dockyard's shim and one runtime; removes its containers after."""

    def __init__(self, daemon: Containerd, runtime: str) -> None:
        self.daemon = daemon
        self.runtime = runtime
        self.ids: list[str] = []
        self.flags = ["--runtime", RUNTIME, "--fifo-dir", str(daemon.base / "fifo")]
        if runtime != "dockyard-runtime":
            config = daemon.base / f"{runtime}.toml"
            config.write_text(
                f'BinaryName = "{runtime}"\nRoot = "{daemon.base / "runtime-state"}"\n'
            )
            self.flags += ["--runtime-config-path", str(config)]

    def new_id(self) -> str:
        cid = "c" + uuid.uuid4().hex[:12]
        self.ids.append(cid)
        return cid

    def run(self, *flags: str, cid: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        return self.daemon.ctr(
            "run", *self.flags, *flags, self.daemon.image.ref, cid, *args, check=False
        )

    def exec(self, cid: str, exec_id: str, *args: str) -> subprocess.CompletedProcess[str]:
        fifo = str(self.daemon.base / "fifo")
        return self.daemon.ctr(
            "task", "exec", "--fifo-dir", fifo, "--exec-id", exec_id, cid, *args, check=False
        )


@pytest.fixture(params=["dockyard-runtime", "runc"])
def runner(containerd: Containerd, request: pytest.FixtureRequest) -> Iterator[Runner]:
    host.fail_if_hung("containerd", f"shim+{request.param}")
    r = Runner(containerd, request.param)
    containerd.runtime = f"shim+{request.param}"
    try:
        yield r
    finally:
        containerd.runtime = ""
        for cid in r.ids:
            containerd.remove(cid)
    for cid in r.ids:
        # Each shim ended and its socket went with it.
        assert not host.pids_mentioning(f"-id {cid} "), f"shim of {cid} still runs"
        address = manager.socket_address(containerd.address, containerd.namespace, cid)
        assert not os.path.exists(manager.socket_path(address)), f"socket of {cid} left"


def test_run_rm_prints_hello(runner: Runner) -> None:
    p = runner.run("--rm", cid=runner.new_id(), args=["echo", "hello"])
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hello\n"


def test_run_rm_passes_exit_code(runner: Runner) -> None:
    p = runner.run("--rm", cid=runner.new_id(), args=["sh", "-c", "echo out; exit 3"])
    assert (p.returncode, p.stdout) == (3, "out\n"), p.stderr


def test_much_output_arrives_whole(runner: Runner) -> None:
    # More than a pipe's and a FIFO's buffer: all of it before the exit.
    p = runner.run("--rm", cid=runner.new_id(), args=["sh", "-c", "seq 1 50000"])
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [str(i) for i in range(1, 50001)]


def test_detached_task_lifecycle(runner: Runner, containerd: Containerd) -> None:
    cid = runner.new_id()
    p = runner.run("--detach", cid=cid, args=["sleep", "1000"])
    assert p.returncode == 0, p.stderr
    assert containerd.tasks().get(cid) == "RUNNING"

    pid = containerd.ctr("task", "ls").stdout.split(cid)[1].split()[0]
    ps = containerd.ctr("task", "ps", cid).stdout
    assert pid in ps.split()

    p = runner.exec(cid, "x", "echo", "hi")
    assert (p.returncode, p.stdout) == (0, "hi\n"), p.stderr
    p = runner.exec(cid, "y", "sh", "-c", "exit 4")
    assert p.returncode == 4, p.stderr

    containerd.ctr("task", "pause", cid)
    assert containerd.tasks().get(cid) == "PAUSED"
    containerd.ctr("task", "resume", cid)
    assert containerd.tasks().get(cid) == "RUNNING"

    metrics = containerd.ctr("task", "metrics", cid).stdout
    assert "pids.current" in metrics and "memory.usage" in metrics

    containerd.ctr("task", "kill", "--signal", "SIGKILL", cid)
    host.wait_for(lambda: containerd.tasks().get(cid) == "STOPPED", 30, f"task {cid} to stop")
    containerd.ctr("task", "delete", cid)
    containerd.ctr("container", "delete", cid)
    assert cid not in containerd.tasks()
    bundle = containerd.base / "state" / "io.containerd.runtime.v2.task" / containerd.namespace
    assert not (bundle / cid).exists()


def test_terminal(runner: Runner, containerd: Containerd) -> None:
    """``ctr run -t`` needs a terminal of its own: ``script`` gives it one."""
    host.need("script")
    cid = runner.new_id()
    ctr = [
        "ctr",
        "--address",
        containerd.address,
        "--namespace",
        containerd.namespace,
        "run",
        *runner.flags,
        "-t",
        "--rm",
        containerd.image.ref,
        cid,
        "sh",
        "-c",
        "tty; echo term-ok; exit 5",
    ]
    p = subprocess.run(
        ["script", "-qec", shlex.join(ctr), os.devnull],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=host.COMMAND_TIMEOUT,
        check=False,
    )
    assert p.returncode == 5, p.stdout + p.stderr
    assert "/dev/pts/" in p.stdout and "term-ok" in p.stdout, p.stdout


def test_exec_of_a_missing_binary_fails_with_the_runtime_message(
    runner: Runner, containerd: Containerd
) -> None:
    cid = runner.new_id()
    p = runner.run("--detach", cid=cid, args=["sleep", "1000"])
    assert p.returncode == 0, p.stderr
    p = runner.exec(cid, "bad", "/no/such/binary")
    assert p.returncode != 0
    assert "OCI runtime exec failed" in p.stderr, p.stderr
    assert "/no/such/binary" in p.stderr, p.stderr


def test_shim_log_reaches_containerd(runner: Runner, containerd: Containerd) -> None:
    p = runner.run("--rm", cid=runner.new_id(), args=["true"])
    assert p.returncode == 0, p.stderr
    assert "serving the task api" in Path(containerd.log).read_text()


def test_task_outlives_a_containerd_restart(runner: Runner, containerd: Containerd) -> None:
    """The shim keeps its container while containerd is down; containerd reconnects
    to it (the bundle's ``address`` file) and its events reach the new daemon."""
    cid = runner.new_id()
    p = runner.run("--detach", cid=cid, args=["sleep", "1000"])
    assert p.returncode == 0, p.stderr
    assert containerd.proc is not None
    host.stop_process(containerd.proc)
    containerd.start()
    assert containerd.tasks().get(cid) == "RUNNING"
    p = runner.exec(cid, "after", "echo", "still here")
    assert (p.returncode, p.stdout) == (0, "still here\n"), p.stderr
    containerd.ctr("task", "kill", "--signal", "SIGKILL", cid)
    host.wait_for(lambda: containerd.tasks().get(cid) == "STOPPED", 30, f"task {cid} to stop")
    containerd.ctr("task", "delete", cid)
    containerd.ctr("container", "delete", cid)


# -- with a shim template beside containerd ----------------------------------------


@pytest.fixture(scope="module")
def templated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Containerd, int]]:
    """A containerd whose environment names a ``dockyard-shim-template`` (started
    as an operator would, from its launcher): (the daemon, the template's pid)."""
    base = tmp_path_factory.mktemp("ctrd-tpl")
    sock_dir = base / "template"
    sock_dir.mkdir(mode=0o700)
    socket_path = str(sock_dir / "t.sock")
    template = subprocess.Popen(
        [str(BIN_DIR / "dockyard-shim-template"), "--socket", socket_path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert template.stdout is not None
        assert template.stdout.readline() == b"ready\n", "the template did not start"
        with containerd_with_our_shim(base / "ctrd", DOCKYARD_SHIM_TEMPLATE=socket_path) as daemon:
            yield daemon, template.pid
    finally:
        host.stop_process(template)


def test_under_containerd_shims_are_forked_from_a_template(
    templated: tuple[Containerd, int],
) -> None:
    """``DOCKYARD_SHIM_TEMPLATE`` in containerd's environment: our binary's
    ``start`` has the template fork the long-running shim (no interpreter
    start, no imports), which shows its own command line."""
    daemon, template_pid = templated
    runner = Runner(daemon, "dockyard-runtime")
    try:
        p = runner.run("--rm", cid=runner.new_id(), args=["echo", "hello"])
        assert (p.returncode, p.stdout) == (0, "hello\n"), p.stderr
        cid = runner.new_id()
        p = runner.run("--detach", cid=cid, args=["sleep", "1000"])
        assert p.returncode == 0, p.stderr
        init = int(daemon.ctr("task", "ls").stdout.split(cid)[1].split()[0])
        shim = host.ppid(init)
        assert host.ppid(shim) == template_pid, "the shim is the template's child"
        cmdline = Path(f"/proc/{shim}/cmdline").read_bytes().split(b"\0")
        assert b"-id" in cmdline and cid.encode() in cmdline, cmdline
        p = runner.exec(cid, "x", "echo", "hi")
        assert (p.returncode, p.stdout) == (0, "hi\n"), p.stderr
    finally:
        for cid in runner.ids:
            daemon.remove(cid)
    for cid in runner.ids:
        assert not host.pids_mentioning(f"-id {cid} "), f"shim of {cid} still runs"
