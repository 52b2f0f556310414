"""A private dockyard-supervisor per test module, and ``ctr`` pointed at it.

Every path of the daemon (root, state, sockets) is under one temp dir;
teardown removes the containers the tests left, ends the supervisor and any
shim still running (found by that temp dir in their command line: shims get
the supervisor's address as an argument), then cgroups, mounts and the dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from tests.compat import host
from tests.images import ImageArchive, build_image_archive
from tests.supervisor.taskutil import RUNC_SHIM, RUNTIMES, Runner, runner_for

if TYPE_CHECKING:  # imageside imports this module
    from tests.supervisor.imageside import Stubs

VENV_BIN = os.path.dirname(sys.executable)


def daemon_env() -> dict[str, str]:
    """The supervisor's environment: our shim and runtime first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    return env


@dataclass
class Supervisor:
    """A dockyard-supervisor under ``base``, with ctr and a gRPC channel bound to it."""

    base: Path
    namespace: str
    image: ImageArchive
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.base / "supervisor.log"

    @property
    def address(self) -> str:
        return str(self.base / "supervisor.sock")

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    def ctr(
        self,
        *args: str,
        check: bool = True,
        namespace: str | None = None,
        timeout: float = host.COMMAND_TIMEOUT,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        ns = namespace or self.namespace
        p = subprocess.run(
            ["ctr", "--address", self.address, "--namespace", ns, *args],
            stdin=subprocess.DEVNULL if input is None else None,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"ctr {' '.join(args)} exited {p.returncode}\n"
                f"stdout: {p.stdout}\nstderr: {p.stderr}\n"
                f"supervisor log:\n{host.tail(self.log)}"
            )
        return p

    def channel(self) -> grpc.Channel:
        """A gRPC channel to the socket (use with ``metadata=self.md()``)."""
        return grpc.insecure_channel("unix:" + self.address)

    def md(self, namespace: str | None = None) -> list[tuple[str, str]]:
        return [("containerd-namespace", namespace or self.namespace)]

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dockyard.supervisor.main",
                    "--root",
                    str(self.root),
                    "--state",
                    str(self.state),
                    "--address",
                    self.address,
                    "--log-level",
                    "debug",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=daemon_env(),
                cwd=str(self.base),
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"supervisor exited early:\n{host.tail(self.log)}")
            if not Path(self.address).exists():
                return False
            return self.ctr("version", check=False, timeout=10).returncode == 0

        host.wait_for(ready, 30, "the supervisor to serve")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the supervisor (only it: its shims and containers go on) and reap it."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def restart(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)
        self.start()

    def tasks(self) -> dict[str, str]:
        """Task id -> status (RUNNING, STOPPED, ...)."""
        out = self.ctr("task", "ls").stdout.splitlines()[1:]
        return {cols[0]: cols[2] for cols in (line.split() for line in out) if len(cols) >= 3}

    def remove(self, cid: str, namespace: str | None = None) -> None:
        """Kill and delete a task and its container, whatever state they are in."""
        quick = host.TEARDOWN_TIMEOUT
        ns = namespace or self.namespace
        try:
            self.ctr(
                "task", "kill", "--signal", "SIGKILL", cid, check=False, namespace=ns, timeout=quick
            )
            self.ctr("task", "delete", "--force", cid, check=False, namespace=ns, timeout=quick)
            self.ctr("container", "delete", cid, check=False, namespace=ns, timeout=quick)
        except subprocess.TimeoutExpired:
            pass

    def cleanup_namespaces(self) -> None:
        """Remove every container left in every namespace (teardown)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            listed = self.ctr("namespaces", "ls", "--quiet", check=False, timeout=10)
            for ns in listed.stdout.split():
                ids = self.ctr("container", "ls", "--quiet", check=False, namespace=ns, timeout=10)
                for cid in ids.stdout.split():
                    self.remove(cid, ns)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        if self.proc is not None:
            host.stop_process(self.proc)
        # Shims outlive the supervisor by design; any still running are ours to end.
        for pid in host.pids_mentioning(f"{self.base}/"):
            host.stop_pid(pid)


@pytest.fixture(scope="module")
def busybox_archive(tmp_path_factory: pytest.TempPathFactory) -> ImageArchive:
    return build_image_archive(tmp_path_factory.mktemp("img") / "busybox.tar")


@contextlib.contextmanager
def private_supervisor(base: Path, namespace: str, image: ImageArchive) -> Iterator[Supervisor]:
    """A supervisor with every path under ``base``, running for the ``with`` body;
    after it, its namespaces emptied, it and its shims stopped, and their cgroups,
    mounts and directories removed (also when the body fails)."""
    host.need("ctr", "containerd-shim-runc-v2", "runc")
    # runc's shim puts its socket in a fixed place.
    created = host.CreatedDirs("/run/containerd", "/run/containerd/s")
    daemon = Supervisor(base, namespace, image)
    try:
        daemon.start()
        yield daemon
        daemon.cleanup_namespaces()
    finally:
        daemon.stop()
        host.remove_cgroups(namespace)
        host.unmount_under(base)
        created.cleanup()
        host.remove_tree(base)


@pytest.fixture(scope="module")
def supervisor(
    tmp_path_factory: pytest.TempPathFactory, busybox_archive: ImageArchive
) -> Iterator[Supervisor]:
    """A running supervisor for the module; tests use unique ids and clean up their own."""
    base = tmp_path_factory.mktemp("sup")
    with private_supervisor(base, "dy-" + uuid.uuid4().hex[:8], busybox_archive) as daemon:
        yield daemon


@pytest.fixture
def ns(supervisor: Supervisor) -> Iterator[str]:
    """A new namespace for the test, emptied and removed after it."""
    from tests.supervisor.imageside import empty_namespace, new_namespace

    name = new_namespace()
    yield name
    empty_namespace(supervisor, name)


# The task fixtures, on top of the shared supervisor (see taskutil.RUNTIMES).
@pytest.fixture(params=RUNTIMES)
def runner(supervisor: Supervisor, request: pytest.FixtureRequest) -> Iterator[Runner]:
    """Each shim with each runtime."""
    yield from runner_for(supervisor, request.param)


@pytest.fixture(params=[RUNTIMES[0], RUNTIMES[2]])
def shim(supervisor: Supervisor, request: pytest.FixtureRequest) -> Iterator[Runner]:
    """Each shim with its usual runtime: for what the shim answers itself."""
    yield from runner_for(supervisor, request.param)


@pytest.fixture
def runc(supervisor: Supervisor) -> Iterator[Runner]:
    """The reference pair only: for what does not depend on the runtime."""
    yield from runner_for(supervisor, (RUNC_SHIM, "runc"))


@pytest.fixture(scope="module")
def stubs(supervisor: Supervisor) -> Iterator[Stubs]:
    """A client stub of each image-side service, on one channel for the module."""
    from tests.supervisor.imageside import Stubs

    with supervisor.channel() as ch:
        yield Stubs(ch)
