"""Building the container's filesystem view inside its mount namespace.

Every destination named by config.json (mounts, devices, masked and
readonly paths) is resolved *inside* the rootfs: symlinks are followed as if
the rootfs were ``/`` (so ``/evil -> /etc`` means ``<rootfs>/etc``), and the
final target is opened with ``O_PATH`` and checked before anything is mounted
on it through ``/proc/self/fd/N`` — so a symlink swapped in between can not
redirect a mount onto the host.
"""

from __future__ import annotations

import os
import stat

from dockyard.errors import ConfigError, SystemFailure, Unsupported
from dockyard.runtime import libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# mount option -> (clear, flags); clear=True means the option removes the flags
MOUNT_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, libc.MS_SYNCHRONOUS),
    "atime": (True, libc.MS_NOATIME),
    "bind": (False, libc.MS_BIND),
    "defaults": (False, 0),
    "dev": (True, libc.MS_NODEV),
    "diratime": (True, libc.MS_NODIRATIME),
    "dirsync": (False, libc.MS_DIRSYNC),
    "exec": (True, libc.MS_NOEXEC),
    "mand": (False, libc.MS_MANDLOCK),
    "noatime": (False, libc.MS_NOATIME),
    "nodev": (False, libc.MS_NODEV),
    "nodiratime": (False, libc.MS_NODIRATIME),
    "noexec": (False, libc.MS_NOEXEC),
    "nomand": (True, libc.MS_MANDLOCK),
    "norelatime": (True, libc.MS_RELATIME),
    "nostrictatime": (True, libc.MS_STRICTATIME),
    "nosuid": (False, libc.MS_NOSUID),
    "nosymfollow": (False, libc.MS_NOSYMFOLLOW),
    "rbind": (False, libc.MS_BIND | libc.MS_REC),
    "relatime": (False, libc.MS_RELATIME),
    "remount": (False, libc.MS_REMOUNT),
    "ro": (False, libc.MS_RDONLY),
    "rw": (True, libc.MS_RDONLY),
    "strictatime": (False, libc.MS_STRICTATIME),
    "suid": (True, libc.MS_NOSUID),
    "sync": (False, libc.MS_SYNCHRONOUS),
    "lazytime": (False, libc.MS_LAZYTIME),
    "nolazytime": (True, libc.MS_LAZYTIME),
    "silent": (False, libc.MS_SILENT),
    "loud": (True, libc.MS_SILENT),
}

PROPAGATION: dict[str, int] = {
    "private": libc.MS_PRIVATE,
    "rprivate": libc.MS_PRIVATE | libc.MS_REC,
    "shared": libc.MS_SHARED,
    "rshared": libc.MS_SHARED | libc.MS_REC,
    "slave": libc.MS_SLAVE,
    "rslave": libc.MS_SLAVE | libc.MS_REC,
    "unbindable": libc.MS_UNBINDABLE,
    "runbindable": libc.MS_UNBINDABLE | libc.MS_REC,
}

# Options that only exist as mount_setattr(2) attributes in newer runcs;
# recognised so that they are not passed to the filesystem as data.
_RECURSIVE_ATTRS = {"rro", "rrw", "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec", "rexec"}

PROC_SUPER_MAGIC = 0x9FA0

DEFAULT_DEVICES: list[dict[str, Any]] = [
    {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666},
    {"path": "/dev/zero", "type": "c", "major": 1, "minor": 5, "fileMode": 0o666},
    {"path": "/dev/full", "type": "c", "major": 1, "minor": 7, "fileMode": 0o666},
    {"path": "/dev/random", "type": "c", "major": 1, "minor": 8, "fileMode": 0o666},
    {"path": "/dev/urandom", "type": "c", "major": 1, "minor": 9, "fileMode": 0o666},
    {"path": "/dev/tty", "type": "c", "major": 5, "minor": 0, "fileMode": 0o666},
]

DEV_SYMLINKS = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
]


def parse_mount_options(options: list[str]) -> tuple[int, int, list[str], str]:
    """Split OCI mount options into (flags, propagation flags, extra, fs data)."""
    flags = 0
    prop: list[int] = []
    data: list[str] = []
    extra: list[str] = []
    for opt in options:
        if opt in MOUNT_FLAGS:
            clear, f = MOUNT_FLAGS[opt]
            flags = flags & ~f if clear else flags | f
        elif opt in PROPAGATION:
            prop.append(PROPAGATION[opt])
        elif opt in _RECURSIVE_ATTRS or opt in ("tmpcopyup", "idmap", "ridmap", "copy-symlink"):
            extra.append(opt)
        else:
            data.append(opt)
    pflags = 0
    for p in prop:
        pflags |= p
    return flags, pflags, extra, ",".join(data)


def secure_join(root: str, unsafe: str) -> str:
    """Resolve ``unsafe`` as if ``root`` were ``/``; the result is always below root.

    Symlinks are followed by hand (at most 255 of them) and ``..`` never climbs
    above root, as the kernel does for a process chrooted there.
    """
    root = root.rstrip("/") or "/"
    parts = [p for p in unsafe.split("/") if p]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 255:
                raise OSError(40, f"too many levels of symbolic links resolving {unsafe}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _inside(root: str, path: str) -> bool:
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


class MountTarget:
    """An O_PATH handle on a mount destination, verified to lie inside the rootfs."""

    def __init__(self, root: str, dest: str, *, is_dir: bool = True, create: bool = True) -> None:
        self.path = secure_join(root, dest)
        if create and not os.path.lexists(self.path):
            if is_dir:
                os.makedirs(self.path, 0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(self.path), 0o755, exist_ok=True)
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        self.root = root
        self.dest = dest
        self.fd = -1
        self.reopen()

    def reopen(self) -> None:
        """(Re)open the destination: after a mount, the old handle names what is underneath."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        fd = os.open(self.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        real = os.readlink(f"/proc/self/fd/{fd}")
        if not _inside(self.root, real):
            os.close(fd)
            raise SystemFailure(
                f"mount destination {self.dest} resolves to {real}, outside the rootfs"
            )
        self.fd = fd

    @property
    def proc_path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> MountTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _source_is_dir(src: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(src).st_mode)
    except OSError:
        return True


def mount_one(rootfs: str, m: dict[str, Any], index: int, ctx: Any) -> None:
    """Mount one entry of config.json ``mounts`` below ``rootfs``."""
    dest = m["destination"]
    if not dest.startswith("/"):
        dest = "/" + dest  # runc treats a relative destination as relative to /
    mtype = m.get("type") or ""
    source = m.get("source") or mtype or "none"
    flags, pflags, extra, data = parse_mount_options(m.get("options") or [])
    where = f"mounts[{index}]"
    is_bind = bool(flags & libc.MS_BIND) or mtype == "bind"
    if is_bind:
        flags |= libc.MS_BIND
        if not source.startswith("/"):
            source = os.path.join(ctx.bundle, source)
        if not os.path.exists(source):
            raise ConfigError(f"{where}.source", f"bind source {source} does not exist")
    if mtype == "cgroup":
        try:
            _mount_cgroup(rootfs, dest, flags, ctx)
        except OSError as e:
            raise SystemFailure(
                f"{where}: mount cgroup on {dest}: {os.strerror(e.errno or 0).lower()}"
            ) from None
        return
    if "idmap" in extra or "ridmap" in extra:
        raise Unsupported(f"{where}: idmapped mounts are not supported by this runtime")
    is_dir = _source_is_dir(source) if is_bind else True
    with MountTarget(rootfs, dest, is_dir=is_dir) as t:
        try:
            if is_bind:
                libc.mount(source, t.proc_path, None, flags & (libc.MS_BIND | libc.MS_REC))
                t.reopen()
                # bind mounts ignore most flags on the first call: remount to apply them
                remount = flags & ~(libc.MS_BIND | libc.MS_REC | libc.MS_REMOUNT)
                if remount:
                    libc.mount(None, t.proc_path, None, libc.MS_BIND | libc.MS_REMOUNT | remount)
            else:
                if mtype == "sysfs" and not ctx.new_netns:
                    # sysfs needs a new netns; runc binds the host's instead
                    libc.mount("/sys", t.proc_path, None, libc.MS_BIND | libc.MS_REC)
                    t.reopen()
                    if flags & libc.MS_RDONLY:
                        libc.mount(
                            None,
                            t.proc_path,
                            None,
                            libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_REC,
                        )
                else:
                    libc.mount(source, t.proc_path, mtype, flags, data or None)
            if pflags:
                t.reopen()
                libc.mount(None, t.proc_path, None, pflags)
        except OSError as e:
            raise SystemFailure(
                f"{where}: mount {source} on {dest} (type {mtype or 'bind'}): "
                f"{os.strerror(e.errno or 0).lower()}"
            ) from None


def _mount_cgroup(rootfs: str, dest: str, flags: int, ctx: Any) -> None:
    """A ``cgroup`` mount: cgroup2 on v2 hosts; on v1 a tmpfs with each controller.

    Without a cgroup namespace the container's own cgroup directories are
    bind-mounted, so it sees its cgroup as the root, as runc does.
    """
    ro = flags & libc.MS_RDONLY
    base = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    paths: dict[str, str] = ctx.cgroup_paths
    with MountTarget(rootfs, dest) as t:
        if "" in paths and len(paths) == 1:  # pure v2
            if ctx.new_cgroupns:
                libc.mount("cgroup2", t.proc_path, "cgroup2", base | ro)
            else:
                libc.mount(paths[""], t.proc_path, None, libc.MS_BIND | libc.MS_REC)
                t.reopen()
                libc.mount(None, t.proc_path, None, libc.MS_BIND | libc.MS_REMOUNT | base | ro)
            return
        libc.mount("tmpfs", t.proc_path, "tmpfs", base, "mode=755")
        top = t.path
    for ctrl, host_dir in sorted(paths.items()):
        if not ctrl:
            continue
        name = ctrl[len("name=") :] if ctrl.startswith("name=") else ctrl
        with MountTarget(rootfs, os.path.join(dest, name)) as sub:
            if not _inside(top, sub.path):
                raise SystemFailure(f"cgroup mount {dest}/{name} resolves outside {dest}")
            if ctx.new_cgroupns:
                opts = f"name={name[5:]}" if ctrl.startswith("name=") else ctrl
                if ctrl.startswith("name="):
                    opts = ctrl
                libc.mount("cgroup", sub.proc_path, "cgroup", base | ro, opts)
            else:
                libc.mount(host_dir, sub.proc_path, None, libc.MS_BIND | libc.MS_REC)
                sub.reopen()
                libc.mount(None, sub.proc_path, None, libc.MS_BIND | libc.MS_REMOUNT | base | ro)
    if ro:
        with MountTarget(rootfs, dest) as t:
            libc.mount(
                None, t.proc_path, None, libc.MS_BIND | libc.MS_REMOUNT | base | libc.MS_RDONLY
            )


def create_device(rootfs: str, dev: dict[str, Any], bind: bool, strict: bool = True) -> None:
    """mknod a device below rootfs (or bind the host's node in a user namespace).

    A file already at the path must be that very device (config-linux.md
    "Devices"); with ``strict`` false (the default devices) it is replaced.
    """
    path = dev["path"]
    dtype = dev.get("type", "c")
    with MountTarget(rootfs, os.path.dirname(path) or "/") as parent_t:
        parent = parent_t.path
    target = os.path.join(parent, os.path.basename(path))
    kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[dtype]
    rdev = os.makedev(dev.get("major", 0), dev.get("minor", 0)) if dtype != "p" else 0
    mode = dev.get("fileMode")
    perm = 0o666 if mode is None else mode & 0o7777
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    if st is not None:
        same = stat.S_IFMT(st.st_mode) == kind and (dtype == "p" or st.st_rdev == rdev)
        if not same and strict:
            raise SystemFailure(
                f"create device {path}: a different file already exists at that path"
            )
        if not same:
            if stat.S_ISDIR(st.st_mode):
                raise SystemFailure(f"create device {path}: a directory is in the way")
            os.unlink(target)
            st = None
    if bind:
        if st is None:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        with MountTarget(rootfs, path, is_dir=False, create=False) as t:
            libc.mount(path, t.proc_path, None, libc.MS_BIND)
        return
    if st is None:
        try:
            os.mknod(target, kind | perm, rdev)
        except OSError as e:
            raise SystemFailure(
                f"create device {path}: {os.strerror(e.errno or 0).lower()}"
            ) from None
    os.chmod(target, perm)  # mknod honours the umask; the config's mode is exact
    os.chown(target, dev.get("uid", 0), dev.get("gid", 0))


def setup_dev(rootfs: str, devices: list[dict[str, Any]], in_userns: bool) -> None:
    """Default devices, the /dev symlinks and the config's extra devices."""
    seen = {d["path"] for d in devices}
    for d in DEFAULT_DEVICES:
        if d["path"] not in seen:
            create_device(rootfs, d, in_userns, strict=False)
    for d in devices:
        create_device(rootfs, d, in_userns)
    dev = secure_join(rootfs, "/dev")
    links = [*DEV_SYMLINKS]
    if os.path.exists("/proc/kcore"):
        links.append(("/proc/kcore", "/dev/core"))
    for src, name in links:
        p = os.path.join(dev, os.path.basename(name))
        if not os.path.lexists(p):
            os.symlink(src, p)
    ptmx = os.path.join(dev, "ptmx")
    if os.path.lexists(ptmx) and not os.path.islink(ptmx):
        os.unlink(ptmx)
    if not os.path.lexists(ptmx):
        os.symlink("pts/ptmx", ptmx)


def pivot_root(rootfs: str) -> None:
    """pivot_root(".", ".") then detach the old root: no host path remains reachable."""
    old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    new = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(new)
        libc.pivot_root(".", ".")
        os.fchdir(old)
        # the old root must not propagate its unmount to the host
        libc.mount(None, ".", None, libc.MS_SLAVE | libc.MS_REC)
        libc.umount2(".", libc.MNT_DETACH)
        os.chdir("/")
    finally:
        os.close(old)
        os.close(new)


def chroot(rootfs: str) -> None:
    """A plain chroot, for a container that shares the runtime's mount namespace."""
    os.chdir(rootfs)
    os.chroot(".")
    os.chdir("/")


def unmount_below(path: str) -> None:
    """Unmount everything mounted at or below ``path``, deepest first.

    For containers without a mount namespace of their own, whose mounts were
    made in the host's: delete (and a failed create) takes them away.
    """
    path = path.rstrip("/")
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    mine = [p for p in points if p == path or p.startswith(path + "/")]
    for p in reversed(mine):  # mountinfo lists parents before children
        try:
            libc.umount2(p, libc.MNT_DETACH)
        except OSError:
            pass


def chroot_no_pivot(rootfs: str) -> None:
    """--no-pivot: move the rootfs over / and chroot (for ramfs roots)."""
    os.chdir(rootfs)
    libc.mount(rootfs, "/", None, libc.MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def is_procfs(path: str) -> bool:
    return libc.statfs_type(path) == PROC_SUPER_MAGIC


def mask_path(path: str) -> None:
    """Make ``path`` (inside the new root) unreadable: /dev/null over files, ro tmpfs on dirs."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        return
    if stat.S_ISDIR(st.st_mode):
        libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY, None)
    else:
        libc.mount("/dev/null", path, None, libc.MS_BIND)


def readonly_path(path: str) -> None:
    try:
        libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
    except FileNotFoundError:
        return
    flags = libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY
    # keep the flags the mount already has, or the remount is refused in a userns
    flags |= libc.statvfs_mount_flags(path)
    libc.mount(None, path, None, flags)


def remount_root_readonly() -> None:
    flags = libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.statvfs_mount_flags("/")
    libc.mount(None, "/", None, flags)
