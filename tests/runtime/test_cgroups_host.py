"""cgroup managers on this host's real cgroups (root needed).

Every cgroup is named ``dockyard-test-<random>``; the fixtures kill what
they started and remove the cgroups in teardown, on failure too. The v1
tests put containers below the caller's own cgroups (a relative path), so
that their processes stay inside the caller's memory cgroup. The v2 tests
use the cgroup2 hierarchy wherever it is mounted (``/sys/fs/cgroup`` on a
unified host, ``/sys/fs/cgroup/unified`` on a hybrid one): even with no
controller enabled there it has cgroup.freeze, cgroup.kill and BPF device
filters, so those paths run for real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dockyard.errors import SystemFailure, Unsupported
from dockyard.runtime import cgroups
from dockyard.runtime.cgroups.v1 import V1Manager
from dockyard.runtime.cgroups.v2 import V2Manager

ROOT = "/sys/fs/cgroup"
MODE = cgroups.detect_mode(ROOT) if os.path.isdir(ROOT) else "none"
V2_ROOT = {"v2": ROOT, "hybrid": os.path.join(ROOT, "unified")}.get(MODE)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups")


def unique() -> str:
    return f"dockyard-test-{uuid.uuid4().hex[:12]}"


def wait_for(check: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return bool(check())


class Cgroup:
    """A manager plus the processes a test started in it, all undone in teardown."""

    def __init__(self, mgr: cgroups.CgroupManager) -> None:
        self.mgr = mgr
        self.children: list[subprocess.Popen[str]] = []

    def start(self, script: str) -> subprocess.Popen[str]:
        """Run ``sh -c script`` inside the cgroup: it starts only once it has joined."""
        child = subprocess.Popen(
            ["sh", "-c", "read go; " + script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.children.append(child)
        self.mgr.apply(child.pid)
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        return child

    def run(self, script: str) -> str:
        """``start`` and wait for the output."""
        child = self.start(script)
        out, _ = child.communicate(timeout=30)
        return out

    def cleanup(self) -> None:
        try:
            if self.mgr.can_freeze() and self.mgr.exists() and self.mgr.frozen():
                self.mgr.thaw()
        except Exception:
            pass
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.communicate(timeout=30)
        # anything a child left behind in the cgroup (background sleeps) goes too
        for pid in self.mgr.pids() if self.mgr.exists() else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not self.mgr.exists() or not self.mgr.pids())
        try:
            self.mgr.destroy()
        finally:
            for d in self.mgr.dirs():  # last resort, so the session leaks nothing
                if os.path.isdir(d):
                    for sub, _, _ in os.walk(d, topdown=False):
                        try:
                            os.rmdir(sub)
                        except OSError:
                            pass


@pytest.fixture
def v1() -> Iterator[Cgroup]:
    if MODE not in ("v1", "hybrid"):
        pytest.skip("this host has no cgroup v1 hierarchies")
    name = unique()
    cg = Cgroup(cgroups.new_manager(name, name))
    try:
        cg.mgr.create()
        yield cg
    finally:
        cg.cleanup()


@pytest.fixture
def v2() -> Iterator[Cgroup]:
    if V2_ROOT is None:
        pytest.skip("this host has no cgroup2 hierarchy")
    control = os.path.join(V2_ROOT, "cgroup.subtree_control")
    with open(control) as f:
        before = f.read().split()
    cg = Cgroup(cgroups.new_manager("/" + unique(), "id", V2_ROOT))
    try:
        cg.mgr.create()
        yield cg
    finally:
        try:
            cg.cleanup()
        finally:
            # create() enables the root's controllers for the cgroup: give back what it added
            with open(control) as f:
                added = [c for c in f.read().split() if c not in before]
            for c in added:
                try:
                    with open(control, "w") as f:
                        f.write("-" + c)
                except OSError:
                    pass


def read(d: str, name: str) -> str:
    with open(os.path.join(d, name)) as f:
        return f.read().strip()


def proc_cgroups(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/cgroup") as f:
        return cgroups.parse_proc_cgroup(f.read())


# A script that reports which device nodes it may open.
PROBE = (
    "for d in null zero; do"
    " if (exec 2>&-; : < /dev/$d); then echo $d:ok; else echo $d:denied; fi;"
    " done"
)


# --- v1 ---------------------------------------------------------------------------


def test_v1_paths_are_below_the_callers_cgroups(v1: Cgroup) -> None:
    mgr = v1.mgr
    assert isinstance(mgr, V1Manager)
    own = cgroups.own_cgroups()
    name = os.path.basename(mgr.paths["memory"])
    for controller in ("memory", "pids", "freezer", "devices", "cpu", "name=systemd"):
        assert mgr.paths[controller].endswith(own[controller].rstrip("/") + "/" + name)
        assert os.path.isdir(mgr.paths[controller])
    if MODE == "hybrid":
        assert mgr.paths[""] == os.path.join(ROOT, "unified", name)
    # a new cpuset cgroup got its cpus and mems from its parent, or nothing could join it
    assert read(mgr.paths["cpuset"], "cpuset.cpus")
    assert read(mgr.paths["cpuset"], "cpuset.mems")
    mgr.create()  # idempotent


def test_v1_set_writes_the_kernel_files(v1: Cgroup) -> None:
    mgr = v1.mgr
    mgr.set(
        {
            "memory": {"limit": 64 << 20, "swap": 128 << 20, "reservation": 32 << 20},
            "pids": {"limit": 32},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
        }
    )
    p = mgr.paths
    assert read(p["memory"], "memory.limit_in_bytes") == str(64 << 20)
    assert read(p["memory"], "memory.memsw.limit_in_bytes") == str(128 << 20)
    assert read(p["memory"], "memory.soft_limit_in_bytes") == str(32 << 20)
    assert read(p["pids"], "pids.max") == "32"
    assert read(p["cpu"], "cpu.shares") == "512"
    assert read(p["cpu"], "cpu.cfs_quota_us") == "50000"
    assert read(p["cpu"], "cpu.cfs_period_us") == "100000"
    assert read(p["cpuset"], "cpuset.cpus") == "0"
    # Raising memory above the old memory+swap limit needs memsw raised first: the
    # kernel refuses the other order, and the write is retried after its partner.
    mgr.set({"memory": {"limit": 256 << 20, "swap": 512 << 20}})
    assert read(p["memory"], "memory.limit_in_bytes") == str(256 << 20)
    assert read(p["memory"], "memory.memsw.limit_in_bytes") == str(512 << 20)
    mgr.set({"memory": {"limit": -1}, "pids": {"limit": -1}})
    assert int(read(p["memory"], "memory.memsw.limit_in_bytes")) > 1 << 60
    assert read(p["pids"], "pids.max") == "max"


def test_v1_process_lifecycle(v1: Cgroup) -> None:
    mgr = v1.mgr
    child = v1.start("echo started; exec sleep 60")
    assert child.stdout is not None
    assert child.stdout.readline() == "started\n"
    assert mgr.pids() == [child.pid]
    name = os.path.basename(mgr.paths["pids"])
    joined = proc_cgroups(child.pid)
    assert joined["pids"].endswith("/" + name)
    assert joined["memory"].endswith("/" + name)
    if "" in mgr.paths:
        assert joined[""] == "/" + name  # hybrid: in the unified hierarchy too

    mgr.freeze()
    assert mgr.frozen()
    assert read(mgr.paths["freezer"], "freezer.state") == "FROZEN"
    mgr.thaw()
    assert not mgr.frozen()

    st = mgr.stats()
    assert st["pids"]["current"] == 1
    assert st["cpu"]["usage"]["total"] > 0
    assert st["memory"]["usage"]["limit"] > 0

    mgr.kill_all(signal.SIGTERM)
    assert child.wait(timeout=10) == -signal.SIGTERM
    assert wait_for(lambda: mgr.pids() == [])
    mgr.destroy()
    assert not mgr.exists()
    mgr.destroy()  # already gone: no error


def test_v1_kill_all_reaches_forked_children(v1: Cgroup) -> None:
    mgr = v1.mgr
    child = v1.start("sleep 60 & sleep 60 & echo forked; wait")
    assert child.stdout is not None
    assert child.stdout.readline() == "forked\n"
    assert len(mgr.pids()) == 3
    mgr.kill_all(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL
    assert wait_for(lambda: mgr.pids() == [])
    assert not mgr.frozen()


def test_v1_kill_all_keeps_a_paused_container_paused(v1: Cgroup) -> None:
    mgr = v1.mgr
    child = v1.start("echo started; exec sleep 60")
    assert child.stdout is not None
    child.stdout.readline()
    mgr.freeze()
    mgr.kill_all(signal.SIGTERM)
    assert mgr.frozen()
    assert child.poll() is None  # the signal waits for the thaw
    mgr.thaw()
    assert child.wait(timeout=10) == -signal.SIGTERM


def test_v1_memory_limit_below_usage_names_the_file(v1: Cgroup) -> None:
    mgr = v1.mgr
    d = mgr.paths["memory"]
    # v1 charges memory where it is touched: allocate after joining, then hold it.
    child = v1.start(
        f"exec {sys.executable} -c 'import time; b = bytearray(32 << 20);"
        ' print("ready", flush=True); time.sleep(60)\''
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    assert int(read(d, "memory.usage_in_bytes")) > 30 << 20
    # there is no swap here to push it to: the kernel says busy
    with pytest.raises(SystemFailure) as exc:
        mgr.set({"memory": {"limit": 1 << 20}})
    assert str(exc.value) == (
        f"set memory.limit_in_bytes to {1 << 20} in {d}: device or resource busy"
    )
    assert child.poll() is None


def test_v1_devices(v1: Cgroup) -> None:
    mgr = v1.mgr
    mgr.set(
        {
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            ]
        }
    )
    assert read(mgr.paths["devices"], "devices.list") == "c 1:3 rwm"
    assert v1.run(PROBE).split() == ["null:ok", "zero:denied"]


def test_v1_destroy_removes_nested_cgroups(v1: Cgroup) -> None:
    mgr = v1.mgr
    for d in mgr.dirs():
        os.makedirs(os.path.join(d, "inner", "deeper"))
    mgr.destroy()
    assert not mgr.exists()


def test_v1_absolute_path_starts_at_each_hierarchy_root() -> None:
    if MODE not in ("v1", "hybrid"):
        pytest.skip("this host has no cgroup v1 hierarchies")
    name = unique()
    cg = Cgroup(cgroups.new_manager("/" + name, name))
    try:
        for h in cgroups.hierarchies(ROOT):
            for c in h.controllers:
                assert cg.mgr.paths[c] == os.path.join(h.mountpoint, name)
        cg.mgr.create()
        cg.mgr.set({"pids": {"limit": 3}})
        assert read(cg.mgr.paths["pids"], "pids.max") == "3"
    finally:
        cg.cleanup()
    assert not cg.mgr.exists()


def test_v1_unified_is_refused(v1: Cgroup) -> None:
    with pytest.raises(Unsupported, match="cgroup v1 host"):
        v1.mgr.set({"unified": {"memory.high": "1000000"}})


# --- v2 (the cgroup2 hierarchy, whatever controllers it has) -------------------------


def test_v2_device_filter(v2: Cgroup) -> None:
    from dockyard.runtime.cgroups import devices

    mgr = v2.mgr
    assert isinstance(mgr, V2Manager)

    def attached() -> list[int]:
        fd = os.open(mgr.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return devices.query(fd)[0]
        finally:
            os.close(fd)

    deny_all = {"allow": False, "access": "rwm"}
    mgr.set({"devices": [deny_all, {"allow": True, "type": "c", "major": 1, "minor": 5}]})
    assert len(attached()) == 1
    assert v2.run(PROBE).split() == ["null:denied", "zero:ok"]
    # an update replaces the filter: one program, the new rules
    mgr.set({"devices": [deny_all, {"allow": True, "type": "c", "major": 1, "minor": 3}]})
    assert len(attached()) == 1
    assert v2.run(PROBE).split() == ["null:ok", "zero:denied"]


def test_v2_freeze_thaw_kill(v2: Cgroup) -> None:
    mgr = v2.mgr
    assert isinstance(mgr, V2Manager)
    child = v2.start("sleep 60 & echo started; wait")
    assert child.stdout is not None
    assert child.stdout.readline() == "started\n"
    assert len(mgr.pids()) == 2
    mgr.freeze()
    assert mgr.frozen()
    assert read(mgr.path, "cgroup.freeze") == "1"
    mgr.thaw()
    assert not mgr.frozen()
    mgr.kill_all(signal.SIGKILL)  # cgroup.kill
    assert child.wait(timeout=10) == -signal.SIGKILL
    assert wait_for(lambda: mgr.pids() == [])
    mgr.destroy()
    assert not mgr.exists()


def test_v2_kill_all_other_signals(v2: Cgroup) -> None:
    mgr = v2.mgr
    child = v2.start("echo started; exec sleep 60")
    assert child.stdout is not None
    child.stdout.readline()
    mgr.kill_all(signal.SIGTERM)
    assert child.wait(timeout=10) == -signal.SIGTERM
    assert not mgr.frozen()


def test_v2_resources_of_the_available_controllers(v2: Cgroup) -> None:
    mgr = v2.mgr
    assert isinstance(mgr, V2Manager)
    available = read(mgr.path, "cgroup.controllers").split()
    if "hugetlb" in available:
        mgr.set({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}]})
        assert read(mgr.path, "hugetlb.2MB.max") == str(4 << 20)
        assert "2MB" in mgr.stats()["hugetlb"]
    if "pids" not in available:
        with pytest.raises(Unsupported, match=r"pids\.limit: pids\.max does not exist"):
            mgr.set({"pids": {"limit": 5}})
    mgr.set({"unified": {"cgroup.max.depth": "3"}})
    assert read(mgr.path, "cgroup.max.depth") == "3"
    st = mgr.stats()
    assert set(st) >= {"cpu", "memory", "pids", "blkio", "hugetlb"}


WARM_SCRIPT = """
import sys, time
sys.stdin.readline()
from dockyard.runtime.cgroups import own_cgroups, warm_migration
before = own_cgroups()
warm_migration()
time.sleep(0.5)  # the thread's move (a grace period, some ms) is over
after = own_cgroups()
print("same" if after == before else "moved", after.get(sys.argv[1]))
"""


@pytest.mark.parametrize("fixture", ["v1", "v2"])
def test_warm_migration_leaves_the_process_where_it_is(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    """The move a create starts early to shorten the init's is a move to where
    the process already is, in every hierarchy."""
    cg: Cgroup = request.getfixturevalue(fixture)
    child = subprocess.Popen(
        [sys.executable, "-c", WARM_SCRIPT, "pids" if fixture == "v1" else ""],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    cg.children.append(child)
    cg.mgr.apply(child.pid)
    out, _ = child.communicate("go\n", timeout=30)
    verdict, where = out.split()
    assert verdict == "same"
    # still in the test's cgroup, not moved back to where it was started
    assert where.endswith("/" + os.path.basename(next(iter(cg.mgr.dirs()))))
