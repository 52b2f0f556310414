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
import re
import stat
import struct
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal, cast

from dockyard.errors import DockyardError, InvalidArgument, SystemFailure
from dockyard.image.archive import compression as _comp
from dockyard.image.archive._root import Root, clean, lstat_at, proc_path, remove_at, split
from dockyard.runtime import libc

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

    def member(self) -> _Member:
        """Parse the next member's headers (the caller has seen a non-zero block)."""
        at = self._consumed
        try:
            m = self._fast_member()
        except (_Slow, ValueError, UnicodeError, IndexError):
            m = None
        if m is not None:
            return m
        # the rare and the malformed: tarfile parses (or refuses) them
        try:
            ti = tarfile.TarInfo.fromtarfile(cast(tarfile.TarFile, self))
        except (tarfile.HeaderError, ValueError, UnicodeError, EOFError) as e:
            raise InvalidArgument(f"layer tar: bad header at offset {at}: {e}")
        return _Member.from_tarinfo(ti, self.offset)

    def _fast_member(self) -> _Member | None:
        """Headers in one pass, read in place and consumed only on success."""
        if self.pax_headers and not _GLOBAL_KEYS.isdisjoint(self.pax_headers):
            return None
        if any(k.startswith((_PAX_XATTR, "GNU.sparse.")) for k in self.pax_headers):
            return None
        rel = 0  # from self._pos
        # extensions, in the order met: (type, payload)
        ext: list[tuple[bytes, bytes]] = []
        kind = b""
        while True:
            self._fill(rel + _BLOCK)
            start = self._pos + rel
            block = bytes(self._buf[start : start + _BLOCK])
            if len(block) < _BLOCK:
                return None
            (
                raw_name,
                f_mode,
                f_uid,
                f_gid,
                f_size,
                f_mtime,
                f_sum,
                kind,
                raw_link,
                f_major,
                f_minor,
                raw_prefix,
            ) = _HEADER.unpack(block)
            want = _num(f_sum)
            total = sum(block) - sum(f_sum) + 256  # the sum field counts as spaces
            if want != total and want != total - 256 * sum(1 for b in block if b > 127) + 256 * sum(
                1 for b in f_sum if b > 127
            ):
                return None
            size = _num(f_size)
            rel += _BLOCK
            if kind in (b"L", b"K", b"x"):
                if any(k == kind for k, _ in ext):
                    return None
                # as tarfile: the padded blocks, names cut at the first NUL
                padded = _block(size)
                self._fill(rel + padded)
                start = self._pos + rel
                payload = bytes(self._buf[start : start + padded])
                if len(payload) < padded:
                    return None
                ext.append((kind, payload))
                rel += padded
                continue
            if kind in (b"S", b"g", b"X"):
                return None
            break

        m = _Member()
        name = _text(raw_name)
        if kind == b"\0" and name.endswith("/"):
            kind = b"5"  # the old form of a directory: a file named with a slash
        prefix = _text(raw_prefix)
        m.name = prefix + "/" + name if prefix else name
        m.linkname = _text(raw_link)
        m.type = kind
        m.mode = _num(f_mode)
        m.uid = _num(f_uid)
        m.gid = _num(f_gid)
        m.mtime_ns = _num(f_mtime) * 1_000_000_000
        m.devmajor = _num(f_major)
        m.devminor = _num(f_minor)
        # tarfile applies the extensions innermost first: the first one met wins
        for what, payload in reversed(ext):
            if what == b"L":
                m.name = _text(payload)
            elif what == b"K":
                m.linkname = _text(payload)
            else:
                size = self._pax(m, payload, size)
        if kind == b"5":
            m.name = m.name.rstrip("/")
        self._pos += rel
        self._consumed += rel
        m.size = size
        data = _block(size) if kind in _REGULAR or kind not in _SUPPORTED else 0
        m.end = self._consumed + data
        return m

    @staticmethod
    def _pax(m: _Member, payload: bytes, size: int) -> int:
        """Apply one PAX extended header to ``m``; returns the member's size."""
        pos = 0
        records: dict[str, bytes] = {}
        while True:
            match = _PAX_RECORD.match(payload, pos)
            if not match:
                break
            length = int(match.group(1))
            if length == 0:
                raise _Slow
            key = match.group(2).decode("utf-8", "surrogateescape")
            records[key] = payload[match.end(2) + 1 : match.start(1) + length - 1]
            pos += length
        xattrs = []
        for key, value in records.items():
            if key == "path":
                m.name = _text_all(value).rstrip("/")
            elif key == "linkpath":
                m.linkname = _text_all(value)
            elif key in ("size", "uid", "gid"):
                try:
                    number = int(_text_all(value))
                except ValueError:
                    number = 0
                if key == "size":
                    size = number
                elif key == "uid":
                    m.uid = number
                else:
                    m.gid = number
            elif key == "mtime":
                m.mtime_ns = _mtime_text_ns(_text_all(value))
            elif key.startswith(_PAX_XATTR):
                xattrs.append((key[len(_PAX_XATTR) :], value))
            elif key.startswith("GNU.sparse."):
                raise _Slow
        m.xattrs = xattrs
        return size

    def drain(self) -> None:
        """Hash what follows the end-of-archive marker (the record padding)."""
        while self._pull(_comp.CHUNK):
            pass


def _write_all(fd: int, data: bytes | memoryview, offset: int | None) -> None:
    n = os.write(fd, data) if offset is None else os.pwrite(fd, data, offset)
    if n == len(data):
        return
    view = memoryview(data)[n:]
    while view:
        if offset is not None:
            offset += n
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]


# -- tar headers ---------------------------------------------------------------

_REGULAR = (b"0", b"\0", b"7")  # tarfile's REGULAR_TYPES, less GNU sparse
_SUPPORTED = frozenset((b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"L", b"K", b"S"))
# name mode uid gid size mtime chksum type linkname magic+version uname gname
# devmajor devminor prefix (the rest of the 512 bytes is padding)
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8x32x32x8s8s155s12x")
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
# global (``g``) PAX keys that change members: such archives take tarfile's path
_GLOBAL_KEYS = frozenset(("path", "linkpath", "size", "uid", "gid", "mtime"))


class _Slow(Exception):
    """A header the fast parser leaves to tarfile (sparse files, global
    headers, repeated extensions, anything malformed: tarfile says why)."""


def _text(field: bytes) -> str:
    end = field.find(0)
    if end >= 0:
        field = field[:end]
    return field.decode("utf-8", "surrogateescape")


def _text_all(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _num(field: bytes) -> int:
    """A numeric header field: octal text (NUL/space padded) or GNU base-256."""
    lead = field[0]
    if lead == 0o200:
        return int.from_bytes(field[1:], "big")
    if lead == 0o377:
        raise _Slow  # negative: as tarfile does, whatever that is
    end = field.find(0)
    if end >= 0:
        field = field[:end]
    try:
        return int(field, 8)
    except ValueError:
        if field.strip():
            raise _Slow from None  # tarfile decides (and words the error)
        return 0


def _mtime_text_ns(text: str) -> int:
    """PAX ``mtime``: decimal seconds with an optional fraction, to nanoseconds."""
    sec, _, frac = text.partition(".")
    try:
        ns = int(sec) * 1_000_000_000
        if frac:
            part = int(frac[:9].ljust(9, "0"))
            ns += -part if sec.startswith("-") else part
        return ns
    except ValueError:
        pass
    try:
        return round(float(text) * 1_000_000_000)
    except ValueError:
        return 0


def _block(n: int) -> int:
    return (n + 511) & ~511


class _Member:
    """One tar member as the applier needs it."""

    __slots__ = (
        "devmajor",
        "devminor",
        "end",
        "gid",
        "linkname",
        "mode",
        "mtime_ns",
        "name",
        "size",
        "sparse",
        "type",
        "uid",
        "xattrs",
    )

    def __init__(self) -> None:
        self.name = ""
        self.linkname = ""
        self.type = b"0"
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.size = 0
        self.mtime_ns = 0
        self.devmajor = 0
        self.devminor = 0
        self.xattrs: list[tuple[str, bytes]] = []
        self.sparse: list[tuple[int, int]] | None = None
        self.end = 0  # where the next header starts

    def isreg(self) -> bool:
        return self.type in _REGULAR or self.type == b"S"

    @classmethod
    def from_tarinfo(cls, ti: tarfile.TarInfo, end: int) -> _Member:
        m = cls()
        m.name, m.linkname, m.type = ti.name, ti.linkname, ti.type
        m.mode, m.uid, m.gid, m.size = ti.mode, ti.uid, ti.gid, ti.size
        m.devmajor, m.devminor = ti.devmajor, ti.devminor
        m.mtime_ns = _mtime_ns(ti)
        m.xattrs = [
            (key[len(_PAX_XATTR) :], value.encode("utf-8", "surrogateescape"))
            for key, value in ti.pax_headers.items()
            if key.startswith(_PAX_XATTR)
        ]
        m.sparse = cast("list[tuple[int, int]] | None", ti.sparse)
        m.end = end
        return m


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    # PAX keeps nanoseconds as decimal text; tarfile's float would round them
    text = ti.pax_headers.get("mtime")
    if text:
        return _mtime_text_ns(text)
    m = ti.mtime
    return round(m * 1_000_000_000) if isinstance(m, float) else int(m) * 1_000_000_000


def _is_overlay_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _process_creds() -> tuple[int, int, int] | None:
    """(umask, fsuid, fsgid) of this process, or None if they cannot be read."""
    try:
        with open("/proc/self/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    umask = uid = gid = -1
    for line in text.split(b"\n"):
        fields = line.split()
        if not fields:
            continue
        if fields[0] == b"Umask:":
            umask = int(fields[1], 8)
        elif fields[0] == b"Uid:" and len(fields) == 5:
            uid = int(fields[4])
        elif fields[0] == b"Gid:" and len(fields) == 5:
            gid = int(fields[4])
    if umask < 0 or uid < 0 or gid < 0:
        return None
    return umask, uid, gid


class _Applier:
    def __init__(self, root: Root, src: _Source, overlay: bool) -> None:
        self.root = root
        self.src = src
        self.overlay = overlay
        # Entries written by this layer, by (parent dev, parent inode, name):
        # whiteouts and opaque markers spare them (layer.md: a whiteout only
        # hides what the layers below have).
        self.unpacked: set[tuple[int, int, str]] = set()
        self.made_final = False
        self.dir_times: list[tuple[str, int]] = []
        self.end_without_marker = False
        # What a new node gets without asking: the owner it is made with (the
        # fs ids; the group also the parent's when set-group-ID, so only a
        # parent of that same group counts) and the mode (less the umask;
        # none of that holds under a default ACL, see Root.info)
        creds = _process_creds()
        self.umask, self.uid, self.gid = creds if creds is not None else (0o7777, -1, -1)

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
            m = src.member()
            self.root.trim()
            try:
                self.entry(m)
            except DockyardError:
                raise
            except OSError as e:
                raise SystemFailure(f"apply layer entry {m.name!r}: {e.strerror or e}")
            src.skip_to(m.end)
        src.drain()
        self.finish_dirs()

    def entry(self, m: _Member) -> None:
        name = clean(m.name)
        if name == "":
            return  # the root itself: its metadata belongs to the snapshotter
        parent, base = split(name)
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(parent, base)
            return
        kind = m.type
        if not m.isreg() and kind not in (b"1", b"2", b"3", b"4", b"5", b"6"):
            raise InvalidArgument(f"layer entry {m.name!r}: unsupported tar type {kind!r}")
        pfd = self.parent(parent)
        if m.isreg():
            # the common case first: nothing there yet (O_EXCL, never following)
            fd = self.create(m, pfd, base)
            if fd is None:
                pfd = self.replace(pfd, parent, base, dir_entry=False)[0]
                fd = self.create(m, pfd, base)
                if fd is None:
                    raise FileExistsError(errno.EEXIST, "made again while being replaced")
            try:
                self.regular(m, fd, pfd)
            finally:
                os.close(fd)
            self.unpacked.add(self.root.key(pfd, base))
            return
        pfd, exists, was_whiteout = self.replace(pfd, parent, base, dir_entry=kind == b"5")
        if kind == b"5":
            self.directory(m, pfd, base, name, exists=exists)
            if was_whiteout:
                # a directory replacing what an earlier whiteout of this layer
                # deleted must not show the lower directory's children
                os.setxattr(proc_path(pfd, base), OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
        elif kind == b"2":
            os.symlink(m.linkname, base, dir_fd=pfd)
            new_owner = self.owned_as_made(m, pfd)
            self.metadata(m, None, pfd, base, symlink=True, chown=not new_owner)
        elif kind == b"1":
            self.hardlink(m, pfd, base)
        else:
            self.node(m, pfd, base)
        self.unpacked.add(self.root.key(pfd, base))

    def replace(
        self, pfd: int, parent: str, base: str, *, dir_entry: bool
    ) -> tuple[int, bool, bool]:
        """Remove what is at ``base`` unless a directory entry meets a directory.

        Returns the parent's descriptor (resolved again if a directory or
        symlink went), whether a directory stays, and whether an overlay
        whiteout went.
        """
        st = lstat_at(pfd, base)
        if st is None:
            return pfd, False, False
        if dir_entry and stat.S_ISDIR(st.st_mode):
            return pfd, True, False
        was_whiteout = self.overlay and _is_overlay_whiteout(st)
        remove_at(pfd, base, st)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            self.root.forget()
            pfd = self.parent(parent)
        return pfd, False, was_whiteout

    def parent(self, rel: str) -> int:
        fd = self.root.dir(rel, create=True)
        assert fd is not None
        return fd

    def owned_as_made(self, m: _Member, pfd: int) -> bool:
        """Whether a node made now under ``pfd`` already has the member's owner."""
        return m.uid == self.uid and m.gid == self.gid and self.root.info(pfd).gid == self.gid

    def mode_as_made(self, m: _Member, pfd: int) -> bool:
        """Whether a node made now under ``pfd`` with the member's mode gets it
        exactly (no special bits, which chown would clear; none of them masked
        by the umask; no default ACL; no xattr such as an access ACL that
        changes it afterwards)."""
        mode = m.mode & 0o7777
        if mode & (0o7000 | self.umask) or m.xattrs:
            return False
        info = self.root.info(pfd)
        return not info.default_acl and not info.mode & stat.S_ISGID

    # -- entry kinds -------------------------------------------------------

    def create(self, m: _Member, pfd: int, base: str) -> int | None:
        """A new regular file, open for writing; None if the name is taken."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        final = self.mode_as_made(m, pfd)
        try:
            fd = os.open(base, flags, m.mode & 0o777 if final else 0o600, dir_fd=pfd)
        except FileExistsError:
            return None
        self.made_final = final
        return fd

    def regular(self, m: _Member, fd: int, pfd: int) -> None:
        if m.sparse:
            for offset, length in m.sparse:
                self.src.copy_to(fd, length, offset)
            os.ftruncate(fd, m.size)
        elif m.size > 0:
            self.src.copy_to(fd, m.size)
        self.metadata(
            m, fd, pfd, "", chown=not self.owned_as_made(m, pfd), chmod=not self.made_final
        )

    def directory(self, m: _Member, pfd: int, base: str, name: str, exists: bool) -> None:
        chown = chmod = True
        if not exists:
            chown = not self.owned_as_made(m, pfd)
            chmod = not self.mode_as_made(m, pfd)
            os.mkdir(base, 0o700 if chmod else m.mode & 0o777, dir_fd=pfd)
        if chown or chmod or m.xattrs:
            fd = os.open(
                base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd
            )
            try:
                self.metadata(m, fd, pfd, base, times=False, chown=chown, chmod=chmod)
            finally:
                os.close(fd)
            # it may be a parent whose owner, mode or ACLs were cached
            self.root.changed()
        # set after the directory's contents are written, which change it
        self.dir_times.append((name, m.mtime_ns))

    def hardlink(self, m: _Member, pfd: int, base: str) -> None:
        target = clean(m.linkname, "hardlink target")
        if target == "":
            raise InvalidArgument(f"layer hardlink {m.name!r}: target is the root")
        tparent, tbase = split(target)
        tpfd = self.root.dir(tparent)
        if tpfd is None:
            raise InvalidArgument(f"layer hardlink {m.name!r}: target {m.linkname!r} not found")
        try:
            # linkat without AT_SYMLINK_FOLLOW: a link to a symlink is a second
            # name of the symlink, never of what it points to.
            os.link(tbase, base, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise InvalidArgument(f"layer hardlink {m.name!r}: target {m.linkname!r} not found")
        except PermissionError:
            raise InvalidArgument(
                f"layer hardlink {m.name!r}: target {m.linkname!r} is a directory"
            )

    def node(self, m: _Member, pfd: int, base: str) -> None:
        if m.type == b"6":
            os.mkfifo(base, 0o600, dir_fd=pfd)
        else:
            kind = stat.S_IFCHR if m.type == b"3" else stat.S_IFBLK
            try:
                os.mknod(base, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
            except PermissionError:
                if libc.in_user_namespace():
                    return  # as containerd: device nodes cannot be made there; skip them
                raise
        self.metadata(m, None, pfd, base)

    def metadata(
        self,
        m: _Member,
        fd: int | None,
        pfd: int,
        base: str,
        *,
        symlink: bool = False,
        times: bool = True,
        chown: bool = True,
        chmod: bool = True,
    ) -> None:
        """Owner, xattrs, mode, times: in this order, as chown clears setuid
        bits and file capabilities. ``chown``/``chmod`` False: the node was
        made with them."""
        if chown:
            if fd is not None:
                os.fchown(fd, m.uid, m.gid)
            else:
                os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        for name, value in m.xattrs:
            self.xattr(m, fd, pfd, base, name, value, symlink)
        if chmod and not symlink:
            if fd is not None:
                os.fchmod(fd, m.mode & 0o7777)
            else:
                # a node this call just made, not a symlink: following is safe
                os.chmod(base, m.mode & 0o7777, dir_fd=pfd)
        if times:
            ns = m.mtime_ns
            if fd is not None:
                os.utime(fd, ns=(ns, ns))
            else:
                os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)

    def xattr(
        self,
        m: _Member,
        fd: int | None,
        pfd: int,
        base: str,
        name: str,
        data: bytes,
        symlink: bool,
    ) -> None:
        if name.startswith("trusted.overlay."):
            return  # overlayfs's own bookkeeping: never taken from a layer
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
            raise SystemFailure(f"apply layer entry {m.name!r}: set xattr {name}: {e.strerror}")

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
