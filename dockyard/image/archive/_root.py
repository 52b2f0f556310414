"""A directory treated as a root: every path is resolved inside it.

Parent directories are opened with openat2(RESOLVE_IN_ROOT), so ``..`` and
symlinks (absolute or relative, from this layer or an earlier one) are
resolved as if the directory were ``/`` of a chroot and can never lead out of
it. The last component of a path is never followed: it is always operated on
with the *at() calls relative to its parent's descriptor.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
from collections.abc import Sequence
from typing import NamedTuple

from dockyard.errors import InvalidArgument
from dockyard.runtime import libc

_RESOLVE = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def fold_dots(name: str) -> str | None:
    """An archive member's path relative to the archive's root ("" is the root
    itself), or None if a ``..`` in it climbs above the root.

    Empty and ``.`` components are dropped and each inner ``..`` folded into
    the component before it, as containerd does. A leading ``/`` is dropped
    too: whether an absolute name is allowed is the caller's decision.
    """
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def clean(name: str, what: str = "entry") -> str:
    """A tar member name as a path relative to the root ("" is the root itself).

    ``..`` is folded (``fold_dots``); a name whose ``..`` climbs above the
    root is refused, and so is an absolute entry name (bad input: layers hold
    paths relative to the root). An absolute hardlink target is taken
    relative to the root.
    """
    if what == "entry" and name.startswith("/"):
        raise InvalidArgument(f"layer {what} {name!r}: absolute path")
    rel = fold_dots(name)
    if rel is None:
        raise InvalidArgument(f"layer {what} {name!r}: path leaves the root")
    return rel


class DirInfo(NamedTuple):
    dev: int
    ino: int
    mode: int
    gid: int
    default_acl: bool  # new entries take their mode from it, not the umask


def _has_default_acl(fd: int) -> bool:
    try:
        os.getxattr(proc_path(fd), "system.posix_acl_default")
    except OSError as e:
        return e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
    return True


class Root:
    """An open root directory and a small cache of parent directory descriptors."""

    def __init__(self, path: str, parents: Sequence[str] = ()) -> None:
        self.path = path
        self.fd = os.open(path, _DIR_PATH)
        self._dirs: dict[str, int] = {}
        self._info: dict[int, DirInfo] = {}  # by descriptor: root's or _dirs'
        self._parents = parents
        # directories made implicitly, with the mtime to give them at the end
        self._made: list[tuple[str, int]] = []

    def close(self) -> None:
        self.forget()
        os.close(self.fd)

    def trim(self) -> None:
        """Bound the descriptor cache; call between entries, never while holding one."""
        if len(self._dirs) >= 64:
            self.forget()

    def forget(self) -> None:
        """Drop cached descriptors: call after anything that can change resolution."""
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        self._info.clear()

    def changed(self) -> None:
        """Drop cached directory facts: call after changing a directory's
        owner, mode or xattrs."""
        self._info.clear()

    def info(self, fd: int) -> DirInfo:
        """Identity, mode, group and default-ACL presence of a directory
        descriptor from ``dir`` (cached until ``forget`` or ``changed``)."""
        got = self._info.get(fd)
        if got is None:
            st = os.fstat(fd)
            got = DirInfo(st.st_dev, st.st_ino, st.st_mode, st.st_gid, _has_default_acl(fd))
            self._info[fd] = got
        return got

    def _open(self, rel: str, flags: int = _DIR_PATH) -> int:
        return libc.openat2(self.fd, rel, flags, 0, _RESOLVE)

    def dir(self, rel: str, create: bool = False, mode: int = 0o755) -> int | None:
        """An O_PATH descriptor of directory ``rel`` (cached: do not close it).

        Missing components are made when ``create`` is set (``mode``, owned by
        the caller), else None is returned.
        """
        if rel == "":
            return self.fd
        fd = self._dirs.get(rel)
        if fd is not None:
            return fd
        try:
            fd = self._open(rel)
        except OSError as e:
            if e.errno == errno.ENOENT and create:
                fd = self._make(rel, mode)
            elif e.errno == errno.ENOENT:
                return None
            elif e.errno in (errno.ENOTDIR, errno.ELOOP):
                raise InvalidArgument(f"layer path {rel!r}: a parent is not a directory")
            else:
                raise
        self._dirs[rel] = fd
        return fd

    def _make(self, rel: str, mode: int) -> int:
        parent = self.fd
        parts = rel.split("/")
        owned: int | None = None
        try:
            for i, part in enumerate(parts):
                sub = "/".join(parts[: i + 1])
                try:
                    fd = self._open(sub)
                except FileNotFoundError:
                    try:
                        os.mkdir(part, mode, dir_fd=parent)
                    except FileExistsError:
                        # Exists but does not resolve: a dangling symlink.
                        raise InvalidArgument(
                            f"layer path {rel!r}: parent {sub!r} is a symlink to nothing"
                        )
                    fd = self._open(sub)
                    self._copy_from_parents(sub, fd)
                except (NotADirectoryError, OSError) as e:
                    if e.errno in (errno.ENOTDIR, errno.ELOOP):
                        raise InvalidArgument(f"layer path {rel!r}: {sub!r} is not a directory")
                    raise
                if owned is not None:
                    os.close(owned)
                owned = parent = fd
            assert owned is not None
            result, owned = owned, None
            return result
        finally:
            if owned is not None:
                os.close(owned)

    def _copy_from_parents(self, rel: str, fd: int) -> None:
        """Give a directory made implicitly the owner, mode and mtime it has below."""
        for lower in self._parents:
            try:
                lfd = os.open(lower, _DIR_PATH)
            except FileNotFoundError:
                continue
            try:
                try:
                    dfd = libc.openat2(lfd, rel, os.O_RDONLY | os.O_DIRECTORY, 0, _RESOLVE)
                except OSError:
                    continue
            finally:
                os.close(lfd)
            try:
                st = os.fstat(dfd)
            finally:
                os.close(dfd)
            target = proc_path(fd)
            os.chown(target, st.st_uid, st.st_gid)
            os.chmod(target, stat.S_IMODE(st.st_mode))
            self._made.append((rel, st.st_mtime_ns))
            return

    def finish_made(self) -> None:
        """Put back the mtimes of implicitly made directories (their children changed them)."""
        for rel, ns in reversed(self._made):
            try:
                fd = self._open(rel)
            except OSError:
                continue
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    os.utime(proc_path(fd), ns=(ns, ns))
            finally:
                os.close(fd)

    def open_dir_for_reading(self, rel: str) -> int:
        """A readable descriptor of directory ``rel`` (the caller closes it)."""
        return self._open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def key(self, parent_fd: int, name: str) -> tuple[int, int, str]:
        """A name for an entry that does not depend on the path used to reach it."""
        info = self.info(parent_fd)
        return (info.dev, info.ino, name)


def split(rel: str) -> tuple[str, str]:
    parent, base = posixpath.split(rel)
    return parent, base


def lstat_at(parent_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove_at(parent_fd: int, name: str, st: os.stat_result | None = None) -> bool:
    """Remove ``name`` (a whole tree if a directory) under ``parent_fd``; never follows links."""
    if st is None:
        st = lstat_at(parent_fd, name)
        if st is None:
            return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent_fd)
    else:
        os.unlink(name, dir_fd=parent_fd)
    return True


def proc_path(fd: int, name: str | None = None) -> str:
    """A path naming ``fd`` (or ``name`` under it) for calls that take no dir_fd."""
    return f"/proc/self/fd/{fd}" if name is None else f"/proc/self/fd/{fd}/{name}"
