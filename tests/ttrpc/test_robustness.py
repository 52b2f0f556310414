"""dockyard's ttrpc against peers that misbehave, and against a host out of threads."""

from __future__ import annotations

import json
import os
import socket
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.ttrpc import Client, ConnectionClosed, Error, codes, wire
from dockyard.ttrpc import client as client_module
from dockyard.ttrpc import server as server_module
from tests.ttrpc.conftest import HANG, SERVICE, Served, listen, raw_connect, raw_response
from tests.ttrpc.test_client_server import CallThread


def _threading_failing(prefix: str, times: int = 1) -> types.SimpleNamespace:
    """The threading module, but starting a thread whose name starts with prefix
    fails ``times`` times, as it does when the process is out of threads."""
    left = [times]

    class Thread(threading.Thread):
        def start(self) -> None:
            if self.name.startswith(prefix) and left[0] > 0:
                left[0] -= 1
                raise RuntimeError("can't start new thread")
            super().start()

    return types.SimpleNamespace(**{**vars(threading), "Thread": Thread})


def _request(stream_id: int, method: str, payload: bytes = b"") -> bytes:
    return wire.frame(
        stream_id, wire.TYPE_REQUEST, wire.encode_request(wire.Request(SERVICE, method, payload))
    )


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def silent_listener(short_dir: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A listening socket nobody serves: the test plays the server."""
    path = short_dir / "fake.sock"
    with listen(path) as listener:
        yield path, listener


# --- server -------------------------------------------------------------------


def test_no_thread_for_a_connection_does_not_stop_the_server(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "threading", _threading_failing("ttrpc-conn"))
    with raw_connect(served.path) as s:
        # That connection is closed unserved...
        s.settimeout(HANG)
        assert s.recv(1) == b""
    # ...and the server goes on accepting (close() at teardown must not hang either).
    assert served.connect().call(SERVICE, "Echo", b"next") == b"next"


def test_no_thread_for_a_request_answers_it_and_keeps_the_connection(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "threading", _threading_failing("ttrpc "))
    with raw_connect(served.path) as s:
        s.sendall(_request(1, "Echo", b"first"))
        stream_id, resp = raw_response(s)
        assert (stream_id, resp.code) == (1, codes.RESOURCE_EXHAUSTED)
        s.sendall(_request(3, "Echo", b"second"))
        stream_id, resp = raw_response(s)
        assert (stream_id, resp.code, resp.payload) == (3, codes.OK, b"second")


def test_requests_in_flight_on_a_connection_are_bounded(served: Served) -> None:
    served.server.max_active_requests = 2
    c = served.connect()
    blocked = [CallThread(c, "Block", b"%d" % i) for i in range(2)]
    served.wait_entered(2)
    # A third is refused at once rather than given a thread of its own.
    with pytest.raises(Error) as err:
        c.call(SERVICE, "Echo", b"third")
    assert err.value.code == codes.RESOURCE_EXHAUSTED
    # Another connection has its own allowance.
    assert served.connect().call(SERVICE, "Echo", b"other") == b"other"
    served.release.set()
    for t in blocked:
        assert t.finish().error is None
    assert c.call(SERVICE, "Echo", b"again") == b"again"


def test_shutdown_runs_no_request_that_arrives_after_it(served: Served) -> None:
    c = served.connect()
    busy = CallThread(c, "Block", b"busy")
    served.wait_entered()
    served.server.shutdown()
    # Sent after shutdown(): not run (as Go's server, which stops reading), so a
    # client that keeps calls in flight cannot hold a draining connection open.
    late = CallThread(c, "Inspect")
    late.join(0.3)
    assert late.is_alive(), f"a request sent after shutdown() was answered: {late.result!r}"
    served.release.set()
    assert busy.finish().result == b"released busy"
    assert isinstance(late.finish().error, ConnectionClosed)
    assert [ctx.method for ctx in served.contexts] == ["Block"]
    assert served.server.wait(HANG)


# --- client -------------------------------------------------------------------


def test_call_timeout_bounds_a_send_to_a_server_that_does_not_read(
    silent_listener: tuple[Path, socket.socket],
) -> None:
    path, listener = silent_listener
    with Client(str(path)) as c:
        conn, _ = listener.accept()
        with conn:
            # Far more than the socket buffers take: the send blocks on this server.
            t = CallThread(c, "Echo", b"x" * (3 << 20), timeout=0.3)
            t.join(10)
            assert not t.is_alive(), "the call's send ignored its timeout"
            assert isinstance(t.error, Error)
            assert t.error.code == codes.DEADLINE_EXCEEDED
            # Part of that frame went out, so the stream cannot go on: the client
            # ended the connection, and later calls fail at once.
            with pytest.raises(ConnectionClosed):
                c.call(SERVICE, "Echo", b"next", timeout=HANG)


def test_call_timeout_bounds_the_wait_for_another_calls_send(
    silent_listener: tuple[Path, socket.socket],
) -> None:
    path, listener = silent_listener
    with Client(str(path)) as c:
        conn, _ = listener.accept()
        with conn:
            stuck = CallThread(c, "Echo", b"x" * (3 << 20))  # no timeout: sends until close
            # The second call waits for the first one's send, but no longer than its timeout.
            t = CallThread(c, "Echo", b"y", timeout=0.3)
            t.join(10)
            assert not t.is_alive(), "the call waited for another's send past its timeout"
            assert isinstance(t.error, Error)
            assert t.error.code == codes.DEADLINE_EXCEEDED
            c.close()
            assert isinstance(stuck.finish().error, ConnectionClosed)


def test_stream_ids_of_pending_calls_are_not_reused_after_wrapping(
    silent_listener: tuple[Path, socket.socket],
) -> None:
    path, listener = silent_listener
    with Client(str(path)) as c:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(HANG)
            first = CallThread(c, "Wait")
            got = wire.read_frame(conn)
            assert got is not None and got[0] == 1
            # Billions of calls later the ids wrap while the first one still waits.
            c._next_id = 0xFFFFFFFD
            calls = [first]
            ids = []
            for _ in range(2):
                calls.append(CallThread(c, "Echo"))
                got = wire.read_frame(conn)
                assert got is not None
                ids.append(got[0])
            assert ids[0] == 0xFFFFFFFD and ids[1] not in (1, 0xFFFFFFFD), ids
            for stream_id, payload in zip([1, *ids], [b"a", b"b", b"c"], strict=True):
                answer = wire.encode_response(wire.Response(payload=payload))
                conn.sendall(wire.frame(stream_id, wire.TYPE_RESPONSE, answer))
            assert [t.finish().result for t in calls] == [b"a", b"b", b"c"]


def test_no_reader_thread_leaves_no_socket_open(
    silent_listener: tuple[Path, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _listener = silent_listener  # connects are queued, never accepted: no fd here
    monkeypatch.setattr(client_module, "threading", _threading_failing("ttrpc-client"))
    before = _open_fds()
    with pytest.raises(Error) as err:
        Client(str(path))
    assert err.value.code == codes.RESOURCE_EXHAUSTED
    assert _open_fds() <= before


def test_timeouts_too_long_for_the_clocks_work(served: Served) -> None:
    c = served.connect()
    # Past int64 nanoseconds and threading.TIMEOUT_MAX: the server sees the
    # longest timeout the wire carries (Go saturates a Duration so), not a
    # wrapped-around negative one, and the wait here is as long as it can be.
    seen = json.loads(c.call(SERVICE, "Inspect", b"", timeout=1e10))
    assert seen["timeout"] == pytest.approx(((1 << 63) - 1) / 1e9)
    assert c.call(SERVICE, "Echo", b"ok", timeout=1e300) == b"ok"


def test_a_long_timeout_send_to_a_server_that_does_not_read_ends_on_close(
    silent_listener: tuple[Path, socket.socket],
) -> None:
    path, listener = silent_listener
    with Client(str(path)) as c:
        conn, _ = listener.accept()
        with conn:
            # 116 days: more milliseconds than poll() takes.
            t = CallThread(c, "Echo", b"x" * (3 << 20), timeout=1e7)
            t.join(0.3)
            assert t.is_alive() and t.error is None, t.error
            c.close()
            assert isinstance(t.finish().error, ConnectionClosed), t.error
