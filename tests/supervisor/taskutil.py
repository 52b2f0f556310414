"""Helpers of the tasks tests: container records, ``ctr task`` commands, clean-up.

A container is recorded through the containers gRPC service with an OCI
spec whose root is a busybox tree shared read-only by every container of
the module, and runtime options naming the OCI runtime binary the shim runs
(``BinaryName``) and a private runtime root. The tasks are then driven with
the real ``ctr``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import any_pb2

from dockyard.api import typeurl
from dockyard.api.events import task_pb2 as task_events
from dockyard.api.runc.options import oci_pb2
from dockyard.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from dockyard.api.services.events.v1 import events_pb2, events_pb2_grpc
from dockyard.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from tests.compat import host
from tests.conftest import base_config

if TYPE_CHECKING:  # conftest imports this module for its fixtures
    from tests.supervisor.conftest import Supervisor

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
RUNC_SHIM = "io.containerd.runc.v2"
DOCKYARD_SHIM = "io.containerd.dockyard.v2"

# (shim runtime name, OCI runtime binary): the reference shim with the
# reference runtime and with ours; our shim with its default runtime (ours)
# and with runc.
RUNTIMES = [
    pytest.param((RUNC_SHIM, "runc"), id="runc-shim+runc"),
    pytest.param((RUNC_SHIM, "dockyard-runtime"), id="runc-shim+dockyard-runtime"),
    pytest.param((DOCKYARD_SHIM, ""), id="dockyard-shim"),
    pytest.param((DOCKYARD_SHIM, "runc"), id="dockyard-shim+runc"),
]


def busybox_rootfs(path: Path) -> Path:
    """A minimal busybox tree: the binary, its applets, the mount points."""
    if (path / "bin" / "busybox").exists():
        return path
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root"):
        (path / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for a in applets:
        if a != "busybox":
            (path / "bin" / a).symlink_to("busybox")
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (path / "etc" / "group").write_text("root:x:0:\n")
    return path


class Runner:
    """Creates containers of one (shim, runtime) pair and removes them after."""

    def __init__(self, sup: Supervisor, runtime: str, binary: str) -> None:
        self.sup = sup
        self.runtime = runtime
        self.binary = host.runtime_binary(binary) if binary else ""
        self.rootfs = busybox_rootfs(sup.base / "busybox")
        self.fifo_dir = sup.base / "fifo"
        self.runtime_root = sup.base / "runtime-root"
        self.ids: list[tuple[str, str]] = []
        self._channel = sup.channel()

    def new_id(self) -> str:
        return "c" + uuid.uuid4().hex[:10]

    def spec(self, cid: str, args: list[str], ns: str) -> dict[str, Any]:
        spec = base_config(cid)
        spec["root"] = {"path": str(self.rootfs), "readonly": True}
        spec["process"]["args"] = args
        spec["process"]["env"] = ["PATH=/bin"]
        spec["hostname"] = cid
        spec["linux"]["cgroupsPath"] = f"/{ns}/{cid}"
        return spec

    def options(self) -> any_pb2.Any:
        # An empty binary name leaves the choice to the shim.
        return typeurl.pack(oci_pb2.Options(binary_name=self.binary, root=str(self.runtime_root)))

    def run_flags(self) -> list[str]:
        """``ctr run`` flags that pick the shim, the OCI runtime and a private root."""
        flags = ["--runtime", self.runtime, "--fifo-dir", str(self.fifo_dir)]
        if self.runtime == RUNC_SHIM:
            return [*flags, "--runc-binary", self.binary, "--runc-root", str(self.runtime_root)]
        # ctr gives other shims runc options only through a file (runtimeoptions.v1)
        config = self.sup.base / f"runtime-{self.runtime}-{os.path.basename(self.binary)}.toml"
        lines = [f"Root = {json.dumps(str(self.runtime_root))}"]
        if self.binary:
            lines.append(f"BinaryName = {json.dumps(self.binary)}")
        config.write_text("\n".join(lines) + "\n")
        return [*flags, "--runtime-config-path", str(config)]

    def run(
        self, *args: str, cid: str | None = None, flags: tuple[str, ...] = (), check: bool = False
    ) -> tuple[str, subprocess.CompletedProcess[str]]:
        """``ctr run [flags] IMAGE ID args``: (the id, ctr's result)."""
        ensure_image(self.sup)
        cid = cid or self.new_id()
        self.ids.append((self.sup.namespace, cid))
        p = self.ctr("run", *self.run_flags(), *flags, self.sup.image.ref, cid, *args, check=check)
        return cid, p

    def container(
        self,
        *args: str,
        cid: str | None = None,
        namespace: str | None = None,
        annotations: dict[str, str] | None = None,
    ) -> str:
        """Record a container running ``args`` (its spec with ``annotations``); its id."""
        ns = namespace or self.sup.namespace
        cid = cid or self.new_id()
        spec = self.spec(cid, list(args), ns)
        if annotations:
            spec["annotations"] = dict(annotations)
        record = containers_pb2.Container(
            id=cid,
            runtime=containers_pb2.Container.Runtime(name=self.runtime, options=self.options()),
            spec=typeurl.pack_json(typeurl.SPEC, spec),
        )
        self.containers().Create(
            containers_pb2.CreateContainerRequest(container=record), metadata=self.sup.md(ns)
        )
        self.ids.append((ns, cid))
        return cid

    def containers(self) -> containers_pb2_grpc.ContainersStub:
        return containers_pb2_grpc.ContainersStub(self._channel)

    def tasks_api(self) -> tasks_pb2_grpc.TasksStub:
        return tasks_pb2_grpc.TasksStub(self._channel)

    def ctr(self, *args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.sup.ctr(*args, check=check, **kw)

    def start(
        self, cid: str, *, detach: bool = False, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        flags = ["--fifo-dir", str(self.fifo_dir)] + (["--detach"] if detach else [])
        return self.ctr("task", "start", *flags, cid, check=check)

    def exec(self, cid: str, exec_id: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.ctr(
            "task",
            "exec",
            "--fifo-dir",
            str(self.fifo_dir),
            "--exec-id",
            exec_id,
            cid,
            *args,
            check=False,
        )

    def get(self, cid: str, namespace: str | None = None) -> tasks_pb2.GetResponse:
        return self.tasks_api().Get(
            tasks_pb2.GetRequest(container_id=cid), metadata=self.sup.md(namespace)
        )

    def bundle(self, cid: str, namespace: str | None = None) -> Path:
        ns = namespace or self.sup.namespace
        return self.sup.state / "io.containerd.runtime.v2.task" / ns / cid

    def work_dir(self, cid: str, namespace: str | None = None) -> Path:
        ns = namespace or self.sup.namespace
        return self.sup.root / "io.containerd.runtime.v2.task" / ns / cid

    def cleanup(self) -> None:
        for ns, cid in self.ids:
            self.sup.remove(cid, ns)
        self.ids.clear()
        self._channel.close()


def ensure_image(sup: Supervisor) -> None:
    """The busybox image, imported once into the supervisor's namespace."""
    if sup.image.ref not in sup.ctr("images", "ls", "--quiet").stdout.split():
        sup.ctr("images", "import", str(sup.image.path))


def wait_for_status(runner: Runner, cid: str, status: str, timeout: float = 20) -> None:
    host.wait_for(lambda: runner.sup.tasks().get(cid) == status, timeout, f"task {cid} {status}")


def shim_pids(cid: str) -> list[int]:
    """Live shims of task ``cid``: a shim's command line names it ("-id <cid>")."""
    return [pid for pid in host.pids_mentioning(f"-id {cid} ") if host.alive(pid)]


def catches(pid: int, sig: int) -> bool:
    """Whether ``pid`` has a handler for ``sig`` yet (SigCgt in /proc/<pid>/status):
    as a pid namespace's init it ignores the signal until it has one."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


def grpc_code(call: Any) -> grpc.StatusCode:
    """The status code a gRPC call fails with (the test fails if it succeeds)."""
    try:
        call()
    except grpc.RpcError as e:
        code: grpc.StatusCode = e.code()
        return code
    raise AssertionError("the call succeeded")


def runner_for(sup: Supervisor, param: tuple[str, str]) -> Iterator[Runner]:
    runtime, binary = param
    r = Runner(sup, runtime, binary)
    try:
        yield r
    finally:
        # a test that failed while the supervisor was down leaves it down
        if sup.proc is not None and sup.proc.poll() is not None:
            sup.start()
        r.cleanup()


class EventLog:
    """A subscription to the supervisor's events, collected in a thread.

    ``start()`` returns once the subscription is live: it publishes a marker
    event and waits to see it come back, so no later event can be missed.
    """

    def __init__(self, sup: Supervisor, *filters: str) -> None:
        self.sup = sup
        self.filters = [*filters, 'topic=="/dockyard-test/ready"'] if filters else []
        self.envelopes: list[events_pb2.Envelope] = []
        self._lock = threading.Lock()
        self._channel = sup.channel()
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> EventLog:
        stub = events_pb2_grpc.EventsStub(self._channel)
        self._stream = stub.Subscribe(events_pb2.SubscribeRequest(filters=self.filters))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        marker = typeurl.pack(task_events.TaskStart(container_id="ready"))

        def seen() -> bool:
            # The subscription may not be registered yet: publish until it is.
            if self.topics():
                return True
            stub.Publish(
                events_pb2.PublishRequest(topic="/dockyard-test/ready", event=marker),
                metadata=self.sup.md(),
            )
            return bool(self.topics())

        host.wait_for(seen, 10, "the events subscription")
        return self

    def _read(self) -> None:
        try:
            for env in self._stream:
                with self._lock:
                    self.envelopes.append(env)
        except grpc.RpcError:
            pass

    def topics(self, cid: str | None = None) -> list[str]:
        """Topics seen so far, of container ``cid`` only if given."""
        with self._lock:
            envs = list(self.envelopes)
        out = []
        for env in envs:
            if cid is not None:
                msg = typeurl.unpack(env.event)
                if getattr(msg, "container_id", None) != cid:
                    continue
            out.append(env.topic)
        return out

    def event(self, cid: str, topic: str) -> Any:
        with self._lock:
            envs = list(self.envelopes)
        for env in envs:
            msg = typeurl.unpack(env.event)
            if env.topic == topic and getattr(msg, "container_id", None) == cid:
                return msg
        raise AssertionError(f"no {topic} event of {cid}: {self.topics(cid)}")

    def wait(self, cid: str, topic: str, timeout: float = 20) -> Any:
        host.wait_for(lambda: topic in self.topics(cid), timeout, f"{topic} of {cid}")
        return self.event(cid, topic)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        if self._thread is not None:
            self._thread.join(10)
        self._channel.close()
