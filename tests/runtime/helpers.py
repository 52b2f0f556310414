"""Helpers for the runtime's integration tests: polling, cgroups, console sockets, fds.

Everything here observes the host the way an outside caller (containerd's
shim, an operator) would: through /proc, the cgroup filesystem and the
runtime's command line.
"""

from __future__ import annotations

import array
import errno
import fcntl
import hashlib
import os
import re
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import Runtime

CGROUP_ROOT = Path("/sys/fs/cgroup")

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_status(runtime: Runtime, cid: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    """Poll ``state`` until the container reports ``status``; return that state."""

    def probe() -> dict[str, Any] | None:
        st = runtime.state(cid)
        return st if st["status"] == status else None

    return wait_for(probe, timeout, what=f"container {cid} to be {status}")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the state letter follows the parenthesised command name
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- cgroups -----------------------------------------------------------------


def _cgroup_mounts() -> dict[str, Path]:
    """Map each v1 controller (and "" for cgroup2) to where its hierarchy is mounted."""
    mounts: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _source, opts = right.split()[:3]
            mountpoint = Path(left.split()[4])
            if fstype == "cgroup2":
                mounts.setdefault("", mountpoint)
            elif fstype == "cgroup":
                for opt in opts.split(","):
                    if opt in ("rw", "ro") or opt.startswith("release_agent"):
                        continue
                    mounts.setdefault(opt, mountpoint)
    return mounts


def cgroup_dirs_of(pid: int) -> list[Path]:
    """The host directories of every cgroup ``pid`` is in (as /proc/<pid>/cgroup says)."""
    mounts = _cgroup_mounts()
    dirs: list[Path] = []
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _hid, controllers, path = line.rstrip("\n").split(":", 2)
            names = [c for c in controllers.split(",") if c] or [""]
            for name in names:
                mount = mounts.get(name)
                if mount is not None:
                    dirs.append(mount / path.lstrip("/"))
                    break
    return sorted(set(dirs))


def cgroup_file(pid: int, controller: str, v1_name: str, v2_name: str) -> Path:
    """The file of ``pid``'s cgroup for a controller: the v1 name, or the v2 name."""
    mounts = _cgroup_mounts()
    with open(f"/proc/{pid}/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    for _hid, controllers, path in lines:
        if controller in controllers.split(","):
            return mounts[controller] / path.lstrip("/") / v1_name
    for _hid, controllers, path in lines:
        if controllers == "" and "" in mounts:
            return mounts[""] / path.lstrip("/") / v2_name
    raise AssertionError(f"process {pid} is in no {controller} cgroup")


def find_cgroup_dirs(cgroups_path: str, max_depth: int = 8) -> list[Path]:
    """Every directory under the cgroup mounts whose path ends with ``cgroups_path``.

    A runtime may place the cgroup at the hierarchy's root or beneath the
    caller's own cgroup, so this searches rather than guessing one place.
    """
    tail = cgroups_path.strip("/")
    if not tail:
        return []
    found: list[Path] = []
    base_depth = len(CGROUP_ROOT.parts)
    for dirpath, dirnames, _ in os.walk(CGROUP_ROOT):
        if dirpath.endswith("/" + tail):
            found.append(Path(dirpath))
        if len(Path(dirpath).parts) - base_depth >= max_depth:
            dirnames.clear()
    return found


# --- mounts and processes ----------------------------------------------------


def mounts() -> set[tuple[str, str]]:
    """Every mount of this mount namespace as (mount id, mount point)."""
    with open("/proc/self/mountinfo") as f:
        return {(line.split()[0], line.split()[4]) for line in f}


def new_mounts(before: set[tuple[str, str]], mine: Path) -> list[str]:
    """Mount points added since ``before``, except those of other tests running meanwhile.

    Other test sessions mount beneath their own temporary directories;
    anything new elsewhere, or beneath ``mine``, counts.
    """
    tmp = tempfile.gettempdir().rstrip("/") + "/"
    found = []
    for _id, point in mounts() - before:
        ours = point == str(mine) or point.startswith(str(mine) + "/")
        if ours or not point.startswith(tmp):
            found.append(point)
    return sorted(found)


def processes_touching(*paths: Path | str, needles: Iterable[str] = ()) -> dict[int, str]:
    """Live processes whose root, cwd or command line refers to one of ``paths``."""
    prefixes = [str(p) for p in paths]
    words = [*prefixes, *needles]
    me = os.getpid()
    found: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me or not pid_alive(int(name)):
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            links = [os.readlink(f"/proc/{name}/root"), os.readlink(f"/proc/{name}/cwd")]
        except OSError:
            continue
        if any(w in cmd for w in words) or any(
            link == p or link.startswith(p + "/") for link in links for p in prefixes
        ):
            found[int(name)] = cmd.strip()
    return found


def entries_under(root: Path) -> list[str]:
    """Everything below ``root`` (relative names), or [] if it does not exist."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- file descriptors --------------------------------------------------------


def run_with_fds(
    runtime: Runtime, args: list[str], fds: dict[int, int], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run the runtime with exactly ``fds`` (target number -> our fd) besides its stdio.

    subprocess's ``pass_fds`` keeps an fd at the number it has here; the
    runtime's ``--preserve-fds`` needs them at 3, 4, ... so they are moved
    into place in the child by ``posix_spawn``'s dup2 actions.
    """
    if len(args) >= 2 and args[0] in ("create", "run"):
        runtime.ids.add(args[-1])
    argv = [*runtime.argv, "--root", str(runtime.root), *args]
    parked: list[int] = []
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            parked.append(devnull)
            wanted = {0: devnull, 1: out.fileno(), 2: err.fileno(), **fds}
            # park every source above the targets so no dup2 clobbers another source
            actions = []
            for target, source in wanted.items():
                high = _dup_high(source)
                parked.append(high)
                actions.append((os.POSIX_SPAWN_DUP2, high, target))
            pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions)
        finally:
            for fd in parked:
                os.close(fd)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                break
            if time.monotonic() > deadline:
                kill_quietly(pid)
                os.waitpid(pid, 0)
                raise AssertionError(f"{' '.join(args)} did not exit within {timeout}s")
            time.sleep(0.01)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            argv,
            os.waitstatus_to_exitcode(status),
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def _dup_high(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 200)


def inheritable_fds(count: int) -> list[int]:
    """Open ``count`` fds without O_CLOEXEC (pipes' read ends), as a careless caller would."""
    fds: list[int] = []
    for _ in range(count):
        r, w = os.pipe()
        os.close(w)
        os.set_inheritable(r, True)
        fds.append(r)
    return fds


def fd_numbers(listing: str) -> list[int]:
    """The fd numbers in the output of ``ls /proc/self/fd``."""
    return sorted(int(x) for x in listing.split() if x.isdigit())


# --- consoles ----------------------------------------------------------------


class ConsoleSocket:
    """A unix socket that receives the pty master over SCM_RIGHTS, as containerd's shim does.

    Use as a context manager: ``path`` goes to ``--console-socket``; after the
    runtime sent the master, ``master()`` returns it. Every fd and the thread
    are closed on exit.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"console-{os.getpid()}-{id(self):x}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.bind(str(self.path))
        self._sock.listen(4)
        self._fds: list[int] = []
        self.message = b""
        self._error: BaseException | None = None
        self._got = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._sock.accept()
            with conn:
                fds = array.array("i")
                msg, ancdata, _flags, _addr = conn.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
                for level, kind, data in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        usable = len(data) - len(data) % fds.itemsize
                        fds.frombytes(data[:usable])
                self._fds.extend(fds)
                self.message = msg
        except OSError as e:  # the socket was closed by __exit__
            self._error = e
        finally:
            self._got.set()

    def master(self, timeout: float = 10.0) -> int:
        if not self._got.wait(timeout):
            raise AssertionError("no console master was sent on the console socket")
        if not self._fds:
            raise AssertionError(f"console socket got no fd ({self._error})")
        return self._fds[0]

    def __enter__(self) -> ConsoleSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(5)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def read_pty(fd: int, timeout: float = 10.0, until: str | None = None) -> str:
    """Read a pty master until ``until`` shows up or the slave side is closed (EIO)."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError as e:
            if e.errno == errno.EIO:  # every slave fd is closed: the process is gone
                break
            raise
        if not chunk:
            break
        data += chunk
        if until is not None and until in data.decode(errors="replace"):
            break
    return data.decode(errors="replace")


# --- files -------------------------------------------------------------------


def fingerprint(path: Path | str) -> tuple[str, int, int, int]:
    """sha256, mtime (ns), device and inode of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    st = os.stat(path)
    return h.hexdigest(), st.st_mtime_ns, st.st_dev, st.st_ino


# --- config validation -------------------------------------------------------

_NAMESPACES = {"pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"}
_VERSION = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.+-]+)?$")


def config_problems(cfg: Any) -> list[str]:
    """What in ``cfg`` breaks the runtime spec's config schema (the parts a runtime reads).

    Not the whole JSON schema: the required fields and the types of what
    ``spec`` writes, enough to catch a generated file that no runtime takes.
    """
    problems: list[str] = []

    def want(cond: bool, what: str) -> None:
        if not cond:
            problems.append(what)

    if not isinstance(cfg, dict):
        return ["config is not an object"]
    want(isinstance(cfg.get("ociVersion"), str), "ociVersion: string required")
    want(bool(_VERSION.match(str(cfg.get("ociVersion", "")))), "ociVersion: not semver")
    root = cfg.get("root")
    want(isinstance(root, dict) and isinstance(root.get("path"), str), "root.path: string")
    proc = cfg.get("process")
    if isinstance(proc, dict):
        args = proc.get("args")
        want(
            isinstance(args, list) and bool(args) and all(isinstance(a, str) for a in args),
            "process.args: non-empty list of strings",
        )
        want(str(proc.get("cwd", "")).startswith("/"), "process.cwd: absolute path")
        user = proc.get("user", {})
        want(
            isinstance(user.get("uid"), int) and isinstance(user.get("gid"), int),
            "process.user: uid/gid integers",
        )
        env = proc.get("env", [])
        want(isinstance(env, list) and all("=" in e for e in env), "process.env: KEY=value")
        want(isinstance(proc.get("terminal", False), bool), "process.terminal: boolean")
    else:
        problems.append("process: object expected")
    for i, m in enumerate(cfg.get("mounts", [])):
        want(isinstance(m.get("destination"), str), f"mounts[{i}].destination: string")
    linux = cfg.get("linux", {})
    seen: set[str] = set()
    for ns in linux.get("namespaces", []):
        kind = ns.get("type")
        want(kind in _NAMESPACES, f"linux.namespaces: unknown type {kind!r}")
        want(kind not in seen, f"linux.namespaces: duplicate {kind!r}")
        seen.add(kind)
    for key in ("uidMappings", "gidMappings"):
        for m in linux.get(key, []):
            want(
                all(isinstance(m.get(f), int) for f in ("containerID", "hostID", "size")),
                f"linux.{key}: containerID/hostID/size integers",
            )
    return problems


def call_detached(
    runtime: Runtime, *args: str, check: bool = True, timeout: float = 30.0, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run a verb that hands its stdio to the container (``create``, ``run -d``, ``exec -d``).

    The container keeps those fds open, so pipes would never reach EOF;
    temporary files take the output instead.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = runtime(
            *args, check=False, timeout=timeout, capture_output=False, stdout=out, stderr=err, **kw
        )
        out.seek(0)
        err.seek(0)
        p.stdout, p.stderr = out.read(), err.read()
    if check and p.returncode != 0:
        raise AssertionError(
            f"{runtime.name} {' '.join(args)} exited {p.returncode}\n"
            f"stdout: {p.stdout}\nstderr: {p.stderr}"
        )
    return p


def spawn(runtime: Runtime, *args: str, **kw: Any) -> subprocess.Popen[str]:
    """Start the runtime without waiting (a foreground ``run`` the test signals meanwhile)."""
    if len(args) >= 2 and args[0] in ("create", "run"):
        runtime.ids.add(args[-1])
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen([*runtime.argv, "--root", str(runtime.root), *args], text=True, **kw)
