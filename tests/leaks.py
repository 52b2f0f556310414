"""Snapshots of host resources, compared before and after the test session.

A container stack that leaks mounts, cgroups, processes or network
namespaces on some path is broken even when every test passed; the session
fixture in conftest fails the run when this finds anything new.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field

CGROUP_ROOT = "/sys/fs/cgroup"
# Names our tests give to cgroups and state; anything new with these is a leak.
MARKERS = ("dockyard", "pytest-of")


@dataclass
class Snapshot:
    mounts: set[str] = field(default_factory=set)
    cgroups: set[str] = field(default_factory=set)
    processes: dict[int, str] = field(default_factory=dict)
    netns: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)


def _mounts() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def _cgroups() -> set[str]:
    found: set[str] = set()
    if not os.path.isdir(CGROUP_ROOT):
        return found
    for dirpath, dirnames, _ in os.walk(CGROUP_ROOT):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if any(m in p for m in MARKERS):
                found.add(p)
        # cgroup trees can be deep; the tests' cgroups are a few levels down
        if dirpath.count("/") > 8:
            dirnames.clear()
    return found


def _processes() -> dict[int, str]:
    """Processes whose command line or root mentions a temp dir of the tests."""
    tmp = tempfile.gettempdir()
    out: dict[int, str] = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        if root.startswith(tmp + "/") or ("pytest-of" in cmd and "pytest" not in cmd.split()[:2]):
            out[pid] = f"{cmd} (root {root})"
    return out


def _netns() -> set[str]:
    try:
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return set()
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


def _links() -> set[str]:
    try:
        return set(os.listdir("/sys/class/net"))
    except OSError:
        return set()


def snapshot() -> Snapshot:
    return Snapshot(_mounts(), _cgroups(), _processes(), _netns(), _links())


def compare(before: Snapshot, after: Snapshot) -> list[str]:
    problems: list[str] = []
    for m in sorted(after.mounts - before.mounts):
        problems.append(f"mount: {m}")
    for c in sorted(after.cgroups - before.cgroups):
        problems.append(f"cgroup: {c}")
    for pid, desc in sorted(after.processes.items()):
        if pid not in before.processes:
            problems.append(f"process {pid}: {desc}")
    for n in sorted(after.netns - before.netns):
        problems.append(f"network namespace: {n}")
    for link in sorted(after.links - before.links):
        problems.append(f"network interface: {link}")
    return problems
