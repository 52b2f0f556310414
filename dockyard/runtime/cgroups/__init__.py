"""Control groups for containers: one interface over cgroup v1 and cgroup v2.

``new_manager`` turns an OCI ``linux.cgroupsPath`` (runtime-spec
config-linux.md "Cgroups Path") into a ``CgroupManager``:

- an absolute path is taken relative to the root of each hierarchy;
- a relative path is placed below the caller's own cgroup (/proc/self/cgroup);
- no path means ``dockyard/<container id>`` below the caller's own cgroup.

On a v1 host the container gets a cgroup in every mounted hierarchy; on a
hybrid host (v1 controllers plus a cgroup2 mount at ``<root>/unified``) it
also joins the unified hierarchy, as runc does. ``paths`` maps controller to
directory (``""`` is the cgroup2 hierarchy); the runtime saves it in its
state and later rebuilds the manager with ``load_manager``.

The systemd cgroup driver (``slice:prefix:name`` paths) is not implemented.

This module is imported by every runtime command, so it keeps its imports
small; the per-version code is imported when a manager is made, and the BPF
device filter only when a v2 cgroup gets device rules.
"""

from __future__ import annotations

import os
import posixpath
import time
from abc import ABC, abstractmethod

from dockyard.errors import DockyardError, InvalidArgument, Unsupported
from dockyard.runtime.cgroups import files

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


DEFAULT_ROOT = "/sys/fs/cgroup"
SIGKILL = 9  # the same on every Linux architecture; spares importing signal

# Controllers cgroup v1 can mount (and "name=" hierarchies such as name=systemd).
V1_CONTROLLERS = frozenset(
    (
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "blkio",
        "pids",
        "hugetlb",
        "net_cls",
        "net_prio",
        "perf_event",
        "rdma",
        "misc",
        "debug",
    )
)


class CgroupManager(ABC):
    """The container's cgroup(s). Create, apply, set and destroy are separate steps."""

    version: int
    paths: dict[str, str]

    @abstractmethod
    def create(self) -> None:
        """mkdir the cgroup(s) and what they need to be joinable; idempotent."""

    @abstractmethod
    def apply(self, pid: int) -> None:
        """Move ``pid`` into the cgroup(s) (``cgroup.procs``)."""

    @abstractmethod
    def set(self, resources: dict[str, Any]) -> None:
        """Apply an OCI ``linux.resources`` object; only the fields it has are written."""

    @abstractmethod
    def freeze(self) -> None:
        """Freeze every process and wait until the kernel reports them frozen."""

    @abstractmethod
    def thaw(self) -> None: ...

    @abstractmethod
    def frozen(self) -> bool: ...

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """The ``data`` object of runc's ``events --stats``."""

    @abstractmethod
    def can_freeze(self) -> bool:
        """Whether this cgroup has a freezer (v1 freezer controller, v2 cgroup.freeze)."""

    def dirs(self) -> list[str]:
        """The distinct directories of ``paths`` (co-mounted controllers share one)."""
        return list(dict.fromkeys(self.paths.values()))

    def pids(self) -> list[int]:
        seen: set[int] = set()
        for d in self.dirs():
            if os.path.isdir(d):
                seen.update(files.procs(d))
        return sorted(seen)

    def kill_all(self, sig: int) -> None:
        """Signal every process; frozen meanwhile so none can fork out of reach.

        A paused container stays paused unless the signal is SIGKILL (the
        processes could not die while frozen).
        """
        was_frozen = False
        froze = False
        if self.can_freeze():
            try:
                was_frozen = self.frozen()
                if not was_frozen:
                    self.freeze()
                    froze = True
            except DockyardError:
                pass  # signal them anyway
        try:
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        finally:
            if froze or (was_frozen and sig == SIGKILL):
                self.thaw()

    def destroy(self) -> None:
        """rmdir the cgroup(s) and any cgroups below; gone already is fine."""
        first: DockyardError | None = None
        for d in self.dirs():
            try:
                files.remove(d)
            except DockyardError as e:
                first = first or e
        if first is not None:
            raise first

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs())


def detect_mode(root: str = DEFAULT_ROOT) -> str:
    """ "v2" (unified), "hybrid" (v1 plus cgroup2 at <root>/unified) or "v1"."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return "v2"
    if os.path.exists(os.path.join(root, "unified", "cgroup.controllers")):
        return "hybrid"
    return "v1"


class Hierarchy:
    """One mounted cgroup hierarchy."""

    __slots__ = ("controllers", "mountpoint", "root")

    def __init__(self, mountpoint: str, root: str, controllers: tuple[str, ...]) -> None:
        self.mountpoint = mountpoint
        self.root = root  # the part of the hierarchy mounted there (mountinfo field 4)
        self.controllers = controllers  # ("",) for the cgroup2 hierarchy

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hierarchy) and (
            self.mountpoint,
            self.root,
            self.controllers,
        ) == (other.mountpoint, other.root, other.controllers)

    def __hash__(self) -> int:
        return hash((self.mountpoint, self.root, self.controllers))

    def __repr__(self) -> str:
        return f"Hierarchy({self.mountpoint!r}, {self.root!r}, {self.controllers!r})"

    def in_mount(self, path: str) -> str:
        """A path from /proc/<pid>/cgroup (from the hierarchy's root, outside a
        cgroup namespace) as a path in this mount, which may show only a subtree."""
        if self.root != "/" and (path == self.root or path.startswith(self.root + "/")):
            return path[len(self.root) :]
        return path


def _unescape(s: str) -> str:
    """mountinfo's octal escapes (``\\040`` for a space)."""
    if "\\" not in s:
        return s
    out: list[str] = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str, root: str = DEFAULT_ROOT) -> list[Hierarchy]:
    """The cgroup hierarchies mounted at or below ``root``, one per hierarchy."""
    found: list[Hierarchy] = []
    seen: set[tuple[str, ...]] = set()
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        fstype = fields[sep + 1]
        if fstype not in ("cgroup", "cgroup2") or len(fields) < sep + 4:
            continue
        mountpoint = _unescape(fields[4])
        if mountpoint != root and not mountpoint.startswith(root.rstrip("/") + "/"):
            continue
        if fstype == "cgroup2":
            controllers: tuple[str, ...] = ("",)
        else:
            opts = fields[sep + 3].split(",")
            controllers = tuple(o for o in opts if o in V1_CONTROLLERS or o.startswith("name="))
        if not controllers or controllers in seen:
            continue
        seen.add(controllers)
        found.append(Hierarchy(mountpoint, _unescape(fields[3]), controllers))
    return found


def _hierarchies_from_tree(root: str) -> list[Hierarchy]:
    """Hierarchies guessed from directory names, for a tree nothing is mounted on."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return [Hierarchy(root, "/", ("",))]
    found: list[Hierarchy] = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return found
    for name in names:
        path = os.path.join(root, name)
        if os.path.islink(path) or not os.path.isdir(path):
            continue  # "cpu" -> "cpu,cpuacct" links name a hierarchy listed already
        if os.path.exists(os.path.join(path, "cgroup.controllers")):
            found.append(Hierarchy(path, "/", ("",)))
        elif name == "systemd":
            found.append(Hierarchy(path, "/", ("name=systemd",)))
        else:
            found.append(Hierarchy(path, "/", tuple(name.split(","))))
    return found


def hierarchies(root: str = DEFAULT_ROOT) -> list[Hierarchy]:
    """The cgroup hierarchies under ``root``: from mountinfo, else from the tree itself."""
    try:
        with open("/proc/self/mountinfo") as f:
            found = parse_mountinfo(f.read(), root)
    except OSError:
        found = []
    return found or _hierarchies_from_tree(root)


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as controller -> path; ``""`` is the cgroup2 hierarchy."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if not parts[1]:
            out[""] = parts[2]
        for c in parts[1].split(","):
            if c:
                out[c] = parts[2]
    return out


def own_cgroups() -> dict[str, str]:
    with open("/proc/self/cgroup") as f:
        return parse_proc_cgroup(f.read())


def warm_migration(root: str = DEFAULT_ROOT) -> None:
    """Start the kernel's wait before a cgroup migration now, in a thread.

    A write to ``cgroup.procs`` takes a lock (cgroup_threadgroup_rwsem) whose
    first taker waits for an RCU grace period, about 10 ms here; a move made
    within a grace period of the last one is quick. A thread moves this
    process into the cgroup it is already in (that changes nothing) while
    the caller reads the config and makes the container's cgroups, so that
    the move of the container's process finds the wait over, or shortened.
    Best effort: any failure is ignored, nothing else is touched. The
    kernel's ``favordynmods`` and v2's CLONE_INTO_CGROUP make it moot.
    """
    try:
        own = own_cgroups()
    except OSError:
        return
    candidates = [
        posixpath.join(base, own[key].lstrip("/"), "cgroup.procs")
        for key, base in (
            ("", posixpath.join(root, "unified")),
            ("", root),
            ("pids", posixpath.join(root, "pids")),
            ("name=systemd", posixpath.join(root, "systemd")),
        )
        if key in own
    ]
    if not candidates:
        return
    import _thread

    _thread.start_new_thread(_move_self, (candidates, str(os.getpid()).encode()))


def _move_self(candidates: list[str], pid: bytes) -> None:
    for path in candidates:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.write(fd, pid)
            return
        except OSError:
            continue
        finally:
            os.close(fd)


def check_cgroups_path(cgroups_path: str | None) -> None:
    path = cgroups_path or ""
    if ":" in path and "/" not in path:
        raise Unsupported(
            f"cgroupsPath {path!r}: the systemd cgroup driver syntax (slice:prefix:name)"
            " is not supported; give a path such as /dockyard/<id>"
        )
    if "\0" in path:
        raise InvalidArgument(f"cgroupsPath {path!r}: contains a NUL byte")


def resolve_paths(
    cgroups_path: str | None,
    container_id: str,
    root: str = DEFAULT_ROOT,
    *,
    own: dict[str, str] | None = None,
    mounts: list[Hierarchy] | None = None,
) -> dict[str, str]:
    """The directory of the container's cgroup in each hierarchy, keyed by controller.

    ``own`` (the caller's cgroups, from /proc/self/cgroup) and ``mounts``
    (from /proc/self/mountinfo) are read from the system when not given.
    """
    check_cgroups_path(cgroups_path)
    if not cgroups_path and (
        not container_id or "/" in container_id or container_id in (".", "..")
    ):
        raise InvalidArgument(f"container id {container_id!r}: cannot name a cgroup")
    path = cgroups_path or f"dockyard/{container_id}"
    mode = detect_mode(root)
    if mounts is None:
        mounts = hierarchies(root)
    if mode == "v2":
        mounts = [h for h in mounts if h.controllers == ("",) and h.mountpoint == root]
    if not mounts:
        raise Unsupported(f"no cgroup hierarchy is mounted at {root}")
    relative = not path.startswith("/")
    if relative and own is None:
        own = own_cgroups()
    out: dict[str, str] = {}
    for h in mounts:
        if relative:
            assert own is not None
            base = h.in_mount(next((own[c] for c in h.controllers if c in own), "/"))
            inner = posixpath.normpath(posixpath.join("/", base.lstrip("/"), path))
        else:
            inner = posixpath.normpath("/" + path.lstrip("/"))
        if inner == "/":
            raise InvalidArgument(
                f"cgroupsPath {cgroups_path!r}: resolves to the root cgroup of {h.mountpoint}"
            )
        for c in h.controllers:
            out[c] = h.mountpoint.rstrip("/") + inner
    return out


def load_manager(paths: dict[str, str], root: str = DEFAULT_ROOT) -> CgroupManager:
    """The manager of an existing container from the ``paths`` saved at create."""
    if set(paths) == {""} and detect_mode(root) == "v2":
        from dockyard.runtime.cgroups.v2 import V2Manager

        return V2Manager(paths[""], root)
    from dockyard.runtime.cgroups.v1 import V1Manager

    return V1Manager(dict(paths))


def new_manager(
    cgroups_path: str | None, container_id: str, root: str = DEFAULT_ROOT
) -> CgroupManager:
    """The manager for a container's ``linux.cgroupsPath``; nothing is created yet."""
    return load_manager(resolve_paths(cgroups_path, container_id, root), root)


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    """Poll ``check()`` with a growing sleep until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def missing_parents(paths: dict[str, str]) -> list[str]:
    """The cgroup directories above ours that creating ours will make, deepest first.

    delete removes them again once empty: a container leaves no cgroup behind,
    not even the parents of a nested cgroupsPath (runc leaves those).
    """
    out: list[str] = []
    for d in paths.values():
        p = os.path.dirname(d)
        while p not in out and not os.path.exists(p):
            out.append(p)
            p = os.path.dirname(p)
    return sorted(out, key=len, reverse=True)


def remove_empty_dirs(dirs: list[str]) -> None:
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            pass  # not empty: another container uses it
