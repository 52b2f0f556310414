"""linux.namespaces: new, inherited and joined namespaces; user namespace mappings.

config-linux.md "Namespaces": without ``path`` a new namespace is created,
with ``path`` the container joins it, and a type that is not listed is
inherited from the runtime.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runtime
from tests.runtime.features_helpers import (
    NS_FILES,
    host_ns,
    ns_holder,
    run_fails,
    run_sh,
    skip_if_runc,
)

HOST_ID = 100000
MAP_SIZE = 65536


def ns_inside(runtime: Runtime, bundle: Bundle, ns_types: list[str]) -> dict[str, str]:
    script = "; ".join(f"readlink /proc/self/ns/{NS_FILES[t]}" for t in ns_types)
    lines = run_sh(runtime, bundle, script).split()
    return dict(zip(ns_types, lines, strict=True))


def drop_ns(bundle: Bundle, ns_type: str) -> None:
    ns = bundle.config["linux"]["namespaces"]
    bundle.config["linux"]["namespaces"] = [n for n in ns if n["type"] != ns_type]


def add_user_ns(bundle: Bundle) -> None:
    """Map container ids 0.. to HOST_ID.. and give the rootfs copy to that owner."""
    linux = bundle.config["linux"]
    linux["namespaces"].append({"type": "user"})
    linux["uidMappings"] = [{"containerID": 0, "hostID": HOST_ID, "size": MAP_SIZE}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": HOST_ID, "size": MAP_SIZE}]
    subprocess.run(["chown", "-R", "-h", f"{HOST_ID}:{HOST_ID}", str(bundle.rootfs)], check=True)


@pytest.fixture
def userns_bundle(bundle: Bundle) -> Iterator[Bundle]:
    """The bundle moved to a directory that the mapped root can traverse.

    The container's root is an unprivileged uid on the host, and the test
    temp dirs are private to the host's root.
    """
    top = Path(tempfile.mkdtemp(prefix="dockyard-userns-"))
    try:
        top.chmod(0o711)
        dest = top / "bundle"
        shutil.move(str(bundle.path), dest)
        bundle.path = dest
        bundle.rootfs = dest / "rootfs"
        add_user_ns(bundle)
        yield bundle
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("ns_type", ["pid", "network", "ipc", "uts", "mount"])
def test_new_namespace(runtime: Runtime, bundle: Bundle, ns_type: str) -> None:
    inside = ns_inside(runtime, bundle, [ns_type])
    assert inside[ns_type] != host_ns(ns_type)


def test_new_cgroup_namespace(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["linux"]["namespaces"].append({"type": "cgroup"})
    out = run_sh(runtime, bundle, "readlink /proc/self/ns/cgroup; cat /proc/self/cgroup")
    link, *cgroups = out.split()
    assert link != host_ns("cgroup")
    # every hierarchy shows the container's own cgroup as its root
    assert cgroups
    for line in cgroups:
        assert line.split(":", 2)[2] == "/", out


@pytest.mark.parametrize("ns_type", ["network", "ipc", "cgroup"])
def test_unlisted_namespace_is_inherited(runtime: Runtime, bundle: Bundle, ns_type: str) -> None:
    drop_ns(bundle, ns_type)
    inside = ns_inside(runtime, bundle, [ns_type])
    assert inside[ns_type] == host_ns(ns_type)


def test_pid_namespace_init_is_pid_1(runtime: Runtime, bundle: Bundle) -> None:
    out = run_sh(runtime, bundle, "echo $$; ls /proc | grep -c '^[0-9][0-9]*$'")
    pid, count = out.split()
    assert pid == "1"
    # the shell and the ls of the pipeline (and grep): nothing of the host
    assert int(count) <= 3, out


def test_join_namespaces_by_path(runtime: Runtime, bundle: Bundle) -> None:
    with ns_holder("--net", "--uts", "--ipc", hostname="nsholder") as pid:
        want = {t: os.readlink(f"/proc/{pid}/ns/{NS_FILES[t]}") for t in ("network", "uts", "ipc")}
        # the holder's hostname must survive: the container sets none
        del bundle.config["hostname"]
        bundle.config["linux"]["namespaces"] = [
            {"type": "pid"},
            {"type": "mount"},
            {"type": "network", "path": f"/proc/{pid}/ns/net"},
            {"type": "uts", "path": f"/proc/{pid}/ns/uts"},
            {"type": "ipc", "path": f"/proc/{pid}/ns/ipc"},
        ]
        script = "; ".join(f"readlink /proc/self/ns/{NS_FILES[t]}" for t in want) + "; hostname"
        out = run_sh(runtime, bundle, script).split()
        assert dict(zip(want, out[:3], strict=True)) == want
        assert out[3] == "nsholder"
        for t in want:
            assert want[t] != host_ns(t)


def test_join_path_of_wrong_type_is_an_error(runtime: Runtime, bundle: Bundle) -> None:
    with ns_holder("--uts") as pid:
        del bundle.config["hostname"]
        drop_ns(bundle, "network")
        bundle.config["linux"]["namespaces"].append(
            {"type": "network", "path": f"/proc/{pid}/ns/uts"}
        )
        run_fails(runtime, bundle)


def test_duplicated_namespace_is_an_error(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["linux"]["namespaces"].append({"type": "network"})
    run_fails(runtime, bundle)


def test_user_namespace_mappings(runtime: Runtime, userns_bundle: Bundle) -> None:
    b = userns_bundle
    out = run_sh(
        runtime,
        b,
        "readlink /proc/self/ns/user; cat /proc/self/uid_map /proc/self/gid_map; "
        "id -u; id -g; touch /tmp/made-inside",
    )
    lines = out.splitlines()
    assert lines[0] != host_ns("user")
    assert lines[1].split() == ["0", str(HOST_ID), str(MAP_SIZE)]
    assert lines[2].split() == ["0", str(HOST_ID), str(MAP_SIZE)]
    assert lines[3:5] == ["0", "0"]
    # root in the container is the mapped uid on the host
    st = (b.rootfs / "tmp" / "made-inside").stat()
    assert (st.st_uid, st.st_gid) == (HOST_ID, HOST_ID)


def test_user_namespace_non_root_user(runtime: Runtime, userns_bundle: Bundle) -> None:
    b = userns_bundle
    b.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    out = run_sh(runtime, b, "id -u; id -g; touch /tmp/by-user && echo wrote")
    assert out.split() == ["1000", "1000", "wrote"]
    st = (b.rootfs / "tmp" / "by-user").stat()
    assert st.st_uid == HOST_ID + 1000


def test_time_namespace_offsets(runtime: Runtime, bundle: Bundle) -> None:
    skip_if_runc(runtime, "1.1.5 does not know the time namespace")
    if not os.path.exists("/proc/self/timens_offsets"):
        pytest.skip("kernel without time namespaces")
    bundle.config["linux"]["namespaces"].append({"type": "time"})
    bundle.config["linux"]["timeOffsets"] = {
        "monotonic": {"secs": 86400, "nanosecs": 0},
        "boottime": {"secs": 172800, "nanosecs": 0},
    }
    out = run_sh(runtime, bundle, "readlink /proc/self/ns/time; cat /proc/self/timens_offsets")
    lines = out.splitlines()
    assert lines[0] != host_ns("time")
    offsets = {ln.split()[0]: ln.split()[1:] for ln in lines[1:]}
    assert offsets["monotonic"] == ["86400", "0"]
    assert offsets["boottime"] == ["172800", "0"]


def test_user_namespace_with_oom_score_adj_and_sysctl(
    runtime: Runtime, userns_bundle: Bundle
) -> None:
    """The init writes its own /proc files (oom_score_adj, sysctls) as the mapped root."""
    b = userns_bundle
    b.config["process"]["oomScoreAdj"] = 600
    b.config["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    out = run_sh(runtime, b, "cat /proc/self/oom_score_adj /proc/sys/net/ipv4/ip_forward")
    assert out.split() == ["600", "1"]


def test_no_namespaces_at_all_inherits_every_one(runtime: Runtime, bundle: Bundle) -> None:
    """No linux.namespaces: each one is the runtime's (config-linux.md "Namespaces").

    Without a mount namespace of its own the container's mounts are made in
    the host's, under the rootfs; delete takes every one of them away.
    """
    skip_if_runc(runtime, "1.1.5 leaves the container's mounts on the host")
    del bundle.config["hostname"]
    bundle.config["linux"]["namespaces"] = []
    kinds = ["pid", "network", "ipc", "uts", "mount", "cgroup"]
    inside = ns_inside(runtime, bundle, kinds)
    assert inside == {k: host_ns(k) for k in kinds}
    rootfs = str(bundle.rootfs.resolve())
    with open("/proc/self/mountinfo") as f:
        left = [line.split()[4] for line in f if line.split()[4].startswith(rootfs)]
    assert not left, left


def test_exec_into_a_user_namespace(runtime: Runtime, userns_bundle: Bundle) -> None:
    """exec joins the user namespace first, then the rest, as the mapped root."""
    from tests.runtime.helpers import call_detached

    b = userns_bundle
    b.set_args("sleep", "100").write()
    cid = "userns-exec"
    call_detached(runtime, "run", "-d", "--bundle", str(b.path), cid)
    out = runtime("exec", cid, "sh", "-c", "cat /proc/self/uid_map; id -u; echo $$").stdout
    lines = out.split("\n")
    assert lines[0].split() == ["0", str(HOST_ID), str(MAP_SIZE)]
    assert lines[1] == "0"
