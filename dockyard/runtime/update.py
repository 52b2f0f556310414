"""``update``: change a running container's resource limits (cgroups)."""

from __future__ import annotations

import json
import sys

from dockyard.errors import FailedPrecondition, InvalidArgument
from dockyard.runtime import state as st

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def ram_in_bytes(value: str, flag: str) -> int:
    """Docker-style sizes: "1024", "64m", "1g" (binary units); "-1" for unlimited."""
    v = value.strip().lower()
    if v == "-1":
        return -1
    if v.endswith("ib") or (v.endswith("b") and len(v) > 1 and not v[-2].isdigit()):
        v = v[:-2] if v.endswith("ib") else v[:-1]
    num = v.rstrip("kmgtb")
    unit = v[len(num) :]
    try:
        return int(float(num) * _UNITS[unit])
    except (ValueError, KeyError):
        raise InvalidArgument(f"invalid value {value!r} for --{flag}") from None


def _int(value: str, flag: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"invalid value {value!r} for --{flag}: want an integer") from None


# flag -> (resources section, key, parser)
_FLAGS: dict[str, tuple[str, str, str]] = {
    "memory": ("memory", "limit", "ram"),
    "memory-reservation": ("memory", "reservation", "ram"),
    "memory-swap": ("memory", "swap", "ram"),
    "kernel-memory": ("memory", "kernel", "ram"),
    "kernel-memory-tcp": ("memory", "kernelTCP", "ram"),
    "cpu-shares": ("cpu", "shares", "int"),
    "cpu-quota": ("cpu", "quota", "int"),
    "cpu-period": ("cpu", "period", "int"),
    "cpu-rt-period": ("cpu", "realtimePeriod", "int"),
    "cpu-rt-runtime": ("cpu", "realtimeRuntime", "int"),
    "cpuset-cpus": ("cpu", "cpus", "str"),
    "cpuset-mems": ("cpu", "mems", "str"),
    "blkio-weight": ("blockIO", "weight", "int"),
    "pids-limit": ("pids", "limit", "int"),
}


def resources_from_flags(flags: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if flags.get("resources"):
        path = flags["resources"]
        try:
            if path == "-":
                res = json.load(sys.stdin)
            else:
                with open(path) as f:
                    res = json.load(f)
        except OSError as e:
            raise InvalidArgument(f"read --resources {path}: {e.strerror}") from None
        except ValueError as e:
            raise InvalidArgument(f"--resources {path}: invalid json: {e}") from None
        if not isinstance(res, dict):
            raise InvalidArgument(f"--resources {path}: must be a json object")
    for flag, (section, key, kind) in _FLAGS.items():
        if flag in flags:
            raw = flags[flag]
            val: Any = (
                ram_in_bytes(raw, flag)
                if kind == "ram"
                else _int(raw, flag)
                if kind == "int"
                else raw
            )
            res.setdefault(section, {})[key] = val
    if flags.get("l3-cache-schema") or flags.get("mem-bw-schema"):
        from dockyard.errors import Unsupported

        raise Unsupported("update: Intel RDT (resctrl) is not available on this host")
    return res


def update(root: str, cid: str, flags: dict[str, Any]) -> None:
    s = st.load(root, cid)
    if s.status() == st.STOPPED:
        raise FailedPrecondition(f"cannot update container {cid!r}: it is stopped")
    res = resources_from_flags(flags)
    if not res:
        raise InvalidArgument("update: no resources given")
    from dockyard.spec.runtime import validate_config

    linux = s.config.setdefault("linux", {})
    merged = dict(linux.get("resources") or {})
    for k, v in res.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
    validate_config({**s.config, "linux": {**linux, "resources": merged}})
    s.cgroup().set(res)
    linux["resources"] = merged
    s.save()
