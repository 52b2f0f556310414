"""containerd.services.content.v1: blobs by digest, read and written as streams.

Writes go through an *ingest* named by a ref: a ``Write`` stream opens it
(``STAT``), appends to it (``WRITE`` at the current offset) and commits it
(``COMMIT`` with the size and digest expected). An ingest outlives the stream
that wrote to it, so a write cut short can be resumed by opening the same ref
again: the writer starts at the offset the daemon reports. Only one stream
holds a ref at a time.

:meth:`ContentService.write_blob` is the usual way in (the Go client's
``content.WriteBlob``): it resumes a partial ingest of the same ref, and
hashes everything it sends, so content that does not match the expected
digest is refused and its ingest aborted before anything is committed.
"""

from __future__ import annotations

import builtins
import io
import os
import queue
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import IO, Any

import grpc

from dockyard.api.convert import from_timestamp
from dockyard.api.services.content.v1 import content_pb2 as pb
from dockyard.api.services.content.v1 import content_pb2_grpc
from dockyard.client.rpc import Connection, from_grpc
from dockyard.client.wire import field_mask, label_paths
from dockyard.errors import AlreadyExists, InvalidArgument, NotFound, SystemFailure
from dockyard.spec.image import Digester, parse_digest

# Bytes per WRITE message and per read: well under the 16 MiB message limit.
CHUNK = 1 << 20


@dataclass
class Info:
    digest: str
    size: int
    created_at: datetime | None = None
    updated_at: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Status:
    """An ingest in progress: ``offset`` bytes of ``total`` (0: unknown) written."""

    ref: str
    offset: int
    total: int
    expected: str = ""
    started_at: datetime | None = None
    updated_at: datetime | None = None


def _info(msg: pb.Info) -> Info:
    return Info(
        msg.digest,
        msg.size,
        from_timestamp(msg.created_at),
        from_timestamp(msg.updated_at),
        dict(msg.labels),
    )


def _status(msg: pb.Status) -> Status:
    return Status(
        msg.ref,
        msg.offset,
        msg.total,
        msg.expected,
        from_timestamp(msg.started_at),
        from_timestamp(msg.updated_at),
    )


_END = None


class Writer:
    """One ``Write`` stream on ingest ``ref``; opening it resumes what is there.

    ``offset`` is where the next write goes. ``close()`` ends the stream and
    keeps the ingest; ``commit()`` turns it into a blob.
    """

    def __init__(self, conn: Connection, ref: str, *, total: int = 0, expected: str = "") -> None:
        if not ref:
            raise InvalidArgument("content writer: ref must not be empty")
        self._conn = conn
        self.ref = ref
        self._requests: queue.Queue[pb.WriteContentRequest | None] = queue.Queue()
        stub = conn.stub(content_pb2_grpc.ContentStub)
        self._responses = stub.Write(iter(self._requests.get, _END), metadata=conn.metadata())
        self._closed = False
        resp = self._send(
            pb.WriteContentRequest(action=pb.STAT, ref=ref, total=total, expected=expected)
        )
        self.offset: int = resp.offset
        self.total: int = resp.total or total
        self.expected = expected
        self.started_at = from_timestamp(resp.started_at)

    def _send(self, req: pb.WriteContentRequest) -> Any:
        if self._closed:
            raise InvalidArgument(f"content writer {self.ref!r}: closed")
        self._requests.put(req)
        try:
            return next(self._responses)
        except grpc.RpcError as e:
            self._finish()
            raise from_grpc(e, f"write {self.ref!r}") from None
        except StopIteration:
            self._finish()
            raise SystemFailure(f"write {self.ref!r}: the daemon ended the stream") from None

    def status(self) -> Status:
        resp = self._send(pb.WriteContentRequest(action=pb.STAT, ref=self.ref))
        return Status(
            self.ref,
            resp.offset,
            resp.total,
            self.expected,
            from_timestamp(resp.started_at),
            from_timestamp(resp.updated_at),
        )

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` at ``offset``; returns the number of bytes written."""
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            chunk = bytes(view[start : start + CHUNK])
            # Offset 0 on an ingest that has data would truncate it; the
            # daemon only checks non-zero offsets against its own.
            resp = self._send(
                pb.WriteContentRequest(
                    action=pb.WRITE, ref=self.ref, offset=self.offset, data=chunk
                )
            )
            self.offset = resp.offset
        return len(view)

    def truncate(self) -> None:
        """Throw away what the ingest holds: the next write starts at 0."""
        resp = self._send(pb.WriteContentRequest(action=pb.WRITE, ref=self.ref, offset=0))
        self.offset = resp.offset

    def commit(
        self, size: int = 0, expected: str = "", labels: Mapping[str, str] | None = None
    ) -> str:
        """Commit the ingest as a blob of ``size`` bytes and digest ``expected``
        (0 and "": not checked); returns its digest. The stream is closed after."""
        req = pb.WriteContentRequest(
            action=pb.COMMIT,
            ref=self.ref,
            offset=self.offset,
            total=size,
            expected=expected,
            labels=dict(labels or {}),
        )
        try:
            resp = self._send(req)
        finally:
            self.close()
        return str(resp.digest)

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            self._requests.put(_END)

    def close(self) -> None:
        """End the stream; the ingest stays, to be resumed or aborted."""
        if self._closed:
            return
        self._finish()
        # Drain to the end: the daemon lets go of the ref when its handler
        # returns, which is before the stream's final status arrives.
        try:
            for _ in self._responses:
                pass
        except grpc.RpcError:
            pass

    def __enter__(self) -> Writer:
        return self

    def __del__(self) -> None:
        # a writer dropped unclosed must not leave gRPC's request thread waiting
        if not getattr(self, "_closed", True):
            self._finish()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _source_size(source: bytes | IO[bytes]) -> int | None:
    if isinstance(source, bytes | bytearray | memoryview):
        return len(source)
    try:
        st = os.fstat(source.fileno())
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None
    return st.st_size - source.tell() if stat.S_ISREG(st.st_mode) else None


class ContentService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = conn.stub(content_pb2_grpc.ContentStub)

    # -- blobs

    def info(self, digest: str) -> Info:
        return _info(self._conn.call(self._stub.Info, pb.InfoRequest(digest=digest)).info)

    def list(self, *filters: str) -> list[Info]:
        """Blobs matching any filter (``digest==...``, ``labels."k"``), or all."""
        req = pb.ListContentRequest(filters=list(filters))
        return [_info(i) for resp in self._conn.stream(self._stub.List, req) for i in resp.info]

    def update(self, digest: str, labels: Mapping[str, str], fields: Iterable[str] = ()) -> Info:
        """Set the blob's labels (only ``fields`` such as ``labels.<k>`` if given)."""
        req = pb.UpdateRequest(
            info=pb.Info(digest=digest, labels=dict(labels)), update_mask=field_mask(fields)
        )
        return _info(self._conn.call(self._stub.Update, req).info)

    def set_labels(self, digest: str, labels: Mapping[str, str]) -> dict[str, str]:
        """Set these labels (an empty value removes one); the blob's labels after."""
        kept = {k: v for k, v in labels.items() if v}
        return self.update(digest, kept, label_paths(labels)).labels

    def delete(self, digest: str) -> None:
        self._conn.call(self._stub.Delete, pb.DeleteContentRequest(digest=digest))

    def read(self, digest: str, offset: int = 0, size: int = 0) -> Iterator[bytes]:
        """The blob's bytes from ``offset`` (``size`` of them; 0: to the end), in chunks."""
        req = pb.ReadContentRequest(digest=digest, offset=offset, size=size)
        for resp in self._conn.stream(self._stub.Read, req):
            yield resp.data

    def read_bytes(self, digest: str, max_size: int | None = None) -> bytes:
        """The whole blob; InvalidArgument if it is larger than ``max_size``."""
        if max_size is None:
            return b"".join(self.read(digest))
        # One read of at most one byte past the limit: no Info round trip,
        # and the limit holds for the bytes that come, whatever Info said.
        data = b"".join(self.read(digest, size=max_size + 1))
        if len(data) > max_size:
            raise InvalidArgument(f"content {digest}: larger than the {max_size} byte limit")
        return data

    def read_into(self, digest: str, dest: IO[bytes], offset: int = 0) -> int:
        """Copy the blob (from ``offset``) into ``dest``; the number of bytes copied."""
        n = 0
        for chunk in self.read(digest, offset):
            dest.write(chunk)
            n += len(chunk)
        return n

    # -- ingests

    def writer(self, ref: str, *, total: int = 0, expected: str = "") -> Writer:
        """Open (or resume) ingest ``ref``; AlreadyExists if ``expected`` is already a blob."""
        return Writer(self._conn, ref, total=total, expected=expected)

    def status(self, ref: str) -> Status:
        return _status(self._conn.call(self._stub.Status, pb.StatusRequest(ref=ref)).status)

    def list_statuses(self, *filters: str) -> builtins.list[Status]:
        req = pb.ListStatusesRequest(filters=list(filters))
        return [_status(s) for s in self._conn.call(self._stub.ListStatuses, req).statuses]

    def abort(self, ref: str) -> None:
        """Remove ingest ``ref`` and what it holds."""
        self._conn.call(self._stub.Abort, pb.AbortRequest(ref=ref))

    def write_blob(
        self,
        source: bytes | IO[bytes],
        expected: str,
        *,
        ref: str | None = None,
        size: int | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Store ``source`` (bytes, or a binary file read from where it is) as blob ``expected``.

        A blob already there is not written again. A partial ingest of the
        same ref (by default one per digest) is resumed: what it holds is
        read from the source only to be hashed, the rest is sent. If the
        bytes do not hash to ``expected`` (or do not have ``size``), the
        ingest is aborted and InvalidArgument raised; nothing is left.
        Returns the digest.
        """
        algorithm, _ = parse_digest(expected, "write blob: expected")
        ref = ref or f"dockyard-client-{expected}"
        if size is None:
            size = _source_size(source)
        try:
            writer = self.writer(ref, total=size or 0, expected=expected)
        except AlreadyExists:
            return expected
        with writer:
            digester = Digester(algorithm)
            stream: IO[bytes]
            if isinstance(source, bytes | bytearray | memoryview):
                stream = io.BytesIO(bytes(source))
            else:
                stream = source
            # The ingest already has a prefix: hash it from our side (the
            # daemon checks its own bytes against ``expected`` at commit).
            skip = writer.offset
            while skip:
                chunk = stream.read(min(CHUNK, skip))
                if not chunk:
                    writer.close()
                    self._abort_quietly(ref)
                    raise InvalidArgument(
                        f"write blob {expected}: the source is shorter than the"
                        f" {writer.offset} bytes ingest {ref!r} holds"
                    )
                digester.update(chunk)
                skip -= len(chunk)
            written = writer.offset
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                digester.update(chunk)
                writer.write(chunk)
                written += len(chunk)
            actual = digester.digest()
            if actual != expected or (size is not None and written != size):
                writer.close()
                self._abort_quietly(ref)
                raise InvalidArgument(
                    f"write blob {expected}: content has digest {actual} and {written} bytes"
                    + (f", want {size}" if size is not None else "")
                )
            try:
                return writer.commit(written, expected, labels)
            except AlreadyExists:
                return expected

    def _abort_quietly(self, ref: str) -> None:
        try:
            self.abort(ref)
        except NotFound:
            pass
