"""Typed, validated access to an OCI ``linux.resources`` object.

Both cgroup versions read the same object (runtime-spec config-linux.md
"Control groups"); these getters check each field's type and range and
raise ``InvalidArgument`` naming the field, so that planning the writes
rejects a bad value before anything reaches the kernel. JSON ``null`` and
absent fields read as unset; unknown fields are ignored, as the spec asks.
"""

from __future__ import annotations

from dockyard.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PREFIX = "linux.resources."


def bad(where: str, value: object, why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid {PREFIX}{where} {value!r}: {why}")


def section(res: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = res.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad(key, value, "must be an object")
    return value


def get_int(
    obj: dict[str, Any], key: str, where: str, lo: int | None = None, hi: int | None = None
) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(where, value, "must be an integer")
    if lo is not None and value < lo:
        raise bad(where, value, f"must be at least {lo}")
    if hi is not None and value > hi:
        raise bad(where, value, f"must be at most {hi}")
    return value


def get_bool(obj: dict[str, Any], key: str, where: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise bad(where, value, "must be a boolean")
    return value


def get_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad(where, value, "must be a string")
    return value


def get_list(obj: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise bad(where, value, "must be an array of objects")
    return value


def get_dict(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(where, value, "must be an object")
    return value


U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
I64 = (1 << 63) - 1


def memory_value(obj: dict[str, Any], key: str, where: str) -> int | None:
    """A memory amount: bytes or -1 for unlimited; 0 means unset, as in runc."""
    value = get_int(obj, key, where, -1, I64)
    return value or None


def cpu_list(obj: dict[str, Any], key: str, where: str) -> str | None:
    """A cpuset list such as ``0-3,7``; empty means unset."""
    value = get_str(obj, key, where)
    if not value:
        return None
    for part in value.strip().split(","):
        bounds = part.strip().split("-")
        if len(bounds) > 2 or not all(b.strip().isdigit() for b in bounds):
            raise bad(where, value, "must be a list of numbers and ranges like 0-3,7")
        if len(bounds) == 2 and int(bounds[0]) > int(bounds[1]):
            raise bad(where, value, f"range {part} is reversed")
    return value.strip()


def page_size(entry: dict[str, Any], where: str) -> str:
    """A hugepage size as the cgroup files name it: ``64KB``, ``2MB``, ``1GB``."""
    value = get_str(entry, "pageSize", where + ".pageSize")
    if not value:
        raise bad(where + ".pageSize", value, "is required")
    digits = value[:-2]
    if not digits.isdigit() or value[-2:] not in ("KB", "MB", "GB", "TB", "PB"):
        raise bad(where + ".pageSize", value, "must be a size like 2MB or 1GB")
    return value


def device_number(entry: dict[str, Any], key: str, where: str) -> int:
    value = get_int(entry, key, f"{where}.{key}", 0, (1 << 31) - 1)
    if value is None:
        raise bad(f"{where}.{key}", value, "is required")
    return value


def memory(m: dict[str, Any]) -> dict[str, Any]:
    """``memory``: amounts are bytes, -1 for unlimited, None when unset (or 0)."""
    v: dict[str, Any] = {
        key: memory_value(m, key, "memory." + key)
        for key in ("limit", "reservation", "swap", "kernel", "kernelTCP")
    }
    v["swappiness"] = get_int(m, "swappiness", "memory.swappiness", 0, 100)
    for key in ("disableOOMKiller", "useHierarchy", "checkBeforeUpdate"):
        v[key] = get_bool(m, key, "memory." + key)
    limit, swap = v["limit"], v["swap"]
    if swap is not None and swap > 0 and limit is not None:
        if limit == -1:
            raise bad("memory.swap", swap, "a memory+swap limit needs a memory limit below it")
        if swap < limit:
            raise bad("memory.swap", swap, f"memory+swap must not be below memory.limit {limit}")
    return v


def cpu(c: dict[str, Any]) -> dict[str, Any]:
    """``cpu``, checked against the kernel's ranges; 0 means unset where runc says so."""
    v: dict[str, Any] = {}
    shares = get_int(c, "shares", "cpu.shares", 0, U64) or None
    if shares is not None and not 2 <= shares <= 262144:
        raise bad("cpu.shares", shares, "must be between 2 and 262144")
    v["shares"] = shares
    quota = get_int(c, "quota", "cpu.quota", -1, I64) or None
    if quota is not None and 0 < quota < 1000:
        raise bad("cpu.quota", quota, "must be -1 (no limit) or at least 1000 microseconds")
    v["quota"] = quota
    period = get_int(c, "period", "cpu.period", 0, U64) or None
    if period is not None and not 1000 <= period <= 1000000:
        raise bad("cpu.period", period, "must be between 1000 and 1000000 microseconds")
    v["period"] = period
    burst = get_int(c, "burst", "cpu.burst", 0, U64)
    if burst and quota is not None and 0 < quota < burst:
        raise bad("cpu.burst", burst, f"must not exceed cpu.quota {quota}")
    v["burst"] = burst
    v["realtimeRuntime"] = get_int(c, "realtimeRuntime", "cpu.realtimeRuntime", -1, I64) or None
    v["realtimePeriod"] = get_int(c, "realtimePeriod", "cpu.realtimePeriod", 0, U64) or None
    v["cpus"] = cpu_list(c, "cpus", "cpu.cpus")
    v["mems"] = cpu_list(c, "mems", "cpu.mems")
    v["idle"] = get_int(c, "idle", "cpu.idle", 0, 1)
    return v


def pids_limit(res: dict[str, Any]) -> int | None:
    """``pids.limit``: -1 for no limit; 0 is a real limit (spec note)."""
    p = section(res, "pids")
    return None if p is None else get_int(p, "limit", "pids.limit", -1, I64)


def block_io(b: dict[str, Any]) -> dict[str, Any]:
    v: dict[str, Any] = {
        "weight": get_int(b, "weight", "blockIO.weight", 0, 1000) or None,
        "leafWeight": get_int(b, "leafWeight", "blockIO.leafWeight", 0, 1000) or None,
    }
    devices: list[tuple[int, int, int | None, int | None]] = []
    for i, e in enumerate(get_list(b, "weightDevice", "blockIO.weightDevice")):
        at = f"blockIO.weightDevice[{i}]"
        weight = get_int(e, "weight", at + ".weight", 1, 1000)
        leaf = get_int(e, "leafWeight", at + ".leafWeight", 1, 1000)
        if weight is None and leaf is None:
            raise bad(at, e, "needs weight or leafWeight")
        devices.append((device_number(e, "major", at), device_number(e, "minor", at), weight, leaf))
    v["weightDevice"] = devices
    for key in THROTTLES:
        rates: list[tuple[int, int, int]] = []
        for i, e in enumerate(get_list(b, key, "blockIO." + key)):
            at = f"blockIO.{key}[{i}]"
            rate = get_int(e, "rate", at + ".rate", 0, U64)
            if rate is None:
                raise bad(at + ".rate", None, "is required")
            rates.append((device_number(e, "major", at), device_number(e, "minor", at), rate))
        v[key] = rates
    return v


# OCI throttle list -> (v1 blkio file, v2 io.max key)
THROTTLES = {
    "throttleReadBpsDevice": ("blkio.throttle.read_bps_device", "rbps"),
    "throttleWriteBpsDevice": ("blkio.throttle.write_bps_device", "wbps"),
    "throttleReadIOPSDevice": ("blkio.throttle.read_iops_device", "riops"),
    "throttleWriteIOPSDevice": ("blkio.throttle.write_iops_device", "wiops"),
}


def hugepage_limits(res: dict[str, Any]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for i, e in enumerate(get_list(res, "hugepageLimits", "hugepageLimits")):
        at = f"hugepageLimits[{i}]"
        limit = get_int(e, "limit", at + ".limit", 0, U64)
        if limit is None:
            raise bad(at + ".limit", None, "is required")
        out.append((page_size(e, at), limit))
    return out


def network(n: dict[str, Any]) -> tuple[int | None, list[tuple[str, int]]]:
    class_id = get_int(n, "classID", "network.classID", 0, U32)
    prios: list[tuple[str, int]] = []
    for i, e in enumerate(get_list(n, "priorities", "network.priorities")):
        at = f"network.priorities[{i}]"
        name = get_str(e, "name", at + ".name")
        if not name or any(c.isspace() for c in name):
            raise bad(at + ".name", name, "must be an interface name")
        prio = get_int(e, "priority", at + ".priority", 0, U32)
        if prio is None:
            raise bad(at + ".priority", None, "is required")
        prios.append((name, prio))
    return class_id, prios


def rdma(res: dict[str, Any]) -> list[str]:
    """``rdma`` as the lines of ``rdma.max``: ``mlx5_1 hca_handle=3 hca_object=10000``."""
    lines: list[str] = []
    for name, limits in get_dict(res, "rdma", "rdma").items():
        at = f"rdma[{name!r}]"
        if not name or any(c.isspace() for c in name) or not isinstance(limits, dict):
            raise bad(at, limits, "must map a device name to an object")
        handles = get_int(limits, "hcaHandles", at + ".hcaHandles", 0, U32)
        objects = get_int(limits, "hcaObjects", at + ".hcaObjects", 0, U32)
        if handles is None and objects is None:
            raise bad(at, limits, "needs hcaHandles or hcaObjects")
        line = name
        if handles is not None:
            line += f" hca_handle={handles}"
        if objects is not None:
            line += f" hca_object={objects}"
        lines.append(line)
    return lines


def unified(res: dict[str, Any]) -> dict[str, str]:
    u = get_dict(res, "unified", "unified")
    for key, value in u.items():
        if not key or "/" in key or key.startswith(".") or "\0" in key:
            raise bad(f"unified[{key!r}]", key, "must name a file in the container's cgroup")
        if not isinstance(value, str):
            raise bad(f"unified[{key!r}]", value, "must be a string")
    return u
