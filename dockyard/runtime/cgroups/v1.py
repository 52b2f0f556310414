"""cgroup v1: a cgroup in every mounted hierarchy (and in cgroup2 on hybrid hosts)."""

from __future__ import annotations

import os

from dockyard.errors import DockyardError, InvalidArgument, SystemFailure, Unsupported
from dockyard.runtime.cgroups import CgroupManager, files, remove_empty_dirs, wait_until
from dockyard.runtime.cgroups import resources as R
from dockyard.runtime.cgroups import stats as S
from dockyard.runtime.cgroups.files import Group, Step, Write

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FREEZE_TIMEOUT = 10.0


def _copy_cpuset_from_parents(leaf: str) -> None:
    """A new v1 cpuset cgroup starts with empty cpus and mems, and nothing can join
    it until they are set: copy them down from the nearest ancestor that has them."""
    empty: list[str] = []
    cur = leaf
    while True:
        cpus = files.read_optional(cur, "cpuset.cpus")
        mems = files.read_optional(cur, "cpuset.mems")
        if cpus is None or mems is None or (cpus and mems):
            break
        empty.append(cur)
        cur = os.path.dirname(cur)
    for d in reversed(empty):
        parent = os.path.dirname(d)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not files.read(d, name):
                files.write(d, name, files.read(parent, name))


class V1Manager(CgroupManager):
    version = 1

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths

    def _dir(self, controller: str, field: str) -> str:
        d = self.paths.get(controller)
        if d is None:
            raise Unsupported(
                f"linux.resources.{field}: the {controller} cgroup controller is not mounted"
            )
        return d

    def create(self) -> None:
        created: list[str] = []
        try:
            for d in self.dirs():
                created += files.mkdirs(d)
            if "cpuset" in self.paths:
                _copy_cpuset_from_parents(self.paths["cpuset"])
        except DockyardError:
            remove_empty_dirs(created[::-1])
            raise

    def apply(self, pid: int) -> None:
        for d in self.dirs():
            files.add_proc(d, pid)

    # -- resources --------------------------------------------------------

    def set(self, resources: dict[str, Any]) -> None:
        files.run_plan(self.plan(resources))

    def plan(self, res: dict[str, Any]) -> list[Step]:
        """Every write ``set`` would do, in order; raises before any is done."""
        if not isinstance(res, dict):
            raise InvalidArgument("invalid linux.resources: must be an object")
        if R.unified(res):
            raise Unsupported(
                "linux.resources.unified: cgroup v2 files cannot be set on a cgroup v1 host"
            )
        steps: list[Step] = []
        self._plan_devices(res, steps)
        self._plan_memory(res, steps)
        self._plan_cpu(res, steps)
        limit = R.pids_limit(res)
        if limit is not None:
            d = self._dir("pids", "pids")
            steps.append(Write(d, "pids.max", "max" if limit == -1 else str(limit), "pids.limit"))
        self._plan_block_io(res, steps)
        for size, limit in R.hugepage_limits(res):
            d = self._dir("hugetlb", "hugepageLimits")
            steps.append(Write(d, f"hugetlb.{size}.limit_in_bytes", str(limit), "hugepageLimits"))
            # Reservation accounting, where the kernel has it, is what the spec prefers.
            if os.path.exists(os.path.join(d, f"hugetlb.{size}.rsvd.limit_in_bytes")):
                steps.append(
                    Write(d, f"hugetlb.{size}.rsvd.limit_in_bytes", str(limit), "hugepageLimits")
                )
        self._plan_network(res, steps)
        lines = R.rdma(res)
        if lines:
            d = self._dir("rdma", "rdma")
            steps.extend(Write(d, "rdma.max", line, "rdma") for line in lines)
        return steps

    def _plan_devices(self, res: dict[str, Any], steps: list[Step]) -> None:
        entries = R.get_list(res, "devices", "devices")
        if not entries:
            return
        from dockyard.runtime.cgroups.device_rules import parse_rules

        rules = parse_rules(entries)
        d = self._dir("devices", "devices")
        for rule in rules:
            name = "devices.allow" if rule.allow else "devices.deny"
            steps.append(Write(d, name, rule.v1(), "devices"))

    def _plan_memory(self, res: dict[str, Any], steps: list[Step]) -> None:
        m = R.section(res, "memory")
        if m is None:
            return
        v = R.memory(m)
        if all(x is None for x in v.values()):
            return
        d = self._dir("memory", "memory")
        limit, swap = v["limit"], v["swap"]
        if os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes")):
            if limit == -1 and swap is None:
                swap = -1  # "unlimited memory" means unlimited memory+swap too, as in runc
        elif swap == -1:
            swap = None  # no swap accounting: "unlimited swap" holds already
        if v["checkBeforeUpdate"] and limit is not None and limit > 0:
            usage = files.read_uint(d, "memory.usage_in_bytes")
            if usage > limit:
                raise InvalidArgument(
                    f"invalid linux.resources.memory.limit {limit}: below the current usage"
                    f" {usage} of {d}"
                )
        pair: list[Write] = []
        if limit is not None:
            pair.append(Write(d, "memory.limit_in_bytes", str(limit), "memory.limit"))
        if swap is not None:
            pair.append(Write(d, "memory.memsw.limit_in_bytes", str(swap), "memory.swap"))
        if pair:
            steps.append(Group(tuple(pair)))
        if v["reservation"] is not None:
            steps.append(
                Write(d, "memory.soft_limit_in_bytes", str(v["reservation"]), "memory.reservation")
            )
        # Kernel memory limits are deprecated and gone from recent kernels: best effort.
        if v["kernel"] is not None and os.path.exists(
            os.path.join(d, "memory.kmem.limit_in_bytes")
        ):
            steps.append(Write(d, "memory.kmem.limit_in_bytes", str(v["kernel"]), "memory.kernel"))
        if v["kernelTCP"] is not None:
            steps.append(
                Write(d, "memory.kmem.tcp.limit_in_bytes", str(v["kernelTCP"]), "memory.kernelTCP")
            )
        if v["swappiness"] is not None:
            steps.append(Write(d, "memory.swappiness", str(v["swappiness"]), "memory.swappiness"))
        if v["disableOOMKiller"] is not None:
            value = "1" if v["disableOOMKiller"] else "0"
            steps.append(Write(d, "memory.oom_control", value, "memory.disableOOMKiller"))
        if v["useHierarchy"] is not None:
            value = "1" if v["useHierarchy"] else "0"
            steps.append(Write(d, "memory.use_hierarchy", value, "memory.useHierarchy"))

    def _plan_cpu(self, res: dict[str, Any], steps: list[Step]) -> None:
        c = R.section(res, "cpu")
        if c is None:
            return
        v = R.cpu(c)
        if any(v[k] is not None for k in ("shares", "quota", "period", "burst", "idle")) or any(
            v[k] is not None for k in ("realtimeRuntime", "realtimePeriod")
        ):
            d = self._dir("cpu", "cpu")
            if v["shares"] is not None:
                steps.append(Write(d, "cpu.shares", str(v["shares"]), "cpu.shares"))
            cfs = [
                Write(d, name, str(v[key]), "cpu." + key)
                for key, name in (
                    ("period", "cpu.cfs_period_us"),
                    ("quota", "cpu.cfs_quota_us"),
                    ("burst", "cpu.cfs_burst_us"),
                )
                if v[key] is not None
            ]
            if cfs:
                steps.append(Group(tuple(cfs)))
            rt = [
                Write(d, name, str(v[key]), "cpu." + key)
                for key, name in (
                    ("realtimePeriod", "cpu.rt_period_us"),
                    ("realtimeRuntime", "cpu.rt_runtime_us"),
                )
                if v[key] is not None
            ]
            if rt:
                steps.append(Group(tuple(rt)))
            if v["idle"] is not None:
                steps.append(Write(d, "cpu.idle", str(v["idle"]), "cpu.idle"))
        for key in ("cpus", "mems"):
            if v[key] is not None:
                d = self._dir("cpuset", "cpu." + key)
                steps.append(Write(d, "cpuset." + key, v[key], "cpu." + key))

    def _plan_block_io(self, res: dict[str, Any], steps: list[Step]) -> None:
        b = R.section(res, "blockIO")
        if b is None:
            return
        v = R.block_io(b)
        if not any(v.values()):
            return
        d = self._dir("blkio", "blockIO")
        # CFQ's blkio.weight is gone from recent kernels; BFQ has blkio.bfq.weight.
        prefix = "blkio." if os.path.exists(os.path.join(d, "blkio.weight")) else "blkio.bfq."
        if v["weight"] is not None:
            steps.append(Write(d, prefix + "weight", str(v["weight"]), "blockIO.weight"))
        if v["leafWeight"] is not None:
            steps.append(Write(d, "blkio.leaf_weight", str(v["leafWeight"]), "blockIO.leafWeight"))
        for major, minor, weight, leaf in v["weightDevice"]:
            if weight is not None:
                line = f"{major}:{minor} {weight}"
                steps.append(Write(d, prefix + "weight_device", line, "blockIO.weightDevice"))
            if leaf is not None:
                line = f"{major}:{minor} {leaf}"
                steps.append(Write(d, "blkio.leaf_weight_device", line, "blockIO.weightDevice"))
        for key, (name, _) in R.THROTTLES.items():
            for major, minor, rate in v[key]:
                steps.append(Write(d, name, f"{major}:{minor} {rate}", "blockIO." + key))

    def _plan_network(self, res: dict[str, Any], steps: list[Step]) -> None:
        n = R.section(res, "network")
        if n is None:
            return
        class_id, prios = R.network(n)
        if class_id is not None:
            d = self._dir("net_cls", "network.classID")
            steps.append(Write(d, "net_cls.classid", str(class_id), "network.classID"))
        for name, prio in prios:
            d = self._dir("net_prio", "network.priorities")
            steps.append(Write(d, "net_prio.ifpriomap", f"{name} {prio}", "network.priorities"))

    # -- freezer ------------------------------------------------------------

    def can_freeze(self) -> bool:
        return "freezer" in self.paths

    def _freezer(self) -> str:
        d = self.paths.get("freezer")
        if d is None:
            raise Unsupported("freeze: the freezer cgroup controller is not mounted")
        return d

    def freeze(self) -> None:
        d = self._freezer()
        attempts = [0]

        def done() -> bool:
            # Writing FROZEN again nudges tasks that were busy (in vfork, say) the
            # first time; every so often a brief thaw unsticks them, as runc does.
            attempts[0] += 1
            if attempts[0] % 50 == 0:
                files.write(d, "freezer.state", "THAWED")
            files.write(d, "freezer.state", "FROZEN")
            return files.read(d, "freezer.state") == "FROZEN"

        if not wait_until(done, FREEZE_TIMEOUT):
            files.write(d, "freezer.state", "THAWED")
            raise SystemFailure(f"freeze {d}: still freezing after {FREEZE_TIMEOUT:g}s")

    def thaw(self) -> None:
        d = self._freezer()
        files.write(d, "freezer.state", "THAWED")
        if not wait_until(lambda: files.read(d, "freezer.state") == "THAWED", FREEZE_TIMEOUT):
            raise SystemFailure(f"thaw {d}: still frozen after {FREEZE_TIMEOUT:g}s")

    def frozen(self) -> bool:
        d = self.paths.get("freezer")
        if d is None:
            return False
        return files.read_optional(d, "freezer.state") == "FROZEN"

    # -- stats --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        out = S.empty()
        if "cpuacct" in self.paths:
            out["cpu"]["usage"] = _cpuacct(self.paths["cpuacct"])
        if "cpu" in self.paths:
            st = files.read_keyed(self.paths["cpu"], "cpu.stat")
            out["cpu"]["throttling"] = S.nonzero(
                {
                    "periods": st.get("nr_periods", 0),
                    "throttledPeriods": st.get("nr_throttled", 0),
                    "throttledTime": st.get("throttled_time", 0),
                }
            )
        if "cpuset" in self.paths:
            out["cpuset"] = _cpuset(self.paths["cpuset"])
        if "memory" in self.paths:
            out["memory"] = _memory(self.paths["memory"])
        if "pids" in self.paths:
            d = self.paths["pids"]
            out["pids"] = S.nonzero(
                {
                    "current": files.read_uint(d, "pids.current"),
                    "limit": files.read_uint(d, "pids.max"),
                }
            )
        if "blkio" in self.paths:
            out["blkio"] = _blkio(self.paths["blkio"])
        if "hugetlb" in self.paths:
            out["hugetlb"] = _hugetlb(self.paths["hugetlb"])
        return out


def _cpuacct(d: str) -> dict[str, Any]:
    usage: dict[str, Any] = {}
    usage["total"] = files.read_uint(d, "cpuacct.usage")
    percpu = files.read_optional(d, "cpuacct.usage_percpu")
    usage["percpu"] = [int(x) for x in percpu.split()] if percpu else []
    # cpuacct.usage_all: "cpu user system" then one line per cpu, in nanoseconds.
    kernel_per: list[int] = []
    user_per: list[int] = []
    for line in (files.read_optional(d, "cpuacct.usage_all") or "").splitlines()[1:]:
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            user_per.append(int(parts[1]))
            kernel_per.append(int(parts[2]))
    usage["percpu_kernel"] = kernel_per
    usage["percpu_user"] = user_per
    usage = S.nonzero(usage)
    if os.path.exists(os.path.join(d, "cpuacct.usage_user")):
        usage["kernel"] = files.read_uint(d, "cpuacct.usage_sys")
        usage["user"] = files.read_uint(d, "cpuacct.usage_user")
    else:
        # cpuacct.stat counts USER_HZ ticks
        tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        st = files.read_keyed(d, "cpuacct.stat")
        usage["kernel"] = st.get("system", 0) * tick
        usage["user"] = st.get("user", 0) * tick
    return usage


def _cpuset(d: str) -> dict[str, Any]:
    out: dict[str, Any] = S.nonzero(
        {
            "cpus": S.expand_list(files.read_optional(d, "cpuset.cpus")),
            "mems": S.expand_list(files.read_optional(d, "cpuset.mems")),
        }
    )
    for key in (
        "cpu_exclusive",
        "mem_hardwall",
        "mem_exclusive",
        "memory_migrate",
        "memory_spread_page",
        "memory_spread_slab",
        "memory_pressure",
        "sched_load_balance",
    ):
        out[key] = files.read_uint(d, "cpuset." + key)
    return out


def _memory(d: str) -> dict[str, Any]:
    def entry(prefix: str) -> dict[str, int]:
        return S.memory_entry(
            files.read_uint(d, prefix + "usage_in_bytes"),
            files.read_uint(d, prefix + "max_usage_in_bytes"),
            files.read_uint(d, prefix + "limit_in_bytes"),
            files.read_uint(d, prefix + "failcnt"),
        )

    raw = files.read_keyed(d, "memory.stat")
    out: dict[str, Any] = {}
    if raw.get("cache"):
        out["cache"] = raw["cache"]
    out["usage"] = entry("memory.")
    out["swap"] = entry("memory.memsw.")
    out["kernel"] = entry("memory.kmem.")
    out["kernelTCP"] = entry("memory.kmem.tcp.")
    if raw:
        out["raw"] = raw
    return out


# runc's names for the v1 blkio statistics files
_BLKIO_FILES = {
    "ioServiceBytesRecursive": "io_service_bytes_recursive",
    "ioServicedRecursive": "io_serviced_recursive",
    "ioQueueRecursive": "io_queued_recursive",
    "ioServiceTimeRecursive": "io_service_time_recursive",
    "ioWaitTimeRecursive": "io_wait_time_recursive",
    "ioMergedRecursive": "io_merged_recursive",
    "ioTimeRecursive": "time_recursive",
    "sectorsRecursive": "sectors_recursive",
}


def _blkio_entries(text: str | None) -> list[dict[str, Any]]:
    """Lines ``8:0 Read 4096`` (or ``8:0 4096``); the ``Total`` lines are left out."""
    out: list[dict[str, Any]] = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) not in (2, 3) or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        op = parts[1] if len(parts) == 3 else ""
        try:
            out.append(S.blkio_entry(int(major), int(minor), op, int(parts[-1])))
        except ValueError:
            continue
    return out


def _blkio(d: str) -> dict[str, Any]:
    # CFQ's files where the kernel has them, else BFQ's, else the throttling layer's.
    for prefix in ("blkio.", "blkio.bfq.", "blkio.throttle."):
        if files.read_optional(d, prefix + "io_serviced_recursive"):
            break
    out: dict[str, Any] = {}
    for key, name in _BLKIO_FILES.items():
        entries = _blkio_entries(files.read_optional(d, prefix + name))
        if entries:
            out[key] = entries
    return out


def _hugetlb(d: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in S.hugetlb_sizes(d, "limit_in_bytes"):
        entry = S.nonzero(
            {
                "usage": files.read_uint(d, f"hugetlb.{size}.usage_in_bytes"),
                "max": files.read_uint(d, f"hugetlb.{size}.max_usage_in_bytes"),
            }
        )
        entry["failcnt"] = files.read_uint(d, f"hugetlb.{size}.failcnt")
        out[size] = entry
    return out
