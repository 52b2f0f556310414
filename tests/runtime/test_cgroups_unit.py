"""cgroup managers against fake cgroupfs trees: no root, no kernel cgroups.

A fake tree is a temporary directory holding the files a real cgroup has,
with the values the kernel would show; writes simply replace their content.
The BPF device filter is checked by running the compiled program in a small
interpreter of the instructions it uses and comparing every verdict with
the v1 emulator's.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dockyard.errors import InvalidArgument, SystemFailure, Unsupported
from dockyard.runtime import cgroups
from dockyard.runtime.cgroups import device_rules, devices, files, v1, v2
from dockyard.runtime.cgroups.device_rules import (
    ACC_ALL,
    ACC_MKNOD,
    ACC_READ,
    ACC_WRITE,
    DeviceRule,
    Emulator,
    parse_rules,
)
from dockyard.runtime.cgroups.files import Call, Group, Write
from dockyard.runtime.cgroups.v1 import V1Manager
from dockyard.runtime.cgroups.v2 import V2Manager

# --- fake trees -------------------------------------------------------------

V1_FILES: dict[str, dict[str, str]] = {
    "cpu": {
        "cpu.shares": "1024",
        "cpu.cfs_period_us": "100000",
        "cpu.cfs_quota_us": "-1",
        "cpu.cfs_burst_us": "0",
        "cpu.rt_period_us": "1000000",
        "cpu.rt_runtime_us": "0",
        "cpu.idle": "0",
        "cpu.stat": "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n",
    },
    "cpuacct": {
        "cpuacct.usage": "123456789",
        "cpuacct.usage_percpu": "100000000 23456789 ",
        "cpuacct.usage_all": "cpu user system\n0 60000000 40000000\n1 20000000 3456789\n",
        "cpuacct.usage_user": "80000000",
        "cpuacct.usage_sys": "43456789",
        "cpuacct.stat": "user 8\nsystem 4\n",
    },
    "cpuset": {
        "cpuset.cpus": "0-3",
        "cpuset.mems": "0",
        "cpuset.cpu_exclusive": "0",
        "cpuset.mem_exclusive": "0",
    },
    "memory": {
        "memory.limit_in_bytes": "9223372036854771712",
        "memory.memsw.limit_in_bytes": "9223372036854771712",
        "memory.soft_limit_in_bytes": "9223372036854771712",
        "memory.kmem.limit_in_bytes": "9223372036854771712",
        "memory.kmem.tcp.limit_in_bytes": "9223372036854771712",
        "memory.swappiness": "60",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        "memory.use_hierarchy": "1",
        "memory.usage_in_bytes": "4096000",
        "memory.max_usage_in_bytes": "8192000",
        "memory.failcnt": "3",
        "memory.memsw.usage_in_bytes": "4096000",
        "memory.memsw.max_usage_in_bytes": "8192000",
        "memory.memsw.failcnt": "0",
        "memory.kmem.usage_in_bytes": "0",
        "memory.kmem.max_usage_in_bytes": "0",
        "memory.kmem.failcnt": "0",
        "memory.kmem.tcp.usage_in_bytes": "0",
        "memory.kmem.tcp.max_usage_in_bytes": "0",
        "memory.kmem.tcp.failcnt": "0",
        "memory.stat": "cache 1024\nrss 4096\nmapped_file 0\n",
    },
    "devices": {"devices.allow": "", "devices.deny": "", "devices.list": "a *:* rwm"},
    "freezer": {"freezer.state": "THAWED"},
    "blkio": {
        "blkio.bfq.weight": "100",
        "blkio.bfq.weight_device": "",
        "blkio.throttle.read_bps_device": "",
        "blkio.throttle.write_bps_device": "",
        "blkio.throttle.read_iops_device": "",
        "blkio.throttle.write_iops_device": "",
        "blkio.bfq.io_service_bytes_recursive": "8:0 Read 4096\n8:0 Write 512\nTotal 4608\n",
        "blkio.bfq.io_serviced_recursive": "8:0 Read 1\n8:0 Write 1\nTotal 2\n",
    },
    "pids": {"pids.max": "max", "pids.current": "2"},
    "hugetlb": {
        "hugetlb.2MB.limit_in_bytes": "9223372036854771712",
        "hugetlb.2MB.rsvd.limit_in_bytes": "9223372036854771712",
        "hugetlb.2MB.usage_in_bytes": "2097152",
        "hugetlb.2MB.max_usage_in_bytes": "4194304",
        "hugetlb.2MB.failcnt": "1",
        "hugetlb.1GB.limit_in_bytes": "9223372036854771712",
        "hugetlb.1GB.usage_in_bytes": "0",
        "hugetlb.1GB.max_usage_in_bytes": "0",
        "hugetlb.1GB.failcnt": "0",
    },
    "net_cls": {"net_cls.classid": "0"},
    "net_prio": {"net_prio.ifpriomap": "lo 0"},
}

V2_FILES: dict[str, str] = {
    "cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma",
    "cgroup.subtree_control": "",
    "cgroup.procs": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.freeze": "0",
    "cgroup.kill": "",
    "cgroup.type": "domain",
    "cpu.stat": (
        "usage_usec 2000\nuser_usec 1500\nsystem_usec 500\n"
        "nr_periods 4\nnr_throttled 1\nthrottled_usec 70\n"
    ),
    "cpu.weight": "100",
    "cpu.max": "max 100000",
    "cpu.max.burst": "0",
    "cpu.idle": "0",
    "cpuset.cpus": "",
    "cpuset.mems": "",
    "cpuset.cpus.effective": "0-3",
    "cpuset.mems.effective": "0",
    "memory.current": "1048576",
    "memory.peak": "2097152",
    "memory.max": "max",
    "memory.low": "0",
    "memory.swap.max": "max",
    "memory.swap.current": "4096",
    "memory.stat": "anon 524288\nfile 262144\n",
    "memory.events": "low 0\nhigh 0\nmax 7\noom 0\noom_kill 0\n",
    "pids.max": "max",
    "pids.current": "3",
    "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
    "io.weight": "default 100",
    "io.max": "",
    "hugetlb.2MB.max": "max",
    "hugetlb.2MB.rsvd.max": "max",
    "hugetlb.2MB.current": "2097152",
    "hugetlb.2MB.rsvd.current": "4194304",
    "hugetlb.2MB.events": "max 2\n",
    "hugetlb.1GB.max": "max",
    "hugetlb.1GB.current": "0",
    "hugetlb.1GB.events": "max 0\n",
    "rdma.max": "",
}


def fill(d: str | Path, content: dict[str, str]) -> None:
    os.makedirs(d, exist_ok=True)
    for name, value in content.items():
        Path(d, name).write_text(value)


def read(d: str | Path, name: str) -> str:
    return Path(d, name).read_text()


@pytest.fixture
def v1_root(tmp_path: Path) -> Path:
    """A v1 tree with cpu and cpuacct co-mounted, as many distributions mount them."""
    root = tmp_path / "cgroup"
    for name in ("cpu,cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"):
        (root / name).mkdir(parents=True)
    for name in ("hugetlb", "net_cls,net_prio", "perf_event", "systemd"):
        (root / name).mkdir()
    (root / "cpu").symlink_to("cpu,cpuacct")
    (root / "cpuacct").symlink_to("cpu,cpuacct")
    fill(root / "cpuset", {"cpuset.cpus": "0-3", "cpuset.mems": "0"})
    return root


def populate_v1(mgr: V1Manager) -> None:
    for controller, content in V1_FILES.items():
        if controller in mgr.paths:
            fill(mgr.paths[controller], content)
    for d in mgr.dirs():
        fill(d, {"cgroup.procs": ""})


@pytest.fixture
def v1_mgr(v1_root: Path) -> V1Manager:
    mgr = cgroups.new_manager("/ctr", "id", str(v1_root))
    assert isinstance(mgr, V1Manager)
    mgr.create()
    populate_v1(mgr)
    return mgr


@pytest.fixture
def v2_root(tmp_path: Path) -> Path:
    root = tmp_path / "unified-cgroup"
    fill(
        root,
        {
            "cgroup.controllers": V2_FILES["cgroup.controllers"],
            "cgroup.subtree_control": "",
            "cgroup.procs": "",
        },
    )
    return root


@pytest.fixture
def v2_mgr(v2_root: Path) -> V2Manager:
    mgr = cgroups.new_manager("/ctr", "id", str(v2_root))
    assert isinstance(mgr, V2Manager)
    mgr.create()
    fill(mgr.path, V2_FILES)
    return mgr


def writes(steps: list[Any]) -> list[tuple[str, str]]:
    """(file, value) of every write of a plan, flattened."""
    out: list[tuple[str, str]] = []
    for s in steps:
        if isinstance(s, Write):
            out.append((s.name, s.value))
        elif isinstance(s, Group):
            out.extend((w.name, w.value) for w in s.writes)
    return out


def snapshot(d: str | Path) -> dict[str, str]:
    return {str(p.relative_to(d)): p.read_text() for p in sorted(Path(d).rglob("*")) if p.is_file()}


# --- mode detection, mountinfo, paths -----------------------------------------


def test_detect_mode(tmp_path: Path, v1_root: Path, v2_root: Path) -> None:
    assert cgroups.detect_mode(str(v2_root)) == "v2"
    assert cgroups.detect_mode(str(v1_root)) == "v1"
    fill(v1_root / "unified", {"cgroup.controllers": ""})
    assert cgroups.detect_mode(str(v1_root)) == "hybrid"


HOST_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:38 / /sys/fs/cgroup/un\\040ified rw,relatime - cgroup2 cgroup2 rw
50 23 0:39 / /mnt/other rw,relatime - cgroup cgroup rw,pids
"""


def test_parse_mountinfo() -> None:
    H = cgroups.Hierarchy
    assert cgroups.parse_mountinfo(HOST_MOUNTINFO, "/sys/fs/cgroup") == [
        H("/sys/fs/cgroup/cpu,cpuacct", "/", ("cpu", "cpuacct")),
        H("/sys/fs/cgroup/cpuset", "/", ("cpuset",)),
        H("/sys/fs/cgroup/memory", "/docker/abc", ("memory",)),
        H("/sys/fs/cgroup/systemd", "/", ("name=systemd",)),
        H("/sys/fs/cgroup/unified", "/", ("",)),
    ]
    # The same hierarchy mounted twice is listed once; an escaped name is decoded.
    only_second = "\n".join(HOST_MOUNTINFO.splitlines()[6:7])
    assert cgroups.parse_mountinfo(only_second, "/sys/fs/cgroup") == [
        H("/sys/fs/cgroup/un ified", "/", ("",))
    ]


def test_hierarchies_from_a_fake_tree(v1_root: Path) -> None:
    found = {h.controllers: h.mountpoint for h in cgroups.hierarchies(str(v1_root))}
    assert found[("cpu", "cpuacct")] == str(v1_root / "cpu,cpuacct")
    assert found[("name=systemd",)] == str(v1_root / "systemd")
    assert found[("net_cls", "net_prio")] == str(v1_root / "net_cls,net_prio")
    assert len(found) == 11  # the cpu and cpuacct links are not hierarchies of their own


def test_parse_proc_cgroup() -> None:
    own = cgroups.parse_proc_cgroup(
        "9:name=systemd:/user.slice\n4:memory:/session/abc\n2:cpu,cpuacct:/\n0::/init.scope\n"
    )
    assert own == {
        "name=systemd": "/user.slice",
        "memory": "/session/abc",
        "cpu": "/",
        "cpuacct": "/",
        "": "/init.scope",
    }


def test_absolute_path_is_relative_to_each_hierarchy(v1_root: Path) -> None:
    mgr = cgroups.new_manager("/a/b", "id", str(v1_root))
    assert mgr.version == 1
    assert mgr.paths["memory"] == str(v1_root / "memory/a/b")
    assert mgr.paths["cpu"] == mgr.paths["cpuacct"] == str(v1_root / "cpu,cpuacct/a/b")
    assert mgr.paths["name=systemd"] == str(v1_root / "systemd/a/b")
    assert mgr.paths["perf_event"] == str(v1_root / "perf_event/a/b")
    assert "" not in mgr.paths
    assert len(mgr.dirs()) == 11


def test_hybrid_joins_the_unified_hierarchy(v1_root: Path) -> None:
    fill(v1_root / "unified", {"cgroup.controllers": "hugetlb"})
    mgr = cgroups.new_manager("/a", "id", str(v1_root))
    assert mgr.version == 1
    assert mgr.paths[""] == str(v1_root / "unified/a")


def test_v2_path(v2_root: Path) -> None:
    mgr = cgroups.new_manager("/x/y", "id", str(v2_root))
    assert mgr.version == 2
    assert mgr.paths == {"": str(v2_root / "x/y")}


def test_relative_path_is_below_the_callers_cgroup(v1_root: Path) -> None:
    mounts = cgroups.hierarchies(str(v1_root))
    own = {"memory": "/session/abc", "cpu": "/", "cpuacct": "/", "name=systemd": "/user"}
    paths = cgroups.resolve_paths("ctr", "id", str(v1_root), own=own, mounts=mounts)
    assert paths["memory"] == str(v1_root / "memory/session/abc/ctr")
    assert paths["cpu"] == str(v1_root / "cpu,cpuacct/ctr")
    assert paths["name=systemd"] == str(v1_root / "systemd/user/ctr")
    assert paths["pids"] == str(v1_root / "pids/ctr")  # unknown: from the root


def test_relative_path_inside_a_bind_mounted_subtree() -> None:
    mounts = [cgroups.Hierarchy("/sys/fs/cgroup/memory", "/docker/abc", ("memory",))]
    own = {"memory": "/docker/abc/sub"}
    paths = cgroups.resolve_paths("ctr", "id", own=own, mounts=mounts)
    assert paths == {"memory": "/sys/fs/cgroup/memory/sub/ctr"}


def test_default_path_uses_the_container_id(v1_root: Path) -> None:
    mounts = cgroups.hierarchies(str(v1_root))
    paths = cgroups.resolve_paths(None, "web", str(v1_root), own={}, mounts=mounts)
    assert paths["memory"] == str(v1_root / "memory/dockyard/web")
    assert cgroups.resolve_paths("", "web", str(v1_root), own={}, mounts=mounts) == paths


def test_dot_dot_cannot_leave_the_hierarchy(v1_root: Path) -> None:
    mgr = cgroups.new_manager("/../../etc", "id", str(v1_root))
    assert mgr.paths["memory"] == str(v1_root / "memory/etc")


def test_bad_cgroups_paths(v1_root: Path) -> None:
    with pytest.raises(Unsupported, match="systemd cgroup driver"):
        cgroups.new_manager("system.slice:docker:abc", "id", str(v1_root))
    with pytest.raises(InvalidArgument, match="root cgroup"):
        cgroups.new_manager("/", "id", str(v1_root))
    with pytest.raises(InvalidArgument, match="root cgroup"):
        cgroups.new_manager("/a/..", "id", str(v1_root))


def test_default_path_needs_a_usable_id(v1_root: Path) -> None:
    for bad in ("", "..", "a/b"):
        with pytest.raises(InvalidArgument, match="cannot name a cgroup"):
            cgroups.new_manager(None, bad, str(v1_root))


def test_no_hierarchy(tmp_path: Path) -> None:
    with pytest.raises(Unsupported, match="no cgroup hierarchy"):
        cgroups.new_manager("/a", "id", str(tmp_path))


def test_load_manager_from_saved_paths(v1_mgr: V1Manager, v2_mgr: V2Manager, v2_root: Path) -> None:
    again = cgroups.load_manager(v1_mgr.paths)
    assert isinstance(again, V1Manager) and again.paths == v1_mgr.paths
    again2 = cgroups.load_manager(v2_mgr.paths, str(v2_root))
    assert isinstance(again2, V2Manager) and again2.path == v2_mgr.path


# --- v1 -----------------------------------------------------------------------


def test_v1_create_is_idempotent(v1_root: Path) -> None:
    mgr = cgroups.new_manager("/a/b", "id", str(v1_root))
    mgr.create()
    mgr.create()
    assert all(os.path.isdir(d) for d in mgr.dirs())
    assert mgr.exists()


def test_v1_cpuset_is_copied_from_the_parent(v1_root: Path) -> None:
    # New cpuset cgroups have empty cpus/mems; nothing can join them so.
    fill(v1_root / "cpuset/a", {"cpuset.cpus": "", "cpuset.mems": ""})
    fill(v1_root / "cpuset/a/b", {"cpuset.cpus": "", "cpuset.mems": ""})
    mgr = cgroups.new_manager("/a/b", "id", str(v1_root))
    mgr.create()
    assert read(v1_root / "cpuset/a", "cpuset.cpus") == "0-3"
    assert read(v1_root / "cpuset/a/b", "cpuset.cpus") == "0-3"
    assert read(v1_root / "cpuset/a/b", "cpuset.mems") == "0"


def test_v1_apply_writes_the_pid_everywhere(v1_mgr: V1Manager) -> None:
    v1_mgr.apply(4242)
    for d in v1_mgr.dirs():
        assert read(d, "cgroup.procs") == "4242"


def test_v1_set_memory_cpu_pids(v1_mgr: V1Manager) -> None:
    v1_mgr.set(
        {
            "memory": {
                "limit": 67108864,
                "reservation": 33554432,
                "swap": 134217728,
                "kernelTCP": 1048576,
                "swappiness": 10,
                "disableOOMKiller": True,
            },
            "cpu": {
                "shares": 512,
                "quota": 50000,
                "period": 100000,
                "burst": 1000,
                "realtimeRuntime": 950,
                "realtimePeriod": 1000000,
                "cpus": "0-1",
                "mems": "0",
                "idle": 1,
            },
            "pids": {"limit": 100},
        }
    )
    p = v1_mgr.paths
    assert read(p["memory"], "memory.limit_in_bytes") == "67108864"
    assert read(p["memory"], "memory.memsw.limit_in_bytes") == "134217728"
    assert read(p["memory"], "memory.soft_limit_in_bytes") == "33554432"
    assert read(p["memory"], "memory.kmem.tcp.limit_in_bytes") == "1048576"
    assert read(p["memory"], "memory.swappiness") == "10"
    assert read(p["memory"], "memory.oom_control") == "1"
    assert read(p["cpu"], "cpu.shares") == "512"
    assert read(p["cpu"], "cpu.cfs_quota_us") == "50000"
    assert read(p["cpu"], "cpu.cfs_period_us") == "100000"
    assert read(p["cpu"], "cpu.cfs_burst_us") == "1000"
    assert read(p["cpu"], "cpu.rt_runtime_us") == "950"
    assert read(p["cpu"], "cpu.rt_period_us") == "1000000"
    assert read(p["cpu"], "cpu.idle") == "1"
    assert read(p["cpuset"], "cpuset.cpus") == "0-1"
    assert read(p["pids"], "pids.max") == "100"


def test_v1_unlimited_memory_means_unlimited_swap(v1_mgr: V1Manager) -> None:
    steps = v1_mgr.plan({"memory": {"limit": -1}})
    assert writes(steps) == [
        ("memory.limit_in_bytes", "-1"),
        ("memory.memsw.limit_in_bytes", "-1"),
    ]
    assert isinstance(steps[0], Group)
    assert writes(v1_mgr.plan({"pids": {"limit": -1}})) == [("pids.max", "max")]
    assert writes(v1_mgr.plan({"pids": {"limit": 0}})) == [("pids.max", "0")]


def test_v1_without_swap_accounting(v1_mgr: V1Manager) -> None:
    os.remove(os.path.join(v1_mgr.paths["memory"], "memory.memsw.limit_in_bytes"))
    assert writes(v1_mgr.plan({"memory": {"limit": -1}})) == [("memory.limit_in_bytes", "-1")]
    assert writes(v1_mgr.plan({"memory": {"limit": 100, "swap": -1}})) == [
        ("memory.limit_in_bytes", "100")
    ]
    with pytest.raises(Unsupported, match=r"memory\.memsw\.limit_in_bytes does not exist"):
        v1_mgr.set({"memory": {"limit": 100, "swap": 200}})


def test_v1_group_retries_the_write_the_kernel_refused(
    v1_mgr: V1Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Raising memory above the old memory+swap limit is EINVAL until memsw is raised.
    real = files.write
    done: list[str] = []

    def kernel(d: str, name: str, value: str) -> None:
        if name == "memory.limit_in_bytes" and "memory.memsw.limit_in_bytes" not in done:
            try:
                raise OSError(errno.EINVAL, "Invalid argument")
            except OSError as e:
                raise SystemFailure(f"set {name} to {value} in {d}: invalid argument") from e
        done.append(name)
        real(d, name, value)

    monkeypatch.setattr(files, "write", kernel)
    v1_mgr.set({"memory": {"limit": 200, "swap": 300}})
    assert done == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    assert read(v1_mgr.paths["memory"], "memory.limit_in_bytes") == "200"


def test_v1_error_names_file_value_and_dir(v1_mgr: V1Manager) -> None:
    d = v1_mgr.paths["memory"]
    os.remove(os.path.join(d, "memory.limit_in_bytes"))
    os.mkdir(os.path.join(d, "memory.limit_in_bytes"))  # any write fails: EISDIR
    with pytest.raises(SystemFailure) as exc:
        v1_mgr.set({"memory": {"limit": 1024}})
    assert str(exc.value) == f"set memory.limit_in_bytes to 1024 in {d}: is a directory"


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"cpu": {"shares": -1}}, r"cpu\.shares -1: must be at least 0"),
        ({"cpu": {"shares": 1}}, r"cpu\.shares 1: must be between 2 and 262144"),
        ({"cpu": {"quota": 10}}, r"cpu\.quota 10"),
        ({"cpu": {"period": 10}}, r"cpu\.period 10"),
        ({"cpu": {"quota": 2000, "burst": 3000}}, r"cpu\.burst 3000"),
        ({"cpu": {"cpus": "0-x"}}, r"cpu\.cpus '0-x'"),
        ({"cpu": {"cpus": "3-1"}}, r"reversed"),
        ({"cpu": {"idle": 2}}, r"cpu\.idle 2"),
        ({"memory": {"limit": -2}}, r"memory\.limit -2"),
        ({"memory": {"limit": "1G"}}, r"memory\.limit '1G': must be an integer"),
        ({"memory": {"limit": True}}, r"must be an integer"),
        ({"memory": {"limit": 200, "swap": 100}}, r"memory\.swap 100"),
        ({"memory": {"limit": -1, "swap": 100}}, r"memory\.swap 100"),
        ({"memory": {"swappiness": 101}}, r"memory\.swappiness 101"),
        ({"memory": {"disableOOMKiller": 1}}, r"must be a boolean"),
        ({"pids": {"limit": -5}}, r"pids\.limit -5"),
        ({"blockIO": {"weight": 2000}}, r"blockIO\.weight 2000"),
        ({"blockIO": {"weightDevice": [{"major": 8, "minor": 0}]}}, r"weightDevice\[0\]"),
        ({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "rate": 1}]}}, r"\.minor"),
        ({"hugepageLimits": [{"pageSize": "2M", "limit": 1}]}, r"pageSize '2M'"),
        ({"hugepageLimits": [{"pageSize": "2MB"}]}, r"\.limit None: is required"),
        ({"network": {"classID": -1}}, r"network\.classID -1"),
        ({"network": {"priorities": [{"name": "eth 0", "priority": 1}]}}, r"\.name"),
        ({"devices": [{"access": "rwm"}]}, r"devices\[0\]\.allow None: is required"),
        ({"devices": [{"allow": True, "type": "x"}]}, r"devices\[0\]\.type 'x'"),
        ({"devices": [{"allow": True, "access": "rwx"}]}, r"devices\[0\]\.access 'rwx'"),
        ({"devices": [{"allow": True, "major": -2}]}, r"devices\[0\]\.major -2"),
        ({"devices": "all"}, r"devices 'all': must be an array"),
        ({"memory": []}, r"memory \[\]: must be an object"),
        ({"rdma": {"mlx": {}}}, r"needs hcaHandles or hcaObjects"),
    ],
)
def test_invalid_values_are_rejected_before_anything_is_written(
    v1_mgr: V1Manager, v1_root: Path, resources: dict[str, Any], message: str
) -> None:
    before = snapshot(v1_root)
    # A valid field comes first: it must not be written either.
    with pytest.raises(InvalidArgument, match=message) as exc:
        v1_mgr.set({"pids": {"limit": 7}, **resources})
    assert str(exc.value).startswith("invalid linux.resources.")
    assert snapshot(v1_root) == before


def test_v1_missing_controller_or_file(v1_mgr: V1Manager, v1_root: Path) -> None:
    before = snapshot(v1_root)
    del v1_mgr.paths["hugetlb"]
    with pytest.raises(Unsupported, match="hugetlb cgroup controller is not mounted"):
        v1_mgr.set({"pids": {"limit": 7}, "hugepageLimits": [{"pageSize": "2MB", "limit": 0}]})
    with pytest.raises(Unsupported, match=r"blockIO\.leafWeight: blkio\.leaf_weight does not"):
        v1_mgr.set({"pids": {"limit": 7}, "blockIO": {"leafWeight": 100}})
    with pytest.raises(Unsupported, match="cgroup v2 files cannot be set on a cgroup v1 host"):
        v1_mgr.set({"pids": {"limit": 7}, "unified": {"memory.high": "100"}})
    assert snapshot(v1_root) == before


def test_v1_block_io_hugetlb_network(v1_mgr: V1Manager) -> None:
    steps = v1_mgr.plan(
        {
            "blockIO": {
                "weight": 300,
                "weightDevice": [{"major": 8, "minor": 0, "weight": 500}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 300}],
            },
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
            "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]},
        }
    )
    # This kernel has BFQ only: blkio.weight is missing, blkio.bfq.weight is there.
    assert writes(steps) == [
        ("blkio.bfq.weight", "300"),
        ("blkio.bfq.weight_device", "8:0 500"),
        ("blkio.throttle.read_bps_device", "8:0 1048576"),
        ("blkio.throttle.write_iops_device", "8:16 300"),
        ("hugetlb.2MB.limit_in_bytes", "4194304"),
        ("hugetlb.2MB.rsvd.limit_in_bytes", "4194304"),
        ("net_cls.classid", "1048577"),
        ("net_prio.ifpriomap", "eth0 5"),
    ]
    files.run_plan(steps)
    assert read(v1_mgr.paths["net_cls"], "net_cls.classid") == "1048577"


def test_v1_devices_are_written_in_order(v1_mgr: V1Manager) -> None:
    rules = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
        {"allow": True, "type": "c", "major": 136, "access": "rwm"},
        {"allow": False, "type": "b", "major": 8, "minor": 0, "access": "w"},
        {"allow": True, "access": "m"},
    ]
    assert writes(v1_mgr.plan({"devices": rules})) == [
        ("devices.deny", "a"),
        ("devices.allow", "c 1:3 rw"),
        ("devices.allow", "c 136:* rwm"),
        ("devices.deny", "b 8:0 w"),
        # "a *:* m" would reset v1 to allow-all: it is split into its c and b halves.
        ("devices.allow", "c *:* m"),
        ("devices.allow", "b *:* m"),
    ]


def test_v1_check_before_update(v1_mgr: V1Manager) -> None:
    with pytest.raises(InvalidArgument, match="below the current usage 4096000"):
        v1_mgr.set({"memory": {"limit": 1000000, "checkBeforeUpdate": True}})
    v1_mgr.set({"memory": {"limit": 5000000, "checkBeforeUpdate": True}})


def test_v1_freeze_and_thaw(v1_mgr: V1Manager) -> None:
    d = v1_mgr.paths["freezer"]
    assert not v1_mgr.frozen()
    v1_mgr.freeze()
    assert read(d, "freezer.state") == "FROZEN"
    assert v1_mgr.frozen()
    v1_mgr.thaw()
    assert read(d, "freezer.state") == "THAWED"
    assert not v1_mgr.frozen()


def test_v1_freeze_gives_up_and_thaws(v1_mgr: V1Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    d = v1_mgr.paths["freezer"]
    real = files.write

    def stuck(dir: str, name: str, value: str) -> None:
        real(dir, name, "FREEZING" if value == "FROZEN" else value)

    monkeypatch.setattr(files, "write", stuck)
    monkeypatch.setattr(v1, "FREEZE_TIMEOUT", 0.05)
    with pytest.raises(SystemFailure, match=f"freeze {d}: still freezing"):
        v1_mgr.freeze()
    assert read(d, "freezer.state") == "THAWED"


def test_v1_without_freezer(v1_mgr: V1Manager) -> None:
    del v1_mgr.paths["freezer"]
    assert not v1_mgr.can_freeze()
    assert not v1_mgr.frozen()
    with pytest.raises(Unsupported, match="freezer cgroup controller is not mounted"):
        v1_mgr.freeze()


def test_pids_are_gathered_from_every_hierarchy_and_below(v1_mgr: V1Manager) -> None:
    fill(v1_mgr.paths["memory"], {"cgroup.procs": "10\n11\n"})
    fill(v1_mgr.paths["pids"], {"cgroup.procs": "11\n"})
    fill(os.path.join(v1_mgr.paths["pids"], "sub"), {"cgroup.procs": "12\n"})
    assert v1_mgr.pids() == [10, 11, 12]


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_kill_all_signals_every_process(v1_mgr: V1Manager) -> None:
    child = _sleeper()
    try:
        fill(v1_mgr.paths["freezer"], {"cgroup.procs": str(child.pid)})
        v1_mgr.kill_all(signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM
        # it was frozen while signalled and thawed after
        assert read(v1_mgr.paths["freezer"], "freezer.state") == "THAWED"
    finally:
        child.kill()
        child.wait()


def test_kill_all_keeps_a_paused_container_paused(v1_mgr: V1Manager) -> None:
    child = _sleeper()
    try:
        fill(v1_mgr.paths["pids"], {"cgroup.procs": str(child.pid)})
        v1_mgr.freeze()
        v1_mgr.kill_all(signal.SIGTERM)
        assert v1_mgr.frozen()
        assert child.wait(timeout=10) == -signal.SIGTERM
        v1_mgr.kill_all(signal.SIGKILL)  # SIGKILL thaws: frozen processes could not die
        assert not v1_mgr.frozen()
    finally:
        child.kill()
        child.wait()


def test_v1_stats(v1_mgr: V1Manager) -> None:
    st = v1_mgr.stats()
    assert st["cpu"] == {
        "usage": {
            "total": 123456789,
            "percpu": [100000000, 23456789],
            "percpu_kernel": [40000000, 3456789],
            "percpu_user": [60000000, 20000000],
            "kernel": 43456789,
            "user": 80000000,
        },
        "throttling": {"periods": 10, "throttledPeriods": 2, "throttledTime": 5000},
    }
    unlimited = 9223372036854771712
    assert st["memory"]["cache"] == 1024
    assert st["memory"]["usage"] == {
        "limit": unlimited,
        "usage": 4096000,
        "max": 8192000,
        "failcnt": 3,
    }
    assert st["memory"]["kernel"] == {"limit": unlimited, "failcnt": 0}
    assert st["memory"]["raw"] == {"cache": 1024, "rss": 4096, "mapped_file": 0}
    assert st["pids"] == {"current": 2}
    assert st["blkio"] == {
        "ioServiceBytesRecursive": [
            {"major": 8, "op": "Read", "value": 4096},
            {"major": 8, "op": "Write", "value": 512},
        ],
        "ioServicedRecursive": [
            {"major": 8, "op": "Read", "value": 1},
            {"major": 8, "op": "Write", "value": 1},
        ],
    }
    assert st["hugetlb"] == {
        "1GB": {"failcnt": 0},
        "2MB": {"usage": 2097152, "max": 4194304, "failcnt": 1},
    }
    assert st["cpuset"]["cpus"] == [0, 1, 2, 3]


def test_v1_stats_from_ticks_without_usage_user(v1_mgr: V1Manager) -> None:
    os.remove(os.path.join(v1_mgr.paths["cpuacct"], "cpuacct.usage_user"))
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    usage = v1_mgr.stats()["cpu"]["usage"]
    assert (usage["user"], usage["kernel"]) == (8 * tick, 4 * tick)


def test_destroy_removes_everything_below(v1_root: Path) -> None:
    mgr = cgroups.new_manager("/a/b", "id", str(v1_root))
    mgr.create()
    os.makedirs(os.path.join(mgr.paths["memory"], "nested/deeper"))
    mgr.destroy()
    assert not mgr.exists()
    assert os.path.isdir(v1_root / "memory/a")  # parents are left, as runc leaves them
    mgr.destroy()  # gone already: fine


def test_destroy_retries_while_busy(v1_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = cgroups.new_manager("/a", "id", str(v1_root))
    mgr.create()
    real = os.rmdir
    busy = {"left": 3}

    def rmdir(path: str) -> None:
        if busy["left"]:
            busy["left"] -= 1
            raise OSError(errno.EBUSY, "Device or resource busy")
        real(path)

    monkeypatch.setattr(os, "rmdir", rmdir)
    mgr.destroy()
    assert not mgr.exists()


def test_destroy_reports_a_cgroup_that_stays_busy(
    v1_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mgr = cgroups.new_manager("/a", "id", str(v1_root))
    mgr.create()

    def rmdir(path: str) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(os, "rmdir", rmdir)
    monkeypatch.setattr("time.sleep", lambda s: None)
    with pytest.raises(SystemFailure, match=r"remove cgroup .*/a: device or resource busy"):
        mgr.destroy()


# --- v2 -----------------------------------------------------------------------


def test_cpu_weight_conversion() -> None:
    assert v2.cpu_weight(2) == 1
    assert v2.cpu_weight(1024) == 100
    assert v2.cpu_weight(262144) == 10000
    assert v2.cpu_weight(512) == 59
    assert v2.cpu_weight(2048) == 174
    weights = [v2.cpu_weight(s) for s in range(2, 262145, 97)]
    assert weights == sorted(weights)


def test_io_weight_conversion() -> None:
    assert v2.io_weight(10) == 1
    assert v2.io_weight(1000) == 10000
    assert v2.io_weight(500) == 4950
    assert v2.io_weight(1) == 1


def test_v2_create_enables_controllers_on_the_way(v2_root: Path) -> None:
    fill(v2_root / "a", {"cgroup.controllers": "cpu memory pids", "cgroup.subtree_control": "cpu"})
    mgr = cgroups.new_manager("/a/b/c", "id", str(v2_root))
    mgr.create()
    assert os.path.isdir(v2_root / "a/b/c")
    assert read(v2_root, "cgroup.subtree_control") == (
        "+cpuset +cpu +io +memory +hugetlb +pids +rdma"
    )
    assert read(v2_root / "a", "cgroup.subtree_control") == "+memory +pids"
    mgr.create()  # idempotent


def test_v2_create_refuses_a_path_outside_the_mount(v2_root: Path) -> None:
    with pytest.raises(InvalidArgument, match="is not below"):
        V2Manager("/elsewhere/x", str(v2_root)).create()


def test_v2_set(v2_mgr: V2Manager) -> None:
    v2_mgr.set(
        {
            "memory": {"limit": 67108864, "swap": 100663296, "reservation": 1048576},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "burst": 1000},
            "pids": {"limit": 64},
            "blockIO": {
                "weight": 500,
                "weightDevice": [{"major": 8, "minor": 0, "weight": 1000}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            },
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
            "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}},
        }
    )
    d = v2_mgr.path
    assert read(d, "memory.max") == "67108864"
    assert read(d, "memory.swap.max") == "33554432"  # OCI swap is memory+swap
    assert read(d, "memory.low") == "1048576"
    assert read(d, "cpu.weight") == "100"
    assert read(d, "cpu.max") == "50000 100000"
    assert read(d, "cpu.max.burst") == "1000"
    assert read(d, "pids.max") == "64"
    assert read(d, "io.max") == "8:0 rbps=1048576"
    assert read(d, "io.weight") == "8:0 10000"  # the last write; the default came first
    assert read(d, "hugetlb.2MB.max") == "4194304"
    assert read(d, "hugetlb.2MB.rsvd.max") == "4194304"
    assert read(d, "rdma.max") == "mlx5_1 hca_handle=3 hca_object=10000"


def test_v2_plan_conversions(v2_mgr: V2Manager) -> None:
    plan = v2_mgr.plan
    assert writes(plan({"memory": {"limit": -1}})) == [
        ("memory.swap.max", "max"),
        ("memory.max", "max"),
    ]
    assert writes(plan({"memory": {"limit": 100, "swap": 100}})) == [
        ("memory.swap.max", "0"),
        ("memory.max", "100"),
    ]
    assert writes(plan({"memory": {"limit": 100, "swap": -1}})) == [
        ("memory.swap.max", "max"),
        ("memory.max", "100"),
    ]
    assert writes(plan({"cpu": {"quota": -1}})) == [("cpu.max", "max")]
    # Only the period: the quota in force is kept.
    Path(v2_mgr.path, "cpu.max").write_text("20000 100000\n")
    assert writes(plan({"cpu": {"period": 50000}})) == [("cpu.max", "20000 50000")]
    assert writes(plan({"pids": {"limit": -1}})) == [("pids.max", "max")]
    assert writes(plan({"cpu": {"cpus": "0-1", "mems": "0"}})) == [
        ("cpuset.cpus", "0-1"),
        ("cpuset.mems", "0"),
    ]
    # Fields v2 has no file for, and runc ignores too.
    assert writes(plan({"memory": {"swappiness": 30, "kernel": 100, "kernelTCP": 100}})) == []


def test_v2_without_swap_accounting(v2_mgr: V2Manager) -> None:
    os.remove(os.path.join(v2_mgr.path, "memory.swap.max"))
    assert writes(v2_mgr.plan({"memory": {"limit": 100, "swap": 100}})) == [("memory.max", "100")]
    with pytest.raises(Unsupported, match=r"memory\.swap: memory\.swap\.max does not exist"):
        v2_mgr.set({"memory": {"limit": 100, "swap": 200}})


def test_v2_bfq_takes_blkio_weights_unconverted(v2_mgr: V2Manager) -> None:
    fill(v2_mgr.path, {"io.bfq.weight": "default 100"})
    assert writes(v2_mgr.plan({"blockIO": {"weight": 500}})) == [("io.bfq.weight", "500")]


@pytest.mark.parametrize(
    ("resources", "error", "message"),
    [
        ({"memory": {"swap": 200}}, InvalidArgument, "needs memory.limit"),
        ({"memory": {"disableOOMKiller": True}}, Unsupported, "cannot disable the OOM killer"),
        ({"memory": {"useHierarchy": False}}, Unsupported, "always hierarchical"),
        ({"cpu": {"realtimeRuntime": 100}}, Unsupported, "no realtime"),
        ({"blockIO": {"leafWeight": 100}}, Unsupported, "no leaf weights"),
        ({"network": {"classID": 1}}, Unsupported, "only in cgroup v1"),
        ({"unified": {"../x": "1"}}, InvalidArgument, "must name a file"),
        ({"unified": {"memory.high": 5}}, InvalidArgument, "must be a string"),
        ({"unified": {"misc.max": "x 1"}}, Unsupported, "misc controller is not available"),
        ({"unified": {"cpu.nosuchfile": "1"}}, Unsupported, "cpu.nosuchfile does not exist"),
        ({"devices": [{"allow": True, "type": "q"}]}, InvalidArgument, r"devices\[0\]\.type"),
    ],
)
def test_v2_rejections_write_nothing(
    v2_mgr: V2Manager, v2_root: Path, resources: dict[str, Any], error: type, message: str
) -> None:
    before = snapshot(v2_root)
    with pytest.raises(error, match=message):
        v2_mgr.set({"pids": {"limit": 5}, **resources})
    assert snapshot(v2_root) == before


def test_v2_unified_is_written_last_and_line_by_line(
    v2_mgr: V2Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(v2_mgr.path, {"memory.high": "max", "memory.oom.group": "0"})
    steps = v2_mgr.plan(
        {
            "memory": {"limit": 1000},
            "unified": {
                "memory.max": "2000",
                "io.max": "259:0 rbps=2097152 wiops=120\n253:0 rbps=2097152 wiops=120",
                "memory.oom.group": "1",
            },
        }
    )
    assert writes(steps) == [
        ("memory.max", "1000"),
        ("memory.max", "2000"),
        ("io.max", "259:0 rbps=2097152 wiops=120"),
        ("io.max", "253:0 rbps=2097152 wiops=120"),
        ("memory.oom.group", "1"),
    ]


def test_v2_devices_become_a_bpf_step(v2_mgr: V2Manager) -> None:
    steps = v2_mgr.plan({"devices": [{"allow": False, "access": "rwm"}]})
    assert len(steps) == 1 and isinstance(steps[0], Call)


def test_v2_freeze_waits_for_the_kernel(v2_mgr: V2Manager) -> None:
    d = v2_mgr.path
    fill(d, {"cgroup.events": "populated 1\nfrozen 1\n"})  # as the kernel would report
    v2_mgr.freeze()
    assert read(d, "cgroup.freeze") == "1"
    assert v2_mgr.frozen()
    fill(d, {"cgroup.events": "populated 1\nfrozen 0\n"})
    v2_mgr.thaw()
    assert read(d, "cgroup.freeze") == "0"
    assert not v2_mgr.frozen()


def test_v2_freeze_times_out_and_thaws(v2_mgr: V2Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v2, "FREEZE_TIMEOUT", 0.05)
    with pytest.raises(SystemFailure, match="still freezing"):
        v2_mgr.freeze()
    assert read(v2_mgr.path, "cgroup.freeze") == "0"


def test_v2_freeze_unsupported(v2_mgr: V2Manager) -> None:
    os.remove(os.path.join(v2_mgr.path, "cgroup.freeze"))
    with pytest.raises(Unsupported, match=r"cgroup\.freeze is not available"):
        v2_mgr.freeze()


def test_v2_kill_all_uses_cgroup_kill_for_sigkill(v2_mgr: V2Manager) -> None:
    v2_mgr.kill_all(signal.SIGKILL)
    assert read(v2_mgr.path, "cgroup.kill") == "1"


def test_v2_kill_all_other_signals(v2_mgr: V2Manager) -> None:
    os.remove(os.path.join(v2_mgr.path, "cgroup.freeze"))
    child = _sleeper()
    try:
        fill(v2_mgr.path, {"cgroup.procs": f"{child.pid}\n"})
        assert v2_mgr.pids() == [child.pid]
        v2_mgr.kill_all(signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM
        assert read(v2_mgr.path, "cgroup.kill") == ""
    finally:
        child.kill()
        child.wait()


def test_v2_stats(v2_mgr: V2Manager) -> None:
    st = v2_mgr.stats()
    assert st["cpu"] == {
        "usage": {"total": 2000000, "kernel": 500000, "user": 1500000},
        "throttling": {"periods": 4, "throttledPeriods": 1, "throttledTime": 70000},
    }
    top = (1 << 64) - 1
    assert st["memory"] == {
        "cache": 262144,
        "usage": {"limit": top, "usage": 1048576, "max": 2097152, "failcnt": 7},
        "swap": {"limit": top, "usage": 1048576 + 4096, "failcnt": 0},
        "kernel": {"limit": 0, "failcnt": 0},
        "kernelTCP": {"limit": 0, "failcnt": 0},
        "raw": {"anon": 524288, "file": 262144},
    }
    assert st["pids"] == {"current": 3}
    assert st["blkio"] == {
        "ioServiceBytesRecursive": [
            {"major": 8, "op": "Read", "value": 4096},
            {"major": 8, "op": "Write", "value": 8192},
        ],
        "ioServicedRecursive": [
            {"major": 8, "op": "Read", "value": 1},
            {"major": 8, "op": "Write", "value": 2},
        ],
    }
    assert st["hugetlb"] == {"1GB": {"failcnt": 0}, "2MB": {"usage": 4194304, "failcnt": 2}}
    assert st["cpuset"] == {"cpus": [0, 1, 2, 3], "mems": [0]}


def test_v2_stats_with_limits(v2_mgr: V2Manager) -> None:
    fill(v2_mgr.path, {"memory.max": "1000000", "memory.swap.max": "500", "pids.max": "9"})
    st = v2_mgr.stats()
    assert st["memory"]["usage"]["limit"] == 1000000
    assert st["memory"]["swap"]["limit"] == 1000500
    assert st["pids"] == {"current": 3, "limit": 9}


# --- device rules and the BPF program -------------------------------------------


def test_parse_rules_defaults() -> None:
    assert parse_rules([{"allow": False}]) == [DeviceRule(False, "a", -1, -1, ACC_ALL)]
    assert parse_rules([{"allow": True, "type": "c", "major": 1, "access": "r"}]) == [
        DeviceRule(True, "c", 1, -1, ACC_READ)
    ]
    assert parse_rules([{"allow": True, "major": 1, "minor": 3}]) == [
        DeviceRule(True, "c", 1, 3, ACC_ALL),
        DeviceRule(True, "b", 1, 3, ACC_ALL),
    ]
    rule = parse_rules([{"allow": True, "type": "b", "major": 8, "minor": 0, "access": "mw"}])[0]
    assert rule.v1() == "b 8:0 wm"


def test_emulator_follows_v1() -> None:
    emu = device_rules.emulate(parse_rules([{"allow": False}]))
    assert not emu.default_allow and not emu.exceptions
    emu.apply(DeviceRule(True, "c", 1, 3, ACC_READ | ACC_WRITE))
    emu.apply(DeviceRule(True, "c", 1, 3, ACC_MKNOD))  # merges with the same device
    assert emu.exceptions == {("c", 1, 3): ACC_ALL}
    emu.apply(DeviceRule(False, "c", 1, 3, ACC_WRITE))  # narrows it
    assert emu.allows("c", 1, 3, ACC_READ)
    assert not emu.allows("c", 1, 3, ACC_READ | ACC_WRITE)
    # a deny of a device under a wildcard allow does not punch a hole (as in v1)
    emu.apply(DeviceRule(True, "c", 136, -1, ACC_ALL))
    emu.apply(DeviceRule(False, "c", 136, 5, ACC_ALL))
    assert emu.allows("c", 136, 5, ACC_READ)
    assert not emu.allows("b", 136, 5, ACC_READ)
    # allow-all mode: exceptions deny, and any denied bit denies
    emu.apply(DeviceRule(True, "a", -1, -1, ACC_ALL))
    assert emu.default_allow and not emu.exceptions
    emu.apply(DeviceRule(False, "b", 8, -1, ACC_WRITE))
    assert emu.allows("b", 8, 1, ACC_READ)
    assert not emu.allows("b", 8, 1, ACC_READ | ACC_WRITE)
    emu.apply(DeviceRule(True, "b", 8, -1, ACC_WRITE))
    assert not emu.exceptions


def run_bpf(program: bytes, kind: int, major: int, minor: int, access: int) -> int:
    """Interpret the subset of eBPF the device filter uses on one bpf_cgroup_dev_ctx."""
    ctx = struct.pack("<III", (access << 16) | kind, major, minor)
    regs = [0] * 11
    pc = 0
    insns = [struct.unpack_from("<BBhi", program, i) for i in range(0, len(program), 8)]
    steps = 0
    while True:
        steps += 1
        assert steps < 10000 and 0 <= pc < len(insns), "runs off the program"
        code, r, off, imm = insns[pc]
        dst, src = r & 0xF, r >> 4
        uimm = imm & 0xFFFFFFFF
        pc += 1
        if code == devices.LDXW:
            assert src == 1, "loads only from the context"
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code == devices.AND32:
            regs[dst] = (regs[dst] & uimm) & 0xFFFFFFFF
        elif code == devices.RSH32:
            regs[dst] = (regs[dst] & 0xFFFFFFFF) >> uimm
        elif code == devices.MOV32:
            regs[dst] = uimm
        elif code == devices.MOV32_REG:
            regs[dst] = regs[src] & 0xFFFFFFFF
        elif code == devices.JEQ:
            pc += off if regs[dst] == imm else 0
        elif code == devices.JNE:
            pc += off if regs[dst] != imm else 0
        elif code == devices.JSET:
            pc += off if regs[dst] & imm else 0
        elif code == devices.EXIT:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def check_program(rules: list[DeviceRule]) -> None:
    program = devices.compile_rules(rules)
    emu = device_rules.emulate(rules)
    kinds = {"c": devices.DEV_CHAR, "b": devices.DEV_BLOCK}
    for kind, bpf_kind in kinds.items():
        for major in (1, 5, 8, 136):
            for minor in (0, 3, 5):
                for access in range(1, 8):
                    want = emu.allows(kind, major, minor, access)
                    got = run_bpf(program, bpf_kind, major, minor, access)
                    assert got == int(want), (rules, kind, major, minor, access)


def test_bpf_program_bytes() -> None:
    # deny-all: the prologue loading type, access, major, minor; then "return 0"
    program = devices.compile_rules(parse_rules([{"allow": False}]))
    assert program.hex() == (
        "6112000000000000"  # r2 = *(u32 *)(r1 + 0)
        "54020000ffff0000"  # w2 &= 0xffff
        "6113000000000000"  # r3 = *(u32 *)(r1 + 0)
        "7403000010000000"  # w3 >>= 16
        "6114040000000000"  # r4 = *(u32 *)(r1 + 4)
        "6115080000000000"  # r5 = *(u32 *)(r1 + 8)
        "b400000000000000"  # w0 = 0
        "9500000000000000"  # exit
    )
    one = devices.compile_rules(
        parse_rules([{"allow": False}, {"allow": True, "type": "c", "major": 1, "minor": 3}])
    )
    block = one[48:-16].hex()
    assert block == (
        "5502040002000000"  # if r2 != char goto +4
        "5504030001000000"  # if r4 != 1 goto +3
        "5505020003000000"  # if r5 != 3 goto +2
        "b400000001000000"  # w0 = 1
        "9500000000000000"  # exit
    )


def test_bpf_program_matches_v1_for_docker_defaults() -> None:
    rules = parse_rules([{"allow": False, "access": "rwm"}, *device_rules.DEFAULT_ALLOWED])
    check_program(rules)
    emu = device_rules.emulate(rules)
    assert emu.allows("c", 1, 3, ACC_READ | ACC_WRITE)
    assert emu.allows("b", 8, 0, ACC_MKNOD)
    assert not emu.allows("b", 8, 0, ACC_READ)


def test_bpf_program_matches_v1_for_random_rules() -> None:
    rng = random.Random(1234)
    for _ in range(300):
        entries: list[dict[str, Any]] = []
        for _ in range(rng.randint(0, 6)):
            entry: dict[str, Any] = {"allow": rng.random() < 0.5}
            if rng.random() < 0.8:
                entry["type"] = rng.choice("abc")
            if rng.random() < 0.7:
                entry["major"] = rng.choice([1, 5, 8, 136, -1])
            if rng.random() < 0.5:
                entry["minor"] = rng.choice([0, 3, 5, -1])
            entry["access"] = "".join(c for c in "rwm" if rng.random() < 0.6) or "r"
            entries.append(entry)
        check_program(parse_rules(entries))


def test_emulator_starts_like_a_fresh_v1_cgroup() -> None:
    emu = Emulator()
    assert emu.allows("c", 1, 3, ACC_ALL)
    check_program([])
