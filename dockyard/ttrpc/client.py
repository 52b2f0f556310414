"""A ttrpc client: concurrent unary calls multiplexed over one unix socket.

Calls take odd stream ids (1, 3, 5, ...) as ttrpc's client-initiated
streams must; one reader thread hands each response to the call waiting on
its stream id. When the connection ends, every pending call fails at once
with ConnectionClosed, and so does every later call.
"""

from __future__ import annotations

import _socket  # not socket: see wire.py
import select
import threading
import time
from collections.abc import Callable

from dockyard.errors import InvalidArgument
from dockyard.ttrpc import codes, wire
from dockyard.ttrpc.status import ConnectionClosed, Error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol, TypeVar

    _R = TypeVar("_R", covariant=True)

    class _Message(Protocol):
        def SerializeToString(self) -> bytes: ...

    class _MessageClass(Protocol[_R]):
        def FromString(self, s: bytes) -> _R: ...


def socket_address(address: str) -> str:
    """The AF_UNIX address of "unix:///path", "/path", "unix://@name" or "@name".

    containerd 1.6's shims print "unix:///run/containerd/s/<hash>" (a file);
    a leading "@" names an abstract socket, as Go's net package spells it.
    """
    path = address.removeprefix("unix://")
    if "://" in path:
        raise InvalidArgument(f"ttrpc address {address!r}: only unix sockets are supported")
    if not path:
        raise InvalidArgument("ttrpc address is empty")
    if path.startswith("@"):
        return "\0" + path[1:]
    return path


_INT64_MAX = (1 << 63) - 1
# The longest a poll() takes (its milliseconds are a C int); longer waits loop.
_POLL_MAX = 86400.0


def _wait_time(deadline: float, most: float) -> float:
    """Seconds left until the deadline, from 0 to ``most``: a timeout of years
    must not overflow what a lock or poll() takes."""
    return min(max(deadline - time.monotonic(), 0.0), most)


class _Call:
    """One call waiting for its response; ``done`` is released when it has one."""

    __slots__ = ("done", "error", "response")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.response: wire.Response | None = None
        self.error: Error | None = None


class Client:
    """A connection to a ttrpc server; safe to share between threads.

    ``address`` is "unix:///path", "/path", "unix://@abstract" or an already
    connected socket (the client takes it over). With ``connect_timeout``
    the connect never blocks longer than that; on a unix socket whose server
    stopped accepting and whose backlog is full it then fails at once
    ("resource temporarily unavailable"), as Go's dialer does, where a plain
    connect would wait for a free slot.

    ``on_close`` runs once, in the reader thread, when the connection has
    ended (the supervisor learns this way that a shim went away). Close the
    client when done with it: its reader thread keeps it alive until then.
    """

    def __init__(
        self,
        address: str | _socket.socket,
        *,
        connect_timeout: float | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if isinstance(address, str):
            self.address = address
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            try:
                sock.settimeout(connect_timeout)
                sock.connect(socket_address(address))
                sock.settimeout(None)
            except OSError as e:
                sock.close()
                raise Error(
                    codes.UNAVAILABLE,
                    f"connect to ttrpc server {address}: {(e.strerror or str(e)).lower()}",
                ) from e
        else:
            sock = address
            self.address = f"fd {sock.fileno()}"
            sock.setblocking(True)
        self._sock = sock
        self._on_close = on_close
        # Guards _pending, _next_id, _closed and the socket's close/shutdown.
        self._lock = threading.Lock()
        # Held for a whole frame write so frames never interleave.
        self._write_lock = threading.Lock()
        self._pending: dict[int, _Call] = {}
        self._next_id = 1
        self._closed: str | None = None  # why the connection ended, once it has
        self._sock_closed = False
        self._reader = threading.Thread(target=self._read_loop, name="ttrpc-client", daemon=True)
        try:
            self._reader.start()
        except RuntimeError as e:  # "can't start new thread": the socket must not leak
            sock.close()
            raise Error(
                codes.RESOURCE_EXHAUSTED, f"ttrpc client {self.address}: no thread to read: {e}"
            ) from e

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        metadata: dict[str, str | list[str]] | None = None,
    ) -> bytes:
        """Call service/method with a raw payload; the response payload, or Error.

        ``timeout`` (seconds) goes to the server as the request's timeout
        and bounds the wait here: past it the call fails with
        DEADLINE_EXCEEDED (a late response is dropped). Metadata keys are
        lowercased, as Go's ttrpc.MD does.
        """
        where = f"ttrpc {service}/{method}"
        if timeout is not None and timeout <= 0:
            raise Error(codes.DEADLINE_EXCEEDED, f"{where}: deadline exceeded before the call")
        deadline = None if timeout is None else time.monotonic() + timeout
        pairs: list[tuple[str, str]] = []
        for key, values in (metadata or {}).items():
            for value in [values] if isinstance(values, str) else values:
                pairs.append((key.lower(), value))
        data = wire.encode_request(
            wire.Request(
                service,
                method,
                payload,
                # int64 nanoseconds, saturated as Go's Duration arithmetic is.
                int(min(timeout * 1e9, _INT64_MAX)) if timeout is not None else 0,
                pairs,
            )
        )
        if len(data) > wire.MESSAGE_LENGTH_MAX:
            # Refused here, as newer Go clients do, rather than have the
            # server read and drop 4 MiB.
            raise Error(codes.RESOURCE_EXHAUSTED, f"{where}: {wire.oversized_message(len(data))}")

        call = _Call()
        with self._lock:
            if self._closed is not None:
                raise ConnectionClosed(f"{where}: {self._closed}")
            # Odd ids only; wrap before the uint32 runs out, past the ids of
            # calls still waiting (a Wait may outlive billions of calls):
            # sharing one would give its answer to the wrong call.
            stream_id = self._next_id
            while True:
                self._next_id = stream_id + 2 if stream_id < 0xFFFFFFFF - 2 else 1
                if stream_id not in self._pending:
                    break
                stream_id = self._next_id
            self._pending[stream_id] = call
        message = wire.frame(stream_id, wire.TYPE_REQUEST, data)
        try:
            if deadline is None:
                with self._write_lock:
                    self._sock.sendall(message)
            elif not self._send_by(message, deadline):
                with self._lock:
                    self._pending.pop(stream_id, None)
                raise Error(
                    codes.DEADLINE_EXCEEDED,
                    f"{where}: deadline exceeded after {timeout}s, before the request was sent",
                )
        except OSError as e:
            with self._lock:
                self._pending.pop(stream_id, None)
                reason = self._closed or (e.strerror or str(e)).lower()
            raise ConnectionClosed(f"{where}: {reason}") from e

        left = -1.0 if deadline is None else _wait_time(deadline, threading.TIMEOUT_MAX)
        if not call.done.acquire(timeout=left):
            with self._lock:
                gave_up = self._pending.pop(stream_id, None) is not None
            if gave_up:
                raise Error(codes.DEADLINE_EXCEEDED, f"{where}: deadline exceeded after {timeout}s")
            call.done.acquire()  # the answer came as the time ran out: take it

        if call.error is not None:
            if isinstance(call.error, ConnectionClosed):
                raise ConnectionClosed(f"{where}: {call.error.message}")
            raise call.error
        resp = call.response
        assert resp is not None
        if resp.code != codes.OK:
            raise Error(resp.code, resp.message, resp.details)
        return resp.payload

    def _send_by(self, message: bytes, deadline: float) -> bool:
        """Write a whole frame before the deadline (time.monotonic()); False if
        it could not be, OSError if the connection failed.

        A server that stops reading, or another call's send stuck on it,
        must not hold a call past its deadline, as a blocking send would. A
        frame cut off part way leaves nothing the server could read after
        it, so the connection is ended then and every call fails.
        """
        if not self._write_lock.acquire(timeout=_wait_time(deadline, threading.TIMEOUT_MAX)):
            return False
        try:
            view = memoryview(message)
            sent = 0
            poller = None
            while sent < len(message):
                try:
                    sent += self._sock.send(view[sent:], _socket.MSG_DONTWAIT)
                    continue
                except BlockingIOError:
                    pass
                left = _wait_time(deadline, _POLL_MAX)
                if left <= 0:
                    break
                if poller is None:
                    poller = select.poll()
                    poller.register(self._sock.fileno(), select.POLLOUT)
                poller.poll(left * 1000)
            else:
                return True
            if sent:
                self._end("a request was cut off by its deadline")
            return False
        finally:
            self._write_lock.release()

    def call_typed(
        self,
        service: str,
        method: str,
        request: _Message,
        response_class: _MessageClass[_R],
        *,
        timeout: float | None = None,
        metadata: dict[str, str | list[str]] | None = None,
    ) -> _R:
        """call() with messages: anything with SerializeToString in, response_class out."""
        payload = self.call(
            service, method, request.SerializeToString(), timeout=timeout, metadata=metadata
        )
        try:
            return response_class.FromString(payload)
        except Exception as e:
            raise Error(codes.INTERNAL, f"decode ttrpc {service}/{method} response: {e}") from e

    def close(self) -> None:
        """End the connection; pending calls fail with ConnectionClosed. Idempotent."""
        self._end("client closed")
        if threading.current_thread() is not self._reader:
            self._reader.join()

    def _end(self, reason: str) -> None:
        """Mark the connection ended (for ``reason``, unless it already was) and
        shut the socket down: the reader then fails every pending call."""
        with self._lock:
            if self._closed is None:
                self._closed = reason
            if not self._sock_closed:
                try:
                    self._sock.shutdown(_socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_loop(self) -> None:
        reason = "connection closed by the server"
        try:
            while True:
                got = wire.read_frame(self._sock)
                if got is None:
                    break
                self._dispatch(*got)
        except OSError as e:
            reason = f"connection lost: {(e.strerror or str(e)).lower()}"
        finally:
            with self._lock:
                if self._closed is None:
                    self._closed = reason
                reason = self._closed
                pending = list(self._pending.values())
                self._pending.clear()
            for call in pending:
                call.error = ConnectionClosed(reason)
                call.done.release()
            # Unblock a write stuck on a server that stopped reading, then close.
            with self._lock:
                try:
                    self._sock.shutdown(_socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._write_lock, self._lock:
                self._sock_closed = True
                self._sock.close()
            if self._on_close is not None:
                try:
                    self._on_close()
                except Exception:
                    pass

    def _dispatch(
        self, stream_id: int, message_type: int, _flags: int, length: int, data: bytes | None
    ) -> None:
        with self._lock:
            call = self._pending.pop(stream_id, None)
        if call is None:
            return  # the answer to a call that timed out, or a stray frame
        if data is None:
            call.error = Error(codes.RESOURCE_EXHAUSTED, wire.oversized_message(length))
        elif message_type != wire.TYPE_RESPONSE:
            call.error = Error(codes.INTERNAL, f"unknown message type {message_type} received")
        else:
            try:
                call.response = wire.decode_response(data)
            except wire.DecodeError as e:
                call.error = Error(codes.INTERNAL, f"unmarshal response: {e}")
        call.done.release()
