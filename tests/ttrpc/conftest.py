"""A Python ttrpc server with test handlers, its socket, and clients that are closed
at teardown (handlers still blocked are released first)."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dockyard.errors import FailedPrecondition, NotFound
from dockyard.ttrpc import Client, Context, Error, Server, codes, wire

SERVICE = "dockyard.test.v1.Test"
# Guards the joins and waits that only run long when the code under test is
# broken, so a broken build fails instead of hanging the run.
HANG = 60.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temp dir short enough for unix socket paths (108 bytes at most)."""
    d = Path(tempfile.mkdtemp(prefix="dockyard-ttrpc-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def listen(path: str | Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
        s.listen(16)
    except OSError:
        s.close()
        raise
    return s


@dataclass
class Served:
    """A running Server with the test service; ``release`` unblocks Block calls."""

    server: Server
    path: Path
    thread: threading.Thread
    release: threading.Event = field(default_factory=threading.Event)
    entered: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    contexts: list[Context] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    def connect(
        self,
        address: str | socket.socket | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> Client:
        c = Client(address or str(self.path), on_close=on_close)
        self.clients.append(c)
        return c

    def wait_entered(self, n: int = 1) -> None:
        """Wait until n Block calls are inside their handler."""
        for _ in range(n):
            assert self.entered.acquire(timeout=HANG), "a Block call never reached its handler"


def _handlers(s: Served) -> dict[str, Callable[[bytes, Context], bytes]]:
    def echo(payload: bytes, ctx: Context) -> bytes:
        return payload

    def inspect(payload: bytes, ctx: Context) -> bytes:
        s.contexts.append(ctx)
        return json.dumps(
            {
                "service": ctx.service,
                "method": ctx.method,
                "metadata": ctx.metadata,
                "timeout": ctx.timeout,
                "has_deadline": ctx.deadline is not None,
            }
        ).encode()

    def block(payload: bytes, ctx: Context) -> bytes:
        s.contexts.append(ctx)
        s.entered.release()
        s.release.wait()
        return b"released " + payload

    def fail(payload: bytes, ctx: Context) -> bytes:
        kind = payload.decode()
        if kind == "ttrpc":
            raise Error(codes.FAILED_PRECONDITION, "task is not running", (("t/x", b"\x01"),))
        if kind == "notfound":
            raise NotFound('container "c1": not found')
        if kind == "precondition":
            raise FailedPrecondition('container "c1": already started')
        if kind == "enoent":
            raise FileNotFoundError(2, "No such file or directory", "/nope")
        if kind == "surrogate":
            raise Error(codes.INTERNAL, "bad \ud800 text")
        if kind == "notbytes":
            return "text"  # type: ignore[return-value]
        raise ValueError("something broke")

    def big(payload: bytes, ctx: Context) -> bytes:
        return b"b" * int(payload)

    def shutdown(payload: bytes, ctx: Context) -> bytes:
        s.server.shutdown()
        return b"bye"

    return {
        "Echo": echo,
        "Inspect": inspect,
        "Block": block,
        "Fail": fail,
        "Big": big,
        "Shutdown": shutdown,
    }


@pytest.fixture
def served(short_dir: Path) -> Iterator[Served]:
    server = Server()
    path = short_dir / "ttrpc.sock"
    listener = listen(path)
    s = Served(server, path, server.serve_in_thread(listener))
    server.register(SERVICE, _handlers(s))
    try:
        yield s
    finally:
        s.release.set()
        for c in s.clients:
            c.close()
        server.close()
        s.thread.join(HANG)
        assert not s.thread.is_alive(), "the serve loop did not end on close()"


def raw_connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return s


def raw_response(sock: socket.socket) -> tuple[int, wire.Response]:
    """Read one frame from a raw connection: (stream id, decoded response)."""
    sock.settimeout(HANG)
    got = wire.read_frame(sock)
    assert got is not None, "the server closed the connection"
    stream_id, message_type, _flags, _length, data = got
    assert message_type == wire.TYPE_RESPONSE
    assert data is not None
    return stream_id, wire.decode_response(data)
