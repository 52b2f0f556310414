"""Write a layer from the changes between two directories: containerd's diff Compare.

Two ways to find the changes:

- ``lower`` and ``upper`` are full trees (a copying snapshotter): both are
  walked side by side, comparing metadata, and content where the metadata
  cannot tell (same size, mtime with no sub-second part, as tar truncates).
  ``lower`` None means everything in ``upper`` is new.
- ``upper`` is an overlayfs upper directory: it holds exactly the changes;
  its 0/0 character devices are deletions and its ``trusted.overlay.opaque``
  directories are opaque.

The tar follows OCI image-spec layer.md: deletions as ``.wh.NAME``, opaque
directories as ``.wh..wh..opq``, parents of every change included (with
their metadata), hardlinks kept, PAX headers for xattrs, mtimes truncated to
the second, no user or group names, entries sorted by name within each
directory so the same trees always give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Literal, cast

from dockyard.errors import InvalidArgument, SystemFailure
from dockyard.image.archive import compression as _comp
from dockyard.image.archive.apply import OPAQUE_WHITEOUT, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX

Compression = Literal["none", "gzip", "zstd"]

# Host-specific or overlayfs-internal attributes that do not belong in a layer.
_SKIP_XATTR_PREFIXES = ("trusted.overlay.", "security.selinux")


@dataclass(frozen=True)
class DiffResult:
    digest: str  # "sha256:<hex>" of the blob as written (compressed)
    diff_id: str  # "sha256:<hex>" of the uncompressed tar
    size: int  # bytes written to ``out``


class _Counted:
    """The compressed side: hash and count what reaches ``out``."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)


class _Uncompressed:
    """The tar side: hash what tarfile writes, pass it to the compressor."""

    def __init__(self, sink: _comp.Writer) -> None:
        self._sink = sink
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self._sink.write(data)
        return len(data)


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in sorted(names):
        if name.startswith(_SKIP_XATTR_PREFIXES):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def _is_overlay_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _same_content(a: str, b: str) -> bool:
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        while True:
            x = fa.read(1 << 20)
            y = fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _unchanged(lower: str, upper: str, ls: os.stat_result, us: os.stat_result) -> bool:
    if (ls.st_dev, ls.st_ino) == (us.st_dev, us.st_ino):
        return True
    if stat.S_IFMT(ls.st_mode) != stat.S_IFMT(us.st_mode):
        return False
    if (ls.st_mode, ls.st_uid, ls.st_gid) != (us.st_mode, us.st_uid, us.st_gid):
        return False
    if _xattrs(lower) != _xattrs(upper):
        return False
    if stat.S_ISDIR(us.st_mode):
        return ls.st_mtime_ns == us.st_mtime_ns
    if stat.S_ISLNK(us.st_mode):
        return os.readlink(lower) == os.readlink(upper) and ls.st_mtime_ns == us.st_mtime_ns
    if stat.S_ISCHR(us.st_mode) or stat.S_ISBLK(us.st_mode):
        return ls.st_rdev == us.st_rdev and ls.st_mtime_ns == us.st_mtime_ns
    if ls.st_size != us.st_size or ls.st_mtime_ns != us.st_mtime_ns:
        return False
    if not stat.S_ISREG(us.st_mode) or us.st_mtime_ns % 1_000_000_000:
        return True
    # equal to the second with no fraction: maybe a tar-truncated time, look inside
    return _same_content(lower, upper)


class _ChangeWriter:
    def __init__(self, upper: str, tf: tarfile.TarFile) -> None:
        self.upper = upper
        self.tf = tf
        self.dirs_written: set[str] = set()
        self.first_name: dict[tuple[int, int], str] = {}  # hardlinked inode -> name in the tar
        # unchanged names of hardlinked inodes: written as links if the inode is
        self.unchanged_links: dict[tuple[int, int], list[str]] = {}

    def path(self, rel: str) -> str:
        return os.path.join(self.upper, rel)

    # -- tar entries -------------------------------------------------------

    def parents(self, rel: str) -> None:
        parent = posixpath.dirname(rel)
        if not parent or parent in self.dirs_written:
            return
        self.parents(parent)
        self.write(parent, os.lstat(self.path(parent)), with_parents=False)

    def whiteout(self, rel: str) -> None:
        self.parents(rel)
        head, base = posixpath.split(rel)
        self._marker(posixpath.join(head, WHITEOUT_PREFIX + base))

    def opaque(self, rel: str) -> None:
        self._marker(posixpath.join(rel, OPAQUE_WHITEOUT))

    def _marker(self, name: str) -> None:
        ti = tarfile.TarInfo(name)
        ti.mode = 0o644
        ti.mtime = 0
        self.tf.addfile(ti)

    def write(self, rel: str, st: os.stat_result, *, with_parents: bool = True) -> None:
        if stat.S_ISSOCK(st.st_mode):
            return  # sockets are not carried in layers
        if with_parents:
            self.parents(rel)
        path = self.path(rel)
        ti = tarfile.TarInfo(rel)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""
        ti.mtime = st.st_mtime_ns // 1_000_000_000
        xattrs = _xattrs(path)
        if xattrs:
            ti.pax_headers = {
                "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()
            }
        inode = (st.st_dev, st.st_ino)
        if stat.S_ISDIR(st.st_mode):
            ti.type = tarfile.DIRTYPE
            self.dirs_written.add(rel)
        elif not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and inode in self.first_name:
            ti.type = tarfile.LNKTYPE
            ti.linkname = self.first_name[inode]
            ti.pax_headers = {}
        elif stat.S_ISREG(st.st_mode):
            ti.type = tarfile.REGTYPE
            ti.size = st.st_size
        elif stat.S_ISLNK(st.st_mode):
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(st.st_mode):
            ti.type = tarfile.FIFOTYPE
        else:
            return
        if ti.type == tarfile.REGTYPE:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                self.tf.addfile(ti, f)
        else:
            self.tf.addfile(ti)
        if ti.type != tarfile.LNKTYPE and not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            self.first_name[inode] = rel
            for other in self.unchanged_links.pop(inode, []):
                self.write(other, os.lstat(self.path(other)))

    def unchanged(self, rel: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode) or st.st_nlink < 2:
            return
        inode = (st.st_dev, st.st_ino)
        if inode in self.first_name:
            self.write(rel, st)  # a second name of a file already in the tar
        else:
            self.unchanged_links.setdefault(inode, []).append(rel)

    # -- the walks ---------------------------------------------------------

    def add_tree(self, rel: str) -> None:
        """Everything under ``rel`` (a directory in upper) is new."""
        for name in sorted(os.listdir(self.path(rel))):
            r = posixpath.join(rel, name)
            st = os.lstat(self.path(r))
            self.write(r, st)
            if stat.S_ISDIR(st.st_mode):
                self.add_tree(r)

    def compare(self, lower: str, rel: str) -> None:
        """Changes under ``rel``, a directory in both trees."""
        lnames = set(os.listdir(os.path.join(lower, rel)))
        unames = set(os.listdir(self.path(rel)))
        for name in sorted(lnames | unames):
            r = posixpath.join(rel, name)
            if name not in unames:
                self.whiteout(r)
                continue
            ust = os.lstat(self.path(r))
            if name not in lnames:
                self.write(r, ust)
                if stat.S_ISDIR(ust.st_mode):
                    self.add_tree(r)
                continue
            lpath = os.path.join(lower, r)
            lst = os.lstat(lpath)
            if stat.S_ISDIR(ust.st_mode):
                if stat.S_ISDIR(lst.st_mode):
                    if not _unchanged(lpath, self.path(r), lst, ust):
                        self.write(r, ust)
                    self.compare(lower, r)
                else:
                    self.write(r, ust)  # replaces the lower non-directory
                    self.add_tree(r)
            elif _unchanged(lpath, self.path(r), lst, ust):
                self.unchanged(r, ust)
            else:
                self.write(r, ust)

    def overlay(self, rel: str) -> None:
        """Changes recorded in an overlayfs upper directory under ``rel``."""
        for name in sorted(os.listdir(self.path(rel))):
            r = posixpath.join(rel, name)
            st = os.lstat(self.path(r))
            if _is_overlay_whiteout(st):
                self.whiteout(r)
            elif stat.S_ISDIR(st.st_mode):
                self.write(r, st)
                try:
                    opaque = os.getxattr(self.path(r), OVERLAY_OPAQUE_XATTR) == b"y"
                except OSError:
                    opaque = False
                if opaque:
                    self.opaque(r)
                self.overlay(r)
            else:
                self.write(r, st)


def write_diff(
    lower: str | None,
    upper: str,
    out: BinaryIO,
    *,
    upper_is_overlay: bool = False,
    compression: Compression = "none",
) -> DiffResult:
    """Write to ``out`` a layer of the changes from ``lower`` to ``upper``.

    ``lower`` None: all of ``upper`` is new. ``upper_is_overlay``: ``upper``
    is an overlayfs upper directory (``lower`` is then not read).
    """
    if compression not in _comp.COMPRESSIONS:
        raise InvalidArgument(f"unknown layer compression {compression!r}")
    counted = _Counted(out)
    sink = _comp.compressing(counted, compression)
    plain = _Uncompressed(sink)
    try:
        with tarfile.open(
            fileobj=cast(BinaryIO, plain),
            mode="w|",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
        ) as tf:
            cw = _ChangeWriter(upper, tf)
            if upper_is_overlay:
                cw.overlay("")
            elif lower is None:
                cw.add_tree("")
            else:
                cw.compare(lower, "")
        sink.finish()
    except OSError as e:
        raise SystemFailure(f"diff {lower or '(nothing)'} -> {upper}: {e}")
    diff_id = "sha256:" + plain.digest.hexdigest()
    digest = diff_id if compression == "none" else "sha256:" + counted.digest.hexdigest()
    return DiffResult(digest=digest, diff_id=diff_id, size=counted.size)
