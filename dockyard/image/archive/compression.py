"""Layer compression: detection by magic bytes, streaming readers and writers.

OCI image-spec media-types.md names three layer encodings: plain tar, gzip and
zstd. Readers here hand out decompressed bytes in bounded chunks, so a layer
is never held in memory whole, and turn every decoding failure into an
``InvalidArgument`` that says what is wrong with the layer.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import zlib
from typing import Any, BinaryIO, Protocol, cast

from dockyard.errors import InvalidArgument

# Compressed input is read in chunks of this size; decompressed output is
# handed out in chunks of at most what the caller asks for.
CHUNK = 1 << 20

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_OTHER_MAGIC = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
}

NONE = "none"
GZIP = "gzip"
ZSTD = "zstd"
COMPRESSIONS = (NONE, GZIP, ZSTD)


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def detect(head: bytes) -> str:
    """The compression of a layer from its first bytes (at least 6 of them)."""
    if head.startswith(GZIP_MAGIC):
        return GZIP
    if head.startswith(ZSTD_MAGIC):
        return ZSTD
    for magic, name in _OTHER_MAGIC.items():
        if head.startswith(magic):
            raise InvalidArgument(
                f"layer is {name}-compressed: only tar, gzip and zstd are supported"
            )
    return NONE


class _Prefixed:
    """A stream with bytes already read from its start put back in front."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self._head = head
        self._raw = raw

    def read(self, n: int = -1, /) -> bytes:
        if self._head:
            if n is None or n < 0 or n >= len(self._head):
                head, self._head = self._head, b""
                return head
            head, self._head = self._head[:n], self._head[n:]
            return head
        return self._raw.read(n)


class _GzipReader:
    """gzip (RFC 1952) through zlib, members concatenated, output bounded per read."""

    def __init__(self, raw: Reader) -> None:
        self._raw = raw
        self._d: Any = None  # the member being decoded; None between members
        self._pending = b""

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        while True:
            if self._d is None:
                data = self._pending or self._raw.read(CHUNK)
                self._pending = b""
                if not data:
                    return b""
                if not data.startswith(GZIP_MAGIC[: len(data)]):
                    if data.strip(b"\0"):
                        raise InvalidArgument("layer gzip stream: garbage after the last member")
                    continue  # zero padding after the last member, as gzip(1) allows
                self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._pending = data
            data = self._d.unconsumed_tail or self._pending or self._raw.read(CHUNK)
            self._pending = b""
            try:
                out = self._d.decompress(data, n) if data else self._d.flush()
            except zlib.error as e:
                raise InvalidArgument(f"layer gzip stream is corrupt: {e}")
            if self._d.eof:
                self._pending = self._d.unused_data
                self._d = None
            elif not data:
                raise InvalidArgument("layer gzip stream is truncated")
            if out:
                return out


class _ZstdReader:
    """zstd through the ``zstandard`` binding, frames concatenated."""

    def __init__(self, raw: Reader) -> None:
        try:
            import zstandard
        except ImportError:
            raise InvalidArgument("layer is zstd-compressed and the zstandard module is missing")
        self._error: type[Exception] = zstandard.ZstdError
        self._r = zstandard.ZstdDecompressor().stream_reader(
            cast(BinaryIO, raw), read_size=CHUNK, read_across_frames=True, closefd=False
        )

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        try:
            return self._r.read(n)
        except self._error as e:
            raise InvalidArgument(f"layer zstd stream is corrupt: {e}")


def decompressed(stream: BinaryIO, compression: str | None) -> tuple[Reader, str]:
    """A reader of the uncompressed tar in ``stream`` and the compression found.

    ``compression`` None detects it from the magic bytes.
    """
    head = b""
    while len(head) < 6:
        more = stream.read(6 - len(head))
        if not more:
            break
        head += more
    found = detect(head) if compression is None else compression
    raw = _Prefixed(head, stream)
    if found == NONE:
        return raw, found
    if found == GZIP:
        return _GzipReader(raw), found
    if found == ZSTD:
        return _ZstdReader(raw), found
    raise InvalidArgument(
        f"unknown layer compression {found!r}: want one of {', '.join(COMPRESSIONS)}"
    )


class Prefetcher:
    """Decompress and hash in a thread, ``depth`` chunks ahead of the reader.

    zlib, zstd and hashlib release the GIL, so this overlaps them with the
    caller's filesystem work on another CPU. ``digest`` and ``size`` cover
    every byte once ``read`` has returned b"".
    """

    def __init__(self, reader: Reader, depth: int = 8) -> None:
        self._reader = reader
        self._q: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._rest = b""
        self._eof = False
        self.digest = hashlib.sha256()
        self.size = 0
        self._thread = threading.Thread(target=self._run, name="layer-decompress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                chunk = self._reader.read(CHUNK)
                if chunk:
                    self.digest.update(chunk)
                    self.size += len(chunk)
                self._put(chunk)
                if not chunk:
                    return
        except BaseException as e:
            self._put(e)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1, /) -> bytes:
        if not self._rest:
            if self._eof:
                return b""
            item = self._q.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return b""
            self._rest = item
        if n is None or n < 0 or n >= len(self._rest):
            out, self._rest = self._rest, b""
            return out
        out, self._rest = self._rest[:n], self._rest[n:]
        return out

    def close(self) -> None:
        """Stop the thread (also when the reader gave up half-way)."""
        self._stop.set()
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


class Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...
    def finish(self) -> None: ...


class _PlainWriter:
    def __init__(self, out: Sink) -> None:
        self._out = out

    def write(self, data: bytes, /) -> int:
        self._out.write(data)
        return len(data)

    def finish(self) -> None:
        pass


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


class _CompressingWriter:
    """Feeds a compressor (zlib's or zstandard's ``compressobj``) into ``out``."""

    def __init__(self, out: Sink, compressor: _Compressor) -> None:
        self._out = out
        self._c = compressor

    def write(self, data: bytes, /) -> int:
        out = self._c.compress(data)
        if out:
            self._out.write(out)
        return len(data)

    def finish(self) -> None:
        self._out.write(self._c.flush())


def compressing(out: Sink, compression: str) -> Writer:
    """A writer that compresses into ``out``; ``finish()`` flushes the last bytes."""
    if compression == NONE:
        return _PlainWriter(out)
    if compression == GZIP:
        return _CompressingWriter(out, zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS))
    if compression == ZSTD:
        import zstandard

        return _CompressingWriter(out, zstandard.ZstdCompressor(level=3).compressobj())
    raise InvalidArgument(
        f"unknown layer compression {compression!r}: want one of {', '.join(COMPRESSIONS)}"
    )
