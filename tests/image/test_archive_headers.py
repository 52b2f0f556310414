"""The layer applier's own tar header parser, checked against tarfile's."""

from __future__ import annotations

import io
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from dockyard.errors import InvalidArgument
from dockyard.image.archive import apply as _apply
from dockyard.image.archive.apply import _Member, _Source


def fields(m: _Member) -> tuple[object, ...]:
    return (
        m.name,
        m.linkname,
        m.type,
        m.mode,
        m.uid,
        m.gid,
        m.size,
        m.mtime_ns,
        m.devmajor,
        m.devminor,
        sorted(m.xattrs),
        m.sparse,
        m.end,
    )


def ours(data: bytes) -> list[tuple[object, ...]]:
    src = _Source(io.BytesIO(data))
    out: list[tuple[object, ...]] = []
    while True:
        head = src.peek(tarfile.BLOCKSIZE)
        if len(head) < tarfile.BLOCKSIZE or not head.strip(b"\0"):
            return out
        m = src.member()
        out.append(fields(m))
        src.skip_to(m.end)


def theirs(data: bytes) -> list[tuple[object, ...]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for ti in tf:
            end = ti.offset_data + (_apply._block(ti.size) if ti.isreg() else 0)
            if ti.sparse:
                end = tf.offset
            out.append(fields(_Member.from_tarinfo(ti, end)))
    return out


def build(fmt: int, members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


def info(name: str, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def sample(fmt: int) -> list[tuple[tarfile.TarInfo, bytes]]:
    long = "/".join(["d" * 80] * 4)
    big = {} if fmt == tarfile.USTAR_FORMAT else {"uid": 8**8, "gid": 8**7 + 5}
    xattrs = (
        {"SCHILY.xattr.user.bin": b"\x00\xff\x80bin".decode("utf-8", "surrogateescape")}
        if fmt == tarfile.PAX_FORMAT
        else {}
    )
    return [
        (info("dir", type=tarfile.DIRTYPE, mode=0o2755, uid=1, gid=2, mtime=7), b""),
        (info("dir/file", size=700, mode=0o644, mtime=1_700_000_000), b"x" * 700),
        (info("dir/big-owner", size=3, **big), b"abc"),
        (info("dir/" + ("n" * 90) + "/sub/" + "p" * 90, size=1), b"1"),  # ustar prefix
        (info(long if fmt != tarfile.USTAR_FORMAT else "short", size=2), b"22"),
        (info("sym", type=tarfile.SYMTYPE, linkname="l" * (300 if fmt else 50)), b""),
        (info("hard", type=tarfile.LNKTYPE, linkname="dir/file"), b""),
        (info("chr", type=tarfile.CHRTYPE, devmajor=1, devminor=3), b""),
        (info("fifo", type=tarfile.FIFOTYPE, mode=0o600), b""),
        (info("caps", size=5, pax_headers=xattrs), b"caps!"),
        (info("ünïcode", size=0), b""),
    ]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_same_members_as_tarfile_without_falling_back(
    fmt: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = build(fmt, sample(fmt))
    want = theirs(data)

    def refuse(*a: object) -> None:
        raise AssertionError("fell back to tarfile")

    monkeypatch.setattr(_apply.tarfile.TarInfo, "fromtarfile", refuse)
    assert ours(data) == want


def test_pax_fractional_mtime_and_overrides() -> None:
    ti = info("x", size=4, mtime=5)
    ti.pax_headers = {
        "mtime": "1700000000.123456789",
        "uid": "70000",
        "gid": "80000",
        "uname": "someone",
        "comment": "ignored",
    }
    data = build(tarfile.PAX_FORMAT, [(ti, b"data")])
    (got,) = ours(data)
    assert got[7] == 1_700_000_000_123_456_789
    assert (got[4], got[5]) == (70000, 80000)
    assert got == theirs(data)[0]


def test_signed_checksum_and_old_directory_form() -> None:
    block = bytearray(build(tarfile.USTAR_FORMAT, [(info("a\xe9b/", size=0), b"")])[:512])
    block[156:157] = b"\0"  # the old regular type: a trailing slash makes it a directory
    block[148:156] = b"        "
    signed = 256 + sum(struct.unpack("148b8x356b", bytes(block)))
    block[148:156] = b"%06o\0 " % signed
    data = bytes(block) + b"\0" * 1024
    (got,) = ours(data)
    assert got[2] == b"5"
    assert got == theirs(data)[0]


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_gnu_tar_sparse_and_long_names(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    deep = src.joinpath(*(["y" * 70] * 3))
    deep.mkdir(parents=True)
    (deep / ("z" * 120)).write_bytes(b"long")
    with open(src / "sparse", "wb") as f:
        f.seek(1 << 20)
        f.write(b"data" * 1000)
        f.truncate(3 << 20)
    (src / "link").symlink_to("q" * 150)
    data = subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", "-C", str(src), "-cf", "-", "."],
        check=True,
        capture_output=True,
    ).stdout
    assert ours(data) == theirs(data)


def test_bad_checksum_names_the_offset() -> None:
    data = bytearray(build(tarfile.PAX_FORMAT, [(info("a", size=10), b"0123456789")] * 2))
    data[1024 + 3] ^= 0x20
    with pytest.raises(InvalidArgument, match="bad header at offset 1024: bad checksum"):
        ours(bytes(data))


def test_bad_number_names_the_offset() -> None:
    block = bytearray(build(tarfile.USTAR_FORMAT, [(info("a", size=0), b"")])[:512])
    block[100:108] = b"0009x44\0"
    block[148:156] = b"        "
    block[148:156] = b"%06o\0 " % sum(block)
    with pytest.raises(InvalidArgument, match="bad header at offset 0: invalid header"):
        ours(bytes(block) + b"\0" * 1024)
