"""Writing layers from changes: apply(diff(lower, upper)) onto lower == upper."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import socket
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.errors import InvalidArgument
from dockyard.image.archive import apply_layer, write_diff
from dockyard.runtime import libc
from tests.image.archive_helpers import snapshot
from tests.image.test_archive_apply import CAP_NET_RAW, make_tree

zstandard = pytest.importorskip("zstandard")


def whole_seconds(top: Path) -> None:
    """Tar keeps seconds: give every entry a whole-second mtime."""
    for p in [top, *top.rglob("*")]:
        st = os.lstat(p)
        s = st.st_mtime_ns // 10**9 * 10**9
        os.utime(p, ns=(s, s), follow_symlinks=False)


def copy(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def diff_bytes(lower: Path | None, upper: Path, **kw: object) -> bytes:
    out = io.BytesIO()
    write_diff(str(lower) if lower else None, str(upper), out, **kw)  # type: ignore[arg-type]
    return out.getvalue()


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getmembers()


def names(data: bytes) -> list[str]:
    return [m.name for m in members(data)]


def without_root(snap: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    return {k: v for k, v in snap.items() if k}


@pytest.fixture
def lower(tmp_path: Path) -> Path:
    lo = tmp_path / "lower"
    lo.mkdir()
    make_tree(lo)
    (lo / "etc").mkdir()
    (lo / "etc" / "passwd").write_bytes(b"root:x:0:0\n")
    (lo / "etc" / "group").write_bytes(b"root:x:0:\n")
    (lo / "var" / "lib" / "sub").mkdir(parents=True)
    for n in ("a", "b", "sub/c"):
        (lo / "var" / "lib" / n).write_bytes(n.encode())
    (lo / "gone" / "deep").mkdir(parents=True)
    (lo / "gone" / "deep" / "x").write_bytes(b"x")
    (lo / "was-file").write_bytes(b"file")
    (lo / "was-dir").mkdir()
    (lo / "was-dir" / "child").write_bytes(b"child")
    (lo / "same-size").write_bytes(b"aaaa")
    whole_seconds(lo)
    return lo


def change(upper: Path) -> None:
    """Every kind of change a layer can carry."""
    (upper / "etc" / "group").unlink()
    shutil.rmtree(upper / "gone")
    (upper / "etc" / "passwd").write_bytes(b"root:x:0:0\nnew:x:1:1\n")
    (upper / "etc" / "new").write_bytes(b"new")
    os.chmod(upper / "owned", 0o600)
    os.chown(upper / "null", 5, 5)
    os.setxattr(upper / "d" / "e" / "f", "user.note", b"changed")
    os.unlink(upper / "symlink")
    os.symlink("elsewhere", upper / "symlink")
    (upper / "was-file").unlink()
    (upper / "was-file").mkdir()
    (upper / "was-file" / "inside").write_bytes(b"in")
    shutil.rmtree(upper / "was-dir")
    (upper / "was-dir").write_bytes(b"now a file")
    os.link(upper / "etc" / "passwd", upper / "var" / "passwd-link")  # new name, changed file
    os.link(upper / "var" / "lib" / "a", upper / "a-link")  # new name of an unchanged file
    os.mknod(upper / "zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    # same size, and (below) the same whole-second mtime: only content tells
    st = os.stat(upper / "same-size")
    (upper / "same-size").write_bytes(b"bbbb")
    os.utime(upper / "same-size", ns=(st.st_atime_ns, st.st_mtime_ns))
    (upper / "new-dir" / "sub").mkdir(parents=True)
    (upper / "new-dir" / "sub" / "f").write_bytes(b"f")
    os.setxattr(upper / "new-dir" / "sub" / "f", "security.capability", CAP_NET_RAW)


def test_round_trip_of_full_trees(lower: Path, tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    copy(lower, upper)
    change(upper)
    whole_seconds(upper)
    data = diff_bytes(lower, upper)
    target = tmp_path / "target"
    copy(lower, target)
    apply_layer(str(target), io.BytesIO(data))
    assert without_root(snapshot(str(target))) == without_root(snapshot(str(upper)))
    listed = names(data)
    assert "etc/.wh.group" in listed and ".wh.gone" in listed
    assert not any(n.startswith("gone/") for n in listed), "a deleted directory is one whiteout"
    assert "same-size" in listed
    assert "var/lib/b" not in listed, "unchanged files stay out"
    assert "etc" in listed, "parents of changes are included"


def test_everything_is_new_without_a_lower(lower: Path, tmp_path: Path) -> None:
    data = diff_bytes(None, lower)
    target = tmp_path / "target"
    target.mkdir()
    apply_layer(str(target), io.BytesIO(data))
    assert without_root(snapshot(str(target))) == without_root(snapshot(str(lower)))
    by_name = {m.name: m for m in members(data)}
    assert by_name["hardlink"].islnk() or by_name["d/e/f"].islnk()
    assert all(m.uname == "" and m.gname == "" for m in by_name.values())
    f = by_name["d/e/f"] if by_name["d/e/f"].isreg() else by_name["hardlink"]
    assert f.pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == (
        CAP_NET_RAW
    )


def test_no_changes_gives_an_empty_layer(lower: Path, tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    copy(lower, upper)
    assert names(diff_bytes(lower, upper)) == []


def test_output_is_deterministic(lower: Path, tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    copy(lower, upper)
    change(upper)
    assert diff_bytes(lower, upper) == diff_bytes(lower, upper)


def test_unchanged_hardlinked_name_follows_its_inode(tmp_path: Path) -> None:
    lo, up = tmp_path / "lo", tmp_path / "up"
    (lo / "d1").mkdir(parents=True)
    (lo / "d1" / "f1").write_bytes(b"link me")
    (lo / "d2").mkdir()
    whole_seconds(lo)
    copy(lo, up)
    os.link(up / "d1" / "f1", up / "d2" / "l1")
    whole_seconds(up)
    data = diff_bytes(lo, up)
    target = tmp_path / "target"
    copy(lo, target)
    apply_layer(str(target), io.BytesIO(data))
    assert os.stat(target / "d1/f1").st_ino == os.stat(target / "d2/l1").st_ino
    assert without_root(snapshot(str(target))) == without_root(snapshot(str(up)))


def test_sockets_are_left_out(tmp_path: Path) -> None:
    up = tmp_path / "up"
    up.mkdir()
    (up / "f").write_bytes(b"f")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(up / "sock"))
        assert names(diff_bytes(None, up)) == ["f"]
    finally:
        s.close()


@pytest.mark.parametrize("codec", ["gzip", "zstd", "none"])
def test_compressed_output_digests(lower: Path, tmp_path: Path, codec: str) -> None:
    out = io.BytesIO()
    result = write_diff(None, str(lower), out, compression=codec)  # type: ignore[arg-type]
    blob = out.getvalue()
    assert result.size == len(blob)
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    if codec == "gzip":
        plain = gzip.decompress(blob)
    elif codec == "zstd":
        plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
    else:
        plain = blob
    assert result.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    target = tmp_path / "t"
    target.mkdir()
    assert apply_layer(str(target), io.BytesIO(blob)).diff_id == result.diff_id


def test_unknown_compression_is_refused(lower: Path) -> None:
    with pytest.raises(InvalidArgument):
        write_diff(None, str(lower), io.BytesIO(), compression="lz4")  # type: ignore[arg-type]


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    """Mount points to unmount at the end, whatever happened."""
    points: list[Path] = []
    try:
        yield points
    finally:
        for p in reversed(points):
            if os.path.ismount(p):
                libc.umount2(str(p), libc.MNT_DETACH)


def _mount_overlay(mounts: list[Path], lower: Path, upper: Path, work: Path, merged: Path) -> None:
    for p in (upper, work, merged):
        p.mkdir(exist_ok=True)
    mounts.append(merged)
    libc.mount(
        "overlay", str(merged), "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}"
    )


def test_overlay_upper_round_trip(lower: Path, tmp_path: Path, mounts: list[Path]) -> None:
    upper, merged = tmp_path / "upper", tmp_path / "merged"
    _mount_overlay(mounts, lower, upper, tmp_path / "work", merged)
    change(merged)
    # a directory removed and made again: overlayfs marks it opaque
    shutil.rmtree(merged / "var" / "lib")
    (merged / "var" / "lib").mkdir()
    (merged / "var" / "lib" / "fresh").write_bytes(b"fresh")
    whole_seconds(merged)
    expected = without_root(snapshot(str(merged)))
    libc.umount2(str(merged), 0)
    assert os.getxattr(upper / "var" / "lib", "trusted.overlay.opaque") == b"y"

    data = diff_bytes(lower, upper, upper_is_overlay=True)
    listed = names(data)
    assert "var/lib/.wh..wh..opq" in listed
    assert "etc/.wh.group" in listed and ".wh.gone" in listed
    assert not any("trusted.overlay" in k for m in members(data) for k in m.pax_headers)

    # onto a full copy of the lower (the copying snapshotter)
    target = tmp_path / "target"
    copy(lower, target)
    apply_layer(str(target), io.BytesIO(data))
    assert without_root(snapshot(str(target))) == expected

    # and into a fresh overlay upper directory (the overlay snapshotter)
    upper2, merged2 = tmp_path / "upper2", tmp_path / "merged2"
    upper2.mkdir()
    apply_layer(str(upper2), io.BytesIO(data), whiteouts="overlay", parents=[str(lower)])
    _mount_overlay(mounts, lower, upper2, tmp_path / "work2", merged2)
    assert without_root(snapshot(str(merged2))) == expected
