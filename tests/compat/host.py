"""Start and tear down the reference daemons without leaving anything behind.

A daemon under test is started with every path private to one temp dir.
Teardown undoes what it and its children did to the host, in order:
processes (found by that temp dir in their command line, or by their
cgroup), then cgroups, then mounts under the temp dir, then the dir itself.
Nothing is ever ended by name: only the pids found this way.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CGROUP_ROOT = Path("/sys/fs/cgroup")
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


# The two runtimes every neighbour test runs with: the reference and ours.
RUNTIMES = ["runc", "dockyard-runtime"]

# (daemon, runtime) pairs under which a daemon command timed out. The rest of
# their tests fail at once instead of each waiting out its own time limit.
HUNG: set[tuple[str, str]] = set()
# Time limits (s): one daemon command in a test, and one in teardown.
COMMAND_TIMEOUT = 30.0
TEARDOWN_TIMEOUT = 15.0


# A private containerd: its own root, state and sockets under {base}; only what
# ctr's run/exec/import/pull need: no CRI, no other snapshotters, no tracing.
CONTAINERD_CONFIG = """\
version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{base}/containerd.sock"

[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
"""


def fail_if_hung(daemon: str, runtime: str) -> None:
    if (daemon, runtime) in HUNG:
        pytest.fail(f"{daemon} timed out earlier with {runtime}: not trying it again")


def runtime_binary(name: str) -> str:
    """Absolute path of the runtime binary a daemon should run."""
    if name == "dockyard-runtime":
        # The installed entry point of the environment running the tests.
        return str(Path(sys.executable).parent / "dockyard-runtime")
    found = shutil.which(name)
    if not found:
        pytest.skip(f"runtime {name} is not installed")
    return found


def need(*tools: str) -> None:
    for tool in tools:
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def ppid(pid: int) -> int:
    """The parent of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM a child we started, then SIGKILL if it has not exited in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def stop_pid(pid: int, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL, a process that is not our child (it was started by ours)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        try:
            wait_for(lambda: not alive(pid), wait, f"process {pid} to exit")
            return
        except TimeoutError:
            continue


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (a private temp path of ours)."""
    found: list[int] = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(int(name))
    return found


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path).rstrip("/")
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_under(path: Path) -> list[str]:
    """Detach every mount at or below ``path``; return what was still mounted."""
    leftovers = mounts_under(path)
    for _ in range(5):
        points = mounts_under(path)
        if not points:
            break
        for point in points:
            if _libc.umount2(point.encode(), MNT_DETACH) != 0:
                err = ctypes.get_errno()
                if err not in (errno.EINVAL, errno.ENOENT):
                    raise OSError(err, f"unmount {point}: {os.strerror(err)}")
    if mounts_under(path):
        raise RuntimeError(f"mounts under {path} would not go: {mounts_under(path)}")
    return leftovers


def cgroup_dirs(name: str) -> list[Path]:
    """``/sys/fs/cgroup/<controller>/<name>`` (v1) and ``/sys/fs/cgroup/<name>`` (v2)."""
    if not CGROUP_ROOT.is_dir():
        return []
    found = [p / name for p in CGROUP_ROOT.iterdir() if (p / name).is_dir()]
    if (CGROUP_ROOT / name / "cgroup.procs").exists():
        found.append(CGROUP_ROOT / name)
    return found


def _walk_bottom_up(top: Path) -> Iterator[Path]:
    for dirpath, _dirnames, _files in os.walk(top, topdown=False):
        yield Path(dirpath)


def remove_cgroups(name: str) -> list[str]:
    """Kill what still runs in cgroup ``name`` and remove it; return what was below it."""
    leftovers: list[str] = []
    tops = cgroup_dirs(name)
    for top in tops:
        for d in _walk_bottom_up(top):
            if d != top:
                leftovers.append(str(d))
            try:
                pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
            except OSError:
                pids = []
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    for top in tops:
        for d in _walk_bottom_up(top):

            def gone(d: Path = d) -> bool:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    return True
                except OSError:
                    return False
                return True

            wait_for(gone, 10, f"cgroup {d} to be removed")
    return sorted(set(leftovers))


def remove_tree(path: Path) -> None:
    """Remove a temp dir, but only once nothing is mounted below it."""
    if mounts_under(path):
        raise RuntimeError(f"refusing to remove {path}: still mounted {mounts_under(path)}")
    shutil.rmtree(path, ignore_errors=True)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class CreatedDirs:
    """Directories outside our temp dir that the daemons create (shim sockets in
    ``/run/containerd/s``, say): removed at teardown if they did not exist before
    and are empty then."""

    def __init__(self, *paths: str) -> None:
        self.paths = [Path(p) for p in paths if not os.path.exists(p)]

    def cleanup(self) -> None:
        for p in sorted(self.paths, key=lambda p: len(p.parts), reverse=True):
            try:
                p.rmdir()
            except OSError:
                pass
