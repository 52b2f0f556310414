"""Container state kept under the runtime's ``--root``: one directory per container.

``<root>/<id>/state.json`` records what ``state`` reports (runtime-spec
runtime.md "State") plus what later commands need (init's start time, to tell
a reused pid from our init; the cgroup paths; the config for ``exec``).
``<root>/<id>/exec.fifo`` exists between ``create`` and ``start``: init blocks
opening it for writing until ``start`` opens it for reading.
"""

from __future__ import annotations

import os

from dockyard import jsonio
from dockyard.errors import AlreadyExists, InvalidArgument, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dockyard.runtime.cgroups import CgroupManager


DEFAULT_ROOT = "/run/dockyard-runtime"
STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"
MAX_ID_LENGTH = 1024
# here, not from libc: start and delete run per container and need not load ctypes
SIGKILL = 9

CREATING = "creating"
CREATED = "created"
RUNNING = "running"
PAUSED = "paused"
STOPPED = "stopped"


def validate_id(cid: str) -> None:
    """Container ids name a directory under --root: no path tricks, bounded length."""
    if not cid:
        raise InvalidArgument("container id cannot be empty")
    if len(cid) > MAX_ID_LENGTH:
        raise InvalidArgument(f"container id is too long ({len(cid)} > {MAX_ID_LENGTH} characters)")
    if cid in (".", "..") or cid[0] in "-.":
        raise InvalidArgument(f"invalid container id {cid!r}: must not start with '-' or '.'")
    for ch in cid:
        if not (ch.isascii() and (ch.isalnum() or ch in "_+-.")):
            raise InvalidArgument(
                f"invalid container id {cid!r}: only letters, digits and '_', '+', '-', '.' "
                "are allowed"
            )


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (starttime), or None if the pid does not exist.

    A zombie counts as gone: the container's init has exited.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    rest = data[data.rindex(b")") + 2 :].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


class ContainerState:
    """The persisted record of one container; ``status()`` is computed live."""

    def __init__(self, root: str, cid: str, data: dict[str, Any]) -> None:
        self.root = root
        self.id = cid
        self.data = data

    @property
    def dir(self) -> str:
        return os.path.join(self.root, self.id)

    @property
    def pid(self) -> int:
        return int(self.data.get("pid", 0))

    @property
    def bundle(self) -> str:
        return str(self.data["bundle"])

    @property
    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = self.data["config"]
        return cfg

    @property
    def fifo(self) -> str:
        return os.path.join(self.dir, EXEC_FIFO)

    def cgroup(self) -> CgroupManager:
        """The container's cgroup manager, from the paths saved at create.

        Not recomputed from cgroupsPath: a relative path depends on the
        caller's own cgroup, which may differ between commands.
        """
        from dockyard.runtime.cgroups import load_manager

        return load_manager(self.data.get("cgroup_paths") or {})

    def alive(self) -> bool:
        pid = self.pid  # 0 until create has forked the init
        if pid <= 0:
            return False
        st = process_start_time(pid)
        return st is not None and st == self.data.get("start_time")

    def status(self) -> str:
        creator = self.data.get("creator")
        if creator and process_start_time(creator[0]) == creator[1]:
            return CREATING
        if not self.alive():
            return STOPPED
        if os.path.exists(self.fifo):
            return CREATED
        if self.data.get("paused") and _frozen(self.data.get("cgroup_paths", {})):
            return PAUSED
        return RUNNING

    def oci_state(self) -> dict[str, Any]:
        """The state object of runtime-spec runtime.md, plus runc's extra fields."""
        status = self.status()
        out: dict[str, Any] = {
            "ociVersion": self.data.get("ociVersion", ""),
            "id": self.id,
            "status": status,
            "pid": self.pid if status != STOPPED else 0,
            "bundle": self.bundle,
            "rootfs": self.data.get("rootfs", ""),
            "created": self.data.get("created", ""),
            "owner": self.data.get("owner", ""),
        }
        ann = self.config.get("annotations")
        if ann:
            out["annotations"] = ann
        return out

    def save(self) -> None:
        # Imported here: start, kill, state and delete never save (per-command start-up).
        from dockyard.atomicfile import replace_file

        replace_file(os.path.join(self.dir, STATE_FILE), jsonio.dumps(self.data).encode(), 0o600)


def _frozen(paths: dict[str, str]) -> bool:
    fz = paths.get("freezer")
    try:
        if fz:
            with open(os.path.join(fz, "freezer.state")) as f:
                return f.read().strip() != "THAWED"
        v2 = paths.get("")
        if v2:
            with open(os.path.join(v2, "cgroup.freeze")) as f:
                return f.read().strip() == "1"
    except OSError:
        return False
    return False


def load(root: str, cid: str) -> ContainerState:
    validate_id(cid)
    path = os.path.join(root, cid, STATE_FILE)
    try:
        data = jsonio.load_file(path)
    except FileNotFoundError:
        raise NotFound(f"container {cid!r} does not exist") from None
    except ValueError as e:
        raise NotFound(f"container {cid!r}: state file is corrupt: {e}") from None
    return ContainerState(root, cid, data)


def make_dir(root: str, cid: str) -> str:
    """Create <root>/<id>; the root itself is 0700 (state holds config and fds)."""
    validate_id(cid)
    os.makedirs(root, mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
    d = os.path.join(root, cid)
    try:
        os.mkdir(d, 0o711)
    except FileExistsError:
        raise AlreadyExists(f"container {cid!r} already exists") from None
    return d


def list_ids(root: str) -> list[str]:
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if os.path.isfile(os.path.join(root, n, STATE_FILE)))


def remove_dir(d: str) -> None:
    """Remove a container's state directory (flat: state file, fifo, temp files)."""
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return
    for n in names:
        try:
            os.unlink(os.path.join(d, n))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(d)
    except FileNotFoundError:
        pass
