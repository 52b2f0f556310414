"""Helpers shared by the runtime's config.json feature tests.

Each ``test_<feature>.py`` writes a config.json for a busybox bundle, runs the
runtime under test and asserts what the container itself observes. What
several of them need lives here: running a container in the background with a
handshake through files in its rootfs, namespace holders, shared mount points,
mountinfo parsing and the capability numbers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import pytest

from tests.conftest import BUSYBOX, new_id
from tests.runtime.helpers import wait_for

if TYPE_CHECKING:
    from tests.conftest import Bundle, Runtime

# A container script prefix: say "ready" through a file in the rootfs, then
# wait (at most ~20 s) until the test drops /go next to it.
READY_THEN_WAIT = (
    "touch /ready; i=0; while [ ! -e /go ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; "
)


def is_runc(runtime: Runtime) -> bool:
    return runtime.name == "runc"


def skip_if_runc(runtime: Runtime, reason: str) -> None:
    """Skip a dockyard requirement that runc 1.1.5 does not meet."""
    if is_runc(runtime):
        pytest.skip(f"runc deviates: {reason}")


def run_sh(runtime: Runtime, bundle: Bundle, script: str) -> str:
    """Run ``sh -c script`` in the container; return its stdout."""
    bundle.set_args("sh", "-c", script)
    return runtime.run(bundle).stdout


def run_fails(runtime: Runtime, bundle: Bundle) -> str:
    """Run the container, expect the runtime to fail; return its lowercased output."""
    p = runtime.run(bundle, check=False)
    assert p.returncode != 0, f"{runtime.name} accepted the config:\n{p.stdout}{p.stderr}"
    return (p.stderr + p.stdout).lower()


def status_fields(text: str) -> dict[str, str]:
    """Parse ``Key:<tab>value`` lines as in /proc/<pid>/status."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------- mountinfo


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/<pid>/mountinfo (proc(5))."""

    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    options: tuple[str, ...]
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    def tag(self, name: str) -> str | None:
        """The value of an optional field: ``shared``/``master`` peer group ids."""
        for field in self.optional:
            key, _, value = field.partition(":")
            if key == name:
                return value or key
        return None


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")


def parse_mountinfo(text: str) -> list[MountInfo]:
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, _, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        mounts.append(
            MountInfo(
                mount_id=int(f[0]),
                parent_id=int(f[1]),
                root=_unescape(f[3]),
                mount_point=_unescape(f[4]),
                options=tuple(f[5].split(",")),
                optional=tuple(f[6:]),
                fstype=r[0],
                source=_unescape(r[1]) if len(r) > 1 else "",
                super_options=tuple(r[2].split(",")) if len(r) > 2 else (),
            )
        )
    return mounts


def mount_at(mounts: list[MountInfo], path: str) -> MountInfo | None:
    """The topmost mount on ``path`` (the last one in mountinfo order)."""
    found = None
    for m in mounts:
        if m.mount_point == path:
            found = m
    return found


def host_mountinfo() -> list[MountInfo]:
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


@contextlib.contextmanager
def host_mount(*mount_args: str, target: Path) -> Iterator[MountInfo]:
    """``mount <args> <target>`` on the host; unmounted (with all below it) on the way out.

    The mount is found again by its id, not its path: a test's temp dir can
    be renamed under it by pytest's clean-up of old temp dirs.
    """
    subprocess.run(["mount", *mount_args, str(target)], check=True)
    mounted = mount_at(host_mountinfo(), str(target))
    assert mounted is not None, f"mount on {target} not in mountinfo"
    try:
        yield mounted
    finally:
        umount_tree(mounted)


def umount_tree(mounted: MountInfo) -> None:
    """Unmount a mount and everything below it; lazily if something is busy."""

    def current() -> MountInfo | None:
        for m in host_mountinfo():
            if m.mount_id == mounted.mount_id and m.root == mounted.root:
                return m
        return None

    now = current()
    if now is None:
        return
    p = subprocess.run(["umount", "-R", now.mount_point], capture_output=True, check=False)
    if p.returncode != 0 and current() is not None:
        subprocess.run(["umount", "-R", "-l", now.mount_point], check=True)


def umount_below(path: Path) -> None:
    """Unmount whatever is mounted on or below ``path`` on the host.

    For tests of paths that must never be mounted on: if the runtime under
    test gets it wrong, the test fails and still leaves the host clean.
    """
    prefix = str(path)
    for m in reversed(host_mountinfo()):
        if m.mount_point == prefix or m.mount_point.startswith(prefix + "/"):
            umount_tree(m)


@contextlib.contextmanager
def shared_mount_point(path: Path) -> Iterator[Path]:
    """Make ``path`` a mount point of its own in a new shared peer group.

    ``/`` is private on the test hosts, so propagation can only be observed
    from a mount the test makes shared itself. Everything mounted on or
    below it is unmounted again on the way out.
    """
    path.mkdir(parents=True, exist_ok=True)
    with host_mount("--bind", str(path), target=path):
        subprocess.run(["mount", "--make-shared", str(path)], check=True)
        yield path


# ---------------------------------------------------------------- namespaces

NS_FILES = {
    "pid": "pid",
    "network": "net",
    "mount": "mnt",
    "ipc": "ipc",
    "uts": "uts",
    "user": "user",
    "cgroup": "cgroup",
    "time": "time",
}


def host_ns(ns_type: str) -> str:
    """The namespace link (``net:[4026531833]``) of the test process."""
    return os.readlink(f"/proc/self/ns/{NS_FILES[ns_type]}")


@contextlib.contextmanager
def ns_holder(*unshare_flags: str, hostname: str = "nsholder") -> Iterator[int]:
    """A sleeping process in new namespaces; yields its pid, ends it by pid."""
    unshare = shutil.which("unshare")
    if not unshare:
        pytest.skip("unshare(1) is not installed")
    script = "echo ready; exec " + BUSYBOX + " sleep 600"
    if "--uts" in unshare_flags:
        script = f"{BUSYBOX} hostname {hostname}; " + script
    proc = subprocess.Popen(
        [unshare, *unshare_flags, BUSYBOX, "sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"namespace holder failed to start (exit {proc.poll()})"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


# ---------------------------------------------------------------- background containers


class Background:
    """``run`` a container in the background (its stdout/stderr captured).

    The container's own script decides when it is ready (``READY_THEN_WAIT``
    touches /ready in the rootfs and waits for /go); ``release`` drops /go and
    ``finish`` collects the runtime's exit and output. On the way out a
    container still running is killed and the runtime process reaped.
    """

    def __init__(self, runtime: Runtime, bundle: Bundle, cid: str | None = None) -> None:
        self.runtime = runtime
        self.bundle = bundle
        self.cid = cid or new_id()
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Background:
        self.bundle.write()
        self.runtime.ids.add(self.cid)
        argv = [*self.runtime.argv, "--root", str(self.runtime.root)]
        self.proc = subprocess.Popen(
            [*argv, "run", "--bundle", str(self.bundle.path), self.cid],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        marker = self.bundle.rootfs / "ready"
        assert self.proc is not None

        def ready() -> bool:
            if marker.exists():
                return True
            if self.proc is not None and self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(
                    f"container exited {self.proc.returncode} before it was ready\n"
                    f"stdout: {out}\nstderr: {err}"
                )
            return False

        wait_for(ready, timeout, what="the container to become ready")

    def release(self) -> None:
        (self.bundle.rootfs / "go").touch()

    def finish(self, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        assert self.proc is not None
        self.release()
        out, err = self.proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        if self.proc.poll() is None:
            self.runtime("kill", self.cid, "KILL", check=False, timeout=30)
        try:
            self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=15)


# ---------------------------------------------------------------- capabilities

# capability(7) numbers, in order
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]


def cap_mask(names: list[str]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES.index(name)
    return mask


def host_has_cap(name: str) -> bool:
    with open("/proc/self/status") as f:
        eff = int(status_fields(f.read())["CapEff"], 16)
    return bool(eff & (1 << CAPABILITIES.index(name)))
