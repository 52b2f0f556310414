"""Apply a layer (an OCI changeset) onto a directory: containerd's diff Apply.

Semantics follow OCI image-spec layer.md: entries are added or replace what
is there (a directory entry over a directory keeps its children), ``.wh.NAME``
deletes NAME from the layers below and ``.wh..wh..opq`` makes a directory
opaque. Whiteouts are either applied directly (a copying snapshotter whose
root is a full copy of the parent) or written in overlayfs's form (a 0/0
character device, the ``trusted.overlay.opaque`` xattr) for an overlay upper
directory.

Every path is resolved inside the root (see ``_root``); the tar is streamed,
never held in memory, and the sha256 of the uncompressed tar is returned for
the caller to check against the image config's ``rootfs.diff_ids``.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal, cast

from dockyard.errors import DockyardError, InvalidArgument, SystemFailure
from dockyard.image.archive import compression as _comp
from dockyard.image.archive._root import Root, clean, lstat_at, proc_path, remove_at, split

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_PAX_XATTR = "SCHILY.xattr."
_BLOCK = tarfile.BLOCKSIZE

Whiteouts = Literal["overlay", "direct"]


@dataclass(frozen=True)
class ApplyResult:
    diff_id: str  # "sha256:<hex>" of the uncompressed tar
    size: int  # bytes of the uncompressed tar


class _Source:
    """The uncompressed tar: buffered, hashed, positioned.

    It also stands in for the ``TarFile`` that ``TarInfo.fromtarfile`` reads
    headers from (``fileobj``, ``offset``, ``pax_headers``, ``encoding``,
    ``errors``), so tarfile parses headers (ustar, GNU and PAX long names,
    sparse maps, xattrs) while the data is copied here without extra buffering.
    """

    encoding = "utf-8"
    errors = "surrogateescape"

    def __init__(self, reader: _comp.Reader) -> None:
        self._src = reader
        self._buf = bytearray()
        self._pos = 0
        self._consumed = 0
        self.offset = 0  # where the next header starts (set by tarfile)
        self.pax_headers: dict[str, str] = {}
        self.fileobj = self

    def _pull(self, n: int) -> bytes:
        return self._src.read(n)

    def _fill(self, n: int) -> None:
        """Buffer at least ``n`` bytes unless the stream ends first."""
        while len(self._buf) - self._pos < n:
            chunk = self._pull(_comp.CHUNK)
            if not chunk:
                return
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += chunk

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return bytes(self._buf[self._pos : self._pos + n])

    def read(self, n: int) -> bytes:
        self._fill(n)
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += len(out)
        self._consumed += len(out)
        return out

    def tell(self) -> int:
        return self._consumed

    def copy_to(self, fd: int, n: int, offset: int | None = None) -> None:
        """Write the next ``n`` bytes to ``fd`` (at ``offset`` if given)."""
        while n > 0:
            avail = len(self._buf) - self._pos
            if avail:
                take = min(n, avail)
                with memoryview(self._buf) as mv, mv[self._pos : self._pos + take] as part:
                    _write_all(fd, part, offset)
                self._pos += take
            else:
                chunk = self._pull(min(n, _comp.CHUNK))
                if not chunk:
                    raise InvalidArgument("layer tar: unexpected end of data in a file")
                take = len(chunk)
                _write_all(fd, chunk, offset)
            n -= take
            self._consumed += take
            if offset is not None:
                offset += take

    def skip_to(self, position: int) -> None:
        while self._consumed < position:
            got = self.read(min(position - self._consumed, _comp.CHUNK))
            if not got:
                raise InvalidArgument("layer tar: unexpected end of data")

    def drain(self) -> None:
        """Hash what follows the end-of-archive marker (the record padding)."""
        while self._pull(_comp.CHUNK):
            pass


def _write_all(fd: int, data: bytes | memoryview, offset: int | None) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    # PAX keeps nanoseconds as decimal text; tarfile's float would round them
    text = ti.pax_headers.get("mtime")
    if text:
        sec, _, frac = text.partition(".")
        try:
            ns = int(sec) * 1_000_000_000
            if frac:
                part = int(frac[:9].ljust(9, "0"))
                ns += -part if sec.startswith("-") else part
            return ns
        except ValueError:
            pass
    m = ti.mtime
    return round(m * 1_000_000_000) if isinstance(m, float) else int(m) * 1_000_000_000


def _in_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def _is_overlay_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class _Applier:
    def __init__(self, root: Root, src: _Source, overlay: bool) -> None:
        self.root = root
        self.src = src
        self.overlay = overlay
        # Entries written by this layer, by (parent dev, parent inode, name):
        # whiteouts and opaque markers spare them (layer.md: a whiteout only
        # hides what the layers below have).
        self.unpacked: set[tuple[int, int, str]] = set()
        self.dir_times: list[tuple[str, int]] = []
        self.end_without_marker = False

    # -- the walk ----------------------------------------------------------

    def run(self) -> None:
        src = self.src
        while True:
            head = src.peek(_BLOCK)
            if len(head) < _BLOCK:
                if head:
                    raise InvalidArgument("layer tar is truncated inside a header")
                # No end-of-archive marker. Go's archive/tar accepts this; a
                # truncated gzip is caught by its decoder, anything else by the
                # caller's diff_id check.
                self.end_without_marker = True
                break
            if not head.strip(b"\0"):
                self.end_without_marker = False
                break
            at = src.tell()
            try:
                ti = tarfile.TarInfo.fromtarfile(cast(tarfile.TarFile, src))
            except tarfile.HeaderError as e:
                raise InvalidArgument(f"layer tar: bad header at offset {at}: {e}")
            except (ValueError, UnicodeError, EOFError) as e:
                raise InvalidArgument(f"layer tar: bad header at offset {at}: {e}")
            self.root.trim()
            try:
                self.entry(ti)
            except DockyardError:
                raise
            except OSError as e:
                raise SystemFailure(f"apply layer entry {ti.name!r}: {e.strerror or e}")
            src.skip_to(src.offset)
        src.drain()
        self.finish_dirs()

    def entry(self, ti: tarfile.TarInfo) -> None:
        name = clean(ti.name)
        if name == "":
            return  # the root itself: its metadata belongs to the snapshotter
        parent, base = split(name)
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(parent, base)
            return
        if not (ti.isreg() or ti.isdir() or ti.issym() or ti.islnk() or ti.isdev()):
            raise InvalidArgument(f"layer entry {ti.name!r}: unsupported tar type {ti.type!r}")
        pfd = self.parent(parent)
        st = lstat_at(pfd, base)
        was_whiteout = False
        if st is not None and not (ti.isdir() and stat.S_ISDIR(st.st_mode)):
            was_whiteout = self.overlay and _is_overlay_whiteout(st)
            remove_at(pfd, base, st)
            if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                self.root.forget()
                pfd = self.parent(parent)
            st = None
        if ti.isreg():
            self.regular(ti, pfd, base)
        elif ti.isdir():
            self.directory(ti, pfd, base, name, exists=st is not None)
            if was_whiteout:
                # a directory replacing what an earlier whiteout of this layer
                # deleted must not show the lower directory's children
                os.setxattr(proc_path(pfd, base), OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
        elif ti.issym():
            os.symlink(ti.linkname, base, dir_fd=pfd)
            self.metadata(ti, None, pfd, base, symlink=True)
        elif ti.islnk():
            self.hardlink(ti, pfd, base)
        else:
            self.node(ti, pfd, base)
        self.unpacked.add(self.root.key(pfd, base))

    def parent(self, rel: str) -> int:
        fd = self.root.dir(rel, create=True)
        assert fd is not None
        return fd

    # -- entry kinds -------------------------------------------------------

    def regular(self, ti: tarfile.TarInfo, pfd: int, base: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=pfd)
        try:
            sparse = cast("list[tuple[int, int]] | None", ti.sparse)
            if sparse:
                for offset, length in sparse:
                    self.src.copy_to(fd, length, offset)
                os.ftruncate(fd, ti.size)
            else:
                self.src.copy_to(fd, ti.size)
            self.metadata(ti, fd, pfd, base)
        finally:
            os.close(fd)

    def directory(self, ti: tarfile.TarInfo, pfd: int, base: str, name: str, exists: bool) -> None:
        if not exists:
            os.mkdir(base, 0o700, dir_fd=pfd)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            self.metadata(ti, fd, pfd, base, times=False)
        finally:
            os.close(fd)
        # set after the directory's contents are written, which change it
        self.dir_times.append((name, _mtime_ns(ti)))

    def hardlink(self, ti: tarfile.TarInfo, pfd: int, base: str) -> None:
        target = clean(ti.linkname, "hardlink target")
        if target == "":
            raise InvalidArgument(f"layer hardlink {ti.name!r}: target is the root")
        tparent, tbase = split(target)
        tpfd = self.root.dir(tparent)
        if tpfd is None:
            raise InvalidArgument(f"layer hardlink {ti.name!r}: target {ti.linkname!r} not found")
        try:
            # linkat without AT_SYMLINK_FOLLOW: a link to a symlink is a second
            # name of the symlink, never of what it points to.
            os.link(tbase, base, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise InvalidArgument(f"layer hardlink {ti.name!r}: target {ti.linkname!r} not found")
        except PermissionError:
            raise InvalidArgument(
                f"layer hardlink {ti.name!r}: target {ti.linkname!r} is a directory"
            )

    def node(self, ti: tarfile.TarInfo, pfd: int, base: str) -> None:
        if ti.isfifo():
            os.mkfifo(base, 0o600, dir_fd=pfd)
        else:
            kind = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
            try:
                os.mknod(base, kind | 0o600, os.makedev(ti.devmajor, ti.devminor), dir_fd=pfd)
            except PermissionError:
                if _in_user_namespace():
                    return  # as containerd: device nodes cannot be made there; skip them
                raise
        self.metadata(ti, None, pfd, base)

    def metadata(
        self,
        ti: tarfile.TarInfo,
        fd: int | None,
        pfd: int,
        base: str,
        *,
        symlink: bool = False,
        times: bool = True,
    ) -> None:
        """Owner, xattrs, mode, times: in this order, as chown clears setuid
        bits and file capabilities."""
        if fd is not None:
            os.fchown(fd, ti.uid, ti.gid)
        else:
            os.chown(base, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
        for key, value in ti.pax_headers.items():
            if key.startswith(_PAX_XATTR):
                self.xattr(ti, fd, pfd, base, key[len(_PAX_XATTR) :], value, symlink)
        if not symlink:
            if fd is not None:
                os.fchmod(fd, ti.mode & 0o7777)
            else:
                # a node this call just made, not a symlink: following is safe
                os.chmod(base, ti.mode & 0o7777, dir_fd=pfd)
        if times:
            ns = _mtime_ns(ti)
            if fd is not None:
                os.utime(fd, ns=(ns, ns))
            else:
                os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)

    def xattr(
        self,
        ti: tarfile.TarInfo,
        fd: int | None,
        pfd: int,
        base: str,
        name: str,
        value: str,
        symlink: bool,
    ) -> None:
        if name.startswith("trusted.overlay."):
            return  # overlayfs's own bookkeeping: never taken from a layer
        data = value.encode("utf-8", "surrogateescape")
        try:
            if fd is not None:
                os.setxattr(fd, name, data)
            else:
                os.setxattr(proc_path(pfd, base), name, data, follow_symlinks=False)
        except OSError as e:
            # as containerd: the filesystem may not do xattrs, and user.* is
            # only allowed on regular files and directories
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return
            if e.errno == errno.EPERM and name.startswith("user.") and (symlink or fd is None):
                return
            raise SystemFailure(f"apply layer entry {ti.name!r}: set xattr {name}: {e.strerror}")

    # -- whiteouts ---------------------------------------------------------

    def whiteout(self, parent: str, base: str) -> None:
        if base == OPAQUE_WHITEOUT:
            self.opaque(parent)
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # other .wh..wh. names are aufs bookkeeping, not changes
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise InvalidArgument(f"layer whiteout {parent + '/' + base!r} names no entry")
        pfd = self.root.dir(parent, create=self.overlay)
        if pfd is None:
            return  # the parent is not there: nothing below to delete
        st = lstat_at(pfd, target)
        if self.root.key(pfd, target) in self.unpacked:
            # written by this layer, so it stays; a directory still hides
            # what the layers below have in it
            if st is not None and stat.S_ISDIR(st.st_mode):
                self.opaque(parent + "/" + target if parent else target)
            return
        if st is not None:
            remove_at(pfd, target, st)
            if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                self.root.forget()
                pfd = self.parent(parent)
        if self.overlay:
            os.mknod(target, stat.S_IFCHR | 0o000, 0, dir_fd=pfd)

    def opaque(self, rel: str) -> None:
        if self.overlay:
            fd = self.parent(rel)
            os.setxattr(proc_path(fd), OVERLAY_OPAQUE_XATTR, b"y")
            return
        if self.root.dir(rel) is None:
            return
        dfd = self.root.open_dir_for_reading(rel)
        try:
            st = os.fstat(dfd)
            removed = False
            for child in os.listdir(dfd):
                if (st.st_dev, st.st_ino, child) not in self.unpacked:
                    removed = remove_at(dfd, child) or removed
        finally:
            os.close(dfd)
        if removed:
            self.root.forget()

    def finish_dirs(self) -> None:
        for name, ns in reversed(self.dir_times):
            self.root.trim()
            parent, base = split(name)
            pfd = self.root.dir(parent)
            if pfd is None:
                continue
            st = lstat_at(pfd, base)
            if st is not None and stat.S_ISDIR(st.st_mode):
                os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)
        self.root.finish_made()


def apply_layer(
    root: str,
    stream: BinaryIO,
    *,
    whiteouts: Whiteouts = "direct",
    compression: str | None = None,
    parents: Sequence[str] = (),
) -> ApplyResult:
    """Apply the layer read from ``stream`` onto the directory ``root``.

    ``compression`` is "none", "gzip" or "zstd", or None to detect it.
    ``whiteouts`` is "direct" when ``root`` is a full copy of the parent
    snapshot, "overlay" when it is an (empty) overlayfs upper directory.
    ``parents`` are the lower layers' roots, topmost first: directories the
    layer implies but does not list take their metadata from there (else
    0755 root:root), which matters in an overlay upper directory.
    """
    if whiteouts not in ("overlay", "direct"):
        raise InvalidArgument(f"unknown whiteout mode {whiteouts!r}: want overlay or direct")
    try:
        r = Root(root, parents)
    except OSError as e:
        raise SystemFailure(f"apply layer onto {root}: {e.strerror}")
    pipe: _comp.Prefetcher | None = None
    try:
        reader, found = _comp.decompressed(stream, compression)
        pipe = _comp.Prefetcher(reader)
        applier = _Applier(r, _Source(pipe), whiteouts == "overlay")
        applier.run()
        if found == _comp.ZSTD and applier.end_without_marker:
            raise InvalidArgument("layer zstd stream is truncated: no tar end-of-archive marker")
    except OSError as e:
        raise SystemFailure(f"apply layer onto {root}: {e}")
    finally:
        if pipe is not None:
            pipe.close()
        r.close()
    return ApplyResult(diff_id="sha256:" + pipe.digest.hexdigest(), size=pipe.size)
