"""dockyard's ttrpc client against dockyard's ttrpc server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from dockyard.api.runtime.task.v2 import shim_pb2
from dockyard.errors import AlreadyExists, DockyardError, InvalidArgument
from dockyard.ttrpc import Client, ConnectionClosed, Context, Error, Server, codes, wire
from tests.ttrpc.conftest import HANG, SERVICE, Served, listen, raw_connect, raw_response


class CallThread(threading.Thread):
    """A call made in its own thread; ``result`` or ``error`` once joined."""

    def __init__(
        self, client: Client, method: str, payload: bytes = b"", timeout: float | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.client, self.method, self.payload, self.timeout = client, method, payload, timeout
        self.result: bytes | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.client.call(SERVICE, self.method, self.payload, timeout=self.timeout)
        except BaseException as e:
            self.error = e

    def finish(self) -> CallThread:
        self.join(HANG)
        assert not self.is_alive(), f"call {self.method} hangs"
        return self


def test_call_round_trip(served: Served) -> None:
    c = served.connect()
    assert c.call(SERVICE, "Echo", b"hello\x00world") == b"hello\x00world"
    assert c.call(SERVICE, "Echo", b"") == b""


def test_metadata_and_timeout_reach_the_handler(served: Served) -> None:
    c = served.connect()
    seen = json.loads(
        c.call(
            SERVICE,
            "Inspect",
            b"",
            timeout=30,
            metadata={"Containerd-Namespace-TTRPC": "default", "multi": ["a", "b"]},
        )
    )
    assert seen == {
        "service": SERVICE,
        "method": "Inspect",
        # Keys lowercased on the way out, as Go's ttrpc.MD does; values in order.
        "metadata": {"containerd-namespace-ttrpc": ["default"], "multi": ["a", "b"]},
        "timeout": 30.0,
        "has_deadline": True,
    }
    assert served.contexts[-1].get("CONTAINERD-NAMESPACE-TTRPC") == "default"
    seen = json.loads(c.call(SERVICE, "Inspect", b""))
    assert seen["metadata"] == {} and seen["timeout"] is None and not seen["has_deadline"]


def test_a_blocking_call_does_not_block_others(served: Served) -> None:
    c = served.connect()
    blocked = [CallThread(c, "Block", b"%d" % i) for i in range(3)]
    served.wait_entered(3)
    # Three handlers are parked on the same connection; others still get answers.
    for i in range(20):
        assert c.call(SERVICE, "Echo", b"%d" % i) == b"%d" % i
    assert all(t.is_alive() for t in blocked)
    served.release.set()
    assert sorted(t.finish().result or b"" for t in blocked) == [
        b"released 0",
        b"released 1",
        b"released 2",
    ]


def test_concurrent_calls_each_get_their_own_response(served: Served) -> None:
    c = served.connect()
    errors: list[str] = []

    def caller(n: int) -> None:
        for i in range(50):
            payload = f"{n}-{i}".encode() * (i + 1)
            got = c.call(SERVICE, "Echo", payload)
            if got != payload:
                errors.append(f"{payload[:10]!r} answered with {got[:10]!r}")

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_payloads_up_to_the_message_limit(served: Served) -> None:
    c = served.connect()
    # Envelope bytes around a payload of this size (its length takes a 4-byte varint).
    envelope = len(wire.encode_request(wire.Request(SERVICE, "Echo", b"x" * (1 << 21)))) - (1 << 21)
    # The request frame's data is exactly 4 MiB: accepted and echoed.
    payload = b"p" * (wire.MESSAGE_LENGTH_MAX - envelope)
    assert len(wire.encode_request(wire.Request(SERVICE, "Echo", payload))) == (
        wire.MESSAGE_LENGTH_MAX
    )
    assert c.call(SERVICE, "Echo", payload) == payload
    # One byte more is refused before it is sent.
    with pytest.raises(Error) as err:
        c.call(SERVICE, "Echo", payload + b"p")
    assert err.value.code == codes.RESOURCE_EXHAUSTED
    assert "exceeds the maximum message size" in err.value.message
    assert c.call(SERVICE, "Echo", b"still") == b"still"


def test_oversized_response_is_an_error_status(served: Served) -> None:
    c = served.connect()
    # Response data is payload + 7 bytes of envelope here (status, tag, length).
    assert len(c.call(SERVICE, "Big", b"%d" % (wire.MESSAGE_LENGTH_MAX - 7))) == (
        wire.MESSAGE_LENGTH_MAX - 7
    )
    with pytest.raises(Error) as err:
        c.call(SERVICE, "Big", b"%d" % (wire.MESSAGE_LENGTH_MAX - 6))
    assert err.value.code == codes.RESOURCE_EXHAUSTED
    assert c.call(SERVICE, "Echo", b"after") == b"after"


def test_oversized_frame_is_rejected_and_the_connection_goes_on(served: Served) -> None:
    with raw_connect(served.path) as s:
        length = wire.MESSAGE_LENGTH_MAX + 1
        s.sendall(wire.HEADER.pack(length, 7, wire.TYPE_REQUEST, 0) + b"\0" * length)
        stream_id, resp = raw_response(s)
        assert (stream_id, resp.code) == (7, codes.RESOURCE_EXHAUSTED)
        assert str(length) in resp.message
        req = wire.encode_request(wire.Request(SERVICE, "Echo", b"next"))
        s.sendall(wire.frame(9, wire.TYPE_REQUEST, req))
        assert raw_response(s)[0] == 9


def test_oversized_response_frame_fails_only_its_call(short_dir: Path) -> None:
    """A server sending more than 4 MiB: the client drops it and fails that call."""
    with listen(short_dir / "fake.sock") as listener, Client(str(short_dir / "fake.sock")) as c:
        t = CallThread(c, "Echo", b"x")
        conn, _ = listener.accept()
        with conn:
            got = wire.read_frame(conn)
            assert got is not None
            length = wire.MESSAGE_LENGTH_MAX + 1
            conn.sendall(wire.HEADER.pack(length, got[0], wire.TYPE_RESPONSE, 0) + b"\0" * length)
            assert isinstance(t.finish().error, Error)
            assert t.error.code == codes.RESOURCE_EXHAUSTED  # type: ignore[union-attr]
            # The connection is still usable.
            t = CallThread(c, "Echo", b"y")
            got = wire.read_frame(conn)
            assert got is not None
            answer = wire.encode_response(wire.Response(payload=b"fine"))
            conn.sendall(wire.frame(got[0], wire.TYPE_RESPONSE, answer))
            assert t.finish().result == b"fine"


def test_unknown_service_or_method_is_unimplemented(served: Served) -> None:
    c = served.connect()
    with pytest.raises(Error) as err:
        c.call(SERVICE, "Nope", b"")
    assert (err.value.code, err.value.message) == (codes.UNIMPLEMENTED, "method Nope")
    with pytest.raises(Error) as err:
        c.call("no.such.Service", "Echo", b"")
    assert (err.value.code, err.value.message) == (codes.UNIMPLEMENTED, "service no.such.Service")
    assert err.value.grpc_code == "UNIMPLEMENTED"


@pytest.mark.parametrize(
    ("kind", "code", "message"),
    [
        ("ttrpc", codes.FAILED_PRECONDITION, "task is not running"),
        ("notfound", codes.NOT_FOUND, 'container "c1": not found'),
        ("precondition", codes.FAILED_PRECONDITION, 'container "c1": already started'),
        ("enoent", codes.NOT_FOUND, "[Errno 2] No such file or directory: '/nope'"),
        ("notbytes", codes.UNKNOWN, f"ttrpc handler {SERVICE}/Fail returned str, not bytes"),
        ("other", codes.UNKNOWN, "something broke"),
        ("surrogate", codes.INTERNAL, "bad ? text"),
    ],
)
def test_handler_errors_become_statuses_and_the_server_keeps_serving(
    served: Served, kind: str, code: int, message: str
) -> None:
    c = served.connect()
    with pytest.raises(Error) as err:
        c.call(SERVICE, "Fail", kind.encode())
    assert (err.value.code, err.value.message) == (code, message)
    assert isinstance(err.value, DockyardError)
    if kind == "ttrpc":
        assert err.value.details == (("t/x", b"\x01"),)
    assert c.call(SERVICE, "Echo", b"alive") == b"alive"
    assert served.connect().call(SERVICE, "Echo", b"new") == b"new"


def test_bad_requests_are_invalid_argument_and_other_types_ignored(served: Served) -> None:
    with raw_connect(served.path) as s:
        # A frame type this ttrpc does not know (a later version's data frame): ignored.
        s.sendall(wire.frame(1, 3, b"\x01\x02"))
        # An even (server-initiated) stream id.
        s.sendall(
            wire.frame(2, wire.TYPE_REQUEST, wire.encode_request(wire.Request(SERVICE, "Echo")))
        )
        stream_id, resp = raw_response(s)
        assert (stream_id, resp.code) == (2, codes.INVALID_ARGUMENT)
        # Data that is not a Request.
        s.sendall(wire.frame(3, wire.TYPE_REQUEST, b"\x0a\x10short"))
        stream_id, resp = raw_response(s)
        assert (stream_id, resp.code) == (3, codes.INVALID_ARGUMENT)
        assert "unmarshal request" in resp.message
        req = wire.encode_request(wire.Request(SERVICE, "Echo", b"ok"))
        s.sendall(wire.frame(5, wire.TYPE_REQUEST, req))
        stream_id, resp = raw_response(s)
        assert (stream_id, resp.code, resp.payload) == (5, codes.OK, b"ok")


def test_client_timeout_is_deadline_exceeded_and_the_late_answer_dropped(served: Served) -> None:
    c = served.connect()
    with pytest.raises(Error) as err:
        c.call(SERVICE, "Block", b"late", timeout=0.2)
    assert err.value.code == codes.DEADLINE_EXCEEDED
    served.wait_entered()
    assert served.contexts[-1].timeout == pytest.approx(0.2)
    served.release.set()
    assert c.call(SERVICE, "Echo", b"next") == b"next"
    with pytest.raises(Error) as err:
        c.call(SERVICE, "Echo", b"", timeout=0)
    assert err.value.code == codes.DEADLINE_EXCEEDED


def test_peer_closing_mid_call_fails_every_pending_call(short_dir: Path) -> None:
    closed = threading.Event()
    with listen(short_dir / "fake.sock") as listener:
        c = Client("unix://" + str(short_dir / "fake.sock"), on_close=closed.set)
        try:
            conn, _ = listener.accept()
            calls = [CallThread(c, "Wait", b"%d" % i) for i in range(3)]
            for _ in calls:
                assert wire.read_frame(conn) is not None
            conn.close()  # the server goes away with three calls unanswered
            for t in calls:
                assert isinstance(t.finish().error, ConnectionClosed), t.error
                assert t.error.code == codes.UNAVAILABLE  # type: ignore[union-attr]
                assert "closed by the server" in str(t.error)
            assert closed.wait(HANG)
            assert c.closed
            with pytest.raises(ConnectionClosed):
                c.call(SERVICE, "Echo", b"")
        finally:
            c.close()


def test_server_close_fails_pending_calls(served: Served) -> None:
    c = served.connect()
    t = CallThread(c, "Block")
    served.wait_entered()
    served.server.close()
    assert isinstance(t.finish().error, ConnectionClosed)


def test_client_close_fails_pending_calls(served: Served) -> None:
    c = served.connect()
    t = CallThread(c, "Block")
    served.wait_entered()
    c.close()
    assert isinstance(t.finish().error, ConnectionClosed)
    assert "client closed" in str(t.error)
    c.close()  # idempotent
    with pytest.raises(ConnectionClosed):
        c.call(SERVICE, "Echo", b"")


def test_shutdown_lets_running_calls_finish_then_closes(served: Served) -> None:
    idle_closed, busy_closed = threading.Event(), threading.Event()
    idle = served.connect(on_close=idle_closed.set)
    busy = served.connect(on_close=busy_closed.set)
    assert idle.call(SERVICE, "Echo", b"x") == b"x"
    t = CallThread(busy, "Block", b"work")
    served.wait_entered()
    served.server.shutdown()
    assert idle_closed.wait(HANG)  # idle connections go at once
    served.thread.join(HANG)
    assert not served.thread.is_alive()  # no more accepting
    with pytest.raises(Error) as err:
        Client(str(served.path))
    assert err.value.code == codes.UNAVAILABLE
    assert t.is_alive() and not busy.closed
    served.release.set()
    assert t.finish().result == b"released work"
    assert busy_closed.wait(HANG)  # and the busy one once its call is answered
    assert served.server.wait(HANG)


def test_a_handler_can_shut_the_server_down(served: Served) -> None:
    closed = threading.Event()
    c = served.connect(on_close=closed.set)
    # Answered first, then the connection closes: the shim's Shutdown works so.
    assert c.call(SERVICE, "Shutdown", b"") == b"bye"
    assert served.server.wait(HANG)
    assert closed.wait(HANG)
    with pytest.raises(ConnectionClosed):
        c.call(SERVICE, "Echo", b"")


def test_typed_handlers_and_calls(served: Served) -> None:
    def connect(req: shim_pb2.ConnectRequest, ctx: Context) -> shim_pb2.ConnectResponse:
        return shim_pb2.ConnectResponse(shim_pid=42, task_pid=len(req.id), version=req.id)

    served.server.register_typed(
        "containerd.task.v2.Task", {"Connect": (shim_pb2.ConnectRequest, connect)}
    )
    c = served.connect()
    resp = c.call_typed(
        "containerd.task.v2.Task",
        "Connect",
        shim_pb2.ConnectRequest(id="abc"),
        shim_pb2.ConnectResponse,
    )
    assert (resp.shim_pid, resp.task_pid, resp.version) == (42, 3, "abc")
    with pytest.raises(Error) as err:
        c.call("containerd.task.v2.Task", "Connect", b"\xff\xff")
    assert err.value.code == codes.INVALID_ARGUMENT
    with pytest.raises(AlreadyExists):
        served.server.register("containerd.task.v2.Task", {"Connect": lambda p, ctx: p})


def test_addresses(served: Served) -> None:
    assert served.connect("unix://" + str(served.path)).call(SERVICE, "Echo", b"1") == b"1"
    assert served.connect(str(served.path)).call(SERVICE, "Echo", b"2") == b"2"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(served.path))
    assert served.connect(sock).call(SERVICE, "Echo", b"3") == b"3"

    name = f"dockyard-ttrpc-{uuid.uuid4().hex}"
    abstract = listen("\0" + name)
    t = served.server.serve_in_thread(abstract)
    try:
        for address in (f"unix://@{name}", f"@{name}"):
            assert served.connect(address).call(SERVICE, "Echo", b"4") == b"4"
    finally:
        served.server.close()
        t.join(HANG)

    with pytest.raises(InvalidArgument):
        Client("tcp://127.0.0.1:1")
    with pytest.raises(Error) as err:
        Client(str(served.path.parent / "missing.sock"))
    assert err.value.code == codes.UNAVAILABLE
    assert "no such file or directory" in err.value.message


def test_a_server_that_was_shut_down_does_not_serve(short_dir: Path) -> None:
    server = Server()
    server.shutdown()
    listener = listen(short_dir / "late.sock")
    server.serve(listener)  # returns at once, and closes the listener
    assert listener.fileno() == -1
    server.close()


# A peer that connects, sends one request and prints how many bytes came back.
PEER = """
import _socket, sys
s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
s.connect("\\0" + sys.argv[1])
s.settimeout(60)
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
    print(len(s.recv(100)))
except (BrokenPipeError, ConnectionResetError):
    print(0)
"""


def test_require_same_user_refuses_other_users() -> None:
    server = Server(require_same_user=True)
    server.register(SERVICE, {"Echo": lambda payload, ctx: payload})
    name = f"dockyard-ttrpc-{uuid.uuid4().hex}"
    # Abstract: no file permissions keep anyone out, only the credentials check.
    t = server.serve_in_thread(listen("\0" + name))
    try:
        with Client(f"unix://@{name}") as c:
            assert c.call(SERVICE, "Echo", b"me") == b"me"
        request = wire.frame(
            1, wire.TYPE_REQUEST, wire.encode_request(wire.Request(SERVICE, "Echo", b"x"))
        )

        def peer(**kw: object) -> str:
            p = subprocess.run(
                [sys.executable, "-I", "-S", "-c", PEER, name, request.hex()],
                capture_output=True,
                text=True,
                timeout=HANG,
                check=True,
                **kw,  # type: ignore[call-overload]
            )
            return p.stdout.strip()

        assert int(peer()) > 0  # the same peer as root is answered
        # Another group (root can still run the interpreter): refused, never answered.
        assert peer(group=65534, extra_groups=[]) == "0"
    finally:
        server.close()
        t.join(HANG)


def test_connect_timeout_does_not_wait_on_a_server_that_does_not_accept(
    short_dir: Path,
) -> None:
    path = short_dir / "stuck.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(0)
        queued = []
        try:
            # Fill the backlog: from then on a blocking connect would wait forever.
            while True:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                queued.append(s)
                try:
                    s.connect(str(path))
                except BlockingIOError:
                    break
            errors: list[Error] = []

            def connect() -> None:
                try:
                    Client(str(path), connect_timeout=HANG / 2).close()
                except Error as e:
                    errors.append(e)

            t = threading.Thread(target=connect, daemon=True)
            t.start()
            t.join(HANG)
            assert not t.is_alive(), "the connect blocked on a full backlog"
            assert [e.code for e in errors] == [codes.UNAVAILABLE]
            assert "resource temporarily unavailable" in errors[0].message
        finally:
            for s in queued:
                s.close()
