"""dockyard's ttrpc against peers that misbehave, and against a host out of threads."""

from __future__ import annotations

import os
import socket
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.ttrpc import server as server_module
from dockyard.ttrpc import wire
from tests.ttrpc.conftest import HANG, SERVICE, Served, listen, raw_connect


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


# --- client -------------------------------------------------------------------
