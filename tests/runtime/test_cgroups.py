"""linux.cgroupsPath and linux.resources (config-linux.md "Control groups").

Limits are read inside, through a cgroup mount at /sys/fs/cgroup, and
outside, in the host's hierarchy while the container runs. These tests read
cgroup v1 files (hybrid hosts: v1 controllers, v2 at /sys/fs/cgroup/unified)
and skip where the memory controller is not on v1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Bundle, Runtime
from tests.runtime.features_helpers import (
    READY_THEN_WAIT,
    Background,
    run_fails,
    run_sh,
    skip_if_runc,
)

V1 = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")

pytestmark = pytest.mark.skipif(
    not (V1 / "memory" / "memory.limit_in_bytes").exists(),
    reason="these tests read cgroup v1 files",
)

CGROUP_MOUNT = {
    "destination": "/sys/fs/cgroup",
    "type": "cgroup",
    "source": "cgroup",
    "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
}


def with_resources(bundle: Bundle, **resources: Any) -> Bundle:
    bundle.config["linux"]["resources"].update(resources)
    bundle.config["mounts"].append(dict(CGROUP_MOUNT))
    return bundle


def host_cgroup(bundle: Bundle, controller: str) -> Path:
    """Where an absolute cgroupsPath lands in the host's v1 hierarchy."""
    return V1 / controller / bundle.config["linux"]["cgroupsPath"].lstrip("/")


def own_cgroup(controller: str) -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            if controller in names.split(","):
                return path
    raise AssertionError(f"not in a {controller} cgroup")


def proc_cgroups(text: str) -> dict[str, str]:
    """controller -> path from /proc/<pid>/cgroup (v1 lines only)."""
    out = {}
    for line in text.splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(","):
            if name:
                out[name] = path
    return out


def read_while_running(
    runtime: Runtime, bundle: Bundle, files: dict[str, str]
) -> tuple[dict[str, str], str]:
    """Read host-side cgroup files while the container runs; then its own output."""
    bundle.set_args("sh", "-c", READY_THEN_WAIT + "echo done")
    with Background(runtime, bundle) as bg:
        bg.wait_ready()
        host = {
            name: (host_cgroup(bundle, c) / name).read_text().strip() for name, c in files.items()
        }
        p = bg.finish()
    assert p.returncode == 0, p.stderr
    return host, p.stdout


def test_memory_limit_inside_and_outside(runtime: Runtime, bundle: Bundle) -> None:
    limit = 64 * 1024 * 1024
    with_resources(bundle, memory={"limit": limit, "reservation": limit // 2})
    inside = run_sh(
        runtime,
        bundle,
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
        "/sys/fs/cgroup/memory/memory.soft_limit_in_bytes",
    )
    assert inside.split() == [str(limit), str(limit // 2)]
    host, _ = read_while_running(
        runtime,
        bundle,
        {"memory.limit_in_bytes": "memory", "memory.soft_limit_in_bytes": "memory"},
    )
    assert host == {
        "memory.limit_in_bytes": str(limit),
        "memory.soft_limit_in_bytes": str(limit // 2),
    }
    # the container's cgroup goes away with it
    assert not host_cgroup(bundle, "memory").exists()


def test_memory_limit_is_enforced(runtime: Runtime, bundle: Bundle) -> None:
    with_resources(bundle, memory={"limit": 16 * 1024 * 1024, "swap": 16 * 1024 * 1024})
    if not (V1 / "memory" / "memory.memsw.limit_in_bytes").exists():
        del bundle.config["linux"]["resources"]["memory"]["swap"]
    # a shell variable of 64 MiB cannot fit in 16 MiB
    bundle.set_args("sh", "-c", "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived")
    p = runtime.run(bundle, check=False)
    # the OOM killer ends the container's init (SIGKILL: 137)
    assert p.returncode != 0
    assert "survived" not in p.stdout


def test_pids_limit_caps_a_fork_bomb(runtime: Runtime, bundle: Bundle) -> None:
    limit = 10
    with_resources(bundle, pids={"limit": limit})
    # the subshell forks sleepers until fork fails; the builtins need no fork
    out = run_sh(
        runtime,
        bundle,
        "(i=0; while :; do sleep 30 & i=$((i+1)); echo $i > /tmp/count; done) 2>/dev/null; "
        "read forked < /tmp/count; read cur < /sys/fs/cgroup/pids/pids.current; "
        "read max < /sys/fs/cgroup/pids/pids.max; echo $forked $cur $max",
    )
    forked, current, maximum = (int(x) for x in out.split())
    assert maximum == limit
    assert 0 < forked < limit
    assert current <= limit


def test_cpu_shares_quota_period(runtime: Runtime, bundle: Bundle) -> None:
    with_resources(bundle, cpu={"shares": 512, "quota": 50000, "period": 100000})
    out = run_sh(
        runtime,
        bundle,
        "cd /sys/fs/cgroup/cpu; cat cpu.shares cpu.cfs_quota_us cpu.cfs_period_us",
    )
    assert out.split() == ["512", "50000", "100000"]
    host, _ = read_while_running(runtime, bundle, {"cpu.shares": "cpu"})
    assert host == {"cpu.shares": "512"}


def test_cpuset(runtime: Runtime, bundle: Bundle) -> None:
    with_resources(bundle, cpu={"cpus": "0", "mems": "0"})
    out = run_sh(
        runtime,
        bundle,
        "cat /sys/fs/cgroup/cpuset/cpuset.cpus /sys/fs/cgroup/cpuset/cpuset.mems; "
        "grep Cpus_allowed_list /proc/self/status",
    )
    lines = out.splitlines()
    assert lines[:2] == ["0", "0"]
    assert lines[2].split() == ["Cpus_allowed_list:", "0"]


def whole_disk_of_root() -> tuple[int, int]:
    dev = os.stat("/").st_dev
    sysdir = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if (sysdir / "partition").exists():
        sysdir = sysdir.resolve().parent
    major, minor = (sysdir / "dev").read_text().strip().split(":")
    return int(major), int(minor)


def test_block_io_throttle(runtime: Runtime, bundle: Bundle) -> None:
    if not (V1 / "blkio" / "blkio.throttle.read_bps_device").exists():
        pytest.skip("no blkio throttling here")
    major, minor = whole_disk_of_root()
    with_resources(
        bundle,
        blockIO={"throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1 << 20}]},
    )
    out = run_sh(runtime, bundle, "cat /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device")
    assert out.split() == [f"{major}:{minor}", str(1 << 20)]


def test_block_io_weight(runtime: Runtime, bundle: Bundle) -> None:
    weight_file = next(
        (n for n in ("blkio.weight", "blkio.bfq.weight") if (V1 / "blkio" / n).exists()), None
    )
    if weight_file is None:
        pytest.skip("no blkio weight on this host")
    with_resources(bundle, blockIO={"weight": 300})
    out = run_sh(runtime, bundle, f"cat /sys/fs/cgroup/blkio/{weight_file}")
    assert out.split()[-1] == "300"


def test_hugepage_limits(runtime: Runtime, bundle: Bundle) -> None:
    with_resources(bundle, hugepageLimits=[{"pageSize": "2MB", "limit": 4 * 1024 * 1024}])
    if (V1 / "hugetlb").is_dir():
        out = run_sh(runtime, bundle, "cat /sys/fs/cgroup/hugetlb/hugetlb.2MB.limit_in_bytes")
        assert out.strip() == str(4 * 1024 * 1024)
    else:
        # no v1 hugetlb controller: refusing beats silently not limiting
        assert "hugetlb" in run_fails(runtime, bundle)


def test_unified_on_v1_is_a_clear_error(runtime: Runtime, bundle: Bundle) -> None:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("this host runs pure cgroup v2")
    bundle.config["linux"]["resources"]["unified"] = {"memory.max": "67108864"}
    assert "unified" in run_fails(runtime, bundle)


def test_absolute_cgroups_path(runtime: Runtime, bundle: Bundle) -> None:
    path = bundle.config["linux"]["cgroupsPath"]
    assert path.startswith("/")
    got = proc_cgroups(run_sh(runtime, bundle, "cat /proc/self/cgroup"))
    for c in CONTROLLERS:
        # relative to the hierarchy's root, whatever the runtime's own cgroup
        assert got[c] == path, (c, got)
        assert not host_cgroup(bundle, c).exists()


def test_relative_cgroups_path(runtime: Runtime, bundle: Bundle) -> None:
    rel = bundle.config["linux"]["cgroupsPath"].lstrip("/") + "-rel"
    bundle.config["linux"]["cgroupsPath"] = rel
    got = proc_cgroups(run_sh(runtime, bundle, "cat /proc/self/cgroup"))
    for c in CONTROLLERS:
        # runc and dockyard: below the runtime's own cgroup
        assert got[c] == os.path.join(own_cgroup(c), rel), (c, got)
        assert not (V1 / c / got[c].lstrip("/")).exists()


def test_cgroup_namespace_hides_the_path(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["linux"]["namespaces"].append({"type": "cgroup"})
    with_resources(bundle, pids={"limit": 50})
    out = run_sh(runtime, bundle, "cat /proc/self/cgroup; cat /sys/fs/cgroup/pids/pids.max")
    *lines, pids_max = out.splitlines()
    assert all(p == "/" for p in proc_cgroups("\n".join(lines)).values())
    assert pids_max == "50"


def test_default_cgroups_path_leaves_nothing(runtime: Runtime, bundle: Bundle) -> None:
    """No cgroupsPath: dockyard/<id> below the runtime's own cgroup, all gone after delete."""
    skip_if_runc(runtime, "1.1.5 puts a container without cgroupsPath at /<id>")
    del bundle.config["linux"]["cgroupsPath"]
    before = {c: (V1 / c / own_cgroup(c).lstrip("/") / "dockyard").exists() for c in CONTROLLERS}
    got = proc_cgroups(run_sh(runtime, bundle, "cat /proc/self/cgroup"))
    for c in CONTROLLERS:
        assert got[c].startswith(os.path.join(own_cgroup(c), "dockyard") + "/"), (c, got)
        assert not (V1 / c / got[c].lstrip("/")).exists()
        if not before[c]:
            assert not (V1 / c / got[c].lstrip("/")).parent.exists()


def test_nested_cgroups_path_leaves_no_parents(runtime: Runtime, bundle: Bundle) -> None:
    """Parents the runtime made for a nested cgroupsPath go with the container."""
    skip_if_runc(runtime, "1.1.5 leaves the parents of a nested cgroupsPath behind")
    top = bundle.config["linux"]["cgroupsPath"] + "-top"
    bundle.config["linux"]["cgroupsPath"] = top + "/middle/leaf"
    out = run_sh(runtime, bundle, "cat /proc/self/cgroup")
    assert proc_cgroups(out)["pids"] == top + "/middle/leaf"
    for c in CONTROLLERS:
        assert not (V1 / c / top.lstrip("/")).exists(), c
