"""``events``: resource statistics of a container as JSON lines, like runc's."""

from __future__ import annotations

import json
import sys
import time

from dockyard.errors import FailedPrecondition, InvalidArgument
from dockyard.runtime import state as st


def parse_duration(value: str) -> float:
    """Go-style durations: "5s", "500ms", "1m", "1m30s"."""
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    total, num, i = 0.0, "", 0
    v = value.strip()
    if not v:
        raise InvalidArgument("invalid --interval ''")
    while i < len(v):
        c = v[i]
        if c.isdigit() or c == ".":
            num += c
            i += 1
            continue
        unit = v[i : i + 2] if v[i : i + 2] in units else c
        if unit not in units or not num:
            raise InvalidArgument(f"invalid --interval {value!r}")
        total += float(num) * units[unit]
        num = ""
        i += len(unit)
    if num:
        raise InvalidArgument(f"invalid --interval {value!r}: missing unit")
    if total <= 0:
        raise InvalidArgument(f"invalid --interval {value!r}: must be positive")
    return total


def events(root: str, cid: str, stats_once: bool, interval: str) -> None:
    s = st.load(root, cid)
    if s.status() == st.STOPPED:
        raise FailedPrecondition(f"container {cid!r} is not running")
    cg = s.cgroup()
    period = parse_duration(interval)
    while True:
        data = cg.stats()
        sys.stdout.write(json.dumps({"type": "stats", "id": cid, "data": data}) + "\n")
        sys.stdout.flush()
        if stats_once:
            return
        time.sleep(period)
        if not s.alive():
            return
