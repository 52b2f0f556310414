"""HTTP/1.1 with keep-alive connections pooled per origin, on the standard library.

One ``Transport`` is shared by every thread of a registry client: idle
connections wait in a per-origin list and are handed out one request at a
time. A response must be read to its end (``read`` or ``stream``) or closed;
only then does its connection go back to the pool.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass

# Errors that mean "the connection broke", as opposed to an HTTP answer.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    http.client.HTTPException,
    socket.timeout,
    TimeoutError,
    OSError,
)

READ_SIZE = 1 << 20
_MAX_IDLE_PER_ORIGIN = 8


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) url: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class Response:
    """A response whose body has not been read yet."""

    def __init__(
        self,
        transport: Transport,
        origin: Origin,
        conn: http.client.HTTPConnection,
        raw: http.client.HTTPResponse,
        url: str,
        method: str,
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._conn: http.client.HTTPConnection | None = conn
        self.raw = raw
        self.url = url
        self.method = method
        self.status = raw.status
        self.headers = raw.headers

    def header(self, name: str, default: str = "") -> str:
        value = self.headers.get(name)
        return default if value is None else value

    def read(self, limit: int | None = None) -> bytes:
        """The whole body; more than ``limit`` bytes raises ``ValueError``."""
        try:
            if limit is None:
                data = self.raw.read()
            else:
                data = self.raw.read(limit + 1)
                if len(data) > limit:
                    self.close()
                    raise ValueError(f"response body larger than {limit} bytes")
                if not self.raw.isclosed():
                    self.raw.read()
        except BaseException:
            self.close()
            raise
        self._finish()
        return data

    def stream(self, size: int = READ_SIZE) -> Generator[bytes, None, None]:
        """The body in pieces of up to ``size`` bytes; ends early if the peer hangs up."""
        buf = bytearray(size)
        view = memoryview(buf)
        try:
            while True:
                n = self.raw.readinto(buf)
                if not n:
                    break
                yield bytes(view[:n])
        except BaseException:
            self.close()
            raise
        self._finish()

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # A body cut short (length left over) means the peer hung up: never reuse.
        if self.raw.will_close or not self.raw.isclosed() or (self.raw.length or 0) > 0:
            conn.close()
        else:
            self._transport._release(self._origin, conn)

    def close(self) -> None:
        """Drop the connection (the body was not wanted or broke)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Body = bytes | Iterable[bytes] | None


class Transport:
    """Pools connections per origin; ``ssl_context`` is used for every https origin."""

    def __init__(self, ssl_context: ssl.SSLContext, *, timeout: float = 60.0) -> None:
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._idle: dict[Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def _connect(self, origin: Origin) -> http.client.HTTPConnection:
        if origin.scheme == "https":
            return http.client.HTTPSConnection(
                origin.host, origin.port, timeout=self.timeout, context=self.ssl_context
            )
        return http.client.HTTPConnection(origin.host, origin.port, timeout=self.timeout)

    def _acquire(self, origin: Origin) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(origin)
            if idle:
                return idle.pop(), True
        return self._connect(origin), False

    def _release(self, origin: Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < _MAX_IDLE_PER_ORIGIN:
                idle.append(conn)
                return
        conn.close()

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
    ) -> Response:
        """Send one request; a reused connection the server had closed is retried once
        on a fresh one (only when the body can be sent again)."""
        origin = Origin.of(url)
        parts = urllib.parse.urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        hdrs = {"Host": origin.netloc, "User-Agent": "dockyard"}
        hdrs.update(headers or {})
        if body is None and method in ("POST", "PUT", "PATCH"):
            hdrs.setdefault("Content-Length", "0")
        elif isinstance(body, bytes):
            hdrs["Content-Length"] = str(len(body))
        replayable = body is None or isinstance(body, bytes)
        while True:
            conn, reused = self._acquire(origin)
            try:
                conn.request(method, target, body=body, headers=hdrs)
                raw = conn.getresponse()
            except CONNECTION_ERRORS:
                conn.close()
                if reused and replayable:
                    continue
                raise
            except BaseException:
                conn.close()  # e.g. the body's iterator failed half-way
                raise
            if method == "HEAD":
                raw.read()
            return Response(self, origin, conn, raw, url, method)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
