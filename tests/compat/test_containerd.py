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
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.compat import host
from tests.images import ImageArchive, build_image_archive


@dataclass
class Containerd:
    """A private containerd and a ``ctr`` bound to its socket and namespace."""

    base: Path
    namespace: str
    image: ImageArchive
    proc: subprocess.Popen[bytes] | None = None
    # The runtime the current test runs with, for host.HUNG.
    runtime: str = ""
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.base / "containerd.log"

    @property
    def address(self) -> str:
        return str(self.base / "containerd.sock")

    def ctr(
        self, *args: str, check: bool = True, timeout: float = host.COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        try:
            p = subprocess.run(
                ["ctr", "--address", self.address, "--namespace", self.namespace, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            if self.runtime:
                host.HUNG.add(("containerd", self.runtime))
            raise
        if check and p.returncode != 0:
            raise AssertionError(
                f"ctr {' '.join(args)} exited {p.returncode}\n"
                f"stdout: {p.stdout}\nstderr: {p.stderr}\n"
                f"containerd log:\n{host.tail(self.log)}"
            )
        return p

    def start(self) -> None:
        config = self.base / "config.toml"
        config.write_text(host.CONTAINERD_CONFIG.format(base=self.base))
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited early:\n{host.tail(self.log)}")
            if not Path(self.address).exists():
                return False
            return self.ctr("version", check=False, timeout=10).returncode == 0

        host.wait_for(ready, 30, "containerd to serve")

    def tasks(self) -> dict[str, str]:
        """Task id -> status (RUNNING, STOPPED, ...)."""
        out = self.ctr("task", "ls").stdout.splitlines()[1:]
        return {cols[0]: cols[2] for cols in (line.split() for line in out) if len(cols) >= 3}

    def remove(self, cid: str) -> None:
        """Kill, delete the task and the container, whatever state they are in.

        Teardown goes on if a runtime hangs: each step has a short time limit,
        and what is left then is ended by ``stop`` and the cgroup clean-up.
        """
        quick = host.TEARDOWN_TIMEOUT
        try:
            if cid in self.tasks():
                self.ctr("task", "kill", "--signal", "SIGKILL", cid, check=False, timeout=quick)
                try:
                    host.wait_for(
                        lambda: self.tasks().get(cid) in (None, "STOPPED"),
                        10,
                        f"task {cid} to stop",
                    )
                finally:
                    self.ctr("task", "delete", "--force", cid, check=False, timeout=quick)
            self.ctr("container", "delete", cid, check=False, timeout=quick)
        except (subprocess.TimeoutExpired, TimeoutError, AssertionError):
            pass

    def stop(self) -> None:
        if self.proc is not None:
            host.stop_process(self.proc)
        # Shims outlive containerd by design; any still running are ours to end.
        for pid in host.pids_mentioning(f"{self.base}/"):
            host.stop_pid(pid)


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    host.need("containerd", "ctr", "containerd-shim-runc-v2")
    base = tmp_path_factory.mktemp("ctrd")
    # The shim puts its socket in a fixed place; ctr run gets a private fifo dir.
    created = host.CreatedDirs("/run/containerd", "/run/containerd/s")
    namespace = "dockyard-" + uuid.uuid4().hex[:8]
    image = build_image_archive(base / "busybox.tar")
    daemon = Containerd(base, namespace, image)
    try:
        daemon.start()
        daemon.ctr("images", "import", str(image.path))
        yield daemon
        listed = daemon.ctr("container", "ls", "--quiet", timeout=host.TEARDOWN_TIMEOUT)
        for cid in set(daemon.tasks()) | set(listed.stdout.split()):
            daemon.remove(cid)
    finally:
        daemon.stop()
        host.remove_cgroups(namespace)
        host.unmount_under(base)
        created.cleanup()
        host.remove_tree(base)


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
