"""cgroup v2: one cgroup in the unified hierarchy.

The OCI resources were designed for v1; they are converted as runc
converts them (cpu.weight from shares, memory.swap.max from memory+swap,
io.weight from the blkio weight). ``unified`` is written last, so that its
values win over converted ones.
"""

from __future__ import annotations

import math
import os

from dockyard.errors import DockyardError, InvalidArgument, SystemFailure, Unsupported
from dockyard.runtime.cgroups import (
    SIGKILL,
    CgroupManager,
    files,
    remove_empty_dirs,
    wait_until,
)
from dockyard.runtime.cgroups import resources as R
from dockyard.runtime.cgroups import stats as S
from dockyard.runtime.cgroups.files import Call, Step, Write

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FREEZE_TIMEOUT = 10.0
MAX_U64 = (1 << 64) - 1


def cpu_weight(shares: int) -> int:
    """cpu.shares [2, 262144] -> cpu.weight [1, 10000]: runc's quadratic fit of
    log2(shares), which keeps the endpoints and maps the default 1024 to 100."""
    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    lg = math.log2(shares)
    return math.ceil(10 ** ((lg * lg + 125 * lg) / 612.0 - 7.0 / 34.0))


def io_weight(blkio_weight: int) -> int:
    """blkio.weight [10, 1000] -> io.weight [1, 10000], as runc converts it."""
    return max(1, 1 + (blkio_weight - 10) * 9999 // 990)


def _limit(value: int) -> str:
    return "max" if value == -1 else str(value)


def enable_controllers(d: str) -> None:
    """Enable in ``d``'s subtree_control every controller ``d`` has.

    Failures are left for ``set`` to report: a controller the kernel would
    not enable shows up there as a missing file, named with its field.
    """
    available = (files.read_optional(d, "cgroup.controllers") or "").split()
    enabled = (files.read_optional(d, "cgroup.subtree_control") or "").split()
    missing = [c for c in available if c not in enabled]
    if not missing:
        return
    try:
        files.write(d, "cgroup.subtree_control", " ".join("+" + c for c in missing))
    except SystemFailure:
        for c in missing:
            try:
                files.write(d, "cgroup.subtree_control", "+" + c)
            except SystemFailure:
                pass


class V2Manager(CgroupManager):
    version = 2

    def __init__(self, path: str, mountpoint: str) -> None:
        self.path = path
        self.mountpoint = mountpoint.rstrip("/") or "/"
        self.paths = {"": path}

    def create(self) -> None:
        prefix = self.mountpoint.rstrip("/") + "/"
        if not self.path.startswith(prefix):
            raise InvalidArgument(f"cgroup {self.path} is not below {self.mountpoint}")
        created: list[str] = []
        cur = self.mountpoint
        try:
            for part in self.path[len(prefix) :].split("/"):
                if not part:
                    continue
                enable_controllers(cur)
                cur = os.path.join(cur, part)
                created += files.mkdirs(cur)
        except DockyardError:
            remove_empty_dirs(created[::-1])
            raise

    def apply(self, pid: int) -> None:
        files.add_proc(self.path, pid)

    # -- resources --------------------------------------------------------

    def set(self, resources: dict[str, Any]) -> None:
        files.run_plan(self.plan(resources))

    def plan(self, res: dict[str, Any]) -> list[Step]:
        """Every write ``set`` would do, in order; raises before any is done."""
        if not isinstance(res, dict):
            raise InvalidArgument("invalid linux.resources: must be an object")
        d = self.path
        steps: list[Step] = []
        limit = R.pids_limit(res)
        if limit is not None:
            steps.append(Write(d, "pids.max", _limit(limit), "pids.limit"))
        self._plan_memory(res, steps)
        self._plan_io(res, steps)
        self._plan_cpu(res, steps)
        for size, limit in R.hugepage_limits(res):
            steps.append(Write(d, f"hugetlb.{size}.max", str(limit), "hugepageLimits"))
            if os.path.exists(os.path.join(d, f"hugetlb.{size}.rsvd.max")):
                steps.append(Write(d, f"hugetlb.{size}.rsvd.max", str(limit), "hugepageLimits"))
        steps.extend(Write(d, "rdma.max", line, "rdma") for line in R.rdma(res))
        n = R.section(res, "network")
        if n is not None:
            class_id, prios = R.network(n)
            if class_id is not None or prios:
                raise Unsupported(
                    "linux.resources.network: net_cls and net_prio exist only in cgroup v1"
                )
        entries = R.get_list(res, "devices", "devices")
        if entries:
            from dockyard.runtime.cgroups import devices
            from dockyard.runtime.cgroups.device_rules import parse_rules

            program = devices.compile_rules(parse_rules(entries))
            steps.append(Call(lambda: devices.attach(d, program)))
        self._plan_unified(res, steps)
        return steps

    def _plan_memory(self, res: dict[str, Any], steps: list[Step]) -> None:
        m = R.section(res, "memory")
        if m is None:
            return
        v = R.memory(m)
        d = self.path
        if v["disableOOMKiller"]:
            raise Unsupported(
                "linux.resources.memory.disableOOMKiller: cgroup v2 cannot disable the OOM killer"
            )
        if v["useHierarchy"] is False:
            raise Unsupported(
                "linux.resources.memory.useHierarchy: cgroup v2 is always hierarchical"
            )
        # swappiness, kernel and kernelTCP have no v2 files; runc ignores them too.
        limit, swap = v["limit"], v["swap"]
        swap_max: str | None = None
        if swap is None:
            if limit == -1:
                swap_max = "max"  # unlimited memory means unlimited swap too, as in v1
        elif swap == -1:
            swap_max = "max"
        else:
            if limit is None or limit == -1:
                raise R.bad("memory.swap", swap, "a memory+swap limit needs memory.limit as well")
            swap_max = str(swap - limit)  # OCI's swap is memory+swap; v2's is swap alone
        if v["checkBeforeUpdate"] and limit is not None and limit > 0:
            usage = files.read_uint(d, "memory.current")
            if usage > limit:
                raise InvalidArgument(
                    f"invalid linux.resources.memory.limit {limit}: below the current usage"
                    f" {usage} of {d}"
                )
        if swap_max is not None:
            has_swap = os.path.exists(os.path.join(d, "memory.swap.max"))
            # Without swap accounting, "no swap" and "any swap" both hold already.
            if has_swap or swap_max not in ("max", "0"):
                steps.append(Write(d, "memory.swap.max", swap_max, "memory.swap"))
        if limit is not None:
            steps.append(Write(d, "memory.max", _limit(limit), "memory.limit"))
        if v["reservation"] is not None:
            steps.append(Write(d, "memory.low", _limit(v["reservation"]), "memory.reservation"))

    def _plan_cpu(self, res: dict[str, Any], steps: list[Step]) -> None:
        c = R.section(res, "cpu")
        if c is None:
            return
        v = R.cpu(c)
        d = self.path
        for key in ("realtimeRuntime", "realtimePeriod"):
            if v[key] is not None:
                raise Unsupported(
                    f"linux.resources.cpu.{key}: cgroup v2 has no realtime scheduler limits"
                )
        if v["shares"] is not None:
            steps.append(Write(d, "cpu.weight", str(cpu_weight(v["shares"])), "cpu.shares"))
        quota, period = v["quota"], v["period"]
        if quota is not None or period is not None:
            if quota is None:
                # Only the period changes: keep the quota in force.
                current = (files.read_optional(d, "cpu.max") or "max").split()
                text = current[0] if current else "max"
            else:
                text = _limit(quota)
            if period is not None:
                text += f" {period}"
            steps.append(Write(d, "cpu.max", text, "cpu.quota"))
        if v["burst"] is not None:
            steps.append(Write(d, "cpu.max.burst", str(v["burst"]), "cpu.burst"))
        if v["idle"] is not None:
            steps.append(Write(d, "cpu.idle", str(v["idle"]), "cpu.idle"))
        for key in ("cpus", "mems"):
            if v[key] is not None:
                steps.append(Write(d, "cpuset." + key, v[key], "cpu." + key))

    def _plan_io(self, res: dict[str, Any], steps: list[Step]) -> None:
        b = R.section(res, "blockIO")
        if b is None:
            return
        v = R.block_io(b)
        d = self.path
        if v["leafWeight"] is not None or any(e[3] is not None for e in v["weightDevice"]):
            raise Unsupported("linux.resources.blockIO.leafWeight: cgroup v2 has no leaf weights")
        # BFQ takes v1's weights as they are; the io controller's io.weight has another range.
        bfq = os.path.exists(os.path.join(d, "io.bfq.weight"))
        name = "io.bfq.weight" if bfq else "io.weight"

        def weight(w: int) -> str:
            return str(w if bfq else io_weight(w))

        if v["weight"] is not None:
            steps.append(Write(d, name, weight(v["weight"]), "blockIO.weight"))
        for major, minor, w, _ in v["weightDevice"]:
            assert w is not None
            steps.append(Write(d, name, f"{major}:{minor} {weight(w)}", "blockIO.weightDevice"))
        for key, (_, io_key) in R.THROTTLES.items():
            for major, minor, rate in v[key]:
                steps.append(
                    Write(d, "io.max", f"{major}:{minor} {io_key}={rate}", "blockIO." + key)
                )

    def _plan_unified(self, res: dict[str, Any], steps: list[Step]) -> None:
        u = R.unified(res)
        if not u:
            return
        d = self.path
        available = (files.read_optional(d, "cgroup.controllers") or "").split()
        for key, value in u.items():
            controller = key.split(".", 1)[0]
            if (
                not os.path.exists(os.path.join(d, key))
                and controller != "cgroup"
                and controller not in available
            ):
                raise Unsupported(
                    f"linux.resources.unified[{key!r}]: the {controller} controller"
                    f" is not available in {d}"
                )
            # The kernel parses one line per write (io.max, rdma.max take one device each).
            lines = [line for line in value.split("\n") if line.strip()] or [value]
            steps.extend(Write(d, key, line, f"unified.{key}") for line in lines)

    # -- freezer ------------------------------------------------------------

    def can_freeze(self) -> bool:
        return os.path.exists(os.path.join(self.path, "cgroup.freeze"))

    def _frozen_event(self) -> int | None:
        return files.read_keyed(self.path, "cgroup.events").get("frozen")

    def freeze(self) -> None:
        d = self.path
        if not self.can_freeze():
            raise Unsupported(f"freeze {d}: cgroup.freeze is not available (linux 5.2 or later)")
        files.write(d, "cgroup.freeze", "1")
        if not wait_until(lambda: self._frozen_event() == 1, FREEZE_TIMEOUT):
            files.write(d, "cgroup.freeze", "0")
            raise SystemFailure(f"freeze {d}: still freezing after {FREEZE_TIMEOUT:g}s")

    def thaw(self) -> None:
        d = self.path
        if not self.can_freeze():
            raise Unsupported(f"thaw {d}: cgroup.freeze is not available (linux 5.2 or later)")
        files.write(d, "cgroup.freeze", "0")
        if not wait_until(lambda: self._frozen_event() != 1, FREEZE_TIMEOUT):
            raise SystemFailure(f"thaw {d}: still frozen after {FREEZE_TIMEOUT:g}s")

    def frozen(self) -> bool:
        return os.path.isdir(self.path) and self._frozen_event() == 1

    def kill_all(self, sig: int) -> None:
        # cgroup.kill (linux 5.14) kills every process at once, with no race against fork.
        if sig == SIGKILL and os.path.exists(os.path.join(self.path, "cgroup.kill")):
            files.write(self.path, "cgroup.kill", "1")
            return
        super().kill_all(sig)

    # -- stats --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        d = self.path
        out = S.empty()
        st = files.read_keyed(d, "cpu.stat")
        usage = S.nonzero({"total": st.get("usage_usec", 0) * 1000})
        usage["kernel"] = st.get("system_usec", 0) * 1000
        usage["user"] = st.get("user_usec", 0) * 1000
        out["cpu"]["usage"] = usage
        out["cpu"]["throttling"] = S.nonzero(
            {
                "periods": st.get("nr_periods", 0),
                "throttledPeriods": st.get("nr_throttled", 0),
                "throttledTime": st.get("throttled_usec", 0) * 1000,
            }
        )
        cpus = files.read_optional(d, "cpuset.cpus.effective")
        if cpus is not None:
            out["cpuset"] = S.nonzero(
                {
                    "cpus": S.expand_list(cpus),
                    "mems": S.expand_list(files.read_optional(d, "cpuset.mems.effective")),
                }
            )
        if os.path.exists(os.path.join(d, "memory.current")):
            out["memory"] = _memory(d)
        if os.path.exists(os.path.join(d, "pids.current")):
            out["pids"] = S.nonzero(
                {
                    "current": files.read_uint(d, "pids.current"),
                    "limit": files.read_uint(d, "pids.max"),
                }
            )
        out["blkio"] = _io(d)
        out["hugetlb"] = _hugetlb(d)
        return out


def _read_limit(d: str, name: str) -> int:
    """A v2 limit file; "max" reads as the largest u64, as runc reports it."""
    text = files.read_optional(d, name)
    if text is None:
        return 0
    return MAX_U64 if text == "max" else files.read_uint(d, name)


def _memory(d: str) -> dict[str, Any]:
    raw = files.read_keyed(d, "memory.stat")
    events = files.read_keyed(d, "memory.events")
    usage = files.read_uint(d, "memory.current")
    limit = _read_limit(d, "memory.max")
    out: dict[str, Any] = {}
    if raw.get("file"):
        out["cache"] = raw["file"]
    out["usage"] = S.memory_entry(
        usage, files.read_uint(d, "memory.peak"), limit, events.get("max", 0)
    )
    # v1 reported memory+swap; v2 counts swap alone: add memory, as runc does.
    swap_limit = _read_limit(d, "memory.swap.max")
    if swap_limit != MAX_U64 and limit != MAX_U64:
        swap_limit += limit
    else:
        swap_limit = MAX_U64
    out["swap"] = S.memory_entry(
        usage + files.read_uint(d, "memory.swap.current"), 0, swap_limit, 0
    )
    out["kernel"] = S.memory_entry(0, 0, 0, 0)
    out["kernelTCP"] = S.memory_entry(0, 0, 0, 0)
    if raw:
        out["raw"] = raw
    return out


def _io(d: str) -> dict[str, Any]:
    """io.stat (``8:0 rbytes=1 wbytes=2 rios=3 wios=4 ...``) in v1's tables."""
    tables: dict[str, list[dict[str, Any]]] = {}
    where = {
        "rbytes": ("ioServiceBytesRecursive", "Read"),
        "wbytes": ("ioServiceBytesRecursive", "Write"),
        "rios": ("ioServicedRecursive", "Read"),
        "wios": ("ioServicedRecursive", "Write"),
    }
    for line in (files.read_optional(d, "io.stat") or "").splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        for item in parts[1:]:
            key, _, value = item.partition("=")
            if key not in where:
                continue
            table, op = where[key]
            try:
                tables.setdefault(table, []).append(
                    S.blkio_entry(int(major), int(minor), op, int(value))
                )
            except ValueError:
                continue
    return tables


def _hugetlb(d: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in S.hugetlb_sizes(d, "max"):
        current = files.read_optional(d, f"hugetlb.{size}.rsvd.current")
        if current is None:
            current = files.read_optional(d, f"hugetlb.{size}.current")
        entry = S.nonzero({"usage": files.parse_uint(current) if current else 0})
        entry["failcnt"] = files.read_keyed(d, f"hugetlb.{size}.events").get("max", 0)
        out[size] = entry
    return out
