"""dockyard's ttrpc against Go's ttrpc, both ways, through the real containerd-shim-runc-v2.

The shim is started the way containerd 1.6 starts it (runtime/v2/shim: the
``start`` action in the bundle dir, which re-executes the shim as a daemon
listening on ``/run/containerd/s/<sha256>`` and prints that address). Our
client drives its task API (Go's ttrpc server); the shim publishes its task
events with Go's ttrpc client to TTRPC_ADDRESS, where our server listens in
containerd's place.
"""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import empty_pb2

from dockyard.api.events import task_pb2
from dockyard.api.runtime.task.v2 import shim_pb2
from dockyard.api.services.ttrpc.events.v1 import events_pb2
from dockyard.ttrpc import Client, ConnectionClosed, Context, Error, Server, codes
from tests.compat import host
from tests.conftest import Bundle
from tests.ttrpc.conftest import HANG, listen

SHIM = "containerd-shim-runc-v2"
TASK = "containerd.task.v2.Task"
EVENTS = "containerd.services.events.ttrpc.v1.Events"
RUNC_ROOT = "/run/containerd/runc"  # the runc shim's default --root, per namespace


@dataclass
class GoShim:
    id: str
    namespace: str
    address: str
    log_fd: int

    def log(self) -> str:
        """What the shim logged so far (to its ``log`` fifo in the bundle)."""
        chunks = []
        while True:
            try:
                chunk = os.read(self.log_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")


StartShim = Callable[[Path], GoShim]


@pytest.fixture
def start_go_shim(short_dir: Path) -> Iterator[StartShim]:
    """start(bundle_dir) runs ``containerd-shim-runc-v2 start`` there; teardown
    removes containers it ran, ends the daemons by pid, removes their sockets."""
    host.need(SHIM)
    namespace = "dockyard-ttrpc-" + uuid.uuid4().hex[:8]
    created = host.CreatedDirs(
        "/run/containerd", "/run/containerd/s", RUNC_ROOT, f"{RUNC_ROOT}/{namespace}"
    )
    shims: list[GoShim] = []

    def start(bundle: Path) -> GoShim:
        # The daemon's stderr is the bundle's "log" fifo, and opening it for
        # writing blocks until a reader has it open: containerd holds it, so do we.
        os.mkfifo(bundle / "log")
        log_fd = os.open(bundle / "log", os.O_RDONLY | os.O_NONBLOCK)
        shim = GoShim("ttrpc-" + uuid.uuid4().hex[:12], namespace, "", log_fd)
        shims.append(shim)
        argv = [SHIM, "-namespace", namespace, "-address", str(short_dir / "containerd.sock")]
        argv += ["-publish-binary", "/bin/true", "-id", shim.id, "start"]
        p = subprocess.run(
            argv,
            cwd=bundle,
            # Where the daemon publishes task events (Go's ttrpc client).
            env={**os.environ, "TTRPC_ADDRESS": str(short_dir / "events.sock")},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=host.COMMAND_TIMEOUT,
        )
        assert p.returncode == 0, f"{SHIM} start exited {p.returncode}: {p.stderr}"
        shim.address = p.stdout.strip()
        return shim

    try:
        yield start
    finally:
        for shim in shims:
            # A container left by a failed test (the task's id is the shim's).
            subprocess.run(
                ["runc", "--root", f"{RUNC_ROOT}/{namespace}", "delete", "--force", shim.id],
                capture_output=True,
                check=False,
                timeout=host.COMMAND_TIMEOUT,
            )
        # The daemons are not our children; each is found by our temp dir in
        # its command line (its -address) and ended by pid.
        for pid in host.pids_mentioning(str(short_dir)):
            host.stop_pid(pid)
        for shim in shims:
            if shim.address.startswith("unix://"):
                try:
                    os.unlink(shim.address.removeprefix("unix://"))
                except FileNotFoundError:
                    pass
            os.close(shim.log_fd)
        created.cleanup()


@pytest.fixture
def go_shim(start_go_shim: StartShim, short_dir: Path) -> GoShim:
    bundle = short_dir / "bundle"
    bundle.mkdir()
    # start reads the spec's annotations (for shim grouping); nothing else of it.
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2"}))
    return start_go_shim(bundle)


def _wait_exit(pid: int) -> None:
    """Block until a process that is not our child has exited."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        assert poller.poll(HANG * 1000), f"process {pid} did not exit"
    finally:
        os.close(pidfd)


def _shutdown(c: Client, request: bytes) -> None:
    """Task/Shutdown. The Go shim may exit before its answer is written, so a
    closed connection counts as done, as containerd counts it (runtime/v2's
    shimTask.Shutdown ignores ttrpc.ErrClosed)."""
    try:
        assert c.call(TASK, "Shutdown", request) == b""
    except ConnectionClosed:
        pass


def test_client_against_go_server_connect_errors_and_shutdown(go_shim: GoShim) -> None:
    # containerd 1.6's shims listen on a socket file, not an abstract socket.
    assert go_shim.address.startswith("unix:///run/containerd/s/"), go_shim.address
    socket_path = go_shim.address.removeprefix("unix://")
    closed = threading.Event()
    with Client(go_shim.address, on_close=closed.set) as c:
        # Raw payloads through call; the generated messages only encode and decode them.
        connect_request = shim_pb2.ConnectRequest(id=go_shim.id).SerializeToString()
        resp = c.call(
            TASK,
            "Connect",
            connect_request,
            timeout=HANG,
            metadata={"containerd-namespace-ttrpc": go_shim.namespace},
        )
        connected = shim_pb2.ConnectResponse.FromString(resp)
        shim_pid = connected.shim_pid
        assert shim_pid, f"no shim_pid in {resp.hex()}\nshim log:\n{go_shim.log()}"
        assert connected.task_pid == 0  # no task yet
        with open(f"/proc/{shim_pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert os.path.basename(argv[0]) == SHIM.encode() and go_shim.id.encode() in argv

        # Concurrent calls multiplexed on the one connection, answered by Go.
        results: list[int] = []

        def connect() -> None:
            payload = c.call(TASK, "Connect", connect_request, timeout=HANG)
            results.append(shim_pb2.ConnectResponse.FromString(payload).shim_pid)

        threads = [threading.Thread(target=connect) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HANG)
        assert results == [shim_pid] * 8

        # The same through the typed helper and the generated messages.
        typed = c.call_typed(
            TASK, "Connect", shim_pb2.ConnectRequest(id=go_shim.id), shim_pb2.ConnectResponse
        )
        assert typed.shim_pid == shim_pid

        # Go's statuses come back as Error with their codes.
        with pytest.raises(Error) as err:
            c.call(TASK, "State", shim_pb2.StateRequest(id=go_shim.id).SerializeToString())
        assert err.value.code == codes.NOT_FOUND, err.value
        with pytest.raises(Error) as err:
            c.call(TASK, "NoSuchMethod", b"")
        assert (err.value.code, err.value.message) == (codes.UNIMPLEMENTED, "method NoSuchMethod")
        with pytest.raises(Error) as err:
            c.call("containerd.no.Such", "Connect", b"")
        assert err.value.code == codes.UNIMPLEMENTED

        # The answer is google.protobuf.Empty.
        _shutdown(c, shim_pb2.ShutdownRequest(id=go_shim.id, now=True).SerializeToString())
        _wait_exit(shim_pid)
        assert closed.wait(HANG), "the connection outlived the shim"
        with pytest.raises(ConnectionClosed):
            c.call(TASK, "Connect", connect_request)
    # The shim removes its socket on the way out.
    assert not os.path.exists(socket_path)


EVENT_TYPES: dict[str, Any] = {
    "/tasks/create": task_pb2.TaskCreate,
    "/tasks/start": task_pb2.TaskStart,
    "/tasks/exit": task_pb2.TaskExit,
    "/tasks/delete": task_pb2.TaskDelete,
}


def test_server_against_go_client_the_shims_event_publisher(
    start_go_shim: StartShim, bundle: Bundle, short_dir: Path
) -> None:
    """A container's life through the Go shim; its events reach our server."""
    host.need("runc")
    received: queue.Queue[tuple[str, bytes, Context]] = queue.Queue()
    refused: list[str] = []

    def forward(req: events_pb2.ForwardRequest, ctx: Context) -> empty_pb2.Empty:
        topic = req.envelope.topic
        if topic == "/tasks/create" and not refused:
            # Refused once: Go must read this as an error and send it again.
            refused.append(topic)
            raise Error(codes.UNAVAILABLE, "not now")
        received.put((topic, req.envelope.event.value, ctx))
        return empty_pb2.Empty()

    server = Server()
    server.register_typed(EVENTS, {"Forward": (events_pb2.ForwardRequest, forward)})
    serving = server.serve_in_thread(listen(short_dir / "events.sock"))
    try:
        bundle.set_args("true").write()
        shim = start_go_shim(bundle.path)
        with Client(shim.address) as c:
            created = c.call_typed(
                TASK,
                "Create",
                shim_pb2.CreateTaskRequest(id=shim.id, bundle=str(bundle.path)),
                shim_pb2.CreateTaskResponse,
                timeout=HANG,
            )
            assert created.pid > 0, shim.log()
            c.call_typed(TASK, "Start", shim_pb2.StartRequest(id=shim.id), shim_pb2.StartResponse)
            waited = c.call_typed(
                TASK, "Wait", shim_pb2.WaitRequest(id=shim.id), shim_pb2.WaitResponse
            )
            assert waited.exit_status == 0
            c.call_typed(
                TASK, "Delete", shim_pb2.DeleteRequest(id=shim.id), shim_pb2.DeleteResponse
            )

            events: dict[str, tuple[bytes, Context]] = {}
            while len(events) < len(EVENT_TYPES):
                try:
                    topic, value, ctx = received.get(timeout=HANG)
                except queue.Empty:
                    raise AssertionError(f"events so far: {list(events)}\n{shim.log()}")
                events[topic] = (value, ctx)
            assert set(events) == set(EVENT_TYPES)
            assert refused == ["/tasks/create"]
            for topic, (value, ctx) in events.items():
                event = EVENT_TYPES[topic].FromString(value)
                assert event.container_id == shim.id
                # Go's client sends the namespace as metadata and a 5 s timeout.
                assert ctx.service == EVENTS and ctx.method == "Forward"
                assert ctx.get("containerd-namespace-ttrpc") == shim.namespace
                assert ctx.timeout is not None and 0 < ctx.timeout <= 5
            exit_event = task_pb2.TaskExit.FromString(events["/tasks/exit"][0])
            assert (exit_event.pid, exit_event.exit_status) == (created.pid, 0)

            connected = c.call_typed(
                TASK, "Connect", shim_pb2.ConnectRequest(id=shim.id), shim_pb2.ConnectResponse
            )
            _shutdown(c, shim_pb2.ShutdownRequest(id=shim.id).SerializeToString())
            _wait_exit(connected.shim_pid)
    finally:
        server.close()
        serving.join(HANG)
