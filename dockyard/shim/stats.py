"""A task's cgroup statistics as containerd's ``Metrics`` messages.

The cgroup of a container is found from its init's ``/proc/<pid>/cgroup``
(as containerd's runc shim loads it by pid) when the task is created, and
read with the runtime's cgroup managers, whose ``stats()`` has the shape of
runc's ``events --stats``. That is turned into ``io.containerd.cgroups.v1.Metrics``
on a v1 (or hybrid) host and ``io.containerd.cgroups.v2.Metrics`` on a
unified one, the types containerd's Stats and Metrics APIs carry.
"""

from __future__ import annotations

import posixpath

from dockyard.errors import NotFound
from dockyard.shim import messages as m

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dockyard.runtime.cgroups import CgroupManager

# memory.stat keys of cgroup v1 -> MemoryStat fields where the names differ.
_V1_MEMORY_RENAMES = {
    "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
    "hierarchical_memsw_limit": "hierarchical_swap_limit",
    "total_pgpgin": "total_pg_pg_in",
    "total_pgpgout": "total_pg_pg_out",
    "total_pgfault": "total_pg_fault",
    "total_pgmajfault": "total_pg_maj_fault",
}
_V1_BLKIO = {
    "ioServiceBytesRecursive": "io_service_bytes_recursive",
    "ioServicedRecursive": "io_serviced_recursive",
    "ioQueueRecursive": "io_queued_recursive",
    "ioServiceTimeRecursive": "io_service_time_recursive",
    "ioWaitTimeRecursive": "io_wait_time_recursive",
    "ioMergedRecursive": "io_merged_recursive",
    "ioTimeRecursive": "io_time_recursive",
    "sectorsRecursive": "sectors_recursive",
}


def cgroup_paths(pid: int) -> dict[str, str]:
    """controller -> cgroup directory of process ``pid`` ("" is the cgroup2 one)."""
    from dockyard.runtime import cgroups

    try:
        with open(f"/proc/{pid}/cgroup") as f:
            own = cgroups.parse_proc_cgroup(f.read())
    except OSError as e:
        raise NotFound(f"cgroup of process {pid}: {e.strerror}") from None
    v2 = cgroups.detect_mode() == "v2"
    out: dict[str, str] = {}
    for h in cgroups.hierarchies():
        if v2 != (h.controllers == ("",)):
            continue  # a hybrid host's v2 tree holds no controllers we report
        for c in h.controllers:
            path = own.get(c)
            if path is not None:
                inner = h.in_mount(path)
                out[c] = posixpath.normpath(h.mountpoint.rstrip("/") + "/" + inner.lstrip("/"))
    return out


def metrics(cg: CgroupManager) -> m.V1Metrics | m.V2Metrics:
    """The cgroup's statistics as the Metrics message of its cgroup version."""
    if not cg.exists():
        raise NotFound("cgroup does not exist")
    data = cg.stats()
    if cg.version == 2:
        return _v2(data)
    return _v1(data)


def _u(v: Any) -> int:
    """A uint64 field's value (runc's stats may hold negatives for "unlimited")."""
    try:
        n = int(v)
    except (TypeError, ValueError):
        return 0
    return n if 0 <= n < 1 << 64 else 0


def _v1(data: dict[str, Any]) -> m.V1Metrics:
    cpu = data.get("cpu", {})
    usage = cpu.get("usage", {})
    thr = cpu.get("throttling", {})
    mem = data.get("memory", {})
    counters = {}
    known = set(m.V1_MEMORY_COUNTERS)
    for key, value in mem.get("raw", {}).items():
        name = _V1_MEMORY_RENAMES.get(key, key)
        if name in known:
            counters[name] = _u(value)

    def entry(key: str) -> m.V1MemoryEntry:
        e = mem.get(key, {})
        return m.V1MemoryEntry(
            limit=_u(e.get("limit")),
            usage=_u(e.get("usage")),
            max=_u(e.get("max")),
            failcnt=_u(e.get("failcnt")),
        )

    pids = data.get("pids", {})
    blkio = data.get("blkio", {})
    tables = {
        name: [
            m.V1BlkIOEntry(
                op=str(e.get("op", "")),
                major=_u(e.get("major")),
                minor=_u(e.get("minor")),
                value=_u(e.get("value")),
            )
            for e in blkio.get(key, [])
        ]
        for key, name in _V1_BLKIO.items()
    }
    return m.V1Metrics(
        cpu=m.V1CPUStat(
            usage=m.V1CPUUsage(
                total=_u(usage.get("total")),
                kernel=_u(usage.get("kernel")),
                user=_u(usage.get("user")),
                per_cpu=[_u(x) for x in usage.get("percpu", [])],
            ),
            throttling=m.V1Throttle(
                periods=_u(thr.get("periods")),
                throttled_periods=_u(thr.get("throttledPeriods")),
                throttled_time=_u(thr.get("throttledTime")),
            ),
        ),
        memory=m.V1MemoryStat(
            usage=entry("usage"),
            swap=entry("swap"),
            kernel=entry("kernel"),
            kernel_tcp=entry("kernelTCP"),
            **counters,
        ),
        pids=m.V1PidsStat(current=_u(pids.get("current")), limit=_u(pids.get("limit"))),
        blkio=m.V1BlkIOStat(**tables),
        hugetlb=[
            m.V1HugetlbStat(
                pagesize=size,
                usage=_u(e.get("usage")),
                max=_u(e.get("max")),
                failcnt=_u(e.get("failcnt")),
            )
            for size, e in sorted(data.get("hugetlb", {}).items())
        ],
    )


def _v2(data: dict[str, Any]) -> m.V2Metrics:
    cpu = data.get("cpu", {})
    usage = cpu.get("usage", {})
    thr = cpu.get("throttling", {})
    mem = data.get("memory", {})
    known = set(m.V2_MEMORY_COUNTERS)
    counters = {k: _u(v) for k, v in mem.get("raw", {}).items() if k in known}
    use = mem.get("usage", {})
    counters["usage"] = _u(use.get("usage"))
    counters["usage_limit"] = _u(use.get("limit"))
    # runc's swap entry counts memory+swap, as v1 did; the message has swap alone.
    counters["swap_usage"] = max(0, _u(mem.get("swap", {}).get("usage")) - counters["usage"])
    pids = data.get("pids", {})
    devices: dict[tuple[int, int], m.V2IOEntry] = {}
    blkio = data.get("blkio", {})
    for key, (read, write) in (
        ("ioServiceBytesRecursive", ("rbytes", "wbytes")),
        ("ioServicedRecursive", ("rios", "wios")),
    ):
        for e in blkio.get(key, []):
            dev = (_u(e.get("major")), _u(e.get("minor")))
            io_entry = devices.setdefault(dev, m.V2IOEntry(major=dev[0], minor=dev[1]))
            op = e.get("op")
            if op == "Read":
                setattr(io_entry, read, _u(e.get("value")))
            elif op == "Write":
                setattr(io_entry, write, _u(e.get("value")))
    return m.V2Metrics(
        # runc's shape has nanoseconds; cpu.stat (and this message) microseconds.
        cpu=m.V2CPUStat(
            usage_usec=_u(usage.get("total")) // 1000,
            user_usec=_u(usage.get("user")) // 1000,
            system_usec=_u(usage.get("kernel")) // 1000,
            nr_periods=_u(thr.get("periods")),
            nr_throttled=_u(thr.get("throttledPeriods")),
            throttled_usec=_u(thr.get("throttledTime")) // 1000,
        ),
        memory=m.V2MemoryStat(**counters),
        memory_events=m.V2MemoryEvents(max=_u(use.get("failcnt"))),
        pids=m.V2PidsStat(current=_u(pids.get("current")), limit=_u(pids.get("limit"))),
        io=m.V2IOStat(usage=list(devices.values())),
        hugetlb=[
            m.V2HugeTlbStat(pagesize=size, current=_u(e.get("usage")), max=_u(e.get("max")))
            for size, e in sorted(data.get("hugetlb", {}).items())
        ],
    )
