"""``create``: build the container and leave its init waiting for ``start``.

On any failure everything done so far is undone: init is killed, the cgroup
removed, the state directory deleted (runtime.md: a failed create leaves no
container behind).
"""

from __future__ import annotations

import os
import time

from dockyard.errors import ConfigError, Unsupported
from dockyard.runtime import libc, rootfs
from dockyard.runtime import state as st
from dockyard.runtime.children import kill_and_wait, write_pid_file
from dockyard.runtime.init import InitContext, container_init
from dockyard.runtime.nsexec import await_done, spawn
from dockyard.runtime.process import Finalizer, write_oom_score_adj
from dockyard.spec.runtime import OCI_VERSION, load_bundle_config
from dockyard.spec.runtime import rootfs_path as rootfs_path_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class CreateOptions:
    def __init__(
        self,
        *,
        bundle: str,
        console_socket: str | None = None,
        console_fd: int | None = None,
        pid_file: str | None = None,
        no_pivot: bool = False,
        no_new_keyring: bool = False,
        preserve_fds: int = 0,
    ) -> None:
        self.bundle = bundle
        self.console_socket = console_socket
        # a connected socket instead of a path: a foreground run keeps the pty
        self.console_fd = console_fd
        self.pid_file = pid_file
        self.no_pivot = no_pivot
        self.no_new_keyring = no_new_keyring
        self.preserve_fds = preserve_fds


# What every container may use whatever its config says: the default devices
# and the pty (runtime-spec config-linux.md "Default Devices").
DEFAULT_DEVICE_RULES: list[dict[str, Any]] = [
    *(
        {"allow": True, "type": "c", "major": ma, "minor": mi, "access": "rwm"}
        for ma, mi in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2))
    ),
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},
]


def cgroup_resources(linux: dict[str, Any]) -> dict[str, Any]:
    """linux.resources with the default device rules after the config's own.

    Each node of ``linux.devices`` may be created (mknod: "m"); reading or
    writing it still takes a rule of the config's.
    """
    res = dict(linux.get("resources") or {})
    nodes = [
        {"allow": True, "type": d["type"], "major": d["major"], "minor": d["minor"], "access": "m"}
        for d in linux.get("devices") or []
        if d.get("type") in ("c", "b", "u") and "major" in d and "minor" in d
    ]
    for n in nodes:
        if n["type"] == "u":
            n["type"] = "c"
    res["devices"] = [*(res.get("devices") or []), *DEFAULT_DEVICE_RULES, *nodes]
    return res


def check_host_support(cfg: dict[str, Any]) -> None:
    """Refuse what this host cannot do, instead of silently ignoring it."""
    proc = cfg.get("process") or {}
    linux = cfg.get("linux") or {}
    if proc.get("apparmorProfile") and not os.path.exists("/sys/kernel/security/apparmor"):
        raise Unsupported(
            "process.apparmorProfile: AppArmor is not enabled on this host "
            f"(profile {proc['apparmorProfile']!r} requested)"
        )
    if proc.get("apparmorProfile"):
        raise Unsupported("process.apparmorProfile: AppArmor profiles are not supported yet")
    selinux = proc.get("selinuxLabel") or linux.get("mountLabel")
    if selinux:
        raise Unsupported(
            "process.selinuxLabel/linux.mountLabel: SELinux is not enabled on this host"
        )
    if linux.get("intelRdt"):
        raise Unsupported("linux.intelRdt: Intel RDT (resctrl) is not available on this host")
    if linux.get("memoryPolicy"):
        raise Unsupported("linux.memoryPolicy: not supported by this runtime yet")
    if linux.get("netDevices"):
        raise Unsupported("linux.netDevices: not supported by this runtime yet")
    ns_types = {n["type"] for n in linux.get("namespaces") or []}
    if (cfg.get("hostname") or cfg.get("domainname")) and "uts" not in ns_types:
        raise ConfigError("hostname", "setting the hostname requires a new uts namespace")
    if "time" in ns_types and not os.path.exists("/proc/self/ns/time"):
        raise Unsupported("linux.namespaces: time namespaces are not supported by this kernel")
    if linux.get("timeOffsets") and "time" not in ns_types:
        raise ConfigError("linux.timeOffsets", "requires a time namespace")
    if ("uidMappings" in linux or "gidMappings" in linux) and "user" not in ns_types:
        raise ConfigError("linux.uidMappings", "id mappings require a user namespace")
    for key in linux.get("sysctl") or {}:
        _check_sysctl(key, ns_types)


_NET_SYSCTL = ("net.",)
_IPC_SYSCTL = (
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
)


def _check_sysctl(key: str, ns: set[str]) -> None:
    """Only namespaced sysctls may be set, and only with their namespace (as runc)."""
    if key.startswith(_NET_SYSCTL):
        if "network" not in ns:
            raise ConfigError(f"linux.sysctl.{key}", "needs a new network namespace")
        return
    if key in _IPC_SYSCTL or key.startswith("fs.mqueue."):
        if "ipc" not in ns:
            raise ConfigError(f"linux.sysctl.{key}", "needs a new ipc namespace")
        return
    if key in ("kernel.hostname", "kernel.domainname"):
        if "uts" not in ns:
            raise ConfigError(f"linux.sysctl.{key}", "needs a new uts namespace")
        return
    raise ConfigError(f"linux.sysctl.{key}", "is not namespaced: it would change the host")


def _namespaces(cfg: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    join: dict[str, str] = {}
    new: list[str] = []
    for n in (cfg.get("linux") or {}).get("namespaces") or []:
        if n.get("path"):
            join[n["type"]] = n["path"]
        else:
            new.append(n["type"])
    return join, new


def create(
    root: str, cid: str, opts: CreateOptions, cfg: dict[str, Any] | None = None
) -> st.ContainerState:
    """Create container ``cid``; returns its saved state with init waiting on the fifo.

    ``cfg``: the bundle's config when the caller has already loaded it.
    """
    st.validate_id(cid)
    bundle = os.path.abspath(opts.bundle)
    if cfg is None:
        # process may be absent until start (runtime.md "start")
        cfg = load_bundle_config(bundle, require_process=False)
    check_host_support(cfg)
    rootfs_path = os.path.realpath(rootfs_path_of(bundle, cfg))
    if not os.path.isdir(rootfs_path):
        raise ConfigError("root.path", f"rootfs {rootfs_path} does not exist or is not a directory")
    proc = cfg.get("process") or {}
    if proc.get("terminal") and not opts.console_socket and opts.console_fd is None:
        raise ConfigError(
            "process.terminal", "a terminal needs --console-socket when the runtime detaches"
        )

    from dockyard.runtime import cgroups

    linux = cfg.get("linux") or {}
    join, new = _namespaces(cfg)
    namespaces = set(join) | set(new)
    cg = cgroups.new_manager(linux.get("cgroupsPath") or None, cid)
    d = st.make_dir(root, cid)
    init_pid = 0
    console_fd = None
    fifo_fd = -1
    ch = None
    created_cg = False
    cg_parents: list[str] = []
    try:
        fifo = os.path.join(d, st.EXEC_FIFO)
        os.mkfifo(fifo, 0o622)
        os.chmod(fifo, 0o622)
        fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
        cg_parents = cgroups.missing_parents(cg.paths)
        state = st.ContainerState(
            root,
            cid,
            {
                "ociVersion": OCI_VERSION,
                "id": cid,
                "pid": 0,
                # while pid is 0: who is creating it (a dead creator means stopped)
                "creator": [os.getpid(), st.process_start_time(os.getpid())],
                "bundle": bundle,
                "rootfs": rootfs_path,
                "created": _now(),
                "owner": "",
                "cgroup_paths": cg.paths,
                "cgroup_parents": cg_parents,
                "config": cfg,
                "namespaces": sorted(namespaces),
            },
        )
        # saved before anything is made: a create killed half-way leaves a
        # record that delete can clean up from
        state.save()
        cg.create()
        created_cg = True
        cg.set(cgroup_resources(linux))
        if "cgroup" not in new:
            # The kernel's wait before the init's move starts now, behind the
            # forks; not earlier: it holds off every cgroup mkdir meanwhile.
            cgroups.warm_migration()
        if opts.console_fd is not None:
            console_fd = os.dup(opts.console_fd)
        elif opts.console_socket:
            from dockyard.runtime.console import connect

            console_fd = connect(opts.console_socket)
        fin = Finalizer(proc, linux.get("seccomp"), linux.get("personality")) if proc else None
        if (cfg.get("hooks") or {}).get("startContainer"):
            import subprocess  # noqa: F401  (the hook runs after pivot_root)
        ctx = InitContext(
            id=cid,
            bundle=bundle,
            rootfs=rootfs_path,
            cfg=cfg,
            fifo_fd=fifo_fd,
            cgroup_paths=cg.paths,
            namespaces=namespaces,
            finalizer=fin,
            console_fd=console_fd,
            preserve_fds=opts.preserve_fds,
            no_pivot=opts.no_pivot,
            no_new_keyring=opts.no_new_keyring,
            new_netns="network" in new,
            new_cgroupns="cgroup" in new,
            new_userns="user" in new,
        )
        # non-dumpable until execve: a process of another container sharing a
        # namespace must not reach the host's interpreter via /proc/<pid>/exe
        libc.prctl(libc.PR_SET_DUMPABLE, 0)
        init_pid, ch = spawn(
            join=join,
            new=new,
            linux=linux,
            child=lambda c: container_init(ctx, c),
            # A new cgroup namespace roots where stage 1 is: stage 1 is moved
            # first. Otherwise the init is, once it has built the rootfs.
            before_go=cg.apply if "cgroup" in new else None,
        )
        if console_fd is not None:
            os.close(console_fd)
            console_fd = None
        state.data["pid"] = init_pid
        state.data["start_time"] = st.process_start_time(init_pid)
        state.save()
        if proc.get("oomScoreAdj") is not None:
            write_oom_score_adj(init_pid, int(proc["oomScoreAdj"]))
        ch.expect("hooks")
        if "cgroup" not in new:
            # Before the hooks see the container and before "ok": the init
            # runs nothing of the container's until then. Built while the
            # kernel's wait for this move ran (see warm_migration above).
            cg.apply(init_pid)
        oci = {
            "ociVersion": cfg.get("ociVersion", OCI_VERSION),
            "id": cid,
            "status": st.CREATING,
            "pid": init_pid,
            "bundle": bundle,
        }
        if cfg.get("annotations"):
            oci["annotations"] = cfg["annotations"]
        from dockyard import jsonio
        from dockyard.runtime.hooks import run_hooks

        # prestart is deprecated; the OCI validation suite expects "created"
        run_hooks(cfg, "prestart", {**oci, "status": st.CREATED})
        run_hooks(cfg, "createRuntime", oci)
        ch.send("ok", jsonio.dumps(oci))
        await_done(ch, linux.get("seccomp"), {**oci, "status": st.CREATED})
        ch.close()
        ch = None
        del state.data["creator"]
        state.save()
        if opts.pid_file:
            write_pid_file(opts.pid_file, init_pid)
        return state
    except BaseException:
        if ch is not None:
            ch.close()
        if console_fd is not None:
            os.close(console_fd)
        if init_pid:
            kill_and_wait(init_pid)
        if "mount" not in namespaces:
            rootfs.unmount_below(rootfs_path)
        if created_cg:
            try:
                cg.kill_all(libc.SIGKILL)
            except Exception:
                pass
            _destroy_quietly(cg)
            cgroups.remove_empty_dirs(cg_parents)
        st.remove_dir(d)
        raise
    finally:
        if fifo_fd >= 0:
            os.close(fifo_fd)


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def _destroy_quietly(cg: Any) -> None:
    try:
        cg.destroy()
    except Exception:
        pass
