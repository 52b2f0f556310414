"""The container's init before it becomes the user's program (stage 2 of create).

It runs inside the new namespaces and builds the container: rootfs mounts,
devices, hooks, pivot_root, console, hostname, sysctls, masked and readonly
paths; then it finalizes the process, tells the runtime it is ready, and
blocks opening the exec fifo for writing until ``start`` opens it to read.
Only then does it run the startContainer hooks and execve the program.
"""

from __future__ import annotations

import os

from dockyard import jsonio
from dockyard.errors import SystemFailure
from dockyard.runtime import libc, rootfs
from dockyard.runtime.hooks import run_hooks
from dockyard.runtime.nsexec import Channel
from dockyard.runtime.process import Finalizer, set_rlimits

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn


class InitContext:
    def __init__(
        self,
        *,
        id: str,
        bundle: str,
        rootfs: str,
        cfg: dict[str, Any],
        fifo_fd: int,
        cgroup_paths: dict[str, str],
        namespaces: set[str],
        finalizer: Finalizer | None,
        console_fd: int | None = None,
        preserve_fds: int = 0,
        no_pivot: bool = False,
        no_new_keyring: bool = False,
        new_netns: bool = True,
        new_cgroupns: bool = False,
        new_userns: bool = False,
    ) -> None:
        self.id = id
        self.bundle = bundle
        self.rootfs = rootfs
        self.cfg = cfg
        self.fifo_fd = fifo_fd
        self.cgroup_paths = cgroup_paths
        self.namespaces = namespaces
        self.finalizer = finalizer
        self.console_fd = console_fd
        self.preserve_fds = preserve_fds
        self.no_pivot = no_pivot
        self.no_new_keyring = no_new_keyring
        self.new_netns = new_netns
        self.new_cgroupns = new_cgroupns
        self.new_userns = new_userns


def _rootfs_mount_unshared(path: str, slave: bool) -> None:
    """Make the mount holding the rootfs private (or a slave) if it is shared.

    pivot_root refuses a new root whose parent mount is shared, and binding
    the rootfs onto itself below a shared mount would propagate to the host.
    The mount is the longest mount point that is ``path`` or one of its parents.
    """
    best, best_shared = "/", False
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mp = fields[4].replace("\\040", " ")
            inside = path == mp or path.startswith(mp.rstrip("/") + "/")
            if inside and len(mp) >= len(best):
                best = mp
                best_shared = any(o.startswith("shared:") for o in fields[6 : fields.index("-")])
    if best_shared:
        libc.mount(None, best, None, libc.MS_SLAVE if slave else libc.MS_PRIVATE)


def prepare_rootfs(ctx: InitContext) -> None:
    cfg = ctx.cfg
    linux = cfg.get("linux") or {}
    if "mount" in ctx.namespaces:
        prop = linux.get("rootfsPropagation")
        flags = rootfs.PROPAGATION[prop] if prop else libc.MS_SLAVE | libc.MS_REC
        # rootfsPropagation is for the container's root: until pivot_root, the
        # host's mounts must neither see ours nor refuse the bind (unbindable)
        libc.mount(
            None, "/", None, libc.MS_SLAVE | libc.MS_REC if flags & libc.MS_UNBINDABLE else flags
        )
        _rootfs_mount_unshared(ctx.rootfs, slave=bool(flags & libc.MS_SLAVE))
    # without a mount namespace of its own (the spec allows it: the runtime's
    # is inherited) every mount below is the host's; delete unmounts them
    libc.mount(ctx.rootfs, ctx.rootfs, None, libc.MS_BIND | libc.MS_REC)
    mounts = cfg.get("mounts") or []
    for i, m in enumerate(mounts):
        rootfs.mount_one(ctx.rootfs, m, i, ctx)
    dev_bound = any(
        m.get("destination", "").rstrip("/") == "/dev"
        and ("bind" in (m.get("options") or []) or m.get("type") == "bind")
        for m in mounts
    )
    if not dev_bound:
        rootfs.setup_dev(ctx.rootfs, linux.get("devices") or [], ctx.new_userns)
    cwd = (cfg.get("process") or {}).get("cwd")
    if cwd:
        # runc creates a missing cwd; resolved inside the rootfs like any path
        target = rootfs.secure_join(ctx.rootfs, cwd)
        if not os.path.lexists(target):
            os.makedirs(target, 0o755, exist_ok=True)


def _sysctl(sysctl: dict[str, str]) -> None:
    if not rootfs.is_procfs("/proc"):
        raise SystemFailure("/proc in the container is not procfs: refusing to write sysctls")
    for key, value in sysctl.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise SystemFailure(
                f"set sysctl {key}={value}: {os.strerror(e.errno or 0).lower()}"
            ) from None


def container_init(ctx: InitContext, ch: Channel) -> NoReturn:
    cfg = ctx.cfg
    proc = cfg.get("process") or {}
    linux = cfg.get("linux") or {}
    os.setsid()
    prepare_rootfs(ctx)
    ch.send("hooks")
    state_json = ch.expect("ok")
    if (cfg.get("hooks") or {}).get("createContainer"):
        run_hooks(cfg, "createContainer", jsonio.loads(state_json))
    if "mount" not in ctx.namespaces:
        rootfs.chroot(ctx.rootfs)  # pivot_root here would swap the host's root
    elif ctx.no_pivot:
        rootfs.chroot_no_pivot(ctx.rootfs)
    else:
        rootfs.pivot_root(ctx.rootfs)
    prop = linux.get("rootfsPropagation")
    if prop and "mount" in ctx.namespaces and not rootfs.PROPAGATION[prop] & libc.MS_PRIVATE:
        # only now: on the old root this would have reached the host's mount
        libc.mount(None, "/", None, rootfs.PROPAGATION[prop])
    if not rootfs.is_procfs("/proc"):
        # the init needs it (its exec fifo, /proc/self/fd) and must not trust a fake
        raise SystemFailure("/proc in the container is not procfs: mount proc on /proc")
    if proc.get("terminal") and ctx.console_fd is not None:
        from dockyard.runtime.console import setup_console

        setup_console(ctx.console_fd, proc.get("consoleSize"))
    if cfg.get("hostname"):
        libc.sethostname(cfg["hostname"])
    if cfg.get("domainname"):
        libc.setdomainname(cfg["domainname"])
    if linux.get("sysctl"):
        _sysctl(linux["sysctl"])
    for p in linux.get("readonlyPaths") or []:
        rootfs.readonly_path(p)
    for p in linux.get("maskedPaths") or []:
        rootfs.mask_path(p)
    if (cfg.get("root") or {}).get("readonly"):
        rootfs.remount_root_readonly()
    if proc.get("rlimits"):
        set_rlimits(proc["rlimits"])
    if not ctx.no_new_keyring:
        try:
            libc.join_session_keyring(f"_ses.{ctx.id}")  # the name runc gives it
        except OSError as e:
            if e.errno != 38:  # ENOSYS: keyrings not available (some sandboxes)
                raise
    fin = ctx.finalizer
    keep = {0, 1, 2, ch.fileno(), ctx.fifo_fd, *range(3, 3 + ctx.preserve_fds)}
    for fd in range(3, 3 + ctx.preserve_fds):
        os.set_inheritable(fd, True)
    if fin is None:  # no process (allowed until start): nothing will run
        from dockyard.runtime.process import close_fds_except

        close_fds_except(keep)
        ch.send("ready")
        ch.close()
        os.close(os.open(f"/proc/self/fd/{ctx.fifo_fd}", os.O_WRONLY | os.O_CLOEXEC))
        os._exit(0)
    fin.finalize(keep)
    fin.report_ready(ch)
    # blocks until `start` opens the fifo for reading
    fd = os.open(f"/proc/self/fd/{ctx.fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
    os.write(fd, b"0")
    os.close(fd)
    os.close(ctx.fifo_fd)
    if (cfg.get("hooks") or {}).get("startContainer"):
        run_hooks(cfg, "startContainer", jsonio.loads(state_json) | {"status": "created"})
    try:
        fin.exec()
    except SystemFailure as e:
        os.write(2, f"dockyard-runtime: {e}\n".encode())
    os._exit(127)
