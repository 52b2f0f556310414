"""A ttrpc server: services of raw-payload handlers, served on unix sockets.

Behaviour follows Go's ttrpc 1.1 (the one containerd 1.6 vendors) where a
client can see it: each request runs concurrently with the others on its
connection (the shim's Wait blocks until its process exits), an unknown
service or method is UNIMPLEMENTED, a request on an even stream id or one
that does not decode is INVALID_ARGUMENT, a frame over 4 MiB is
RESOURCE_EXHAUSTED and frames of other types are ignored. Where Go would
drop the connection (a response over 4 MiB) this answers RESOURCE_EXHAUSTED
on the stream instead.

One thread reads each connection and one thread runs each request (at most
max_active_requests at once on a connection); responses are written whole
under the connection's write lock.
"""

from __future__ import annotations

import _socket  # not socket: see wire.py
import errno
import os
import select
import struct
import sys
import threading
import time
from collections.abc import Callable

from dockyard.errors import AlreadyExists
from dockyard.ttrpc import codes, wire
from dockyard.ttrpc.status import Error, status_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    class _Message(Protocol):
        def SerializeToString(self) -> bytes: ...

    class _MessageClass(Protocol):
        def FromString(self, s: bytes) -> Any: ...


class Context:
    """What a handler knows about its request besides the payload.

    ``metadata`` maps each key to its values in arrival order (keys as sent;
    Go clients send them lowercased). ``timeout`` is the seconds the client
    gave the call (0.0 if its deadline had already passed), None without
    one; ``deadline`` is the same instant on ``time.monotonic()``'s clock.
    The server does not cut a handler off at the deadline: a handler that
    can give up early checks it.
    """

    __slots__ = ("deadline", "metadata", "method", "service", "timeout")

    def __init__(
        self,
        service: str,
        method: str,
        metadata: dict[str, list[str]] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.service = service
        self.method = method
        self.metadata = metadata if metadata is not None else {}
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout if timeout is not None else None

    def get(self, key: str) -> str | None:
        """The first value of a metadata key, looked up as Go's MD.Get does (lowercased)."""
        values = self.metadata.get(key.lower())
        return values[0] if values else None


Handler = Callable[[bytes, Context], bytes]

# Calls running at once on one connection. Go's server has no bound (a
# goroutine each); a thread costs far more, and a peer that floods requests
# or stops reading its answers must not exhaust the process's threads. Far
# more than containerd has in flight on a shim (a Wait per process, and a
# few calls besides).
MAX_ACTIVE_REQUESTS = 1024

# Accept errors that say "try again later" (Go's Temporary() ones): back off.
_ACCEPT_BACKOFF_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


class Server:
    """Serves registered services on any number of listening unix sockets."""

    def __init__(
        self, *, require_same_user: bool = False, max_active_requests: int = MAX_ACTIVE_REQUESTS
    ) -> None:
        """``require_same_user`` refuses peers whose effective uid or gid differ
        from this process's (SO_PEERCRED), as containerd's shims do: their
        sockets may be abstract, where file permissions do not apply.

        ``max_active_requests`` bounds the calls running at once on one
        connection, each in its own thread; past it a request is answered
        RESOURCE_EXHAUSTED at once."""
        self._require_same_user = require_same_user
        self.max_active_requests = max_active_requests
        self._services: dict[str, dict[str, Handler]] = {}
        self._lock = threading.Lock()
        # Signalled whenever a connection or a serve loop ends.
        self._changed = threading.Condition(self._lock)
        self._connections: set[_Connection] = set()
        self._wakers: set[int] = set()  # write ends of the serve loops' wake-up pipes
        self._serving = 0
        self._shutting_down = False

    # --- registration -------------------------------------------------------

    def register(self, service: str, methods: dict[str, Handler]) -> None:
        """Add methods to a service (e.g. ``containerd.task.v2.Task``)."""
        with self._lock:
            known = self._services.setdefault(service, {})
            for name in methods:
                if name in known:
                    raise AlreadyExists(
                        f"register ttrpc method {service}/{name}: already registered"
                    )
            known.update(methods)

    def register_typed(
        self,
        service: str,
        methods: dict[str, tuple[_MessageClass, Callable[[Any, Context], _Message]]],
    ) -> None:
        """Register handlers of decoded messages: ``{method: (RequestClass, handler)}``.

        Any class with ``FromString`` works as RequestClass (generated
        protobuf messages do), and the handler returns anything with
        ``SerializeToString``; this module itself never imports protobuf.
        """
        self.register(
            service,
            {name: _typed(service, name, cls, fn) for name, (cls, fn) in methods.items()},
        )

    # --- serving ------------------------------------------------------------

    def serve(self, listener: _socket.socket) -> None:
        """Accept connections on a listening socket until shutdown() or close().

        The listener is closed when this returns (as Go's Serve does);
        removing a socket file is left to whoever bound it.
        """
        wake_r, wake_w = os.pipe()
        with self._lock:
            if self._shutting_down:
                os.close(wake_r)
                os.close(wake_w)
                listener.close()
                return
            self._wakers.add(wake_w)
            self._serving += 1
        try:
            self._accept_loop(listener, wake_r)
        finally:
            with self._lock:
                self._wakers.discard(wake_w)
                self._serving -= 1
                self._changed.notify_all()
            os.close(wake_r)
            os.close(wake_w)
            listener.close()

    def serve_in_thread(self, listener: _socket.socket) -> threading.Thread:
        """serve() in a daemon thread, which is returned started."""
        t = threading.Thread(target=self.serve, args=(listener,), name="ttrpc-serve", daemon=True)
        t.start()
        return t

    def _accept_loop(self, listener: _socket.socket, wake_r: int) -> None:
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        poller.register(listener, select.POLLIN)
        backoff = 0.0
        while True:
            if backoff:
                # Out of fds or memory: wait (for the wake-up pipe only), then retry.
                poller.unregister(listener)
                ready = poller.poll(backoff * 1000)
                poller.register(listener, select.POLLIN)
            else:
                ready = poller.poll()
            if self._shutting_down or any(fd == wake_r for fd, _ in ready):
                return
            try:
                # socket.socket.accept() is this plus a wrapper object.
                fd, _ = listener._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as e:
                if e.errno not in _ACCEPT_BACKOFF_ERRNOS:
                    raise
                backoff = min(max(backoff * 2, 0.005), 1.0)
                continue
            backoff = 0.0
            conn = _socket.socket(fileno=fd)
            conn.setblocking(True)
            if not self._add_connection(conn):
                # Out of threads: as short of resources as EMFILE, so back off too.
                backoff = 0.005

    def _add_connection(self, sock: _socket.socket) -> bool:
        """False if no thread could be started for it (it is closed then)."""
        if self._require_same_user and not _same_user(sock):
            sock.close()
            return True
        c = _Connection(self, sock)
        with self._lock:
            if self._shutting_down:
                sock.close()
                return True
            self._connections.add(c)
        try:
            threading.Thread(target=c.run, name="ttrpc-conn", daemon=True).start()
        except RuntimeError:  # "can't start new thread"
            # Not served: it must not stay known (wait() would wait for it forever).
            sock.close()
            self._forget(c)
            _warn("ttrpc: refused a connection: no thread to serve it")
            return False
        return True

    def _forget(self, c: _Connection) -> None:
        with self._lock:
            self._connections.discard(c)
            self._changed.notify_all()

    # --- stopping -----------------------------------------------------------

    def _stop_accepting(self) -> list[_Connection]:
        with self._lock:
            self._shutting_down = True
            for w in self._wakers:
                try:
                    os.write(w, b"x")
                except OSError:
                    pass
            return list(self._connections)

    def shutdown(self) -> None:
        """Stop accepting; close each connection once its in-flight calls are answered.

        It does not wait (a handler may call it, as the shim's Shutdown
        does): wait() does. Idle connections close at once; a connection
        with a call still running closes after writing that call's response.
        Requests that arrive after it are not run.
        """
        for c in self._stop_accepting():
            c.drain()

    def close(self) -> None:
        """Stop accepting and close every connection now, in-flight calls or not.

        Returns once the serve loops and connection readers have ended.
        Handlers still running finish in their threads; their responses go
        nowhere.
        """
        for c in self._stop_accepting():
            c.hang_up()
        self.wait()

    def wait(self, timeout: float | None = None) -> bool:
        """After shutdown() or close(): block until every serve loop and connection ended.

        True if they did, False on timeout. Do not call it from a handler
        after shutdown(): the handler's own connection waits for it.
        """
        with self._lock:
            return self._changed.wait_for(
                lambda: not self._connections and not self._serving, timeout
            )

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- dispatch -----------------------------------------------------------

    def _call(self, req: wire.Request) -> wire.Response:
        methods = self._services.get(req.service)
        if methods is None:
            return wire.Response(codes.UNIMPLEMENTED, f"service {req.service}")
        handler = methods.get(req.method)
        if handler is None:
            return wire.Response(codes.UNIMPLEMENTED, f"method {req.method}")
        metadata: dict[str, list[str]] = {}
        for key, value in req.metadata:
            metadata.setdefault(key, []).append(value)
        timeout = None
        if req.timeout_nano:
            timeout = max(req.timeout_nano, 0) / 1e9
        try:
            payload = handler(req.payload, Context(req.service, req.method, metadata, timeout))
            if not isinstance(payload, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"ttrpc handler {req.service}/{req.method} returned "
                    f"{type(payload).__name__}, not bytes"
                )
            return wire.Response(payload=bytes(payload))
        except BaseException as e:  # the server answers every call, whatever happened
            code, message, details = status_of(e)
            if not isinstance(e, Error) and code == codes.UNKNOWN:
                _report(req, e)
            return wire.Response(code, message, details=details)


_UCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid


def _same_user(sock: _socket.socket) -> bool:
    try:
        raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return False
    _pid, uid, gid = _UCRED.unpack(raw)
    if uid == os.geteuid() and gid == os.getegid():
        return True
    _warn(f"ttrpc: refused a connection from uid {uid} gid {gid}: not this process's user")
    return False


def _warn(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except Exception:  # no usable stderr
        pass


def _report(req: wire.Request, e: BaseException) -> None:
    """A handler failed in a way nobody planned: leave its traceback on stderr."""
    import traceback

    try:
        sys.stderr.write(f"ttrpc: {req.service}/{req.method} failed unexpectedly:\n")
        traceback.print_exception(e, file=sys.stderr)
        sys.stderr.flush()
    except Exception:  # no usable stderr: the caller still gets the status
        pass


def _typed(
    service: str,
    method: str,
    cls: _MessageClass,
    fn: Callable[[Any, Context], _Message],
) -> Handler:
    def handle(payload: bytes, ctx: Context) -> bytes:
        try:
            request = cls.FromString(payload)
        except Exception as e:
            raise Error(codes.INVALID_ARGUMENT, f"decode {service}/{method} request: {e}") from e
        return fn(request, ctx).SerializeToString()

    return handle


class _Connection:
    """One accepted connection: a reader thread and a thread per request."""

    def __init__(self, server: Server, sock: _socket.socket) -> None:
        self.server = server
        self.sock = sock
        # Held for a whole frame write, so frames never interleave; the
        # socket is closed under it too, so no write reaches a reused fd.
        self.write_lock = threading.Lock()
        self.lock = threading.Lock()  # active, draining, closed
        self.active = 0
        self.draining = False
        self.closed = False

    def run(self) -> None:
        try:
            self._read_loop()
        except OSError:
            pass  # reset by the peer, or hung up by close()
        finally:
            # A write blocked on a peer that stopped reading must fail before
            # the write lock can be had.
            self.hang_up()
            with self.write_lock, self.lock:
                self.closed = True
                self.sock.close()
            self.server._forget(self)

    def _read_loop(self) -> None:
        while True:
            got = wire.read_frame(self.sock)
            if got is None:
                return
            stream_id, message_type, _flags, length, data = got
            if data is None:
                # Oversized: answered on its stream whatever its type, as Go does.
                self._send_status(
                    stream_id, codes.RESOURCE_EXHAUSTED, wire.oversized_message(length)
                )
                continue
            if message_type != wire.TYPE_REQUEST:
                continue  # ignored for forward compatibility, as Go's server does
            try:
                req = wire.decode_request(data)
            except wire.DecodeError as e:
                self._send_status(stream_id, codes.INVALID_ARGUMENT, f"unmarshal request: {e}")
                continue
            if stream_id % 2 != 1:
                self._send_status(
                    stream_id,
                    codes.INVALID_ARGUMENT,
                    "stream id must be odd for client initiated streams",
                )
                continue
            with self.lock:
                if self.draining:
                    # After shutdown() no new call runs, as Go's server stops
                    # reading then: the connection may already be hung up (the
                    # answer would be lost), and calls kept coming must not
                    # hold it open. The caller sees the connection close.
                    continue
                full = self.active >= self.server.max_active_requests
                if not full:
                    self.active += 1
            if full:
                self._send_status(
                    stream_id,
                    codes.RESOURCE_EXHAUSTED,
                    f"too many requests in flight on this connection "
                    f"({self.server.max_active_requests})",
                )
                continue
            try:
                threading.Thread(
                    target=self._handle,
                    args=(stream_id, req),
                    name=f"ttrpc {req.service}/{req.method}",
                    daemon=True,
                ).start()
            except RuntimeError:  # "can't start new thread": answered, not run
                self._send_status(
                    stream_id, codes.RESOURCE_EXHAUSTED, "no thread to run the request"
                )
                self._finished()

    def _handle(self, stream_id: int, req: wire.Request) -> None:
        try:
            try:
                data = wire.encode_response(self.server._call(req))
            except BaseException as e:  # never leave the caller waiting for an answer
                data = wire.encode_response(
                    wire.Response(
                        codes.INTERNAL,
                        f"ttrpc: answer {req.service}/{req.method}: {type(e).__name__}",
                    )
                )
            self._send(stream_id, data)
        finally:
            self._finished()

    def _finished(self) -> None:
        """A request is no longer active: the last one of a draining connection ends it."""
        with self.lock:
            self.active -= 1
            idle = self.draining and self.active == 0
        if idle:
            self.hang_up()

    def _send_status(self, stream_id: int, code: int, message: str) -> None:
        self._send(stream_id, wire.encode_response(wire.Response(code, message)))

    def _send(self, stream_id: int, data: bytes) -> None:
        if len(data) > wire.MESSAGE_LENGTH_MAX:
            data = wire.encode_response(
                wire.Response(codes.RESOURCE_EXHAUSTED, wire.oversized_message(len(data)))
            )
        with self.write_lock:
            if self.closed:
                return
            try:
                self.sock.sendall(wire.frame(stream_id, wire.TYPE_RESPONSE, data))
            except OSError:
                pass  # the peer is gone; the reader sees that and ends the connection

    def drain(self) -> None:
        with self.lock:
            self.draining = True
            idle = self.active == 0
        if idle:
            self.hang_up()

    def hang_up(self) -> None:
        """Wake the reader (and any blocked write) so the connection ends."""
        with self.lock:
            if not self.closed:
                try:
                    self.sock.shutdown(_socket.SHUT_RDWR)
                except OSError:
                    pass
