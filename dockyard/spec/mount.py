"""containerd's ``types.Mount`` and the helpers that really mount a list of them.

A snapshotter answers ``prepare``/``view``/``mounts`` with a list of
:class:`Mount`: the type, source and options of ``mount(8)``. Whoever gets the
list (the shim, ``dockyard-image unpack``, the diff service) mounts it with
:func:`mount_all` and undoes it with :func:`unmount_all`.

Overlay mounts of images with many layers do not fit in ``mount(2)``'s data
page (4096 bytes, the kernel truncates the rest). Such a mount is made, in
order of preference:

1. with the new mount API, one ``lowerdir+`` per layer (``fsopen("overlay")``
   and ``fsconfig``; Linux >= 6.8, probed once), where no string is long;
2. as containerd does: the lower directories are made relative to their
   longest common parent, and ``mount(2)`` runs in a thread that has its own
   working directory there (``unshare(CLONE_FS)``, so the rest of the process
   keeps its own).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Iterable

from dockyard.runtime import libc
from dockyard.runtime.rootfs import MOUNT_FLAGS, PROPAGATION

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLONE_FS = 0x00000200


class Mount:
    """One mount, as containerd's ``types.Mount`` (api/types/mount.proto).

    ``target`` is relative to the directory given to :func:`mount_all`
    (empty: that directory itself). A plain class, not a dataclass: the
    per-container shim imports this module, and ``dataclasses`` costs it
    about 2 MiB of memory.
    """

    __slots__ = ("options", "source", "target", "type")

    def __init__(
        self, type: str, source: str, options: list[str] | None = None, target: str = ""
    ) -> None:
        self.type = type
        self.source = source
        self.options = options if options is not None else []
        self.target = target

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mount):
            return NotImplemented
        return (self.type, self.source, self.options, self.target) == (
            other.type,
            other.source,
            other.options,
            other.target,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was

    def __repr__(self) -> str:
        return (
            f"Mount(type={self.type!r}, source={self.source!r}, "
            f"options={self.options!r}, target={self.target!r})"
        )

    def readonly(self) -> bool:
        return _split_options(self.options)[0] & libc.MS_RDONLY != 0


# option -> flags: one table for the runtime's config.json mounts and these
_FLAGS = MOUNT_FLAGS
_PROPAGATION = PROPAGATION


def _split_options(options: Iterable[str]) -> tuple[int, int, list[str]]:
    """Options -> (MS_* flags, propagation flags, filesystem data options)."""
    flags = 0
    prop = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAGS:
            clear, f = _FLAGS[opt]
            flags = flags & ~f if clear else flags | f
        elif opt in _PROPAGATION:
            prop |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return flags, prop, data


def _target_of(m: Mount, target: str) -> str:
    if not m.target:
        return target
    # A mount's own target stays below the directory it is given.
    rel = os.path.normpath("/" + m.target).lstrip("/")
    return os.path.join(target, rel)


def mount_all(mounts: Iterable[Mount], target: str) -> None:
    """Mount each of ``mounts`` at ``target`` in order; on error, undo what was done."""
    target = os.path.abspath(target)
    done: list[str] = []
    try:
        for m in mounts:
            where = _target_of(m, target)
            mount_one(m, where)
            done.append(where)
    except BaseException:
        for where in reversed(done):
            try:
                libc.umount2(where, libc.MNT_DETACH)
            except OSError:
                pass
        raise


def mount_one(m: Mount, target: str) -> None:
    """Mount ``m`` at ``target`` (absolute); raises ``OSError`` naming the mount."""
    flags, prop, data = _split_options(m.options)
    if m.type == "bind":
        flags |= libc.MS_BIND
    if flags & libc.MS_BIND:
        # A bind mount ignores every flag but MS_REC: the rest takes a remount.
        libc.mount(m.source, target, None, flags & (libc.MS_BIND | libc.MS_REC))
        rest = flags & ~(libc.MS_BIND | libc.MS_REC)
        if rest:
            try:
                libc.mount(None, target, None, rest | libc.MS_BIND | libc.MS_REMOUNT)
            except OSError:
                libc.umount2(target, libc.MNT_DETACH)
                raise
    else:
        joined = ",".join(data)
        if m.type == "overlay" and len(joined) >= PAGE_SIZE:
            _mount_long_overlay(m.source, target, flags, data)
        else:
            libc.mount(m.source, target, m.type, flags, joined or None)
    if prop:
        libc.mount(None, target, None, prop)


def unmount_all(target: str, flags: int = 0) -> None:
    """Unmount every mount stacked on ``target`` (none is not an error)."""
    target = os.path.abspath(target)
    for _ in range(1000):
        try:
            libc.umount2(target, flags | libc.UMOUNT_NOFOLLOW)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                return  # not (or no longer) a mount point
            raise
    raise OSError(errno.EBUSY, f"unmount {target}: too many stacked mounts", target)


# --- long overlay mounts ------------------------------------------------------


def _lowerdirs(data: list[str]) -> tuple[list[str], list[str]]:
    """(the lower directories, the other data options) of overlay options."""
    lowers: list[str] = []
    rest: list[str] = []
    for opt in data:
        if opt.startswith("lowerdir="):
            lowers.extend(unescape_overlay(opt[len("lowerdir=") :], ":"))
        else:
            rest.append(opt)
    return lowers, rest


def unescape_overlay(value: str, sep: str = "") -> list[str]:
    """An overlay path option's value as overlayfs reads it: a backslash keeps the
    character after it, whatever it is, and goes; split at each other ``sep``
    (lowerdir's ':'), empty parts dropped."""
    out: list[str] = []
    cur: list[str] = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            cur.append(next(it, ""))
        elif sep and ch == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [p for p in out if p]


def _mount_long_overlay(source: str, target: str, flags: int, data: list[str]) -> None:
    if lowerdir_plus_supported():
        _mount_overlay_fsconfig(source, target, flags, data)
    else:
        _mount_overlay_relative(source, target, flags, data)


def _mount_overlay_relative(source: str, target: str, flags: int, data: list[str]) -> None:
    """containerd's way: lowerdirs relative to their common parent, mounted from there."""
    lowers, rest = _lowerdirs(data)
    if not lowers:
        raise OSError(errno.EINVAL, f"mount overlay on {target}: options too long", target)
    common = os.path.commonpath([os.path.dirname(p) for p in lowers])
    rel = [os.path.relpath(p, common).replace(":", "\\:") for p in lowers]
    joined = ",".join([*rest, "lowerdir=" + ":".join(rel)])
    if len(joined) >= PAGE_SIZE:
        raise OSError(
            errno.E2BIG,
            f"mount overlay on {target}: {len(lowers)} lower directories do not fit "
            f"in {PAGE_SIZE} bytes",
            target,
        )
    failure: list[BaseException] = []

    def run() -> None:
        try:
            # CLONE_FS: this thread gets its own working directory; the
            # process's stays where it was.
            libc.unshare(CLONE_FS)
            os.chdir(common)
            libc.mount(source, target, "overlay", flags, joined)
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=run, name="overlay-mount")
    t.start()
    t.join()
    if failure:
        raise failure[0]


# The new mount API (linux/mount.h); same numbers on every architecture.
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_FSOPEN_CLOEXEC = 1
_FSMOUNT_CLOEXEC = 1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100
# MS_* -> MOUNT_ATTR_*
_ATTRS = {
    libc.MS_RDONLY: 0x1,
    libc.MS_NOSUID: 0x2,
    libc.MS_NODEV: 0x4,
    libc.MS_NOEXEC: 0x8,
    libc.MS_NOATIME: 0x10,
    libc.MS_STRICTATIME: 0x20,
    libc.MS_NODIRATIME: 0x80,
    libc.MS_NOSYMFOLLOW: 0x200000,
}

_sys = ctypes.CDLL(None, use_errno=True).syscall
_sys.restype = ctypes.c_long
_lowerdir_plus: bool | None = None


def _syscall(what: str, target: str, nr: int, *args: object) -> int:
    ret = int(_sys(nr, *args))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", target)
    return ret


def _fs_error(fsfd: int) -> str:
    """The messages the kernel left in an fs context (``e overlay: ...`` lines)."""
    msgs = []
    for _ in range(16):
        try:
            line = os.read(fsfd, 4096).decode(errors="replace").strip()
        except OSError:
            break
        msgs.append(line[2:] if line[1:2] == " " else line)
    return "; ".join(msgs)


def lowerdir_plus_supported() -> bool:
    """True when overlay takes its lower directories one by one (``lowerdir+``, Linux 6.8)."""
    global _lowerdir_plus
    if _lowerdir_plus is None:
        try:
            fd = _syscall("fsopen overlay", "", _SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC)
        except OSError:
            _lowerdir_plus = False
        else:
            try:
                _syscall("fsconfig", "", _SYS_FSCONFIG, fd, _FSCONFIG_SET_STRING,
                         b"lowerdir+", b"/", 0)  # fmt: skip
                _lowerdir_plus = True
            except OSError:
                _lowerdir_plus = False
            finally:
                os.close(fd)
    return _lowerdir_plus


def _mount_overlay_fsconfig(source: str, target: str, flags: int, data: list[str]) -> None:
    lowers, rest = _lowerdirs(data)
    what = f"mount overlay on {target}"
    fsfd = _syscall(f"{what}: fsopen", target, _SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC)
    try:
        params: list[tuple[str, str | None]] = [("source", source)]
        for opt in rest:
            name, eq, val = opt.partition("=")
            params.append((name, val if eq else None))
        params.extend(("lowerdir+", p) for p in lowers)
        for key, value in params:
            try:
                if value is None:
                    _syscall(what, target, _SYS_FSCONFIG, fsfd, _FSCONFIG_SET_FLAG,
                             key.encode(), None, 0)  # fmt: skip
                else:
                    _syscall(what, target, _SYS_FSCONFIG, fsfd, _FSCONFIG_SET_STRING,
                             key.encode(), value.encode(), 0)  # fmt: skip
            except OSError as e:
                detail = _fs_error(fsfd) or os.strerror(e.errno or 0)
                raise OSError(e.errno, f"{what}: {key}={value}: {detail}", target) from None
        try:
            _syscall(what, target, _SYS_FSCONFIG, fsfd, _FSCONFIG_CMD_CREATE, None, None, 0)
        except OSError as e:
            raise OSError(
                e.errno, f"{what}: {_fs_error(fsfd) or os.strerror(e.errno or 0)}", target
            ) from None
        attrs = 0
        for ms, attr in _ATTRS.items():
            if flags & ms:
                attrs |= attr
        mfd = _syscall(what, target, _SYS_FSMOUNT, fsfd, _FSMOUNT_CLOEXEC, attrs)
        try:
            _syscall(what, target, _SYS_MOVE_MOUNT, mfd, b"", _AT_FDCWD, target.encode(),
                     _MOVE_MOUNT_F_EMPTY_PATH)  # fmt: skip
        finally:
            # an open fd on the mount would keep it busy at unmount time
            os.close(mfd)
    finally:
        os.close(fsfd)
