"""The messages the shim sends and receives, in the shim's own codec.

Names, numbers and types are containerd 1.6's (runtime/v2/task/shim.proto,
api/events/task.proto, api/types, api/services/ttrpc/events/v1,
runtime/v2/runc/options, runtime/linux/runctypes, pkg/runtimeoptions,
containerd/cgroups stats v1 and v2), as dockyard.api's .proto files define
them; the tests check each one against those generated descriptors.
"""

from __future__ import annotations

from dockyard.api import specurls
from dockyard.shim.codec import BOOL, BYTES, INT, MAP, MESSAGE, STRING, UINT, Message, field

# containerd's type URLs of the JSON values in Any (pkg/typeurl registrations).
PROCESS_URL = specurls.PROCESS
LINUX_RESOURCES_URL = specurls.LINUX_RESOURCES

# containerd.v1.types.Status
UNKNOWN = 0
CREATED = 1
RUNNING = 2
STOPPED = 3
PAUSED = 4
PAUSING = 5


# -- google.protobuf -------------------------------------------------------------------


class Any(Message):
    FULL_NAME = "google.protobuf.Any"
    type_url: str = field(1, STRING)
    value: bytes = field(2, BYTES)


class Empty(Message):
    FULL_NAME = "google.protobuf.Empty"


class Timestamp(Message):
    FULL_NAME = "google.protobuf.Timestamp"
    seconds: int = field(1, INT)
    nanos: int = field(2, INT)

    @classmethod
    def from_ns(cls, ns: int) -> Timestamp:
        return cls(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)

    def to_ns(self) -> int:
        return self.seconds * 1_000_000_000 + self.nanos


def pack(msg: Message) -> Any:
    """``msg`` in an Any, under containerd's type URL (the bare full name)."""
    return Any(type_url=msg.FULL_NAME, value=msg.SerializeToString())


def timestamp(ns: int) -> Timestamp | None:
    """A Timestamp, or None (absent) for 0: not exited."""
    return Timestamp.from_ns(ns) if ns else None


# -- containerd.types ----------------------------------------------------------------


class Mount(Message):
    FULL_NAME = "containerd.types.Mount"
    type: str = field(1, STRING)
    source: str = field(2, STRING)
    target: str = field(3, STRING)
    options: list[str] = field(4, STRING, repeated=True)


class ProcessInfo(Message):
    FULL_NAME = "containerd.v1.types.ProcessInfo"
    pid: int = field(1, UINT)
    info: Any | None = field(2, MESSAGE, Any)


# -- containerd.task.v2 --------------------------------------------------------------


class CreateTaskRequest(Message):
    FULL_NAME = "containerd.task.v2.CreateTaskRequest"
    id: str = field(1, STRING)
    bundle: str = field(2, STRING)
    rootfs: list[Mount] = field(3, MESSAGE, Mount, repeated=True)
    terminal: bool = field(4, BOOL)
    stdin: str = field(5, STRING)
    stdout: str = field(6, STRING)
    stderr: str = field(7, STRING)
    checkpoint: str = field(8, STRING)
    parent_checkpoint: str = field(9, STRING)
    options: Any | None = field(10, MESSAGE, Any)


class CreateTaskResponse(Message):
    FULL_NAME = "containerd.task.v2.CreateTaskResponse"
    pid: int = field(1, UINT)


class DeleteRequest(Message):
    FULL_NAME = "containerd.task.v2.DeleteRequest"
    id: str = field(1, STRING)
    exec_id: str = field(2, STRING)


class DeleteResponse(Message):
    FULL_NAME = "containerd.task.v2.DeleteResponse"
    pid: int = field(1, UINT)
    exit_status: int = field(2, UINT)
    exited_at: Timestamp | None = field(3, MESSAGE, Timestamp)


class ExecProcessRequest(Message):
    FULL_NAME = "containerd.task.v2.ExecProcessRequest"
    id: str = field(1, STRING)
    exec_id: str = field(2, STRING)
    terminal: bool = field(3, BOOL)
    stdin: str = field(4, STRING)
    stdout: str = field(5, STRING)
    stderr: str = field(6, STRING)
    spec: Any | None = field(7, MESSAGE, Any)


class ResizePtyRequest(Message):
    FULL_NAME = "containerd.task.v2.ResizePtyRequest"
    id: str = field(1, STRING)
    exec_id: str = field(2, STRING)
    width: int = field(3, UINT)
    height: int = field(4, UINT)


class StateRequest(Message):
    FULL_NAME = "containerd.task.v2.StateRequest"
    id: str = field(1, STRING)
    exec_id: str = field(2, STRING)


class StateResponse(Message):
    FULL_NAME = "containerd.task.v2.StateResponse"
    id: str = field(1, STRING)
    bundle: str = field(2, STRING)
    pid: int = field(3, UINT)
    status: int = field(4, UINT)
    stdin: str = field(5, STRING)
    stdout: str = field(6, STRING)
    stderr: str = field(7, STRING)
    terminal: bool = field(8, BOOL)
    exit_status: int = field(9, UINT)
    exited_at: Timestamp | None = field(10, MESSAGE, Timestamp)
    exec_id: str = field(11, STRING)


class KillRequest(Message):
    FULL_NAME = "containerd.task.v2.KillRequest"
    id: str = field(1, STRING)
    exec_id: str = field(2, STRING)
    signal: int = field(3, UINT)
    all: bool = field(4, BOOL)


class CloseIORequest(Message):
    FULL_NAME = "containerd.task.v2.CloseIORequest"
    id: str = field(1, STRING)
    exec_id: str = field(2, STRING)
    stdin: bool = field(3, BOOL)


class PidsRequest(Message):
    FULL_NAME = "containerd.task.v2.PidsRequest"
    id: str = field(1, STRING)


class PidsResponse(Message):
    FULL_NAME = "containerd.task.v2.PidsResponse"
    processes: list[ProcessInfo] = field(1, MESSAGE, ProcessInfo, repeated=True)


class CheckpointTaskRequest(Message):
    FULL_NAME = "containerd.task.v2.CheckpointTaskRequest"
    id: str = field(1, STRING)
    path: str = field(2, STRING)
    options: Any | None = field(3, MESSAGE, Any)


class UpdateTaskRequest(Message):
    FULL_NAME = "containerd.task.v2.UpdateTaskRequest"
    id: str = field(1, STRING)
    resources: Any | None = field(2, MESSAGE, Any)
    annotations: dict[str, str] = field(3, MAP)


class StartRequest(Message):
    FULL_NAME = "containerd.task.v2.StartRequest"
    id: str = field(1, STRING)
    exec_id: str = field(2, STRING)


class StartResponse(Message):
    FULL_NAME = "containerd.task.v2.StartResponse"
    pid: int = field(1, UINT)


class WaitRequest(Message):
    FULL_NAME = "containerd.task.v2.WaitRequest"
    id: str = field(1, STRING)
    exec_id: str = field(2, STRING)


class WaitResponse(Message):
    FULL_NAME = "containerd.task.v2.WaitResponse"
    exit_status: int = field(1, UINT)
    exited_at: Timestamp | None = field(2, MESSAGE, Timestamp)


class StatsRequest(Message):
    FULL_NAME = "containerd.task.v2.StatsRequest"
    id: str = field(1, STRING)


class StatsResponse(Message):
    FULL_NAME = "containerd.task.v2.StatsResponse"
    stats: Any | None = field(1, MESSAGE, Any)


class ConnectRequest(Message):
    FULL_NAME = "containerd.task.v2.ConnectRequest"
    id: str = field(1, STRING)


class ConnectResponse(Message):
    FULL_NAME = "containerd.task.v2.ConnectResponse"
    shim_pid: int = field(1, UINT)
    task_pid: int = field(2, UINT)
    version: str = field(3, STRING)


class ShutdownRequest(Message):
    FULL_NAME = "containerd.task.v2.ShutdownRequest"
    id: str = field(1, STRING)
    now: bool = field(2, BOOL)


class PauseRequest(Message):
    FULL_NAME = "containerd.task.v2.PauseRequest"
    id: str = field(1, STRING)


class ResumeRequest(Message):
    FULL_NAME = "containerd.task.v2.ResumeRequest"
    id: str = field(1, STRING)


# -- containerd.events ----------------------------------------------------------------


class TaskIO(Message):
    FULL_NAME = "containerd.events.TaskIO"
    stdin: str = field(1, STRING)
    stdout: str = field(2, STRING)
    stderr: str = field(3, STRING)
    terminal: bool = field(4, BOOL)


class TaskCreate(Message):
    FULL_NAME = "containerd.events.TaskCreate"
    container_id: str = field(1, STRING)
    bundle: str = field(2, STRING)
    rootfs: list[Mount] = field(3, MESSAGE, Mount, repeated=True)
    io: TaskIO | None = field(4, MESSAGE, TaskIO)
    checkpoint: str = field(5, STRING)
    pid: int = field(6, UINT)


class TaskStart(Message):
    FULL_NAME = "containerd.events.TaskStart"
    container_id: str = field(1, STRING)
    pid: int = field(2, UINT)


class TaskDelete(Message):
    FULL_NAME = "containerd.events.TaskDelete"
    container_id: str = field(1, STRING)
    pid: int = field(2, UINT)
    exit_status: int = field(3, UINT)
    exited_at: Timestamp | None = field(4, MESSAGE, Timestamp)
    id: str = field(5, STRING)


class TaskExit(Message):
    FULL_NAME = "containerd.events.TaskExit"
    container_id: str = field(1, STRING)
    id: str = field(2, STRING)
    pid: int = field(3, UINT)
    exit_status: int = field(4, UINT)
    exited_at: Timestamp | None = field(5, MESSAGE, Timestamp)


class TaskOOM(Message):
    FULL_NAME = "containerd.events.TaskOOM"
    container_id: str = field(1, STRING)


class TaskExecAdded(Message):
    FULL_NAME = "containerd.events.TaskExecAdded"
    container_id: str = field(1, STRING)
    exec_id: str = field(2, STRING)


class TaskExecStarted(Message):
    FULL_NAME = "containerd.events.TaskExecStarted"
    container_id: str = field(1, STRING)
    exec_id: str = field(2, STRING)
    pid: int = field(3, UINT)


class TaskPaused(Message):
    FULL_NAME = "containerd.events.TaskPaused"
    container_id: str = field(1, STRING)


class TaskResumed(Message):
    FULL_NAME = "containerd.events.TaskResumed"
    container_id: str = field(1, STRING)


# -- containerd.services.events.ttrpc.v1 ------------------------------------------------


class Envelope(Message):
    FULL_NAME = "containerd.services.events.ttrpc.v1.Envelope"
    timestamp: Timestamp | None = field(1, MESSAGE, Timestamp)
    namespace: str = field(2, STRING)
    topic: str = field(3, STRING)
    event: Any | None = field(4, MESSAGE, Any)


class ForwardRequest(Message):
    FULL_NAME = "containerd.services.events.ttrpc.v1.ForwardRequest"
    envelope: Envelope | None = field(1, MESSAGE, Envelope)


# -- runtime options ----------------------------------------------------------------------


class RuncShimOptions(Message):
    FULL_NAME = "containerd.runc.v1.Options"
    no_pivot_root: bool = field(1, BOOL)
    no_new_keyring: bool = field(2, BOOL)
    shim_cgroup: str = field(3, STRING)
    io_uid: int = field(4, UINT)
    io_gid: int = field(5, UINT)
    binary_name: str = field(6, STRING)
    root: str = field(7, STRING)
    criu_path: str = field(8, STRING)
    systemd_cgroup: bool = field(9, BOOL)
    criu_image_path: str = field(10, STRING)
    criu_work_path: str = field(11, STRING)


class ProcessDetails(Message):
    FULL_NAME = "containerd.runc.v1.ProcessDetails"
    exec_id: str = field(1, STRING)


class LegacyCreateOptions(Message):
    FULL_NAME = "containerd.linux.runc.CreateOptions"
    no_pivot_root: bool = field(1, BOOL)
    open_tcp: bool = field(2, BOOL)
    external_unix_sockets: bool = field(3, BOOL)
    terminal: bool = field(4, BOOL)
    file_locks: bool = field(5, BOOL)
    empty_namespaces: list[str] = field(6, STRING, repeated=True)
    cgroups_mode: str = field(7, STRING)
    no_new_keyring: bool = field(8, BOOL)
    shim_cgroup: str = field(9, STRING)
    io_uid: int = field(10, UINT)
    io_gid: int = field(11, UINT)
    criu_work_path: str = field(12, STRING)
    criu_image_path: str = field(13, STRING)


class LegacyRuncOptions(Message):
    FULL_NAME = "containerd.linux.runc.RuncOptions"
    runtime: str = field(1, STRING)
    runtime_root: str = field(2, STRING)
    criu_path: str = field(3, STRING)
    systemd_cgroup: bool = field(4, BOOL)


class RuntimeOptions(Message):
    FULL_NAME = "runtimeoptions.v1.Options"
    type_url: str = field(1, STRING)
    config_path: str = field(2, STRING)


# -- cgroup statistics: io.containerd.cgroups.v1 ---------------------------------------------


class V1HugetlbStat(Message):
    FULL_NAME = "io.containerd.cgroups.v1.HugetlbStat"
    usage: int = field(1, UINT)
    max: int = field(2, UINT)
    failcnt: int = field(3, UINT)
    pagesize: str = field(4, STRING)


class V1PidsStat(Message):
    FULL_NAME = "io.containerd.cgroups.v1.PidsStat"
    current: int = field(1, UINT)
    limit: int = field(2, UINT)


class V1CPUUsage(Message):
    FULL_NAME = "io.containerd.cgroups.v1.CPUUsage"
    total: int = field(1, UINT)
    kernel: int = field(2, UINT)
    user: int = field(3, UINT)
    per_cpu: list[int] = field(4, UINT, repeated=True)


class V1Throttle(Message):
    FULL_NAME = "io.containerd.cgroups.v1.Throttle"
    periods: int = field(1, UINT)
    throttled_periods: int = field(2, UINT)
    throttled_time: int = field(3, UINT)


class V1CPUStat(Message):
    FULL_NAME = "io.containerd.cgroups.v1.CPUStat"
    usage: V1CPUUsage | None = field(1, MESSAGE, V1CPUUsage)
    throttling: V1Throttle | None = field(2, MESSAGE, V1Throttle)


class V1MemoryEntry(Message):
    FULL_NAME = "io.containerd.cgroups.v1.MemoryEntry"
    limit: int = field(1, UINT)
    usage: int = field(2, UINT)
    max: int = field(3, UINT)
    failcnt: int = field(4, UINT)


# memory.stat counters of MemoryStat, by field number (1-32).
V1_MEMORY_COUNTERS = [
    "cache",
    "rss",
    "rss_huge",
    "mapped_file",
    "dirty",
    "writeback",
    "pg_pg_in",
    "pg_pg_out",
    "pg_fault",
    "pg_maj_fault",
    "inactive_anon",
    "active_anon",
    "inactive_file",
    "active_file",
    "unevictable",
    "hierarchical_memory_limit",
    "hierarchical_swap_limit",
    "total_cache",
    "total_rss",
    "total_rss_huge",
    "total_mapped_file",
    "total_dirty",
    "total_writeback",
    "total_pg_pg_in",
    "total_pg_pg_out",
    "total_pg_fault",
    "total_pg_maj_fault",
    "total_inactive_anon",
    "total_active_anon",
    "total_inactive_file",
    "total_active_file",
    "total_unevictable",
]


class V1MemoryStat(Message):
    FULL_NAME = "io.containerd.cgroups.v1.MemoryStat"
    # The 32 counters are set by name (V1_MEMORY_COUNTERS); declared below.
    usage: V1MemoryEntry | None = field(33, MESSAGE, V1MemoryEntry)
    swap: V1MemoryEntry | None = field(34, MESSAGE, V1MemoryEntry)
    kernel: V1MemoryEntry | None = field(35, MESSAGE, V1MemoryEntry)
    kernel_tcp: V1MemoryEntry | None = field(36, MESSAGE, V1MemoryEntry)


class V1BlkIOEntry(Message):
    FULL_NAME = "io.containerd.cgroups.v1.BlkIOEntry"
    op: str = field(1, STRING)
    device: str = field(2, STRING)
    major: int = field(3, UINT)
    minor: int = field(4, UINT)
    value: int = field(5, UINT)


# BlkIOStat's tables, by field number (1-8).
V1_BLKIO_TABLES = [
    "io_service_bytes_recursive",
    "io_serviced_recursive",
    "io_queued_recursive",
    "io_service_time_recursive",
    "io_wait_time_recursive",
    "io_merged_recursive",
    "io_time_recursive",
    "sectors_recursive",
]


class V1BlkIOStat(Message):
    FULL_NAME = "io.containerd.cgroups.v1.BlkIOStat"
    # Tables declared below from V1_BLKIO_TABLES.


class V1Metrics(Message):
    FULL_NAME = "io.containerd.cgroups.v1.Metrics"
    hugetlb: list[V1HugetlbStat] = field(1, MESSAGE, V1HugetlbStat, repeated=True)
    pids: V1PidsStat | None = field(2, MESSAGE, V1PidsStat)
    cpu: V1CPUStat | None = field(3, MESSAGE, V1CPUStat)
    memory: V1MemoryStat | None = field(4, MESSAGE, V1MemoryStat)
    blkio: V1BlkIOStat | None = field(5, MESSAGE, V1BlkIOStat)


# -- cgroup statistics: io.containerd.cgroups.v2 ---------------------------------------------


class V2PidsStat(Message):
    FULL_NAME = "io.containerd.cgroups.v2.PidsStat"
    current: int = field(1, UINT)
    limit: int = field(2, UINT)


class V2CPUStat(Message):
    FULL_NAME = "io.containerd.cgroups.v2.CPUStat"
    usage_usec: int = field(1, UINT)
    user_usec: int = field(2, UINT)
    system_usec: int = field(3, UINT)
    nr_periods: int = field(4, UINT)
    nr_throttled: int = field(5, UINT)
    throttled_usec: int = field(6, UINT)


V2_MEMORY_COUNTERS = [
    "anon",
    "file",
    "kernel_stack",
    "slab",
    "sock",
    "shmem",
    "file_mapped",
    "file_dirty",
    "file_writeback",
    "anon_thp",
    "inactive_anon",
    "active_anon",
    "inactive_file",
    "active_file",
    "unevictable",
    "slab_reclaimable",
    "slab_unreclaimable",
    "pgfault",
    "pgmajfault",
    "workingset_refault",
    "workingset_activate",
    "workingset_nodereclaim",
    "pgrefill",
    "pgscan",
    "pgsteal",
    "pgactivate",
    "pgdeactivate",
    "pglazyfree",
    "pglazyfreed",
    "thp_fault_alloc",
    "thp_collapse_alloc",
    "usage",
    "usage_limit",
    "swap_usage",
    "swap_limit",
]


class V2MemoryStat(Message):
    FULL_NAME = "io.containerd.cgroups.v2.MemoryStat"
    # The 35 counters are declared below from V2_MEMORY_COUNTERS.


class V2MemoryEvents(Message):
    FULL_NAME = "io.containerd.cgroups.v2.MemoryEvents"
    low: int = field(1, UINT)
    high: int = field(2, UINT)
    max: int = field(3, UINT)
    oom: int = field(4, UINT)
    oom_kill: int = field(5, UINT)


class V2IOEntry(Message):
    FULL_NAME = "io.containerd.cgroups.v2.IOEntry"
    major: int = field(1, UINT)
    minor: int = field(2, UINT)
    rbytes: int = field(3, UINT)
    wbytes: int = field(4, UINT)
    rios: int = field(5, UINT)
    wios: int = field(6, UINT)


class V2IOStat(Message):
    FULL_NAME = "io.containerd.cgroups.v2.IOStat"
    usage: list[V2IOEntry] = field(1, MESSAGE, V2IOEntry, repeated=True)


class V2HugeTlbStat(Message):
    FULL_NAME = "io.containerd.cgroups.v2.HugeTlbStat"
    current: int = field(1, UINT)
    max: int = field(2, UINT)
    pagesize: str = field(3, STRING)


class V2Metrics(Message):
    FULL_NAME = "io.containerd.cgroups.v2.Metrics"
    pids: V2PidsStat | None = field(1, MESSAGE, V2PidsStat)
    cpu: V2CPUStat | None = field(2, MESSAGE, V2CPUStat)
    memory: V2MemoryStat | None = field(4, MESSAGE, V2MemoryStat)
    io: V2IOStat | None = field(6, MESSAGE, V2IOStat)
    hugetlb: list[V2HugeTlbStat] = field(7, MESSAGE, V2HugeTlbStat, repeated=True)
    memory_events: V2MemoryEvents | None = field(8, MESSAGE, V2MemoryEvents)


def _declare(
    cls: type[Message], names: list[str], kind: str, of: type[Message] | None = None
) -> None:
    """Add fields numbered 1, 2, ... in the order of ``names`` (counters, tables)."""
    for number, name in enumerate(names, 1):
        setattr(cls, name, field(number, kind, of, repeated=of is not None))
    cls._collect()


_declare(V1MemoryStat, V1_MEMORY_COUNTERS, UINT)
_declare(V1BlkIOStat, V1_BLKIO_TABLES, MESSAGE, V1BlkIOEntry)
_declare(V2MemoryStat, V2_MEMORY_COUNTERS, UINT)
