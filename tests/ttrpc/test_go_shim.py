"""dockyard's ttrpc client against Go's ttrpc server: the real containerd-shim-runc-v2.

The shim is started the way containerd 1.6 starts it (runtime/v2/shim: the
``start`` action in the bundle dir, which re-executes the shim as a daemon
listening on ``/run/containerd/s/<sha256>`` and prints that address), then
driven over ttrpc with hand-encoded task API messages until Shutdown ends it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockyard.api.runtime.task.v2 import shim_pb2
from dockyard.ttrpc import Client, ConnectionClosed, Error, codes
from tests.compat import host
from tests.ttrpc.conftest import HANG

SHIM = "containerd-shim-runc-v2"
TASK = "containerd.task.v2.Task"
NAMESPACE = "dockyard-ttrpc-test"


@dataclass
class GoShim:
    id: str
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


@pytest.fixture
def go_shim(short_dir: Path) -> Iterator[GoShim]:
    host.need(SHIM)
    bundle = short_dir / "bundle"
    bundle.mkdir()
    # start reads the spec's annotations (for shim grouping); nothing else of it.
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2"}))
    # The shim daemon's stderr is the bundle's "log" fifo, and opening it for
    # writing blocks until a reader has it open: containerd holds it, so do we.
    os.mkfifo(bundle / "log")
    log_fd = os.open(bundle / "log", os.O_RDONLY | os.O_NONBLOCK)
    created = host.CreatedDirs("/run/containerd", "/run/containerd/s")
    shim_id = "ttrpc-" + uuid.uuid4().hex[:12]
    address = ""
    try:
        argv = [SHIM, "-namespace", NAMESPACE, "-address", str(short_dir / "containerd.sock")]
        argv += ["-publish-binary", "/bin/true", "-id", shim_id, "start"]
        p = subprocess.run(
            argv,
            cwd=bundle,
            # Where the daemon would publish events: nothing listens, and
            # nothing is published without tasks.
            env={**os.environ, "TTRPC_ADDRESS": str(short_dir / "containerd.sock.ttrpc")},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=host.COMMAND_TIMEOUT,
        )
        assert p.returncode == 0, f"{SHIM} start exited {p.returncode}: {p.stderr}"
        address = p.stdout.strip()
        yield GoShim(shim_id, address, log_fd)
    finally:
        # The daemon is not our child; it is found by our temp dir in its
        # command line (its -address) and ended by pid.
        for pid in host.pids_mentioning(str(short_dir)):
            host.stop_pid(pid)
        if address.startswith("unix://"):
            try:
                os.unlink(address.removeprefix("unix://"))
            except FileNotFoundError:
                pass
        os.close(log_fd)
        created.cleanup()


def _string_field(number: int, value: str) -> bytes:
    data = value.encode()
    assert len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data


def _varint_field(data: bytes, number: int) -> int | None:
    """A varint field of a message that has only varint and string fields."""
    pos = 0
    found = None
    while pos < len(data):
        key = data[pos]
        pos += 1
        if key & 7 == 0:
            value = shift = 0
            while True:
                b = data[pos]
                pos += 1
                value |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            if key >> 3 == number:
                found = value
        else:
            assert key & 7 == 2
            pos += 1 + data[pos]
    return found


def _wait_exit(pid: int) -> None:
    """Block until a process that is not our child has exited."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        assert poller.poll(HANG * 1000), f"process {pid} did not exit"
    finally:
        os.close(pidfd)


def test_connect_calls_and_shutdown_of_a_go_shim(go_shim: GoShim) -> None:
    # containerd 1.6's shims listen on a socket file, not an abstract socket.
    assert go_shim.address.startswith("unix:///run/containerd/s/"), go_shim.address
    socket_path = go_shim.address.removeprefix("unix://")
    closed = threading.Event()
    with Client(go_shim.address, on_close=closed.set) as c:
        resp = c.call(
            TASK,
            "Connect",
            _string_field(1, go_shim.id),
            timeout=HANG,
            metadata={"containerd-namespace-ttrpc": NAMESPACE},
        )
        shim_pid = _varint_field(resp, 1)
        assert shim_pid, f"no shim_pid in {resp.hex()}\nshim log:\n{go_shim.log()}"
        assert _varint_field(resp, 2) is None  # no task yet, so no task_pid
        with open(f"/proc/{shim_pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert os.path.basename(argv[0]) == SHIM.encode() and go_shim.id.encode() in argv

        # Concurrent calls multiplexed on the one connection, answered by Go.
        results: list[int | None] = []

        def connect() -> None:
            payload = c.call(TASK, "Connect", _string_field(1, go_shim.id), timeout=HANG)
            results.append(_varint_field(payload, 1))

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
            c.call(TASK, "State", _string_field(1, go_shim.id))
        assert err.value.code == codes.NOT_FOUND, err.value
        with pytest.raises(Error) as err:
            c.call(TASK, "NoSuchMethod", b"")
        assert (err.value.code, err.value.message) == (codes.UNIMPLEMENTED, "method NoSuchMethod")
        with pytest.raises(Error) as err:
            c.call("containerd.no.Such", "Connect", b"")
        assert err.value.code == codes.UNIMPLEMENTED

        # ShutdownRequest{id, now: true}; the answer is google.protobuf.Empty.
        assert c.call(TASK, "Shutdown", _string_field(1, go_shim.id) + b"\x10\x01") == b""
        _wait_exit(shim_pid)
        assert closed.wait(HANG), "the connection outlived the shim"
        with pytest.raises(ConnectionClosed):
            c.call(TASK, "Connect", _string_field(1, go_shim.id))
    # The shim removes its socket on the way out.
    assert not os.path.exists(socket_path)
