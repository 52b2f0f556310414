"""The one seam between the runtime and the kernel: ctypes bindings to libc.

Everything in the runtime that needs a syscall Python's ``os`` module lacks
goes through this module, so the logic above it can be exercised with a
recording fake. Each wrapper raises ``OSError`` with errno set, like ``os``.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

SIGKILL = 9
SIGTERM = 15

# clone(2) / unshare(2) / setns(2) flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

# OCI namespace type -> (clone flag, /proc/<pid>/ns/<name>)
NAMESPACES: dict[str, tuple[int, str]] = {
    "pid": (CLONE_NEWPID, "pid"),
    "network": (CLONE_NEWNET, "net"),
    "mount": (CLONE_NEWNS, "mnt"),
    "ipc": (CLONE_NEWIPC, "ipc"),
    "uts": (CLONE_NEWUTS, "uts"),
    "user": (CLONE_NEWUSER, "user"),
    "cgroup": (CLONE_NEWCGROUP, "cgroup"),
    "time": (CLONE_NEWTIME, "time"),
}

# mount(2) flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

MNT_FORCE = 1
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# prctl(2) options
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# syscall numbers (x86_64, aarch64)
_SYSCALLS = {
    "x86_64": {
        "pivot_root": 155,
        "capget": 125,
        "capset": 126,
        "keyctl": 250,
        "setns": 308,
        "close_range": 436,
        "openat2": 437,
        "ioprio_set": 251,
        "sched_setattr": 314,
    },
    "aarch64": {
        "pivot_root": 41,
        "capget": 90,
        "capset": 91,
        "keyctl": 219,
        "setns": 268,
        "close_range": 436,
        "openat2": 437,
        "ioprio_set": 30,
        "sched_setattr": 274,
    },
}
MACHINE = os.uname().machine
SYS = _SYSCALLS.get(MACHINE, _SYSCALLS["x86_64"])

_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def _check(ret: int, what: str, target: str | None = None) -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", target)
    return ret


def _b(s: str | bytes | None) -> bytes | None:
    if s is None:
        return None
    return s.encode() if isinstance(s, str) else s


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    _check(
        _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
        f"mount {source or 'none'} on {target}",
        target,
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"unmount {target}", target)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def in_user_namespace() -> bool:
    """Whether this process is in a user namespace other than the initial one.

    The initial one maps all 2**32 - 1 ids onto themselves (user_namespaces(7));
    runc's userns.RunningInUserNS reads it the same way. False when
    /proc/self/uid_map can not be read.
    """
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def pivot_root(new_root: str, put_old: str) -> None:
    _check(
        _libc.syscall(SYS["pivot_root"], _b(new_root), _b(put_old)),
        f"pivot_root {new_root}",
        new_root,
    )


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def sethostname(name: str) -> None:
    b = name.encode()
    _check(_libc.sethostname(b, len(b)), "sethostname")


def setdomainname(name: str) -> None:
    b = name.encode()
    _check(_libc.setdomainname(b, len(b)), "setdomainname")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capget(pid: int = 0) -> tuple[int, int, int]:
    """Return (effective, permitted, inheritable) as 64-bit masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    _check(_libc.syscall(SYS["capget"], ctypes.byref(hdr), ctypes.byref(data)), "capget")
    return (
        data[0].effective | (data[1].effective << 32),
        data[0].permitted | (data[1].permitted << 32),
        data[0].inheritable | (data[1].inheritable << 32),
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    m = 0xFFFFFFFF
    data[0].effective, data[1].effective = effective & m, effective >> 32
    data[0].permitted, data[1].permitted = permitted & m, permitted >> 32
    data[0].inheritable, data[1].inheritable = inheritable & m, inheritable >> 32
    _check(_libc.syscall(SYS["capset"], ctypes.byref(hdr), ctypes.byref(data)), "capset")


KEYCTL_JOIN_SESSION_KEYRING = 1


def join_session_keyring(name: str | None) -> None:
    """Give the container its own session keyring (runc does unless --no-new-keyring)."""
    _check(
        _libc.syscall(
            SYS["keyctl"], ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), ctypes.c_char_p(_b(name))
        ),
        "join session keyring",
    )


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    _check(
        _libc.syscall(
            SYS["close_range"], ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags)
        ),
        "close_range",
    )


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): open ``path`` relative to ``dirfd`` with RESOLVE_* constraints."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(
        _libc.syscall(
            SYS["openat2"],
            ctypes.c_int(dirfd),
            ctypes.c_char_p(path.encode()),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        ),
        f"open {path}",
        path,
    )


class _Statfs(ctypes.Structure):
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


def statfs_type(path: str) -> int:
    """The filesystem magic number of ``path`` (statfs(2) f_type)."""
    buf = _Statfs()
    _check(_libc.statfs(_b(path), ctypes.byref(buf)), f"statfs {path}", path)
    return int(buf.f_type)


# statvfs(3) ST_* -> mount(2) MS_* (same values except ST_RELATIME)
_ST_TO_MS = {
    1: MS_RDONLY,
    2: MS_NOSUID,
    4: MS_NODEV,
    8: MS_NOEXEC,
    16: MS_SYNCHRONOUS,
    64: MS_MANDLOCK,
    1024: MS_NOATIME,
    2048: MS_NODIRATIME,
    4096: MS_RELATIME,
}


def statvfs_mount_flags(path: str) -> int:
    """The locked per-mount flags of ``path`` as MS_* bits (for bind remounts)."""
    f = os.statvfs(path).f_flag
    out = 0
    for st, ms in _ST_TO_MS.items():
        if f & st:
            out |= ms
    return out


def personality(persona: int) -> int:
    _libc.personality.argtypes = [ctypes.c_ulong]
    return _check(_libc.personality(persona), "personality")


IOPRIO_WHO_PROCESS = 1


def ioprio_set(value: int) -> None:
    """ioprio_set(2) for the calling process."""
    _check(
        _libc.syscall(
            SYS["ioprio_set"],
            ctypes.c_int(IOPRIO_WHO_PROCESS),
            ctypes.c_int(0),
            ctypes.c_int(value),
        ),
        "ioprio_set",
    )


class _SchedAttr(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
    ]


def sched_setattr(
    policy: int, flags: int, nice: int, priority: int, runtime: int, deadline: int, period: int
) -> None:
    """sched_setattr(2) for the calling thread (struct sched_attr, version 0)."""
    attr = _SchedAttr(
        ctypes.sizeof(_SchedAttr), policy, flags, nice, priority, runtime, deadline, period
    )
    _check(
        _libc.syscall(SYS["sched_setattr"], ctypes.c_int(0), ctypes.byref(attr), ctypes.c_uint(0)),
        "sched_setattr",
    )
