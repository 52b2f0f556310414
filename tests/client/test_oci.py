"""Runtime specs with Docker's defaults (dockyard.client.oci).

Three kinds of proof: the rules themselves on small inputs (users and groups
from a rootfs that tries to lead out of itself, env/args/cwd merging,
capabilities, the seccomp profile per architecture and capability set); the
spec actually running busybox under dockyard-runtime and runc; and the spec
compared with the config.json a real dockerd writes for the same image and
``docker run`` flags.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dockyard.client import oci
from dockyard.client.oci import User, docker_default_spec, resolve_user, seccomp_profile
from dockyard.errors import InvalidArgument
from dockyard.runtime import libc
from dockyard.spec.image import parse_image_config
from dockyard.spec.runtime import (
    CAPABILITIES,
    CAPABILITY_SETS,
    DOCKER_DEFAULT_CAPABILITIES,
    validate_config,
)
from tests.compat import test_dockerd
from tests.compat.test_dockerd import Dockerd
from tests.conftest import Bundle, Runtime, new_id
from tests.images import PATH_ENV, ImageArchive

# The private dockerd of the neighbour tests (its busybox image loaded), one
# for this module.
dockerd = test_dockerd.dockerd


# ---------------------------------------------------------------------------
# A rootfs of our own for the user tests


PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin

alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:1001::/home/bob:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""

GROUP = """\
# comment lines are skipped
root:x:0:
daemon:x:1:
wheel:x:10:alice,bob
audio:x:29:alice
alice:x:1000:
bob:x:1001:
nogroup:x:65534:
"""

# What a file outside the rootfs says: no lookup may ever see it.
HOST_PASSWD = "evil:x:4242:4242:escaped:/evil:/bin/sh\nroot:x:0:0:host root:/host-root:/bin/sh\n"
HOST_GROUP = "evil:x:4242:alice\nroot:x:0:alice\n"


@pytest.fixture(params=["openat2", "by-hand"])
def resolution(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of resolving inside the rootfs: openat2(RESOLVE_IN_ROOT), and
    the walk by hand for kernels without it."""
    if request.param == "by-hand":

        def no_openat2(*args: object, **kw: object) -> int:
            raise OSError(errno.ENOSYS, "openat2: function not implemented")

        monkeypatch.setattr(libc, "openat2", no_openat2)
    return str(request.param)


@pytest.fixture
def rootfs(tmp_path: Path, resolution: str) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


@pytest.fixture
def host_files(tmp_path: Path) -> Path:
    """A directory beside the rootfs holding passwd/group files of a "host"."""
    d = tmp_path / "host-etc"
    d.mkdir()
    (d / "passwd").write_text(HOST_PASSWD)
    (d / "group").write_text(HOST_GROUP)
    return d


# ---------------------------------------------------------------------------
# User resolution


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("", User(0, 0, (0,), "/root")),
        ("root", User(0, 0, (0,), "/root")),
        ("0", User(0, 0, (0,), "/root")),
        # supplementary groups from /etc/group membership, after the primary
        ("alice", User(1000, 1000, (1000, 10, 29), "/home/alice")),
        ("1000", User(1000, 1000, (1000, 10, 29), "/home/alice")),
        # an explicit group means that group only
        ("alice:audio", User(1000, 29, (29,), "/home/alice")),
        ("alice:10", User(1000, 10, (10,), "/home/alice")),
        ("1001:wheel", User(1001, 10, (10,), "/home/bob")),
        ("1001:1001", User(1001, 1001, (1001,), "/home/bob")),
        # numeric ids need no entry
        ("4000", User(4000, 0, (0,), "")),
        ("4000:4001", User(4000, 4001, (4001,), "")),
        ("alice:4001", User(1000, 4001, (4001,), "/home/alice")),
        ("nobody", User(65534, 65534, (65534,), "/nonexistent")),
    ],
)
def test_resolve_user(rootfs: Path, spec: str, want: User) -> None:
    assert resolve_user(str(rootfs), spec) == want


def test_group_add_by_name_and_id(rootfs: Path) -> None:
    got = resolve_user(str(rootfs), "bob", group_add=["audio", "5000", "10", "audio"])
    # after the primary group and bob's own (wheel, 10), the added ones, each
    # once; that 10 comes again is dockerd's way too
    assert got == User(1001, 1001, (1001, 10, 29, 5000, 10), "/home/bob")


@pytest.mark.parametrize(
    ("spec", "group_add", "message"),
    [
        ("foo", (), "unable to find user foo: no matching entries in passwd file"),
        ("foo:root", (), "unable to find user foo: no matching entries in passwd file"),
        ("alice:nosuch", (), "unable to find group nosuch: no matching entries in group file"),
        ("alice", ("nosuch",), "unable to find group nosuch: no matching entries in group file"),
        ("2147483648", (), "uids and gids must be in range 0-2147483647"),
        ("alice:-1", (), "uids and gids must be in range 0-2147483647"),
    ],
)
def test_resolve_user_errors(
    rootfs: Path, spec: str, group_add: tuple[str, ...], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        resolve_user(str(rootfs), spec, group_add)


def test_no_passwd_or_group_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_user(str(empty), "") == User(0, 0, (0,), "")
    assert resolve_user(str(empty), "123:456", ["789"]) == User(123, 456, (456, 789), "")
    with pytest.raises(InvalidArgument, match="unable to find user alice"):
        resolve_user(str(empty), "alice")
    with pytest.raises(InvalidArgument, match="unable to find group staff"):
        resolve_user(str(empty), "0:staff")


def _link(path: Path, target: str) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to(target)


def test_passwd_symlink_to_host_file_stays_inside(rootfs: Path, host_files: Path) -> None:
    """/etc/passwd -> /<host path>: the target is looked up inside the rootfs."""
    _link(rootfs / "etc" / "passwd", str(host_files / "passwd"))
    _link(rootfs / "etc" / "group", str(host_files / "group"))
    with pytest.raises(InvalidArgument, match="unable to find user evil"):
        resolve_user(str(rootfs), "evil")
    # root has no entry now: the defaults, not the host's home or groups
    assert resolve_user(str(rootfs), "") == User(0, 0, (0,), "")

    # The same path inside the rootfs is what the link names.
    inside = rootfs / str(host_files).lstrip("/")
    inside.mkdir(parents=True)
    (inside / "passwd").write_text("evil:x:77:78:inside:/inside:/bin/sh\n")
    assert resolve_user(str(rootfs), "evil") == User(77, 78, (78,), "/inside")


def test_passwd_dotdot_symlink_is_clamped(rootfs: Path, host_files: Path) -> None:
    """Relative ``../../..`` links climb no higher than the rootfs's /."""
    depth = "../" * (len(rootfs.parts) + 3)
    _link(rootfs / "etc" / "passwd", depth + str(host_files / "passwd").lstrip("/"))
    _link(rootfs / "etc" / "group", "../../../../../" + str(host_files / "group").lstrip("/"))
    with pytest.raises(InvalidArgument, match="unable to find user evil"):
        resolve_user(str(rootfs), "evil")
    with pytest.raises(InvalidArgument, match="unable to find group evil"):
        resolve_user(str(rootfs), "0:evil")


def test_etc_symlink_to_host_dir_stays_inside(rootfs: Path, host_files: Path) -> None:
    shutil.rmtree(rootfs / "etc")
    (rootfs / "etc").symlink_to(host_files)
    with pytest.raises(InvalidArgument, match="unable to find user evil"):
        resolve_user(str(rootfs), "evil")
    (rootfs / "etc").unlink()
    (rootfs / "etc").symlink_to("../" * 10 + str(host_files).lstrip("/"))
    with pytest.raises(InvalidArgument, match="unable to find user evil"):
        resolve_user(str(rootfs), "evil")


def test_symlinks_inside_the_rootfs_are_followed(rootfs: Path) -> None:
    (rootfs / "data").mkdir()
    (rootfs / "etc" / "passwd").rename(rootfs / "data" / "passwd")
    # absolute and relative links, both meant relative to the rootfs
    _link(rootfs / "etc" / "passwd", "/data/../data/./passwd")
    assert resolve_user(str(rootfs), "alice").home == "/home/alice"
    _link(rootfs / "etc" / "passwd", "../../../data/passwd")
    assert resolve_user(str(rootfs), "alice").home == "/home/alice"


def test_non_regular_files_are_not_read(rootfs: Path) -> None:
    """A directory or fifo in place of /etc/passwd counts as no file; a fifo
    is never opened for reading (that would block on an untrusted image)."""
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").mkdir()
    assert resolve_user(str(rootfs), "4000") == User(4000, 0, (0,), "")
    (rootfs / "etc" / "passwd").rmdir()
    os.mkfifo(rootfs / "etc" / "passwd")
    # In a child, so that a regression blocks the child, not the test run.
    code = (
        "import sys\n"
        "from dockyard.client.oci import resolve_user\n"
        "print(resolve_user(sys.argv[1], '4000'))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(rootfs)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == repr(User(4000, 0, (0,), ""))


def test_oversized_passwd_is_refused(rootfs: Path) -> None:
    with (rootfs / "etc" / "passwd").open("a") as f:
        f.truncate(oci.MAX_USER_FILE_SIZE + 1)
    with pytest.raises(InvalidArgument, match="larger than"):
        resolve_user(str(rootfs), "alice")


# ---------------------------------------------------------------------------
# Env, args, cwd

IMAGE = {
    "Env": ["PATH=/opt/bin:/bin", "FOO=image", "LANG=C.UTF-8"],
    "Entrypoint": ["/entry"],
    "Cmd": ["serve", "--port", "80"],
    "WorkingDir": "/srv",
    "User": "alice",
}


def _spec(rootfs: Path, **kw: Any) -> dict[str, Any]:
    kw.setdefault("image_config", IMAGE)
    kw.setdefault("container_id", "0123456789abcdef" * 4)
    spec = docker_default_spec(rootfs=str(rootfs), **kw)
    validate_config(spec, require_process=True)
    return spec


def test_image_config_defaults(rootfs: Path) -> None:
    spec = _spec(rootfs)
    p = spec["process"]
    assert p["args"] == ["/entry", "serve", "--port", "80"]
    assert p["cwd"] == "/srv"
    assert p["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 10, 29]}
    assert p["env"] == [
        "PATH=/opt/bin:/bin",
        "HOSTNAME=0123456789ab",
        "FOO=image",
        "LANG=C.UTF-8",
        "HOME=/home/alice",
    ]
    assert spec["hostname"] == "0123456789ab"
    assert spec["linux"]["cgroupsPath"] == "/docker/" + "0123456789abcdef" * 4
    assert p["terminal"] is False


def test_image_config_object_is_accepted(rootfs: Path) -> None:
    image = parse_image_config(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": IMAGE,
        }
    )
    assert _spec(rootfs, image_config=image)["process"] == _spec(rootfs)["process"]


def test_container_env_wins(rootfs: Path) -> None:
    env = ["FOO=mine", "BAR=1", "PATH=/usr/bin", "HOME=/tmp", "LANG"]
    p = _spec(rootfs, env=env, terminal=True, hostname="web")["process"]
    # PATH, HOSTNAME and TERM keep their places; the rest in the container's
    # order, then the image's that the container did not name.
    assert p["env"] == [
        "PATH=/usr/bin",
        "HOSTNAME=web",
        "TERM=xterm",
        "FOO=mine",
        "BAR=1",
        "HOME=/tmp",
    ]
    assert p["terminal"] is True


def test_default_path_and_unset_defaults(rootfs: Path) -> None:
    p = _spec(rootfs, image_config={"Cmd": ["sh"]}, env=["HOSTNAME", "TERM=vt100"], terminal=True)[
        "process"
    ]
    assert p["env"] == [f"PATH={oci.DEFAULT_PATH}", "TERM=vt100", "HOME=/root"]
    assert p["user"] == {"uid": 0, "gid": 0, "additionalGids": [0]}
    assert p["cwd"] == "/"


@pytest.mark.parametrize(
    ("args", "entrypoint", "want"),
    [
        (None, None, ["/entry", "serve", "--port", "80"]),
        (["debug"], None, ["/entry", "debug"]),
        (None, ["/bin/sh"], ["/bin/sh"]),
        (["-c", "true"], ["/bin/sh"], ["/bin/sh", "-c", "true"]),
        # --entrypoint "" clears the image's entrypoint, keeps its Cmd
        (None, [], ["serve", "--port", "80"]),
        (["ls"], [], ["ls"]),
    ],
)
def test_args(
    rootfs: Path, args: list[str] | None, entrypoint: list[str] | None, want: list[str]
) -> None:
    assert _spec(rootfs, args=args, entrypoint=entrypoint)["process"]["args"] == want


def test_no_command_is_an_error(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="no command specified"):
        _spec(rootfs, image_config={"Env": [PATH_ENV]})
    with pytest.raises(InvalidArgument, match="no command specified"):
        _spec(rootfs, image_config={"Entrypoint": ["/e"]}, entrypoint=[])


def test_cwd_and_user_override(rootfs: Path) -> None:
    p = _spec(rootfs, cwd="/data/../var//lib/", user="bob:audio", group_add=["root"])["process"]
    assert p["cwd"] == "/var/lib"
    assert p["user"] == {"uid": 1001, "gid": 29, "additionalGids": [29, 0]}
    assert "HOME=/home/bob" in p["env"]
    with pytest.raises(InvalidArgument, match="must be an absolute path"):
        _spec(rootfs, cwd="relative/dir")


# ---------------------------------------------------------------------------
# Capabilities, namespaces, mounts


def test_capabilities(rootfs: Path) -> None:
    # Docker's 14 (moby's caps.DefaultCapabilities), written out here
    # rather than taken from the constant the spec is built from
    default = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ]
    caps = _spec(rootfs)["process"]["capabilities"]
    assert caps == {"bounding": default, "effective": default, "permitted": default}
    assert "inheritable" not in caps and "ambient" not in caps

    got = oci.docker_capabilities(cap_add=["sys_admin", "CAP_NET_ADMIN"], cap_drop=["chown"])
    assert got == [c for c in default if c != "CAP_CHOWN"] + ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]
    assert oci.docker_capabilities(cap_add=["kill"], cap_drop=["ALL"]) == ["CAP_KILL"]
    everything = oci.host_capabilities()
    assert oci.docker_capabilities(cap_add=["ALL"], cap_drop=["mknod"]) == [
        c for c in everything if c != "CAP_MKNOD"
    ]
    assert oci.docker_capabilities(privileged=True) == everything
    with pytest.raises(InvalidArgument, match="unknown capability: 'CAP_FLY'"):
        oci.docker_capabilities(cap_add=["fly"])


def test_namespaces(rootfs: Path) -> None:
    types = [ns["type"] for ns in _spec(rootfs, cgroup_namespace="host")["linux"]["namespaces"]]
    assert types == ["mount", "network", "uts", "pid", "ipc"]
    spec = _spec(
        rootfs,
        network_namespace="/proc/1/ns/net",
        pid_namespace="host",
        ipc_namespace="none",
        cgroup_namespace="private",
        time_namespace=True,
    )
    assert spec["linux"]["namespaces"] == [
        {"type": "mount"},
        {"type": "network", "path": "/proc/1/ns/net"},
        {"type": "time"},
        {"type": "uts"},
        {"type": "ipc"},
        {"type": "cgroup"},
    ]
    # the network sysctls only for a namespace of its own; no /dev/shm for ipc none
    assert "sysctl" not in spec["linux"]
    assert "/dev/shm" not in [m["destination"] for m in spec["mounts"]]
    host_v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    default_types = [ns["type"] for ns in _spec(rootfs)["linux"]["namespaces"]]
    assert ("cgroup" in default_types) == host_v2
    uts_host = _spec(rootfs, uts_namespace="host")
    assert "hostname" not in uts_host
    with pytest.raises(InvalidArgument, match="invalid network namespace"):
        _spec(rootfs, network_namespace="bridge")


def test_mounts(rootfs: Path) -> None:
    spec = _spec(rootfs, shm_size=1 << 20)
    assert [(m["destination"], m["type"]) for m in spec["mounts"]] == [
        ("/proc", "proc"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/sys", "sysfs"),
        ("/sys/fs/cgroup", "cgroup"),
        ("/dev/mqueue", "mqueue"),
        ("/dev/shm", "tmpfs"),
    ]
    assert spec["mounts"][-1]["options"][-1] == "size=1048576"
    hosts = {"destination": "/etc/hosts", "type": "bind", "source": "/h", "options": ["rbind"]}
    dev = {"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind"]}
    own = _spec(rootfs, mounts=[hosts, dev], readonly_rootfs=True)
    assert [m["destination"] for m in own["mounts"]] == [
        "/proc",
        "/sys",
        "/sys/fs/cgroup",
        "/etc/hosts",
        "/dev",
    ]
    assert own["root"]["readonly"] is True
    assert own["mounts"][3]["options"] == ["rbind"]  # the caller's stay as given
    assert "ro" not in own["mounts"][0]["options"]  # /proc stays writable


def test_privileged(rootfs: Path) -> None:
    spec = _spec(rootfs, privileged=True)
    linux = spec["linux"]
    assert "seccomp" not in linux
    assert "maskedPaths" not in linux and "readonlyPaths" not in linux
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    paths = [d["path"] for d in linux["devices"]]
    assert "/dev/null" in paths and "/dev/console" not in paths
    assert not any(p.startswith(("/dev/pts/", "/dev/shm/")) for p in paths)
    options = {m["destination"]: m["options"] for m in spec["mounts"]}
    assert "ro" not in options["/sys"] and "ro" not in options["/sys/fs/cgroup"]
    assert spec["process"]["capabilities"]["bounding"] == oci.host_capabilities()


def test_masked_readonly_paths_and_device_rules(rootfs: Path) -> None:
    """Docker's lists (moby daemon/pkg/oci/defaults.go), written out here
    rather than taken from the module's own constants."""
    linux = _spec(rootfs)["linux"]
    assert linux["readonlyPaths"] == [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]
    docker_masked = [
        "/proc/acpi",
        "/proc/asound",
        "/proc/interrupts",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/sys/devices/virtual/powercap",
        "/sys/firmware",
    ]
    masked = linux["maskedPaths"]
    assert masked[: len(docker_masked)] == docker_masked
    # the rest: this host's per-CPU thermal_throttle directories only
    for extra in masked[len(docker_masked) :]:
        assert extra.startswith("/sys/devices/system/cpu/cpu")
        assert extra.endswith("/thermal_throttle") and os.path.exists(extra)
    rule = {"allow": True, "type": "c", "access": "rwm"}
    assert linux["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {**rule, "major": 1, "minor": 5},
        {**rule, "major": 1, "minor": 3},
        {**rule, "major": 1, "minor": 9},
        {**rule, "major": 1, "minor": 8},
        {**rule, "major": 5, "minor": 0},
        {**rule, "major": 5, "minor": 1},
        {**rule, "allow": False, "major": 10, "minor": 229},
    ]


def test_device_cgroup_rules(rootfs: Path) -> None:
    rules = _spec(rootfs, device_cgroup_rules=["c 1:3 mr", "b *:* m"])["linux"]["resources"]
    assert rules["devices"][0] == {"allow": False, "access": "rwm"}
    assert rules["devices"][-2:] == [
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "mr"},
        {"allow": True, "type": "b", "access": "m"},
    ]
    with pytest.raises(InvalidArgument, match="invalid device cgroup rule"):
        _spec(rootfs, device_cgroup_rules=["x 1:3 rwm"])


# ---------------------------------------------------------------------------
# Seccomp


def _rules(profile: dict[str, Any]) -> set[tuple[Any, ...]]:
    """Every (syscall, action, errnoRet, args) the profile has, rules flattened."""
    out = set()
    for rule in profile["syscalls"]:
        args = tuple(
            (a["index"], a["value"], a.get("valueTwo", 0), a["op"]) for a in rule.get("args", [])
        )
        for name in rule["names"]:
            out.add((name, rule["action"], rule.get("errnoRet"), args))
    return out


def _names(profile: dict[str, Any], action: str = "SCMP_ACT_ALLOW") -> set[str]:
    return {r[0] for r in _rules(profile) if r[1] == action}


def test_seccomp_default_amd64() -> None:
    p = seccomp_profile(DOCKER_DEFAULT_CAPABILITIES, "amd64", (6, 1))
    assert p["defaultAction"] == "SCMP_ACT_ERRNO"
    assert p["defaultErrnoRet"] == 1
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = _names(p)
    assert {"read", "openat2", "arch_prctl", "modify_ldt", "chroot", "ptrace"} <= allowed
    # CAP_SYS_ADMIN's and the other arches' calls are not let through
    assert not {"mount", "unshare", "setns", "bpf", "reboot", "set_tls", "swapcontext"} & allowed
    rules = _rules(p)
    mask = 0x7E020000
    assert ("clone", "SCMP_ACT_ALLOW", None, ((0, mask, 0, "SCMP_CMP_MASKED_EQ"),)) in rules
    assert ("clone3", "SCMP_ACT_ERRNO", 38, ()) in rules
    sockets = {r[3] for r in rules if r[0] == "socket"}
    assert sockets == {
        ((0, 38, 0, "SCMP_CMP_LT"),),
        ((0, 39, 0, "SCMP_CMP_EQ"),),
        ((0, 40, 0, "SCMP_CMP_GT"),),
    }
    personas = {r[3][0][1] for r in rules if r[0] == "personality"}
    assert personas == {0, 8, 0x20000, 0x20008, 0xFFFFFFFF}
    assert len(allowed) > 300


def test_seccomp_follows_capabilities() -> None:
    caps = [*DOCKER_DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN", "CAP_SYS_TIME"]
    p = seccomp_profile(caps, "amd64", (6, 1))
    allowed = _names(p)
    assert {"mount", "unshare", "setns", "clone", "clone3", "settimeofday"} <= allowed
    # with CAP_SYS_ADMIN, clone is unrestricted: no masked rule, no ENOSYS for clone3
    assert not [r for r in _rules(p) if r[0] in ("clone", "clone3") and (r[3] or r[2] == 38)]
    no_chroot = [c for c in DOCKER_DEFAULT_CAPABILITIES if c != "CAP_SYS_CHROOT"]
    assert "chroot" not in _names(seccomp_profile(no_chroot, "amd64", (6, 1)))
    # every capability: every conditional rule that is not arch-specific
    full = _names(seccomp_profile(CAPABILITIES, "amd64", (6, 1)))
    assert {"bpf", "perf_event_open", "syslog", "acct", "iopl", "vhangup", "kcmp"} <= full


@pytest.mark.parametrize(
    ("arch", "architectures", "only_there"),
    [
        ("arm64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"], {"set_tls", "cacheflush"}),
        ("s390x", ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"], {"s390_runtime_instr"}),
        ("riscv64", ["SCMP_ARCH_RISCV64"], {"riscv_flush_icache"}),
        ("ppc64le", None, {"swapcontext"}),
        ("386", None, {"modify_ldt"}),
    ],
)
def test_seccomp_per_architecture(
    arch: str, architectures: list[str] | None, only_there: set[str]
) -> None:
    p = seccomp_profile(DOCKER_DEFAULT_CAPABILITIES, arch, (6, 1))
    assert p.get("architectures") == architectures
    assert only_there <= _names(p)
    assert "arch_prctl" not in _names(p)
    if arch == "s390x":
        clone = [r for r in _rules(p) if r[0] == "clone"]
        assert clone == [
            ("clone", "SCMP_ACT_ALLOW", None, ((1, 0x7E020000, 0, "SCMP_CMP_MASKED_EQ"),))
        ]


def test_seccomp_minimum_kernel() -> None:
    assert "ptrace" not in _names(seccomp_profile(DOCKER_DEFAULT_CAPABILITIES, "amd64", (4, 4)))
    assert "ptrace" in _names(seccomp_profile(DOCKER_DEFAULT_CAPABILITIES, "amd64", (4, 8)))
    with pytest.raises(InvalidArgument, match="unknown architecture"):
        seccomp_profile(DOCKER_DEFAULT_CAPABILITIES, "z80")


# ---------------------------------------------------------------------------
# The spec runs busybox under dockyard-runtime and runc


@pytest.fixture(params=["dockyard-runtime", "runc"])
def either_runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    root = tmp_path / "state"
    rt = Runtime(root)
    if request.param == "runc":
        found = shutil.which("runc")
        if not found:
            pytest.skip("runc is not installed")
        rt.argv, rt.name = [found], "runc"
    else:
        exe = shutil.which("dockyard-runtime", path=os.path.dirname(sys.executable))
        rt.argv = [exe] if exe else [sys.executable, "-m", "dockyard.runtime"]
        rt.name = "dockyard-runtime"
    try:
        yield rt
    finally:
        rt.cleanup()
        leftovers = [p.name for p in root.iterdir()] if root.exists() else []
        assert not leftovers, f"state left behind under {root}: {leftovers}"


SCRIPT = (
    "id -u; id -G; echo $HOME; pwd; hostname; echo $FOO;"
    " grep -E '^(CapBnd|CapEff|Seccomp):' /proc/self/status;"
    " cat /proc/self/oom_score_adj;"
    " unshare -U true 2>/dev/null && echo unshare-allowed || echo unshare-refused"
)


def _run_spec(rt: Runtime, bundle: Bundle, **kw: Any) -> list[str]:
    cid = new_id()
    bundle.config = docker_default_spec(
        rootfs=str(bundle.rootfs),
        root_path="rootfs",
        image_config={"Env": [PATH_ENV, "FOO=from-image"], "Cmd": ["sh"], "WorkingDir": "/"},
        args=["sh", "-c", SCRIPT],
        container_id=cid,
        cgroups_path=f"/dockyard-test-{cid}",
        **kw,
    )
    validate_config(bundle.config, require_process=True)
    p = rt.run(bundle, cid, check=False)
    assert p.returncode == 0, f"{rt.name}: {p.stderr}"
    return p.stdout.split("\n")


def test_spec_runs_busybox(either_runtime: Runtime, bundle: Bundle) -> None:
    mask = sum(1 << CAPABILITIES[c] for c in DOCKER_DEFAULT_CAPABILITIES)
    out = _run_spec(either_runtime, bundle, cwd="/tmp", group_add=["65534"], oom_score_adj=7)
    assert out[:-1] == [
        "0",
        "0 65534",
        "/root",
        "/tmp",
        bundle.config["hostname"],
        "from-image",
        f"CapEff:\t{mask:016x}",
        f"CapBnd:\t{mask:016x}",
        "Seccomp:\t2",
        "7",
        # unshare needs CAP_SYS_ADMIN under Docker's profile
        "unshare-refused",
    ]
    assert len(bundle.config["hostname"]) == 12


def test_spec_runs_busybox_unconfined_as_nobody(either_runtime: Runtime, bundle: Bundle) -> None:
    """The control of the seccomp check above: without the profile, unshare works."""
    out = _run_spec(either_runtime, bundle, seccomp=False, user="nobody", env=["FOO=mine"])
    assert out[:3] == ["65534", "65534", "/home"]
    assert out[5] == "mine"
    assert "Seccomp:\t0" in out
    assert out[-2] == "unshare-allowed"


def test_privileged_spec_runs_busybox(either_runtime: Runtime, bundle: Bundle) -> None:
    """Every host device is there, every capability of the host, no filter."""
    cid = new_id()
    bundle.config = docker_default_spec(
        rootfs=str(bundle.rootfs),
        root_path="rootfs",
        image_config={"Env": [PATH_ENV]},
        args=["sh", "-c", "grep -E '^(CapBnd|Seccomp):' /proc/self/status; ls /dev"],
        cgroups_path=f"/dockyard-test-{cid}",
        privileged=True,
    )
    validate_config(bundle.config, require_process=True)
    p = either_runtime.run(bundle, cid, check=False)
    assert p.returncode == 0, f"{either_runtime.name}: {p.stderr}"
    out = p.stdout.split()
    mask = sum(1 << CAPABILITIES[c] for c in oci.host_capabilities())
    assert out[:4] == ["CapBnd:", f"{mask:016x}", "Seccomp:", "0"]
    top_level = {d["path"][len("/dev/") :] for d in bundle.config["linux"]["devices"]}
    assert {name for name in top_level if "/" not in name} <= set(out[4:])


# ---------------------------------------------------------------------------
# The same spec as a real dockerd writes

# What dockerd adds that is no default of a spec: its network files and the
# hook that joins the network, and cgroup limits it writes as zero when unset.
DOCKERD_NETWORK_FILES = ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts")

# Docker's defaults changed after 20.10, the dockerd of Debian 12 (which the
# tests may run against); ours follow Docker 29.7. The differences, each one:
CHANGED_SINCE_20_10: dict[str, Any] = {
    # masked since (security advisories GHSA-jq35-85cj-fj4p, GHSA-6fw5-f8r9-fgfm)
    "masked_added": ("/proc/interrupts", "/sys/devices/virtual/powercap"),
    "masked_added_suffix": "/thermal_throttle",
    # a user other than root got only the bounding set (until Docker 25)
    "non_root_bounding_only": True,
    # --privileged meant every capability 20.10 knew, the last CAP_AUDIT_READ,
    # whether or not the host has it; now it means the host's
    "privileged_last_capability": "CAP_AUDIT_READ",
    # syscalls the profile allows since (newer kernels' calls)
    "syscalls_added": {
        (name, "SCMP_ACT_ALLOW", None, ())
        for name in [
            "cachestat",
            "fchmodat2",
            "futex_requeue",
            "futex_wait",
            "futex_wake",
            "getxattrat",
            "listmount",
            "listxattrat",
            "map_shadow_stack",
            "mseal",
            "name_to_handle_at",
            "pkey_alloc",
            "pkey_free",
            "pkey_mprotect",
            "removexattrat",
            "riscv_hwprobe",
            "setxattrat",
            "statmount",
            "uretprobe",
            "process_vm_readv",
            "process_vm_writev",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "set_mempolicy_home_node",
            "clock_settime64",
        ]
    }
    # socket(2) is now refused for AF_ALG and AF_VSOCK
    | {
        ("socket", "SCMP_ACT_ALLOW", None, ((0, 38, 0, "SCMP_CMP_LT"),)),
        ("socket", "SCMP_ACT_ALLOW", None, ((0, 39, 0, "SCMP_CMP_EQ"),)),
        ("socket", "SCMP_ACT_ALLOW", None, ((0, 40, 0, "SCMP_CMP_GT"),)),
    },
    # io_uring was dropped from the profile; socket was allowed whole
    "syscalls_removed": {
        (name, "SCMP_ACT_ALLOW", None, ())
        for name in ("io_uring_enter", "io_uring_register", "io_uring_setup", "socket")
    },
}


@dataclass
class Scenario:
    flags: list[str]
    args: list[str]
    spec: dict[str, Any] = field(default_factory=dict)


SCENARIOS = {
    "defaults": Scenario([], ["sleep", "1000"]),
    "user-env-caps": Scenario(
        [
            "--user",
            "nobody",
            "--group-add",
            "root",
            "-e",
            "FOO=bar",
            "-e",
            "PATH=/bin:/usr/bin",
            "--workdir",
            "/tmp",
            "--cap-add",
            "sys_admin",
            "--cap-add",
            "CAP_SYS_PTRACE",
            "--cap-drop",
            "NET_RAW",
            "--hostname",
            "box",
        ],
        ["sleep", "1000"],
        {
            "user": "nobody",
            "group_add": ["root"],
            "env": ["FOO=bar", "PATH=/bin:/usr/bin"],
            "cwd": "/tmp",
            "cap_add": ["sys_admin", "CAP_SYS_PTRACE"],
            "cap_drop": ["NET_RAW"],
            "hostname": "box",
        },
    ),
    "tty-entrypoint-limits": Scenario(
        [
            "-t",
            "--entrypoint",
            "/bin/sleep",
            "--read-only",
            "--shm-size",
            "32m",
            "--oom-score-adj",
            "100",
            "--ulimit",
            "nofile=1024:2048",
            "--security-opt",
            "no-new-privileges",
            "--device-cgroup-rule",
            "c 1:3 mr",
        ],
        ["1000"],
        {
            "terminal": True,
            "entrypoint": ["/bin/sleep"],
            "readonly_rootfs": True,
            "shm_size": 32 << 20,
            "oom_score_adj": 100,
            "ulimits": {"nofile": (1024, 2048)},
            "no_new_privileges": True,
            "device_cgroup_rules": ["c 1:3 mr"],
        },
    ),
    "host-namespaces": Scenario(
        ["--ipc", "host", "--pid", "host", "--uts", "host"],
        ["sleep", "1000"],
        {"ipc_namespace": "host", "pid_namespace": "host", "uts_namespace": "host"},
    ),
    "privileged": Scenario(["--privileged"], ["sleep", "1000"], {"privileged": True}),
}


def _comparable(spec: dict[str, Any]) -> dict[str, Any]:
    """The parts of a spec that must agree, in a form that compares plainly."""
    p, linux = spec["process"], spec["linux"]
    seccomp = linux.get("seccomp")
    return {
        "process.user": p["user"],
        "process.args": p["args"],
        "process.env": p["env"],
        "process.cwd": p["cwd"],
        "process.terminal": p.get("terminal", False),
        "process.capabilities": {k: p["capabilities"].get(k, []) for k in CAPABILITY_SETS},
        "process.oomScoreAdj": p.get("oomScoreAdj"),
        "process.rlimits": p.get("rlimits", []),
        "process.noNewPrivileges": p.get("noNewPrivileges", False),
        "root": {"path": spec["root"]["path"], "readonly": spec["root"].get("readonly", False)},
        "hostname": spec.get("hostname", ""),
        "mounts": [
            (m["destination"], m.get("type"), m.get("source"), m.get("options", []))
            for m in spec["mounts"]
            if m["destination"] not in DOCKERD_NETWORK_FILES
        ],
        "linux.sysctl": linux.get("sysctl", {}),
        "linux.resources.devices": linux["resources"]["devices"],
        "linux.devices": linux.get("devices", []),
        "linux.cgroupsPath": linux.get("cgroupsPath"),
        "linux.namespaces": linux["namespaces"],
        "linux.maskedPaths": sorted(linux.get("maskedPaths", [])),
        "linux.readonlyPaths": linux.get("readonlyPaths", []),
        "linux.seccomp": None
        if seccomp is None
        else {
            "defaultAction": seccomp["defaultAction"],
            "defaultErrnoRet": seccomp.get("defaultErrnoRet"),
            "architectures": seccomp.get("architectures"),
            "syscalls": _rules(seccomp),
        },
    }


def _as_of_20_10(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Take out of both what Docker changed after 20.10 (in place)."""
    ours["linux.maskedPaths"] = [
        p
        for p in ours["linux.maskedPaths"]
        if p not in CHANGED_SINCE_20_10["masked_added"]
        and not p.endswith(CHANGED_SINCE_20_10["masked_added_suffix"])
    ]
    caps = ours["process.capabilities"]
    if ours["process.user"]["uid"] != 0 and CHANGED_SINCE_20_10["non_root_bounding_only"]:
        caps["effective"] = caps["permitted"] = []
    if ours["linux.resources.devices"] == [{"allow": True, "access": "rwm"}]:  # privileged
        last = CAPABILITIES[CHANGED_SINCE_20_10["privileged_last_capability"]]
        for name in ("bounding", "effective", "permitted"):
            caps[name] = [c for c in caps[name] if CAPABILITIES[c] <= last]
    mine, their = ours["linux.seccomp"], theirs["linux.seccomp"]
    if mine is not None and their is not None:
        # unset in 20.10: the runtime's default, EPERM, all the same
        their["defaultErrnoRet"] = mine["defaultErrnoRet"]
        changed = CHANGED_SINCE_20_10["syscalls_added"] | CHANGED_SINCE_20_10["syscalls_removed"]
        mine["syscalls"] -= changed
        their["syscalls"] -= changed


def _dockerd_version(daemon: Dockerd) -> tuple[int, int]:
    text = daemon.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def _cap_last_cap() -> int:
    return int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def _container_environ(pid: int) -> list[str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return [e.decode() for e in f.read().split(b"\0") if e]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_as_dockerd(dockerd: tuple[Dockerd, ImageArchive], name: str) -> None:
    daemon, image = dockerd
    scenario = SCENARIOS[name]
    version = _dockerd_version(daemon)
    if scenario.spec.get("privileged") and version[0] == 20:
        last = CAPABILITIES[CHANGED_SINCE_20_10["privileged_last_capability"]]
        wanted = {c for c, bit in CAPABILITIES.items() if bit <= min(last, _cap_last_cap())}
        missing = sorted(wanted - set(oci.host_capabilities()))
        if missing:
            # 20.10 asks for these all the same, and no runtime can grant them.
            pytest.skip(f"dockerd 20.10 can not run --privileged on a host without {missing}")
    cname = "dockyard-oci-" + new_id()
    try:
        cid = daemon.docker(
            "run",
            "--detach",
            "--network",
            "none",
            "--name",
            cname,
            *scenario.flags,
            image.docker_ref,
            *scenario.args,
        ).stdout.strip()
        found = list(daemon.exec_root.rglob(f"{cid}/config.json"))
        assert len(found) == 1, f"config.json of {cid} under {daemon.exec_root}: {found}"
        dockerd_spec = json.loads(found[0].read_text())
        image_config = json.loads(
            daemon.docker(
                "image", "inspect", "--format", "{{json .Config}}", image.docker_ref
            ).stdout
        )
        pid = int(daemon.docker("inspect", "--format", "{{.State.Pid}}", cname).stdout)
        environ = _container_environ(pid)

        ours = docker_default_spec(
            rootfs=dockerd_spec["root"]["path"],
            image_config=image_config,
            args=scenario.args,
            container_id=cid,
            cgroup_parent=daemon.cgroup_parent,
            # dockerd 29.5 and later make one where the kernel has them
            time_namespace=version >= (29, 5) and os.path.exists("/proc/self/ns/time"),
            **scenario.spec,
        )
        validate_config(ours, require_process=True)
    finally:
        daemon.remove(cname)

    # The process's environment as the runtime gave it: dockerd leaves HOME
    # to the runtime, we write it into the spec.
    assert sorted(ours["process"]["env"]) == sorted(environ)
    assert ours["process"]["env"][-1].startswith("HOME=")
    ours["process"]["env"] = ours["process"]["env"][:-1]

    mine, theirs = _comparable(ours), _comparable(dockerd_spec)
    if version[0] == 20:
        _as_of_20_10(mine, theirs)
    differences = [
        f"{key}:\n  ours:    {mine[key]!r}\n  dockerd: {theirs[key]!r}"
        for key in mine
        if mine[key] != theirs[key]
    ]
    assert not differences, f"dockerd {version}, {name}:\n" + "\n".join(differences)
    if mine["linux.seccomp"] is not None:
        assert len(mine["linux.seccomp"]["syscalls"]) > 300
