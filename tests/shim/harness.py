"""Drive dockyard's shim directly, as containerd does, without containerd.

``EventSink`` plays containerd's ttrpc events service (``Events/Forward``)
and records every envelope; ``ShimUnderTest`` runs the shim's ``start``
action in a bundle with ``TTRPC_ADDRESS`` pointing at the sink, connects a
ttrpc client to the address it prints, and calls the task API. Teardown
ends the shim (Shutdown, then by its pid), runs the shim's own ``delete``
action (runtime delete --force, unmount) as containerd does after a dead
shim, and removes what the test mounted.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from dockyard.api import typeurl
from dockyard.api.runc.options import oci_pb2
from dockyard.api.runtime.task.v2 import shim_pb2 as api
from dockyard.api.services.ttrpc.events.v1 import events_pb2
from dockyard.ttrpc import Client, Server
from tests.compat import host

SHIM_NAME = "containerd-shim-dockyard-v2"
TASK = "containerd.task.v2.Task"
BIN_DIR = Path(sys.executable).parent

_M = TypeVar("_M", bound=Message)


def shim_binary() -> str:
    path = BIN_DIR / SHIM_NAME
    assert path.exists(), f"{path} is missing: run python -m dockyard.launcher {BIN_DIR}"
    return str(path)


def short_dir(prefix: str) -> Path:
    """A private temp dir with a short path: unix socket addresses are short."""
    return Path(tempfile.mkdtemp(prefix=prefix))


class EventSink:
    """containerd's ttrpc events service, recording what the shim forwards."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "events.sock")
        self.envelopes: list[events_pb2.Envelope] = []
        self._cond = threading.Condition()
        self._server = Server()
        self._server.register_typed(
            "containerd.services.events.ttrpc.v1.Events",
            {"Forward": (events_pb2.ForwardRequest, self._forward)},
        )
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen()
        self._server.serve_in_thread(listener)

    def _forward(self, req: events_pb2.ForwardRequest, ctx: Any) -> empty_pb2.Empty:
        with self._cond:
            self.envelopes.append(req.envelope)
            self._cond.notify_all()
        return empty_pb2.Empty()

    def events(self, container_id: str) -> list[tuple[str, Any]]:
        """(topic, decoded event) of one container, in arrival order."""
        with self._cond:
            envs = list(self.envelopes)
        out = []
        for env in envs:
            ev = typeurl.unpack(env.event)
            if getattr(ev, "container_id", None) == container_id:
                out.append((env.topic, ev))
        return out

    def wait_for(self, container_id: str, topic: str, count: int = 1, timeout: float = 30) -> None:
        def enough() -> bool:
            return sum(1 for t, _ in self.events(container_id) if t == topic) >= count

        with self._cond:
            if not self._cond.wait_for(enough, timeout):
                raise TimeoutError(
                    f"no {topic} event for {container_id}: got {self.events(container_id)}"
                )

    def close(self) -> None:
        self._server.close()


class ShimUnderTest:
    """One shim started by its ``start`` action in ``bundle``."""

    def __init__(
        self, bundle: Path, namespace: str, cid: str, sink: EventSink | None, *, address: str
    ) -> None:
        self.bundle = bundle
        self.namespace = namespace
        self.id = cid
        self.sink = sink
        # containerd's own address: only names the socket here.
        self.containerd_address = address
        self.address = ""
        self.client: Client | None = None
        self.pid = 0
        self.env = dict(os.environ, PATH=f"{BIN_DIR}:{os.environ.get('PATH', '')}")
        if sink is not None:
            self.env["TTRPC_ADDRESS"] = sink.path

    def action(self, action: str, *, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        argv = [
            shim_binary(),
            "-namespace",
            self.namespace,
            "-address",
            self.containerd_address,
            "-publish-binary",
            "containerd",
            "-id",
            self.id,
        ]
        if action == "delete":
            argv += ["-bundle", str(self.bundle)]
        return subprocess.run(
            [*argv, action],
            cwd=self.bundle,
            env=self.env,
            input=stdin,
            capture_output=True,
            timeout=60,
            check=False,
        )

    def start(self) -> str:
        p = self.action("start")
        assert p.returncode == 0, f"shim start failed: {p.stderr.decode()}"
        return self.attach(p.stdout.decode().strip())

    def attach(self, address: str) -> str:
        """Connect to the shim serving ``address`` (its start printed it)."""
        self.address = address
        self.client = Client(self.address)
        self.pid = self.call(
            "Connect", api.ConnectRequest(id=self.id), api.ConnectResponse
        ).shim_pid
        return self.address

    def call(self, method: str, req: Message, resp: type[_M], timeout: float = 60) -> _M:
        assert self.client is not None
        answer: _M = self.client.call_typed(TASK, method, req, resp, timeout=timeout)  # type: ignore[arg-type]
        return answer

    def empty(self, method: str, req: Message, timeout: float = 60) -> None:
        self.call(method, req, empty_pb2.Empty, timeout=timeout)

    # The task API by name, for the container ``self.id``.

    def state(self, exec_id: str = "") -> api.StateResponse:
        return self.call("State", api.StateRequest(id=self.id, exec_id=exec_id), api.StateResponse)

    def start_task(self, exec_id: str = "") -> int:
        req = api.StartRequest(id=self.id, exec_id=exec_id)
        return self.call("Start", req, api.StartResponse).pid

    def wait(self, exec_id: str = "") -> api.WaitResponse:
        return self.call("Wait", api.WaitRequest(id=self.id, exec_id=exec_id), api.WaitResponse)

    def kill(self, sig: int, exec_id: str = "", all: bool = False) -> None:
        self.empty("Kill", api.KillRequest(id=self.id, exec_id=exec_id, signal=sig, all=all))

    def delete(self, exec_id: str = "") -> api.DeleteResponse:
        req = api.DeleteRequest(id=self.id, exec_id=exec_id)
        return self.call("Delete", req, api.DeleteResponse)

    def exec(self, exec_id: str, process: dict[str, Any], **stdio: Any) -> None:
        spec = typeurl.pack_json(typeurl.PROCESS, process)
        req = api.ExecProcessRequest(id=self.id, exec_id=exec_id, spec=spec, **stdio)
        self.empty("Exec", req)

    def resize(self, width: int, height: int, exec_id: str = "") -> None:
        req = api.ResizePtyRequest(id=self.id, exec_id=exec_id, width=width, height=height)
        self.empty("ResizePty", req)

    def alive(self) -> bool:
        return self.pid > 0 and host.alive(self.pid)

    def stop(self) -> None:
        """End the shim and everything it left; safe to call at any point."""
        if self.client is not None and self.alive():
            try:
                self.empty("Shutdown", api.ShutdownRequest(id=self.id, now=True), timeout=10)
            except Exception:
                pass
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.pid:
            try:
                host.wait_for(lambda: not self.alive(), 10, f"shim {self.pid} to exit")
            except TimeoutError:
                host.stop_pid(self.pid)
        # What containerd does after a shim is gone: the shim's delete action.
        self.action("delete")


def runc_options(**fields: Any) -> any_pb2.Any:
    return typeurl.pack(oci_pb2.Options(**fields))


def make_fifos(directory: Path, *names: str) -> dict[str, str]:
    out = {}
    for name in names:
        path = directory / name
        os.mkfifo(path)
        out[name] = str(path)
    return out


class FifoReader:
    """The client's end of an output FIFO, read in a thread (as ``ctr`` does).

    Opened read-write, so it never sees end-of-file before the shim opens
    it; ``drain`` reads what is in the FIFO now, so output can be checked
    the moment Wait returns.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.data = b""
        self._lock = threading.Lock()
        self._closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def drain(self) -> str:
        with self._lock:
            while not self._closed:
                try:
                    chunk = os.read(self.fd, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                self.data += chunk
            return self.data.decode(errors="replace")

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self._closed:
            poller.poll(100)
            self.drain()

    def text(self) -> str:
        return self.drain()

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not in output {self.text()!r}")
            time.sleep(0.02)
        return self.text()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self.fd)
        self.thread.join()


def rmtree(path: Path) -> None:
    host.unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)
