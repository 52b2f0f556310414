"""One container of the shim: its bundle, root filesystem, init and execs.

``create`` does what containerd's runc shim does in NewContainer: resolve
the runtime from the options, save them in the bundle, mount the
snapshotter's mounts at ``<bundle>/rootfs`` and run ``runtime create``;
any failure undoes the mounts. Deleting the init unmounts them again.
"""

from __future__ import annotations

import os
import sys
import threading

from dockyard.errors import AlreadyExists, DockyardError, NotFound
from dockyard.identifiers import validate_identifier
from dockyard.shim import options as opts
from dockyard.shim.process import Exec, Init, Process
from dockyard.shim.rootfs import mount_rootfs, unmount_rootfs
from dockyard.shim.runtime import DEFAULT_RUNTIME, default_root, find_binary, new_runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dockyard.shim.reaper import Launcher
    from dockyard.shim.stdio import Stdio
    from dockyard.spec.mount import Mount


def shim_dir() -> str:
    """The directory of the shim's own executable, where its runtime is looked for first."""
    return os.path.dirname(os.path.abspath(sys.argv[0] or "."))


def kill_all_on_exit(bundle: str) -> bool:
    """Whether the rest of the container must be killed when its init exits:
    unless it has a new pid namespace (the kernel does it then), as runc's shim."""
    from dockyard import jsonio

    try:
        config = jsonio.load_file(os.path.join(bundle, "config.json"))
        for ns in config.get("linux", {}).get("namespaces", []):
            if ns.get("type") == "pid" and not ns.get("path"):
                return False
    except (OSError, ValueError, AttributeError):
        pass
    return True


class Container:
    """A created container: the init, its execs, and what the shim mounted."""

    def __init__(self, id: str, bundle: str, init: Init, rootfs: str) -> None:
        self.id = id
        self.bundle = bundle
        self.init = init
        self.rootfs = rootfs  # "" when the shim mounted nothing
        self.kill_all_on_exit = kill_all_on_exit(bundle)
        self.cgroup_paths: dict[str, str] = {}
        self._lock = threading.Lock()
        self._execs: dict[str, Exec] = {}

    @classmethod
    def create(
        cls,
        id: str,
        bundle: str,
        namespace: str,
        stdio: Stdio,
        rootfs_mounts: list[Mount],
        options: opts.ShimOptions,
        launcher: Launcher,
    ) -> Container:
        """Mount the rootfs and ``runtime create``; the pid is known when this returns."""
        here = shim_dir()
        binary = find_binary(options.binary_name or DEFAULT_RUNTIME, here)
        root = default_root(binary, namespace, options.root)
        opts.save(bundle, binary, root, options.systemd_cgroup)
        runtime = new_runtime(
            binary,
            root,
            os.path.join(bundle, "log.json"),
            launcher,
            here,
            systemd_cgroup=options.systemd_cgroup,
        )
        rootfs = ""
        if rootfs_mounts:
            rootfs = os.path.join(bundle, "rootfs")
            mount_rootfs(rootfs_mounts, rootfs)
        init = Init(
            id,
            bundle,
            stdio,
            runtime,
            no_pivot=options.no_pivot_root,
            no_new_keyring=options.no_new_keyring,
            io_uid=options.io_uid,
            io_gid=options.io_gid,
            rootfs=rootfs,
        )
        try:
            init.create()
        except BaseException:
            if rootfs:
                try:
                    unmount_rootfs(rootfs)
                except DockyardError:
                    pass
            raise
        return cls(id, bundle, init, rootfs)

    # -- processes ----------------------------------------------------------

    def process(self, exec_id: str) -> Process:
        if not exec_id:
            return self.init
        with self._lock:
            p = self._execs.get(exec_id)
        if p is None:
            raise NotFound(f"process {exec_id} does not exist")
        return p

    def execs(self) -> list[Exec]:
        with self._lock:
            return list(self._execs.values())

    def processes(self) -> list[Process]:
        return [self.init, *self.execs()]

    def add_exec(self, exec_id: str, stdio: Stdio, spec: dict[str, object]) -> Exec:
        validate_identifier("exec id", exec_id)
        with self._lock:
            if exec_id in self._execs:
                raise AlreadyExists(f"exec {exec_id} already exists in container {self.id}")
            p = Exec(self.init, exec_id, stdio, spec)
            self._execs[exec_id] = p
        return p

    def remove_exec(self, exec_id: str) -> None:
        with self._lock:
            self._execs.pop(exec_id, None)
