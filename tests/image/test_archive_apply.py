"""Applying layers: OCI image-spec layer.md semantics, compression, bad input."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.errors import InvalidArgument
from dockyard.image.archive import apply_layer
from dockyard.runtime import libc
from tests.image.archive_helpers import (
    MTIME,
    dir,
    file,
    link,
    opaque,
    snapshot,
    symlink,
    tar,
    whiteout,
)

zstandard = pytest.importorskip("zstandard")

CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")


def apply(root: Path, data: bytes, mode: str = "direct", **kw: object) -> str:
    return apply_layer(str(root), io.BytesIO(data), whiteouts=mode, **kw).diff_id  # type: ignore[arg-type]


def make_tree(src: Path) -> None:
    """A tree with every kind of entry a layer can carry."""
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "e" / "f").write_bytes(b"hello\n")
    os.chmod(src / "d" / "e" / "f", 0o4755)
    os.setxattr(src / "d" / "e" / "f", "user.note", b"some value")
    os.setxattr(src / "d" / "e" / "f", "security.capability", CAP_NET_RAW)
    os.link(src / "d" / "e" / "f", src / "hardlink")
    os.symlink("d/e/f", src / "symlink")
    os.symlink("/nowhere/at/all", src / "dangling")
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "loop", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.mkfifo(src / "fifo", 0o640)
    (src / "tmp").mkdir()
    os.chmod(src / "tmp", 0o1777)
    (src / "owned").write_bytes(b"owned")
    os.chown(src / "owned", 1234, 5678)
    os.chown(src / "d", 42, 43)
    os.chmod(src / "d", 0o2750)
    long = src.joinpath(*(["x" * 60] * 5))
    long.mkdir(parents=True)
    (long / ("y" * 200)).write_bytes(b"long name")
    with open(src / "sparse", "wb") as f:
        f.seek(5 << 20)
        f.write(os.urandom(4096))
        f.truncate(20 << 20)
    for i, p in enumerate(sorted(src.rglob("*"), reverse=True)):
        os.utime(p, ns=(MTIME * 10**9 + i * 1001, MTIME * 10**9 + i * 1001), follow_symlinks=False)


def gnu_tar(src: Path, fmt: str) -> bytes:
    xattrs = ["--xattrs", "--xattrs-include=*"] if fmt == "posix" else []
    args = ["tar", *xattrs, "--sparse", f"--format={fmt}", "--numeric-owner"]
    return subprocess.run(
        [*args, "-C", str(src), "-cf", "-", "."],
        check=True,
        capture_output=True,
    ).stdout


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    return src


def without_root(snap: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    return {k: v for k, v in snap.items() if k}


@pytest.mark.parametrize("fmt", ["posix", "gnu"])
def test_every_entry_kind_round_trips_through_gnu_tar(tree: Path, tmp_path: Path, fmt: str) -> None:
    if fmt == "gnu":  # the GNU format has no xattrs
        for name in ("user.note", "security.capability"):
            os.removexattr(tree / "d/e/f", name)
    data = gnu_tar(tree, fmt)
    if fmt == "gnu":
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            assert any(ti.type == tarfile.GNUTYPE_SPARSE for ti in tf)
    dst = tmp_path / "dst"
    dst.mkdir()
    diff_id = apply(dst, data)
    assert diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    # GNU tar keeps nanoseconds in PAX but only seconds in its own format
    times = fmt == "posix"
    assert without_root(snapshot(str(dst), times=times)) == without_root(
        snapshot(str(tree), times=times)
    )
    if fmt == "posix":
        assert os.getxattr(dst / "d/e/f", "security.capability") == CAP_NET_RAW
    assert os.stat(dst / "hardlink").st_ino == os.stat(dst / "d/e/f").st_ino
    # the hole stays a hole
    assert os.stat(dst / "sparse").st_blocks * 512 < 1 << 20


def test_size_and_diff_id_cover_the_whole_uncompressed_tar(tmp_path: Path) -> None:
    data = tar([file("a", b"x" * 1000)]) + b"\0" * 10240  # extra record padding
    result = apply_layer(str(tmp_path), io.BytesIO(data))
    assert result.size == len(data)
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _zstd(data: bytes) -> bytes:
    return bytes(zstandard.ZstdCompressor().compress(data))


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
@pytest.mark.parametrize("explicit", [False, True])
def test_compressed_layers(tmp_path: Path, codec: str, explicit: bool) -> None:
    data = tar([dir("a"), file("a/b", os.urandom(3 << 20)), file("c", b"\0" * (5 << 20))])
    packed = _gzip(data) if codec == "gzip" else _zstd(data)
    result = apply_layer(str(tmp_path), io.BytesIO(packed), compression=codec if explicit else None)
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert (tmp_path / "c").stat().st_size == 5 << 20


def test_multi_member_gzip_and_multi_frame_zstd(tmp_path: Path) -> None:
    data = tar([file("a", os.urandom(100_000)), file("b", b"b" * 100_000)])
    half = len(data) // 2
    for packed in (
        _gzip(data[:half]) + _gzip(data[half:]),
        _zstd(data[:half]) + _zstd(data[half:]),
    ):
        shutil.rmtree(tmp_path / "r", ignore_errors=True)
        (tmp_path / "r").mkdir()
        assert apply(tmp_path / "r", packed) == "sha256:" + hashlib.sha256(data).hexdigest()


def _bad_header(data: bytes) -> bytes:
    # garbage where the second member's header is: after a's header and
    # its 2000 bytes of data padded to 2048
    first = tarfile.BLOCKSIZE + 2048
    return data[:first] + b"garbage!" * 64 + data[first + tarfile.BLOCKSIZE :]


@pytest.mark.parametrize(
    "name,mangle,message",
    [
        ("truncated gzip", lambda d: _gzip(d)[: len(_gzip(d)) // 2], "gzip"),
        ("gzip missing its trailer", lambda d: _gzip(d)[:-4], "gzip"),
        ("corrupt gzip", lambda d: _gzip(d)[:20] + b"\xff" * 50 + _gzip(d)[70:], "gzip"),
        ("corrupt zstd", lambda d: _zstd(d)[:10] + b"\xff" * 40 + _zstd(d)[50:], "zstd"),
        ("truncated zstd", lambda d: _zstd(d)[: len(_zstd(d)) - 30], "zstd"),
        ("truncated tar data", lambda d: d[:3000], "tar"),
        ("truncated tar header", lambda d: d[: 2048 + 100], "tar"),
        ("bad tar header", _bad_header, "header"),
        ("bzip2", lambda d: b"BZh91AY&SY" + d, "bzip2"),
    ],
)
def test_bad_layers_are_refused_clearly(
    tmp_path: Path, name: str, mangle: object, message: str
) -> None:
    data = tar([file("a", os.urandom(2000)), file("b", os.urandom(70_000)), file("c", b"c")])
    bad = mangle(data)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=message):
        apply(tmp_path, bad)


def test_ownership_modes_times_and_xattrs_from_the_tar(tmp_path: Path) -> None:
    data = tar(
        [
            dir("d", 0o1777, uid=7, gid=8, mtime=1_000_000_000),
            file("d/suid", b"x", 0o4755, uid=1, gid=2, mtime=1_234_567_890.5),
            file("d/caps", b"x", 0o755, xattrs={"security.capability": CAP_NET_RAW}),
            file("d/user", b"x", 0o600, xattrs={"user.a": b"\x00\xffbinary"}),
            symlink("d/link", "suid"),
        ]
    )
    apply(tmp_path, data)
    d = os.lstat(tmp_path / "d")
    assert (stat.S_IMODE(d.st_mode), d.st_uid, d.st_gid) == (0o1777, 7, 8)
    assert d.st_mtime_ns == 1_000_000_000 * 10**9, "a directory's mtime is set after its contents"
    s = os.lstat(tmp_path / "d/suid")
    assert (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (0o4755, 1, 2)
    assert s.st_mtime_ns == 1_234_567_890_500_000_000
    assert os.getxattr(tmp_path / "d/caps", "security.capability") == CAP_NET_RAW
    assert os.getxattr(tmp_path / "d/user", "user.a") == b"\x00\xffbinary"
    assert os.readlink(tmp_path / "d/link") == "suid"


def test_later_entries_override_earlier_ones(tmp_path: Path) -> None:
    apply(tmp_path, tar([dir("a"), file("a/keep", b"k"), file("f", b"file"), dir("g")]))
    apply(
        tmp_path,
        tar(
            [
                dir("a", 0o700),  # a directory over a directory keeps its children
                file("a/new", b"1"),
                file("a/new", b"2"),
                dir("f"),  # a directory replaces a file
                file("f/x", b"x"),
                file("g", b"now a file"),  # a file replaces a directory
                symlink("s", "a"),
                file("s", b"not a link"),
            ]
        ),
    )
    assert (tmp_path / "a/keep").read_bytes() == b"k"
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o700
    assert (tmp_path / "a/new").read_bytes() == b"2"
    assert (tmp_path / "f/x").read_bytes() == b"x"
    assert (tmp_path / "g").read_bytes() == b"now a file"
    assert not (tmp_path / "s").is_symlink()


def test_parent_directories_are_made_when_missing(tmp_path: Path) -> None:
    apply(tmp_path, tar([file("no/parent/here/f", b"f"), dir("other/noparent/1/")]))
    assert (tmp_path / "no/parent/here/f").read_bytes() == b"f"
    assert stat.S_IMODE(os.stat(tmp_path / "no/parent").st_mode) == 0o755
    assert (tmp_path / "other/noparent/1").is_dir()


LOWER = [
    dir("etc"),
    file("etc/passwd", b"root"),
    file("etc/group", b"root"),
    dir("var"),
    dir("var/lib"),
    file("var/lib/a", b"a"),
    file("var/lib/b", b"b"),
    dir("var/lib/sub"),
    file("var/lib/sub/c", b"c"),
    dir("gone"),
    file("gone/x", b"x"),
]

CHANGES = [
    whiteout("etc/group"),
    whiteout("gone"),
    whiteout("never-was"),
    dir("var/lib"),
    opaque("var/lib"),
    file("var/lib/b", b"new b"),
    file("var/lib/late", b"late"),
    file("etc/added", b"added"),
    file("etc/kept"),
    whiteout("etc/kept"),  # a whiteout only hides what the layers below have
]


def test_whiteouts_applied_directly(tmp_path: Path) -> None:
    apply(tmp_path, tar(LOWER))
    apply(tmp_path, tar(CHANGES))
    assert sorted(os.listdir(tmp_path)) == ["etc", "var"]
    assert sorted(os.listdir(tmp_path / "etc")) == ["added", "kept", "passwd"]
    assert sorted(os.listdir(tmp_path / "var/lib")) == ["b", "late"]
    assert (tmp_path / "var/lib/b").read_bytes() == b"new b"


def test_opaque_marker_before_or_after_the_entries(tmp_path: Path) -> None:
    apply(tmp_path, tar(LOWER))
    apply(tmp_path, tar([file("var/lib/first", b"1"), opaque("var/lib"), file("var/lib/2nd")]))
    assert sorted(os.listdir(tmp_path / "var/lib")) == ["2nd", "first"]


def _is_overlay_whiteout(p: Path) -> bool:
    st = os.lstat(p)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(lower, upper, merged): merged is mounted by the test, unmounted here."""
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for p in (lower, upper, work, merged):
        p.mkdir()
    try:
        yield lower, upper, merged
    finally:
        if os.path.ismount(merged):
            libc.umount2(str(merged), libc.MNT_DETACH)


def test_overlay_whiteouts_are_honoured_by_overlayfs(overlay: tuple[Path, Path, Path]) -> None:
    lower, upper, merged = overlay
    apply(lower, tar(LOWER))
    apply(upper, tar(CHANGES), "overlay", parents=[str(lower)])
    assert _is_overlay_whiteout(upper / "etc/group")
    assert _is_overlay_whiteout(upper / "gone")
    assert os.getxattr(upper / "var/lib", "trusted.overlay.opaque") == b"y"
    assert (upper / "etc/kept").is_file()
    # etc/ was not in the layer: made in the upper dir with the lower's metadata
    lo, up = os.stat(lower / "etc"), os.stat(upper / "etc")
    assert (up.st_mode, up.st_uid, up.st_mtime_ns) == (lo.st_mode, lo.st_uid, lo.st_mtime_ns)
    work = merged.parent / "work"
    libc.mount(
        "overlay", str(merged), "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}"
    )
    assert sorted(os.listdir(merged)) == ["etc", "var"]
    assert sorted(os.listdir(merged / "etc")) == ["added", "kept", "passwd"]
    assert sorted(os.listdir(merged / "var/lib")) == ["b", "late"]
    assert (merged / "var/lib/b").read_bytes() == b"new b"


def test_overlay_directory_replacing_a_whiteout_is_opaque(overlay: tuple[Path, Path, Path]) -> None:
    lower, upper, merged = overlay
    apply(lower, tar(LOWER))
    apply(upper, tar([whiteout("var/lib"), dir("var/lib"), file("var/lib/fresh")]), "overlay")
    work = merged.parent / "work"
    libc.mount(
        "overlay", str(merged), "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}"
    )
    assert os.listdir(merged / "var/lib") == ["fresh"]


def test_layer_is_streamed_not_held_in_memory(tmp_path: Path) -> None:
    # 300 MiB of zeros: about 300 KiB of gzip; peak RSS must stay far below
    script = textwrap.dedent(
        """
        import io, resource, sys, tarfile, zlib
        from dockyard.image.archive import apply_layer

        size = 300 << 20

        class Zeros(io.RawIOBase):
            def __init__(self):
                self.left = size
            def readable(self):
                return True
            def readinto(self, b):
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n

        out = io.BytesIO()
        c = zlib.compressobj(6, zlib.DEFLATED, 31)
        class W:
            def write(self, d):
                out.write(c.compress(d))
                return len(d)
        with tarfile.open(fileobj=W(), mode="w|") as tf:
            ti = tarfile.TarInfo("zeros")
            ti.size = size
            tf.addfile(ti, io.BufferedReader(Zeros()))
        out.write(c.flush())
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out.seek(0)
        apply_layer(sys.argv[1], out)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) // 1024)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    grew_mib = int(proc.stdout.strip())
    assert grew_mib < 64, f"peak RSS grew by {grew_mib} MiB"
    assert (tmp_path / "zeros").stat().st_size == 300 << 20


def test_unsupported_compression_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="compression"):
        apply(tmp_path, tar([file("a")]), compression="lz4")


def test_unknown_whiteout_mode(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="whiteout"):
        apply(tmp_path, tar([file("a")]), "aufs")


def test_hardlinks_within_the_layer_and_to_the_layers_below(tmp_path: Path) -> None:
    apply(tmp_path, tar([dir("bin"), file("bin/busybox", b"bb", 0o755)]))
    apply(tmp_path, tar([link("bin/sh", "bin/busybox"), link("ls", "/bin/busybox")]))
    ino = os.stat(tmp_path / "bin/busybox").st_ino
    assert os.stat(tmp_path / "bin/sh").st_ino == ino == os.stat(tmp_path / "ls").st_ino
    with pytest.raises(InvalidArgument, match="not found"):
        apply(tmp_path, tar([link("x", "missing")]))


def test_the_library_pulls_in_no_daemon_or_grpc_code() -> None:
    code = (
        "import sys, dockyard.image.archive as a\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')"
        " or m.startswith(('dockyard.supervisor', 'dockyard.engine', 'dockyard.shim'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
