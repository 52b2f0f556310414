"""mounts, root.readonly and linux.rootfsPropagation.

config.md "Mounts" and "Root"; config-linux.md "Rootfs Mount Propagation".
Propagation is observed through the optional fields of mountinfo
(``shared:N``, ``master:N``) and by mounting on the host while the container
runs; ``/`` is private on the test hosts, so the tests make their own shared
mount points.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runtime
from tests.runtime.features_helpers import (
    READY_THEN_WAIT,
    Background,
    MountInfo,
    host_mount,
    host_mountinfo,
    mount_at,
    parse_mountinfo,
    run_fails,
    run_sh,
    shared_mount_point,
    skip_if_runc,
    umount_below,
)


def add_mount(bundle: Bundle, dest: str, mtype: str, source: str, options: list[str]) -> None:
    bundle.config["mounts"].append(
        {"destination": dest, "type": mtype, "source": source, "options": options}
    )


def inside_mounts(runtime: Runtime, bundle: Bundle, script: str = "") -> list[MountInfo]:
    return parse_mountinfo(run_sh(runtime, bundle, script + "cat /proc/self/mountinfo"))


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("from the host\n")
    (src / "sub").mkdir()
    return src


def test_bind_mount_shows_host_content(runtime: Runtime, bundle: Bundle, source_dir: Path) -> None:
    add_mount(bundle, "/mnt/data", "bind", str(source_dir), ["bind"])
    out = run_sh(runtime, bundle, "cat /mnt/data/file; echo new > /mnt/data/written")
    assert out == "from the host\n"
    assert (source_dir / "written").read_text() == "new\n"


@pytest.mark.parametrize("recursive", [False, True], ids=["bind", "rbind"])
def test_bind_and_rbind_submounts(
    runtime: Runtime, bundle: Bundle, source_dir: Path, recursive: bool
) -> None:
    sub = source_dir / "sub"
    with host_mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", target=sub):
        (sub / "on-submount").write_text("x")
        add_mount(bundle, "/mnt", "bind", str(source_dir), ["rbind" if recursive else "bind"])
        out = run_sh(runtime, bundle, "ls /mnt/sub; echo ---; cat /proc/self/mountinfo")
    listing, _, info = out.partition("---\n")
    sub_mount = mount_at(parse_mountinfo(info), "/mnt/sub")
    if recursive:
        assert listing.split() == ["on-submount"]
        assert sub_mount is not None and sub_mount.fstype == "tmpfs"
    else:
        assert listing.split() == []
        assert sub_mount is None


def test_readonly_bind(runtime: Runtime, bundle: Bundle, source_dir: Path) -> None:
    add_mount(bundle, "/ro", "bind", str(source_dir), ["rbind", "ro"])
    out = run_sh(
        runtime,
        bundle,
        "cat /ro/file; touch /ro/new 2>&1 || echo refused; grep ' /ro ' /proc/self/mountinfo",
    )
    assert "from the host" in out
    assert "Read-only file system" in out and "refused" in out
    m = parse_mountinfo(out.splitlines()[-1])[0]
    assert "ro" in m.options
    assert not (source_dir / "new").exists()


def test_tmpfs_size_and_mode(runtime: Runtime, bundle: Bundle) -> None:
    add_mount(bundle, "/scratch", "tmpfs", "tmpfs", ["nosuid", "size=1m", "mode=700"])
    out = run_sh(
        runtime,
        bundle,
        "stat -c %a /scratch; "
        "dd if=/dev/zero of=/scratch/big bs=1k count=2048 2>&1 | grep -c 'No space left'; "
        "grep ' /scratch ' /proc/self/mountinfo",
    )
    mode, enospc, line = out.splitlines()
    assert mode == "700"
    assert enospc == "1"
    m = parse_mountinfo(line)[0]
    assert m.fstype == "tmpfs"
    assert "size=1024k" in m.super_options
    assert "nosuid" in m.options


def test_special_filesystems_present(runtime: Runtime, bundle: Bundle) -> None:
    add_mount(bundle, "/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "ro"])
    mounts = inside_mounts(runtime, bundle)
    want = {
        "/proc": "proc",
        "/sys": "sysfs",
        "/dev": "tmpfs",
        "/dev/pts": "devpts",
        "/dev/shm": "tmpfs",
        "/dev/mqueue": "mqueue",
    }
    for path, fstype in want.items():
        m = mount_at(mounts, path)
        assert m is not None, f"nothing mounted on {path}"
        assert m.fstype == fstype, (path, m)
    # cgroup v1 shows a tmpfs with one mount per hierarchy, v2 one cgroup2
    cg = [m for m in mounts if m.mount_point.startswith("/sys/fs/cgroup")]
    assert cg, "nothing mounted on /sys/fs/cgroup"
    assert any(m.fstype in ("cgroup", "cgroup2") for m in cg)
    assert all("ro" in m.options for m in cg if m.fstype.startswith("cgroup"))
    sys_mount = mount_at(mounts, "/sys")
    assert sys_mount is not None and "ro" in sys_mount.options


def test_readonly_root(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["root"]["readonly"] = True
    add_mount(bundle, "/tmp", "tmpfs", "tmpfs", ["size=1m"])
    out = run_sh(
        runtime,
        bundle,
        "touch /newfile 2>&1; echo rc=$?; touch /tmp/ok && echo tmp-ok; "
        "awk '$5 == \"/\"' /proc/self/mountinfo",
    )
    assert "Read-only file system" in out
    assert "rc=1" in out
    assert "tmp-ok" in out
    root = parse_mountinfo(out.splitlines()[-1])[0]
    assert "ro" in root.options
    assert not (bundle.rootfs / "newfile").exists()


def test_nested_destination_is_created(runtime: Runtime, bundle: Bundle) -> None:
    add_mount(bundle, "/a/b/c", "tmpfs", "tmpfs", ["size=1m"])
    m = mount_at(inside_mounts(runtime, bundle), "/a/b/c")
    assert m is not None and m.fstype == "tmpfs"


def test_file_onto_file(runtime: Runtime, bundle: Bundle, source_dir: Path) -> None:
    (bundle.rootfs / "etc" / "motd").write_text("from the image\n")
    add_mount(bundle, "/etc/motd", "bind", str(source_dir / "file"), ["bind", "ro"])
    add_mount(bundle, "/etc/created/file", "bind", str(source_dir / "file"), ["bind"])
    out = run_sh(
        runtime,
        bundle,
        "cat /etc/motd; cat /etc/created/file; stat -c %F /etc/motd /etc/created/file",
    )
    assert out.splitlines() == [
        "from the host",
        "from the host",
        "regular file",
        "regular file",
    ]
    assert (bundle.rootfs / "etc" / "motd").read_text() == "from the image\n"


@pytest.mark.parametrize(
    ("option", "shared", "master"),
    [("rshared", True, None), ("rslave", False, True), ("rprivate", False, False)],
)
def test_bind_propagation_options(
    runtime: Runtime,
    bundle: Bundle,
    tmp_path: Path,
    option: str,
    shared: bool,
    master: bool | None,
) -> None:
    with shared_mount_point(tmp_path / "shared") as point:
        host = mount_at(host_mountinfo(), str(point))
        assert host is not None and host.tag("shared")
        add_mount(bundle, "/mnt", "bind", str(point), ["rbind", option])
        m = mount_at(inside_mounts(runtime, bundle), "/mnt")
        assert m is not None
        assert bool(m.tag("shared")) == shared, m
        if master is not None:
            assert bool(m.tag("master")) == master, m
        if master:
            # a slave of the host's peer group
            assert m.tag("master") == host.tag("shared")


@pytest.mark.parametrize(("option", "seen"), [("rslave", True), ("rprivate", False)])
def test_bind_propagation_of_host_mounts(
    runtime: Runtime, bundle: Bundle, tmp_path: Path, option: str, seen: bool
) -> None:
    with shared_mount_point(tmp_path / "shared") as point:
        (point / "sub").mkdir()
        add_mount(bundle, "/mnt", "bind", str(point), ["rbind", option])
        bundle.set_args(
            "sh", "-c", READY_THEN_WAIT + "grep -c ' /mnt/sub ' /proc/self/mountinfo; true"
        )
        with Background(runtime, bundle) as bg:
            bg.wait_ready()
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point / "sub")], check=True
            )
            p = bg.finish()
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == ("1" if seen else "0")


@pytest.fixture
def shared_rootfs(bundle: Bundle) -> Iterator[Path]:
    """The bundle's rootfs as a shared mount point of the host."""
    with shared_mount_point(bundle.rootfs) as point:
        yield point


def test_rootfs_propagation_private(runtime: Runtime, bundle: Bundle, shared_rootfs: Path) -> None:
    bundle.config["linux"]["rootfsPropagation"] = "private"
    root = parse_mountinfo(run_sh(runtime, bundle, "awk '$5 == \"/\"' /proc/self/mountinfo"))[0]
    assert root.tag("shared") is None and root.tag("master") is None, root


def slave_root_test(runtime: Runtime, bundle: Bundle, shared_rootfs: Path, value: str) -> None:
    host = mount_at(host_mountinfo(), str(shared_rootfs))
    assert host is not None
    bundle.config["linux"]["rootfsPropagation"] = value
    (bundle.rootfs / "mnt").mkdir(exist_ok=True)
    bundle.set_args(
        "sh",
        "-c",
        READY_THEN_WAIT + 'awk \'$5 == "/" || $5 == "/mnt"\' /proc/self/mountinfo',
    )
    with Background(runtime, bundle) as bg:
        bg.wait_ready()
        # a mount made on the host below the rootfs reaches the container
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(bundle.rootfs / "mnt")],
            check=True,
        )
        p = bg.finish()
    assert p.returncode == 0, p.stderr
    mounts = parse_mountinfo(p.stdout)
    root = mount_at(mounts, "/")
    assert root is not None and root.tag("master") == host.tag("shared"), p.stdout
    assert root.tag("shared") is None
    assert mount_at(mounts, "/mnt") is not None


def test_rootfs_propagation_rslave(runtime: Runtime, bundle: Bundle, shared_rootfs: Path) -> None:
    """The value Docker passes: not in the spec's list, but runc takes it."""
    slave_root_test(runtime, bundle, shared_rootfs, "rslave")


def test_rootfs_propagation_slave(runtime: Runtime, bundle: Bundle, shared_rootfs: Path) -> None:
    skip_if_runc(runtime, "1.1.5 applies slave to / alone, then makes the rootfs private")
    slave_root_test(runtime, bundle, shared_rootfs, "slave")


def with_sys_admin(bundle: Bundle) -> None:
    caps = bundle.config["process"]["capabilities"]
    for s in ("bounding", "effective", "permitted"):
        caps[s].append("CAP_SYS_ADMIN")


@pytest.mark.parametrize("root_propagation", ["shared", None])
def test_rshared_volume_mounts_reach_the_host(
    runtime: Runtime, bundle: Bundle, tmp_path: Path, root_propagation: str | None
) -> None:
    """Docker's rshared volumes: rootfsPropagation "shared" and an rshared bind.

    Only then does a mount made in the container appear on the host.
    """
    with shared_mount_point(tmp_path / "shared") as point:
        (point / "sub").mkdir()
        if root_propagation:
            bundle.config["linux"]["rootfsPropagation"] = root_propagation
        with_sys_admin(bundle)
        add_mount(bundle, "/mnt", "bind", str(point), ["rbind", "rshared"])
        run_sh(runtime, bundle, "mount -t tmpfs -o size=1m tmpfs /mnt/sub")
        on_host = mount_at(host_mountinfo(), str(point / "sub"))
        if root_propagation == "shared":
            assert on_host is not None and on_host.fstype == "tmpfs"
        else:
            assert on_host is None


def test_rootfs_propagation_shared(runtime: Runtime, bundle: Bundle) -> None:
    skip_if_runc(runtime, "1.1.5 leaves the rootfs itself private with rootfsPropagation shared")
    bundle.config["linux"]["rootfsPropagation"] = "shared"
    root = parse_mountinfo(run_sh(runtime, bundle, "awk '$5 == \"/\"' /proc/self/mountinfo"))[0]
    # a peer group of its own: not one of the host's
    assert root.tag("shared"), root
    assert root.tag("shared") not in {m.tag("shared") for m in host_mountinfo()}


def test_rootfs_propagation_unbindable(runtime: Runtime, bundle: Bundle) -> None:
    skip_if_runc(runtime, "1.1.5 fails to bind the rootfs when rootfsPropagation is unbindable")
    bundle.config["linux"]["rootfsPropagation"] = "unbindable"
    root = parse_mountinfo(run_sh(runtime, bundle, "awk '$5 == \"/\"' /proc/self/mountinfo"))[0]
    assert root.tag("unbindable"), root


def test_destination_through_symlink_stays_in_rootfs(
    runtime: Runtime, bundle: Bundle, tmp_path: Path
) -> None:
    """A destination whose path crosses a symlink is resolved inside the rootfs."""
    host_dir = tmp_path / "host-target"
    host_dir.mkdir()
    (host_dir / "keep").write_text("untouched\n")
    (bundle.rootfs / "evil").symlink_to(host_dir)
    (bundle.rootfs / "evil2").symlink_to(host_dir / "missing")
    add_mount(bundle, "/evil", "tmpfs", "tmpfs", ["size=1m"])
    add_mount(bundle, "/evil2/a/b", "tmpfs", "tmpfs", ["size=1m"])
    bundle.set_args(
        "sh",
        "-c",
        READY_THEN_WAIT + "touch /evil/x /evil2/a/b/y; stat -f -c %T /evil/ /evil2/a/b/",
    )

    def host_state() -> tuple[list[str], list[str]]:
        mounts = [m.mount_point for m in host_mountinfo() if str(host_dir) in m.mount_point]
        return sorted(os.listdir(host_dir)), mounts

    before = host_state()
    assert before == (["keep"], [])
    try:
        with Background(runtime, bundle) as bg:
            bg.wait_ready()
            assert host_state() == before
            p = bg.finish()
    finally:
        umount_below(host_dir)
    assert p.returncode == 0, p.stderr
    # the container wrote into its own tmpfs mounts, not into the host dir
    assert p.stdout.split() == ["tmpfs", "tmpfs"]
    assert host_state() == before
    assert (host_dir / "keep").read_text() == "untouched\n"


def test_unknown_mount_type_fails(runtime: Runtime, bundle: Bundle) -> None:
    add_mount(bundle, "/mnt", "no-such-fs", "none", [])
    run_fails(runtime, bundle)
