"""The generated descriptors against containerd 1.6.20's API, written out by hand.

Wire compatibility with containerd's clients (ctr 1.6) and shims needs the
same full names of services, methods and messages, the same streaming shapes,
and the same field numbers and types. The tables below were written from
containerd v1.6.20's .proto files, not from ours, so a slip in either shows.
"""

from __future__ import annotations

import filecmp
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

REPO = Path(__file__).resolve().parents[2]
API = REPO / "dockyard" / "api"
EMPTY = "google.protobuf.Empty"

# Every module holding a service, imported so that its file is in the pool.
SERVICE_MODULES = [
    "dockyard.api.services.containers.v1.containers_pb2",
    "dockyard.api.services.content.v1.content_pb2",
    "dockyard.api.services.diff.v1.diff_pb2",
    "dockyard.api.services.events.v1.events_pb2",
    "dockyard.api.services.images.v1.images_pb2",
    "dockyard.api.services.introspection.v1.introspection_pb2",
    "dockyard.api.services.leases.v1.leases_pb2",
    "dockyard.api.services.namespaces.v1.namespace_pb2",
    "dockyard.api.services.snapshots.v1.snapshots_pb2",
    "dockyard.api.services.tasks.v1.tasks_pb2",
    "dockyard.api.services.version.v1.version_pb2",
    "dockyard.api.services.ttrpc.events.v1.events_pb2",
    "dockyard.api.runtime.task.v2.shim_pb2",
]

# service full name -> [(method, request, response, streaming)]. A type name
# without a dot is in the service's package. streaming: "" (unary), "server",
# "client" or "bidi".
SERVICES: dict[str, list[tuple[str, str, str, str]]] = {
    "containerd.services.containers.v1.Containers": [
        ("Get", "GetContainerRequest", "GetContainerResponse", ""),
        ("List", "ListContainersRequest", "ListContainersResponse", ""),
        ("ListStream", "ListContainersRequest", "ListContainerMessage", "server"),
        ("Create", "CreateContainerRequest", "CreateContainerResponse", ""),
        ("Update", "UpdateContainerRequest", "UpdateContainerResponse", ""),
        ("Delete", "DeleteContainerRequest", EMPTY, ""),
    ],
    "containerd.services.content.v1.Content": [
        ("Info", "InfoRequest", "InfoResponse", ""),
        ("Update", "UpdateRequest", "UpdateResponse", ""),
        ("List", "ListContentRequest", "ListContentResponse", "server"),
        ("Delete", "DeleteContentRequest", EMPTY, ""),
        ("Read", "ReadContentRequest", "ReadContentResponse", "server"),
        ("Status", "StatusRequest", "StatusResponse", ""),
        ("ListStatuses", "ListStatusesRequest", "ListStatusesResponse", ""),
        ("Write", "WriteContentRequest", "WriteContentResponse", "bidi"),
        ("Abort", "AbortRequest", EMPTY, ""),
    ],
    "containerd.services.diff.v1.Diff": [
        ("Apply", "ApplyRequest", "ApplyResponse", ""),
        ("Diff", "DiffRequest", "DiffResponse", ""),
    ],
    "containerd.services.events.v1.Events": [
        ("Publish", "PublishRequest", EMPTY, ""),
        ("Forward", "ForwardRequest", EMPTY, ""),
        ("Subscribe", "SubscribeRequest", "Envelope", "server"),
    ],
    "containerd.services.images.v1.Images": [
        ("Get", "GetImageRequest", "GetImageResponse", ""),
        ("List", "ListImagesRequest", "ListImagesResponse", ""),
        ("Create", "CreateImageRequest", "CreateImageResponse", ""),
        ("Update", "UpdateImageRequest", "UpdateImageResponse", ""),
        ("Delete", "DeleteImageRequest", EMPTY, ""),
    ],
    "containerd.services.introspection.v1.Introspection": [
        ("Plugins", "PluginsRequest", "PluginsResponse", ""),
        ("Server", EMPTY, "ServerResponse", ""),
    ],
    "containerd.services.leases.v1.Leases": [
        ("Create", "CreateRequest", "CreateResponse", ""),
        ("Delete", "DeleteRequest", EMPTY, ""),
        ("List", "ListRequest", "ListResponse", ""),
        ("AddResource", "AddResourceRequest", EMPTY, ""),
        ("DeleteResource", "DeleteResourceRequest", EMPTY, ""),
        ("ListResources", "ListResourcesRequest", "ListResourcesResponse", ""),
    ],
    "containerd.services.namespaces.v1.Namespaces": [
        ("Get", "GetNamespaceRequest", "GetNamespaceResponse", ""),
        ("List", "ListNamespacesRequest", "ListNamespacesResponse", ""),
        ("Create", "CreateNamespaceRequest", "CreateNamespaceResponse", ""),
        ("Update", "UpdateNamespaceRequest", "UpdateNamespaceResponse", ""),
        ("Delete", "DeleteNamespaceRequest", EMPTY, ""),
    ],
    "containerd.services.snapshots.v1.Snapshots": [
        ("Prepare", "PrepareSnapshotRequest", "PrepareSnapshotResponse", ""),
        ("View", "ViewSnapshotRequest", "ViewSnapshotResponse", ""),
        ("Mounts", "MountsRequest", "MountsResponse", ""),
        ("Commit", "CommitSnapshotRequest", EMPTY, ""),
        ("Remove", "RemoveSnapshotRequest", EMPTY, ""),
        ("Stat", "StatSnapshotRequest", "StatSnapshotResponse", ""),
        ("Update", "UpdateSnapshotRequest", "UpdateSnapshotResponse", ""),
        ("List", "ListSnapshotsRequest", "ListSnapshotsResponse", "server"),
        ("Usage", "UsageRequest", "UsageResponse", ""),
        ("Cleanup", "CleanupRequest", EMPTY, ""),
    ],
    "containerd.services.tasks.v1.Tasks": [
        ("Create", "CreateTaskRequest", "CreateTaskResponse", ""),
        ("Start", "StartRequest", "StartResponse", ""),
        ("Delete", "DeleteTaskRequest", "DeleteResponse", ""),
        ("DeleteProcess", "DeleteProcessRequest", "DeleteResponse", ""),
        ("Get", "GetRequest", "GetResponse", ""),
        ("List", "ListTasksRequest", "ListTasksResponse", ""),
        ("Kill", "KillRequest", EMPTY, ""),
        ("Exec", "ExecProcessRequest", EMPTY, ""),
        ("ResizePty", "ResizePtyRequest", EMPTY, ""),
        ("CloseIO", "CloseIORequest", EMPTY, ""),
        ("Pause", "PauseTaskRequest", EMPTY, ""),
        ("Resume", "ResumeTaskRequest", EMPTY, ""),
        ("ListPids", "ListPidsRequest", "ListPidsResponse", ""),
        ("Checkpoint", "CheckpointTaskRequest", "CheckpointTaskResponse", ""),
        ("Update", "UpdateTaskRequest", EMPTY, ""),
        ("Metrics", "MetricsRequest", "MetricsResponse", ""),
        ("Wait", "WaitRequest", "WaitResponse", ""),
    ],
    "containerd.services.version.v1.Version": [
        ("Version", EMPTY, "VersionResponse", ""),
    ],
    "containerd.services.events.ttrpc.v1.Events": [
        ("Forward", "ForwardRequest", EMPTY, ""),
    ],
    "containerd.task.v2.Task": [
        ("State", "StateRequest", "StateResponse", ""),
        ("Create", "CreateTaskRequest", "CreateTaskResponse", ""),
        ("Start", "StartRequest", "StartResponse", ""),
        ("Delete", "DeleteRequest", "DeleteResponse", ""),
        ("Pids", "PidsRequest", "PidsResponse", ""),
        ("Pause", "PauseRequest", EMPTY, ""),
        ("Resume", "ResumeRequest", EMPTY, ""),
        ("Checkpoint", "CheckpointTaskRequest", EMPTY, ""),
        ("Kill", "KillRequest", EMPTY, ""),
        ("Exec", "ExecProcessRequest", EMPTY, ""),
        ("ResizePty", "ResizePtyRequest", EMPTY, ""),
        ("CloseIO", "CloseIORequest", EMPTY, ""),
        ("Update", "UpdateTaskRequest", EMPTY, ""),
        ("Wait", "WaitRequest", "WaitResponse", ""),
        ("Stats", "StatsRequest", "StatsResponse", ""),
        ("Connect", "ConnectRequest", "ConnectResponse", ""),
        ("Shutdown", "ShutdownRequest", EMPTY, ""),
    ],
}

TS = "google.protobuf.Timestamp"
ANY = "google.protobuf.Any"
MOUNT = "containerd.types.Mount"
DESCRIPTOR = "containerd.types.Descriptor"
LABELS = "map<string, string>"

# message full name -> {field: (number, type)}, in proto syntax; the message
# must have exactly these fields.
FIELDS: dict[str, dict[str, tuple[int, str]]] = {
    "containerd.types.Mount": {
        "type": (1, "string"),
        "source": (2, "string"),
        "target": (3, "string"),
        "options": (4, "repeated string"),
    },
    "containerd.types.Descriptor": {
        "media_type": (1, "string"),
        "digest": (2, "string"),
        "size": (3, "int64"),
        "annotations": (5, LABELS),
    },
    "containerd.types.Platform": {
        "os": (1, "string"),
        "architecture": (2, "string"),
        "variant": (3, "string"),
    },
    "containerd.v1.types.Process": {
        "container_id": (1, "string"),
        "id": (2, "string"),
        "pid": (3, "uint32"),
        "status": (4, "containerd.v1.types.Status"),
        "stdin": (5, "string"),
        "stdout": (6, "string"),
        "stderr": (7, "string"),
        "terminal": (8, "bool"),
        "exit_status": (9, "uint32"),
        "exited_at": (10, TS),
    },
    "containerd.services.tasks.v1.CreateTaskRequest": {
        "container_id": (1, "string"),
        "rootfs": (3, f"repeated {MOUNT}"),
        "stdin": (4, "string"),
        "stdout": (5, "string"),
        "stderr": (6, "string"),
        "terminal": (7, "bool"),
        "checkpoint": (8, DESCRIPTOR),
        "options": (9, ANY),
        "runtime_path": (10, "string"),
    },
    "containerd.services.tasks.v1.ExecProcessRequest": {
        "container_id": (1, "string"),
        "stdin": (2, "string"),
        "stdout": (3, "string"),
        "stderr": (4, "string"),
        "terminal": (5, "bool"),
        "spec": (6, ANY),
        "exec_id": (7, "string"),
    },
    "containerd.services.tasks.v1.DeleteResponse": {
        "id": (1, "string"),
        "pid": (2, "uint32"),
        "exit_status": (3, "uint32"),
        "exited_at": (4, TS),
    },
    "containerd.task.v2.CreateTaskRequest": {
        "id": (1, "string"),
        "bundle": (2, "string"),
        "rootfs": (3, f"repeated {MOUNT}"),
        "terminal": (4, "bool"),
        "stdin": (5, "string"),
        "stdout": (6, "string"),
        "stderr": (7, "string"),
        "checkpoint": (8, "string"),
        "parent_checkpoint": (9, "string"),
        "options": (10, ANY),
    },
    "containerd.task.v2.StateResponse": {
        "id": (1, "string"),
        "bundle": (2, "string"),
        "pid": (3, "uint32"),
        "status": (4, "containerd.v1.types.Status"),
        "stdin": (5, "string"),
        "stdout": (6, "string"),
        "stderr": (7, "string"),
        "terminal": (8, "bool"),
        "exit_status": (9, "uint32"),
        "exited_at": (10, TS),
        "exec_id": (11, "string"),
    },
    "containerd.task.v2.ConnectResponse": {
        "shim_pid": (1, "uint32"),
        "task_pid": (2, "uint32"),
        "version": (3, "string"),
    },
    "containerd.services.containers.v1.Container": {
        "id": (1, "string"),
        "labels": (2, LABELS),
        "image": (3, "string"),
        "runtime": (4, "containerd.services.containers.v1.Container.Runtime"),
        "spec": (5, ANY),
        "snapshotter": (6, "string"),
        "snapshot_key": (7, "string"),
        "created_at": (8, TS),
        "updated_at": (9, TS),
        "extensions": (10, f"map<string, {ANY}>"),
    },
    "containerd.services.containers.v1.Container.Runtime": {
        "name": (1, "string"),
        "options": (2, ANY),
    },
    "containerd.services.images.v1.Image": {
        "name": (1, "string"),
        "labels": (2, LABELS),
        "target": (3, DESCRIPTOR),
        "created_at": (7, TS),
        "updated_at": (8, TS),
    },
    "containerd.services.events.v1.Envelope": {
        "timestamp": (1, TS),
        "namespace": (2, "string"),
        "topic": (3, "string"),
        "event": (4, ANY),
    },
    "containerd.services.events.ttrpc.v1.Envelope": {
        "timestamp": (1, TS),
        "namespace": (2, "string"),
        "topic": (3, "string"),
        "event": (4, ANY),
    },
    "containerd.events.TaskExit": {
        "container_id": (1, "string"),
        "id": (2, "string"),
        "pid": (3, "uint32"),
        "exit_status": (4, "uint32"),
        "exited_at": (5, TS),
    },
    "containerd.events.TaskCreate": {
        "container_id": (1, "string"),
        "bundle": (2, "string"),
        "rootfs": (3, f"repeated {MOUNT}"),
        "io": (4, "containerd.events.TaskIO"),
        "checkpoint": (5, "string"),
        "pid": (6, "uint32"),
    },
    "containerd.events.TaskDelete": {
        "container_id": (1, "string"),
        "pid": (2, "uint32"),
        "exit_status": (3, "uint32"),
        "exited_at": (4, TS),
        "id": (5, "string"),
    },
    "containerd.services.content.v1.Info": {
        "digest": (1, "string"),
        "size": (2, "int64"),
        "created_at": (3, TS),
        "updated_at": (4, TS),
        "labels": (5, LABELS),
    },
    "containerd.services.content.v1.WriteContentRequest": {
        "action": (1, "containerd.services.content.v1.WriteAction"),
        "ref": (2, "string"),
        "total": (3, "int64"),
        "expected": (4, "string"),
        "offset": (5, "int64"),
        "data": (6, "bytes"),
        "labels": (7, LABELS),
    },
    "containerd.services.content.v1.WriteContentResponse": {
        "action": (1, "containerd.services.content.v1.WriteAction"),
        "started_at": (2, TS),
        "updated_at": (3, TS),
        "offset": (4, "int64"),
        "total": (5, "int64"),
        "digest": (6, "string"),
    },
    "containerd.services.content.v1.Status": {
        "started_at": (1, TS),
        "updated_at": (2, TS),
        "ref": (3, "string"),
        "offset": (4, "int64"),
        "total": (5, "int64"),
        "expected": (6, "string"),
    },
    "containerd.services.snapshots.v1.Info": {
        "name": (1, "string"),
        "parent": (2, "string"),
        "kind": (3, "containerd.services.snapshots.v1.Kind"),
        "created_at": (4, TS),
        "updated_at": (5, TS),
        "labels": (6, LABELS),
    },
    "containerd.services.leases.v1.Lease": {
        "id": (1, "string"),
        "created_at": (2, TS),
        "labels": (3, LABELS),
    },
    "containerd.services.leases.v1.CreateRequest": {
        "id": (1, "string"),
        "labels": (3, LABELS),
    },
    "containerd.services.diff.v1.DiffResponse": {
        "diff": (3, DESCRIPTOR),
    },
    "containerd.services.introspection.v1.Plugin": {
        "type": (1, "string"),
        "id": (2, "string"),
        "requires": (3, "repeated string"),
        "platforms": (4, "repeated containerd.types.Platform"),
        "exports": (5, LABELS),
        "capabilities": (6, "repeated string"),
        "init_err": (7, "google.rpc.Status"),
    },
    "containerd.runc.v1.Options": {
        "no_pivot_root": (1, "bool"),
        "no_new_keyring": (2, "bool"),
        "shim_cgroup": (3, "string"),
        "io_uid": (4, "uint32"),
        "io_gid": (5, "uint32"),
        "binary_name": (6, "string"),
        "root": (7, "string"),
        "criu_path": (8, "string"),
        "systemd_cgroup": (9, "bool"),
        "criu_image_path": (10, "string"),
        "criu_work_path": (11, "string"),
    },
    "containerd.linux.runc.CreateOptions": {
        "no_pivot_root": (1, "bool"),
        "open_tcp": (2, "bool"),
        "external_unix_sockets": (3, "bool"),
        "terminal": (4, "bool"),
        "file_locks": (5, "bool"),
        "empty_namespaces": (6, "repeated string"),
        "cgroups_mode": (7, "string"),
        "no_new_keyring": (8, "bool"),
        "shim_cgroup": (9, "string"),
        "io_uid": (10, "uint32"),
        "io_gid": (11, "uint32"),
        "criu_work_path": (12, "string"),
        "criu_image_path": (13, "string"),
    },
    "io.containerd.cgroups.v1.Metrics": {
        "hugetlb": (1, "repeated io.containerd.cgroups.v1.HugetlbStat"),
        "pids": (2, "io.containerd.cgroups.v1.PidsStat"),
        "cpu": (3, "io.containerd.cgroups.v1.CPUStat"),
        "memory": (4, "io.containerd.cgroups.v1.MemoryStat"),
        "blkio": (5, "io.containerd.cgroups.v1.BlkIOStat"),
        "rdma": (6, "io.containerd.cgroups.v1.RdmaStat"),
        "network": (7, "repeated io.containerd.cgroups.v1.NetworkStat"),
        "cgroup_stats": (8, "io.containerd.cgroups.v1.CgroupStats"),
        "memory_oom_control": (9, "io.containerd.cgroups.v1.MemoryOomControl"),
    },
    "io.containerd.cgroups.v2.Metrics": {
        "pids": (1, "io.containerd.cgroups.v2.PidsStat"),
        "cpu": (2, "io.containerd.cgroups.v2.CPUStat"),
        "memory": (4, "io.containerd.cgroups.v2.MemoryStat"),
        "rdma": (5, "io.containerd.cgroups.v2.RdmaStat"),
        "io": (6, "io.containerd.cgroups.v2.IOStat"),
        "hugetlb": (7, "repeated io.containerd.cgroups.v2.HugeTlbStat"),
        "memory_events": (8, "io.containerd.cgroups.v2.MemoryEvents"),
    },
    "google.rpc.Status": {
        "code": (1, "int32"),
        "message": (2, "string"),
        "details": (3, f"repeated {ANY}"),
    },
}

# enum full name -> {value name: number}
ENUMS: dict[str, dict[str, int]] = {
    "containerd.v1.types.Status": {
        "UNKNOWN": 0,
        "CREATED": 1,
        "RUNNING": 2,
        "STOPPED": 3,
        "PAUSED": 4,
        "PAUSING": 5,
    },
    "containerd.services.content.v1.WriteAction": {"STAT": 0, "WRITE": 1, "COMMIT": 2},
    "containerd.services.snapshots.v1.Kind": {
        "UNKNOWN": 0,
        "VIEW": 1,
        "ACTIVE": 2,
        "COMMITTED": 3,
    },
}

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
}


def _all_modules() -> list[str]:
    names = []
    for path in sorted(API.rglob("*_pb2.py")):
        names.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return names


@pytest.fixture(scope="module", autouse=True)
def _load_every_module() -> None:
    # Importing all of them in one process also proves no two files define
    # the same full name (the default pool refuses duplicates).
    for name in _all_modules():
        importlib.import_module(name)


def _type_of(field: FieldDescriptor) -> str:
    msg, enum = field.message_type, field.enum_type
    if msg is not None:
        if msg.GetOptions().map_entry:
            key, value = msg.fields_by_name["key"], msg.fields_by_name["value"]
            return f"map<{_type_of(key)}, {_type_of(value)}>"
        name = msg.full_name
    elif enum is not None:
        name = enum.full_name
    else:
        name = _SCALARS[field.type]
    return f"repeated {name}" if field.is_repeated else name


def _message(name: str) -> Descriptor:
    return descriptor_pool.Default().FindMessageTypeByName(name)


def _qualify(package: str, name: str) -> str:
    return name if "." in name else f"{package}.{name}"


def test_every_module_listed_in_service_modules() -> None:
    with_services = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts) + "_pb2"
        for p in API.rglob("*.proto")
        if any(line.startswith("service ") for line in p.read_text().splitlines())
    )
    assert with_services == sorted(SERVICE_MODULES)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_methods(service: str) -> None:
    desc = descriptor_pool.Default().FindServiceByName(service)
    package = service.rsplit(".", 1)[0]
    got = []
    for m in desc.methods:
        streaming = {
            (False, False): "",
            (False, True): "server",
            (True, False): "client",
            (True, True): "bidi",
        }[(m.client_streaming, m.server_streaming)]
        got.append((m.name, m.input_type.full_name, m.output_type.full_name, streaming))
    want = [
        (name, _qualify(package, req), _qualify(package, resp), streaming)
        for name, req, resp, streaming in SERVICES[service]
    ]
    assert got == want


def test_no_service_beyond_the_table() -> None:
    pool = descriptor_pool.Default()
    found: set[str] = set()
    for name in SERVICE_MODULES:
        module = importlib.import_module(name)
        found.update(s.full_name for s in module.DESCRIPTOR.services_by_name.values())
    assert found == set(SERVICES)
    assert all(pool.FindServiceByName(s) for s in found)


@pytest.mark.parametrize("message", sorted(FIELDS))
def test_message_fields(message: str) -> None:
    desc = _message(message)
    got = {f.name: (f.number, _type_of(f)) for f in desc.fields}
    assert got == FIELDS[message]


@pytest.mark.parametrize("enum", sorted(ENUMS))
def test_enum_values(enum: str) -> None:
    desc = descriptor_pool.Default().FindEnumTypeByName(enum)
    assert {v.name: v.number for v in desc.values} == ENUMS[enum]


@pytest.mark.parametrize(
    "module, package",
    [
        ("dockyard.api.types.mount_pb2", "containerd.types"),
        ("dockyard.api.types.task.task_pb2", "containerd.v1.types"),
        ("dockyard.api.events.task_pb2", "containerd.events"),
        # containerd's image events live in the images service's package
        ("dockyard.api.events.image_pb2", "containerd.services.images.v1"),
        ("dockyard.api.runc.options.oci_pb2", "containerd.runc.v1"),
        ("dockyard.api.runtime.linux.runctypes.runc_pb2", "containerd.linux.runc"),
        ("dockyard.api.runtimeoptions.v1.api_pb2", "runtimeoptions.v1"),
        ("dockyard.api.cgroups.v1.metrics_pb2", "io.containerd.cgroups.v1"),
        ("dockyard.api.cgroups.v2.metrics_pb2", "io.containerd.cgroups.v2"),
        ("dockyard.api.rpc.status_pb2", "google.rpc"),
    ],
)
def test_packages(module: str, package: str) -> None:
    assert importlib.import_module(module).DESCRIPTOR.package == package


def test_a_message_reads_what_containerd_writes() -> None:
    # TaskExit{container_id: "c1", id: "c1", pid: 42, exit_status: 137,
    # exited_at: {seconds: 5}} as containerd's Go code encodes it.
    from dockyard.api.events.task_pb2 import TaskExit

    wire = b"\n\x02c1\x12\x02c1\x18*\x20\x89\x01*\x02\x08\x05"
    msg = TaskExit.FromString(wire)
    assert (msg.container_id, msg.id, msg.pid, msg.exit_status) == ("c1", "c1", 42, 137)
    assert msg.exited_at.seconds == 5
    assert msg.SerializeToString() == wire


def _generated(root: Path) -> dict[str, Path]:
    files = {}
    for pattern in ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "__init__.py"):
        for path in (root / "dockyard" / "api").rglob(pattern):
            files[str(path.relative_to(root))] = path
    return files


def test_generated_files_are_current(tmp_path: Path) -> None:
    """scripts/protos.sh run now writes exactly the committed files."""
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(
        ["bash", str(REPO / "scripts" / "protos.sh"), str(tmp_path)],
        check=True,
        env=env,
        cwd=REPO,
    )
    fresh = _generated(tmp_path)
    committed = _generated(REPO)
    # __init__.py files are compared as a set: which directories are packages
    assert sorted(fresh) == sorted(committed)
    stale = [
        name
        for name, path in fresh.items()
        if not name.endswith("__init__.py")
        and not filecmp.cmp(path, committed[name], shallow=False)
    ]
    assert stale == [], "run scripts/protos.sh and commit the result"


def test_grpc_modules_only_for_services() -> None:
    grpc_modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts) for p in API.rglob("*_pb2_grpc.py")
    )
    assert grpc_modules == sorted(name + "_grpc" for name in SERVICE_MODULES)
