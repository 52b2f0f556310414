"""A private containerd, with ``ctr`` bound to its socket, for tests to share.

Every path of the daemon lives under one temp dir; teardown ends what it
started (by pid), its cgroups and its mounts. ``Containerd`` is used by the
neighbour tests, by the shim's tests (containerd running dockyard's shim) and
by the client library's tests (the library against the reference daemon).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.compat import host
from tests.images import ImageArchive, build_image_archive


@dataclass
class Containerd:
    """A private containerd and a ``ctr`` bound to its socket and namespace."""

    base: Path
    namespace: str
    image: ImageArchive
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None
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
                env=self.env,
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


@contextmanager
def private_containerd(base: Path, *, env: dict[str, str] | None = None) -> Iterator[Containerd]:
    """A containerd under ``base`` with the busybox image imported; all of it removed after.

    ``env`` is the daemon's environment (PATH decides which shim binaries it finds).
    """
    host.need("containerd", "ctr", "containerd-shim-runc-v2")
    # The shim puts its socket in a fixed place; ctr run gets a private fifo dir.
    created = host.CreatedDirs("/run/containerd", "/run/containerd/s")
    namespace = "dockyard-" + uuid.uuid4().hex[:8]
    image = build_image_archive(base / "busybox.tar")
    daemon = Containerd(base, namespace, image, env=env)
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
