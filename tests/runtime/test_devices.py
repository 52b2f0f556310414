"""Default devices, linux.devices and the device cgroup (linux.resources.devices).

config-linux.md "Devices", "Default Devices" and "Allowed Device list".
The base config denies every device in the cgroup ("allow": false, "rwm");
what stays usable is what the runtime allows for the default devices.
"""

from __future__ import annotations

import pytest

from tests.conftest import Bundle, Runtime
from tests.runtime.features_helpers import (
    mount_at,
    parse_mountinfo,
    run_fails,
    run_sh,
    skip_if_runc,
)

# /dev/fuse opens without any capability, so only the device cgroup stands
# between the container and it
FUSE = (10, 229)


@pytest.mark.parametrize(
    ("path", "major", "minor"),
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ],
)
def test_default_device(
    runtime: Runtime, bundle: Bundle, path: str, major: int, minor: int
) -> None:
    out = run_sh(runtime, bundle, f"stat -c '%F %t %T %a' {path}")
    kind, t, T, mode = out.strip().rsplit(" ", 3)
    assert kind == "character special file"
    assert (int(t, 16), int(T, 16)) == (major, minor)
    assert mode == "666"


def test_default_devices_are_usable(runtime: Runtime, bundle: Bundle) -> None:
    out = run_sh(
        runtime,
        bundle,
        "echo x > /dev/null && echo null-ok; "
        "head -c 8 /dev/zero | wc -c; "
        "head -c 8 /dev/urandom | wc -c; "
        "head -c 8 /dev/random | wc -c; "
        "(echo x > /dev/full) 2>&1 || echo full-refused",
    )
    lines = out.split("\n")
    assert lines[0] == "null-ok"
    assert lines[1:4] == ["8", "8", "8"]
    assert "No space left on device" in out and "full-refused" in out


def test_ptmx_is_the_devpts_one(runtime: Runtime, bundle: Bundle) -> None:
    out = run_sh(
        runtime,
        bundle,
        "stat -c %F /dev/ptmx; readlink /dev/ptmx; "
        "stat -L -c '%d %i' /dev/ptmx; stat -c '%d %i' /dev/pts/ptmx",
    )
    lines = out.splitlines()
    # the spec allows a symlink or a bind mount of /dev/pts/ptmx
    if lines[0] == "symbolic link":
        assert lines[1] in ("pts/ptmx", "/dev/pts/ptmx")
        assert lines[2] == lines[3]
    else:
        assert lines[-2] == lines[-1]


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ],
)
def test_fd_symlinks(runtime: Runtime, bundle: Bundle, link: str, target: str) -> None:
    assert run_sh(runtime, bundle, f"readlink {link}").strip() == target


def test_dev_pts_and_shm(runtime: Runtime, bundle: Bundle) -> None:
    out = run_sh(
        runtime,
        bundle,
        "echo data > /dev/shm/f && cat /dev/shm/f; cat /proc/self/mountinfo",
    )
    first, _, info = out.partition("\n")
    assert first == "data"
    mounts = parse_mountinfo(info)
    pts = mount_at(mounts, "/dev/pts")
    shm = mount_at(mounts, "/dev/shm")
    assert pts is not None and pts.fstype == "devpts"
    assert shm is not None and shm.fstype == "tmpfs"


def test_extra_device_with_attributes(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["linux"]["devices"] = [
        {
            "path": "/dev/mynull",
            "type": "c",
            "major": 1,
            "minor": 3,
            "fileMode": 0o640,
            "uid": 1000,
            "gid": 1001,
        }
    ]
    out = run_sh(
        runtime, bundle, "stat -c '%F %t %T %a %u %g' /dev/mynull; echo x > /dev/mynull && echo ok"
    )
    assert out.splitlines() == ["character special file 1 3 640 1000 1001", "ok"]


def test_extra_devices_of_each_type(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["linux"]["devices"] = [
        {"path": "/dev/myblk", "type": "b", "major": 7, "minor": 0, "fileMode": 0o600},
        {"path": "/dev/myunbuf", "type": "u", "major": 1, "minor": 5, "fileMode": 0o644},
        {"path": "/dev/myfifo", "type": "p", "fileMode": 0o600},
        # anywhere in the container, parents created as needed
        {"path": "/devices/here/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666},
    ]
    out = run_sh(
        runtime,
        bundle,
        "stat -c '%F %t %T %a' /dev/myblk /dev/myunbuf /devices/here/null; "
        "stat -c '%F %a' /dev/myfifo",
    )
    assert out.splitlines() == [
        "block special file 7 0 600",
        "character special file 1 5 644",
        "character special file 1 3 666",
        "fifo 600",
    ]


def test_existing_file_that_is_not_the_device_is_an_error(runtime: Runtime, bundle: Bundle) -> None:
    skip_if_runc(runtime, "1.1.5 keeps whatever file already exists at a device's path")
    (bundle.rootfs / "notadevice").write_text("x")
    bundle.config["linux"]["devices"] = [
        {"path": "/notadevice", "type": "c", "major": 1, "minor": 3}
    ]
    run_fails(runtime, bundle)


def fuse_device(bundle: Bundle) -> None:
    bundle.config["linux"]["devices"] = [
        {"path": "/dev/myfuse", "type": "c", "major": FUSE[0], "minor": FUSE[1], "fileMode": 0o666}
    ]


def allow(bundle: Bundle, access: str, dev: tuple[int, int] = FUSE) -> None:
    bundle.config["linux"]["resources"]["devices"].append(
        {"allow": True, "type": "c", "major": dev[0], "minor": dev[1], "access": access}
    )


OPEN_FUSE = "(true < /dev/myfuse) 2>&1 && echo opened || echo denied"


def test_device_not_in_allow_list_cannot_be_opened(runtime: Runtime, bundle: Bundle) -> None:
    fuse_device(bundle)
    out = run_sh(runtime, bundle, OPEN_FUSE)
    assert "Operation not permitted" in out
    assert out.splitlines()[-1] == "denied"


def test_allowed_device_can_be_opened(runtime: Runtime, bundle: Bundle) -> None:
    fuse_device(bundle)
    allow(bundle, "rw")
    assert run_sh(runtime, bundle, OPEN_FUSE).strip() == "opened"


def test_allow_list_applies_in_order(runtime: Runtime, bundle: Bundle) -> None:
    fuse_device(bundle)
    allow(bundle, "rw")
    bundle.config["linux"]["resources"]["devices"].append(
        {"allow": False, "type": "c", "major": FUSE[0], "minor": FUSE[1], "access": "rw"}
    )
    assert run_sh(runtime, bundle, OPEN_FUSE).splitlines()[-1] == "denied"


def test_mknod_of_allowed_device(runtime: Runtime, bundle: Bundle) -> None:
    allow(bundle, "m")
    out = run_sh(runtime, bundle, "mknod /tmp/fuse c 10 229 && stat -c '%t %T' /tmp/fuse")
    assert out.split() == ["a", "e5"]


def test_mknod_of_denied_device(runtime: Runtime, bundle: Bundle) -> None:
    skip_if_runc(runtime, "1.1.5 appends 'c *:* m' and 'b *:* m' to every allow list")
    out = run_sh(runtime, bundle, "mknod /tmp/fuse c 10 229 2>&1; echo rc=$?")
    assert "Operation not permitted" in out
    assert "rc=1" in out
