"""Helpers for the layer apply/diff tests: build tars in memory, snapshot trees."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field

from dockyard.runtime import libc

MTIME = 1_600_000_000


@dataclass
class Entry:
    name: str
    kind: str = "file"  # file, dir, symlink, link, char, block, fifo
    data: bytes = b""
    mode: int = 0o644
    target: str = ""
    uid: int = 0
    gid: int = 0
    mtime: float = MTIME
    xattrs: dict[str, bytes] = field(default_factory=dict)
    dev: tuple[int, int] = (0, 0)


def file(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> Entry:
    return Entry(name, "file", data, mode, **kw)  # type: ignore[arg-type]


def dir(name: str, mode: int = 0o755, **kw: object) -> Entry:
    return Entry(name, "dir", mode=mode, **kw)  # type: ignore[arg-type]


def symlink(name: str, target: str) -> Entry:
    return Entry(name, "symlink", mode=0o777, target=target)


def link(name: str, target: str, mode: int = 0o644) -> Entry:
    return Entry(name, "link", mode=mode, target=target)


def whiteout(name: str) -> Entry:
    head, _, base = name.rpartition("/")
    return file(f"{head}/.wh.{base}" if head else f".wh.{base}")


def opaque(dirname: str) -> Entry:
    return file(f"{dirname}/.wh..wh..opq" if dirname else ".wh..wh..opq")


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "link": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def tar(entries: Iterable[Entry]) -> bytes:
    """A PAX tar of ``entries``, names used verbatim (``..`` and ``/`` included)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = _TYPES[e.kind]
            ti.mode = e.mode
            ti.uid, ti.gid = e.uid, e.gid
            ti.mtime = e.mtime
            ti.linkname = e.target
            ti.devmajor, ti.devminor = e.dev
            if e.xattrs:
                ti.pax_headers = {
                    "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                    for k, v in e.xattrs.items()
                }
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def snapshot(top: str, *, times: bool = True) -> dict[str, tuple[object, ...]]:
    """Every entry under ``top`` (not following links): type, mode, owner,
    size, link count, mtime, xattrs, content hash or link target, device."""
    out: dict[str, tuple[object, ...]] = {}

    def one(path: str, rel: str) -> None:
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        extra: object = None
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                extra = hashlib.sha256(f.read()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            extra = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
        try:
            names = sorted(os.listxattr(path, follow_symlinks=False))
            xattrs = tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)
        except OSError:
            xattrs = ()
        out[rel] = (
            kind,
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
            st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0,
            st.st_mtime_ns if times and not stat.S_ISLNK(st.st_mode) else 0,
            xattrs,
            extra,
        )
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                one(os.path.join(path, name), f"{rel}/{name}" if rel else name)

    one(top, "")
    return out


def inode(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return (st.st_dev, st.st_ino)


def open_in_root(root: str, rel: str, flags: int = os.O_RDONLY) -> int:
    """Open ``rel`` resolved as if ``root`` were ``/`` (symlinks too); last
    component not followed when ``flags`` has O_NOFOLLOW."""
    rfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        return libc.openat2(rfd, rel, flags, 0, libc.RESOLVE_IN_ROOT)
    finally:
        os.close(rfd)


def stat_in_root(root: str, rel: str) -> os.stat_result:
    fd = open_in_root(root, rel, os.O_PATH | os.O_NOFOLLOW)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def read_in_root(root: str, rel: str) -> bytes:
    fd = open_in_root(root, rel)
    with os.fdopen(fd, "rb") as f:
        return f.read()
