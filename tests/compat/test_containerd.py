"""containerd and its runc shim drive the runtime: ``ctr run --runc-binary``.

containerd-shim-runc-v2 runs whichever runc-compatible binary the container's
runtime options name (``BinaryName``, set by ``ctr run --runc-binary``), with
the flags runc takes: create/start/exec/kill/delete/state with ``--root``,
``--log``, ``--log-format json``, ``--pid-file``, ``--console-socket`` and so
on. The same tests with ``runc`` check the harness itself.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.compat import host
from tests.compat.daemons import Containerd, private_containerd


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    with private_containerd(tmp_path_factory.mktemp("ctrd")) as daemon:
        yield daemon


class Runner:
    """Runs containers of the busybox image with one runtime binary; removes them after."""

    def __init__(self, daemon: Containerd, binary: str) -> None:
        self.daemon = daemon
        self.binary = binary
        self.ids: list[str] = []

    def new_id(self) -> str:
        cid = "c" + uuid.uuid4().hex[:12]
        self.ids.append(cid)
        return cid

    def run(self, *flags: str, cid: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        base = self.daemon.base
        return self.daemon.ctr(
            "run",
            "--runc-binary",
            self.binary,
            "--runc-root",
            str(base / "runc"),
            "--fifo-dir",
            str(base / "fifo"),
            *flags,
            self.daemon.image.ref,
            cid,
            *args,
            check=False,
        )

    def exec(self, cid: str, exec_id: str, *args: str) -> subprocess.CompletedProcess[str]:
        fifo = str(self.daemon.base / "fifo")
        return self.daemon.ctr(
            "task", "exec", "--fifo-dir", fifo, "--exec-id", exec_id, cid, *args, check=False
        )


@pytest.fixture(params=host.RUNTIMES)
def runner(containerd: Containerd, request: pytest.FixtureRequest) -> Iterator[Runner]:
    host.fail_if_hung("containerd", request.param)
    r = Runner(containerd, host.runtime_binary(request.param))
    containerd.runtime = request.param
    try:
        yield r
    finally:
        containerd.runtime = ""
        for cid in r.ids:
            containerd.remove(cid)
    # What a runtime's delete must have removed: the container's cgroups.
    leftovers = [str(p) for d in host.cgroup_dirs(containerd.namespace) for p in d.iterdir()]
    leftovers = [p for p in leftovers if any(p.endswith("/" + cid) for cid in r.ids)]
    assert not leftovers, f"cgroups left behind by the runtime: {leftovers}"


def test_run_rm_prints_hello(runner: Runner) -> None:
    p = runner.run("--rm", cid=runner.new_id(), args=["echo", "hello"])
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hello\n"


def test_run_rm_passes_exit_code(runner: Runner) -> None:
    p = runner.run("--rm", cid=runner.new_id(), args=["sh", "-c", "exit 3"])
    assert p.returncode == 3, p.stderr


def test_run_rm_in_new_namespaces(runner: Runner) -> None:
    p = runner.run("--rm", cid=runner.new_id(), args=["sh", "-c", "echo $$; id -u; pwd"])
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1", "0", "/"]


def test_run_detached_exec_kill(runner: Runner, containerd: Containerd) -> None:
    cid = runner.new_id()
    p = runner.run("--detach", cid=cid, args=["sleep", "1000"])
    assert p.returncode == 0, p.stderr
    assert containerd.tasks().get(cid) == "RUNNING"

    p = runner.exec(cid, "x", "echo", "hi")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hi\n"

    p = runner.exec(cid, "y", "sh", "-c", "exit 4")
    assert p.returncode == 4, p.stderr

    containerd.ctr("task", "kill", "--signal", "SIGKILL", cid)
    host.wait_for(lambda: containerd.tasks().get(cid) == "STOPPED", 10, f"task {cid} to stop")
    containerd.ctr("task", "delete", cid)
    containerd.ctr("container", "delete", cid)
    assert cid not in containerd.tasks()
