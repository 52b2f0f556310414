"""dockerd drives the runtime: ``docker run --runtime <name>``.

dockerd (with the containerd it starts and manages itself) registers extra
runtimes from daemon.json's ``runtimes`` (``--add-runtime``); each runs through
containerd-shim-runc-v2 with that binary. ``runc`` is dockerd's built-in
default and the reference here; ``dockyard`` is ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compat import host
from tests.images import ImageArchive, build_image_archive

# Runtime names as dockerd knows them.
DOCKER_RUNTIME = {"runc": "runc", "dockyard-runtime": "dockyard"}


class Dockerd:
    """A private dockerd (and its managed containerd) and a docker CLI bound to it."""

    def __init__(self, base: Path, cgroup_parent: str) -> None:
        self.base = base
        self.cgroup_parent = cgroup_parent
        self.log = base / "dockerd.log"
        self.sock = base / "docker.sock"
        self.exec_root = base / "exec"
        self.data_root = base / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.containerd_pid: int | None = None
        # The runtime the current test runs with, for host.HUNG.
        self.runtime = ""
        self.env = dict(os.environ, DOCKER_CONFIG=str(base / "cli"))
        self.env.pop("DOCKER_HOST", None)
        self.env.pop("DOCKER_CONTEXT", None)

    def docker(
        self, *args: str, check: bool = True, timeout: float = host.COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        try:
            p = subprocess.run(
                ["docker", "--host", f"unix://{self.sock}", *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=self.env,
            )
        except subprocess.TimeoutExpired:
            if self.runtime:
                host.HUNG.add(("dockerd", self.runtime))
            raise
        if check and p.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {p.returncode}\n"
                f"stdout: {p.stdout}\nstderr: {p.stderr}\n"
                f"dockerd log:\n{host.tail(self.log)}"
            )
        return p

    def start(self, runtimes: dict[str, str]) -> None:
        config = self.base / "daemon.json"
        config.write_text(
            json.dumps(
                {
                    # Else dockerd writes its identity key to /etc/docker.
                    "deprecated-key-path": str(self.base / "key.json"),
                    "runtimes": {name: {"path": path} for name, path in runtimes.items()},
                }
            )
        )
        argv = [
            "dockerd",
            "--config-file",
            str(config),
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.base / "docker.pid"),
            "--host",
            f"unix://{self.sock}",
            # No host networking changes: containers run with --network none.
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            # A cgroup parent of our own, so teardown (and the leak check) can find it.
            f"--cgroup-parent={self.cgroup_parent}",
        ]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited early:\n{host.tail(self.log)}")
            if not self.sock.exists():
                return False
            return self.docker("version", check=False, timeout=10).returncode == 0

        host.wait_for(ready, 60, "dockerd to serve")
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        if pidfile.exists():
            self.containerd_pid = int(pidfile.read_text().strip())

    def remove(self, *names: str) -> None:
        """``docker rm --force``; teardown goes on if a runtime hangs (see ``stop``)."""
        if names:
            try:
                self.docker("rm", "--force", *names, check=False, timeout=host.TEARDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass

    def remove_all(self) -> None:
        try:
            listed = self.docker("ps", "--all", "--quiet", timeout=host.TEARDOWN_TIMEOUT)
        except (subprocess.TimeoutExpired, AssertionError):
            return
        self.remove(*listed.stdout.split())

    def stop(self) -> None:
        if self.proc is not None:
            host.stop_process(self.proc, timeout=30)
        # dockerd stops its containerd on the way out; make sure, by its pid.
        if self.containerd_pid is not None:
            host.stop_pid(self.containerd_pid)
        # Shims (and anything else) that name our temp dir are ours to end.
        for pid in host.pids_mentioning(f"{self.base}/"):
            host.stop_pid(pid)


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dockerd, ImageArchive]]:
    host.need("dockerd", "docker", "containerd", "containerd-shim-runc-v2", "runc")
    base = tmp_path_factory.mktemp("dockerd")
    created = host.CreatedDirs("/run/containerd", "/run/containerd/s")
    # Docker's default parent is /docker; note whether it is ours to remove.
    default_parent_existed = bool(host.cgroup_dirs("docker"))
    cgroup_parent = "dockyard-" + uuid.uuid4().hex[:8] + "-docker"
    daemon = Dockerd(base, "/" + cgroup_parent)
    image = build_image_archive(base / "busybox.tar")
    try:
        daemon.start({"dockyard": host.runtime_binary("dockyard-runtime")})
        daemon.docker("load", "--input", str(image.path))
        yield daemon, image
        daemon.remove_all()
    finally:
        daemon.stop()
        host.remove_cgroups(cgroup_parent)
        if not default_parent_existed:
            host.remove_cgroups("docker")
        host.unmount_under(base)
        created.cleanup()
        host.remove_tree(base)


class Runner:
    """``docker run`` of the busybox image with one runtime; removes containers after."""

    def __init__(self, daemon: Dockerd, image: ImageArchive, runtime: str) -> None:
        self.daemon = daemon
        self.image = image
        self.runtime = runtime
        self.names: list[str] = []

    def new_name(self) -> str:
        name = "dockyard-test-" + uuid.uuid4().hex[:10]
        self.names.append(name)
        return name

    def run(self, *flags: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        return self.daemon.docker(
            "run",
            "--network",
            "none",
            "--runtime",
            self.runtime,
            "--name",
            self.new_name(),
            *flags,
            self.image.docker_ref,
            *args,
            check=False,
        )


@pytest.fixture(params=host.RUNTIMES)
def runner(
    dockerd: tuple[Dockerd, ImageArchive], request: pytest.FixtureRequest
) -> Iterator[Runner]:
    host.fail_if_hung("dockerd", request.param)
    daemon, image = dockerd
    r = Runner(daemon, image, DOCKER_RUNTIME[request.param])
    daemon.runtime = request.param
    try:
        yield r
    finally:
        daemon.runtime = ""
        daemon.remove(*r.names)
    # What a runtime's delete must have removed: the containers' cgroups.
    leftovers = [str(p) for d in host.cgroup_dirs(daemon.cgroup_parent[1:]) for p in d.iterdir()]
    leftovers = [p for p in leftovers if os.path.isdir(p)]
    assert not leftovers, f"cgroups left behind by the runtime: {leftovers}"


def test_run_rm_prints_hello(runner: Runner) -> None:
    p = runner.run("--rm", args=["echo", "hello"])
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hello\n"


def test_run_rm_passes_exit_code(runner: Runner) -> None:
    p = runner.run("--rm", args=["sh", "-c", "exit 7"])
    assert p.returncode == 7, p.stderr


def test_run_rm_in_new_namespaces(runner: Runner) -> None:
    p = runner.run("--rm", "--hostname", "boxed", args=["sh", "-c", "echo $$; id -u; hostname"])
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1", "0", "boxed"]


def test_run_detached_exec_kill(runner: Runner) -> None:
    p = runner.run("--detach", args=["sleep", "1000"])
    assert p.returncode == 0, p.stderr
    name = runner.names[-1]
    docker = runner.daemon.docker
    assert docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true"

    p = docker("exec", name, "echo", "hi", check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hi\n"

    p = docker("exec", name, "sh", "-c", "exit 4", check=False)
    assert p.returncode == 4, p.stderr

    docker("kill", name)
    assert docker("wait", name).stdout.strip() == "137"
    docker("rm", name)
    assert docker("ps", "--all", "--quiet", "--filter", f"name={name}").stdout.strip() == ""


def test_run_with_a_terminal(runner: Runner) -> None:
    """``docker run -t``: the shim hands the runtime a console socket."""
    p = runner.run("--rm", "-t", args=["sh", "-c", "tty; stty size"])
    assert p.returncode == 0, p.stderr
    lines = [line.strip() for line in p.stdout.splitlines()]
    assert lines[0].startswith("/dev/pts/"), p.stdout


def test_pause_unpause_and_update(runner: Runner) -> None:
    """docker pause/unpause (freezer through the runtime) and docker update."""
    p = runner.run("--detach", args=["sleep", "1000"])
    assert p.returncode == 0, p.stderr
    name = runner.names[-1]
    docker = runner.daemon.docker
    docker("pause", name)
    assert docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip() == "paused"
    docker("unpause", name)
    assert docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip() == "running"
    docker("update", "--pids-limit", "77", name)
    p = docker("exec", name, "cat", "/sys/fs/cgroup/pids/pids.max", check=False)
    if p.returncode != 0:  # cgroup v2: one hierarchy
        p = docker("exec", name, "cat", "/sys/fs/cgroup/pids.max")
    assert p.stdout.strip() == "77"
    docker("rm", "--force", name)
