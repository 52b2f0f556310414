"""linux.maskedPaths and linux.readonlyPaths.

config-linux.md "Masked Paths" and "Readonly Paths": the values are paths in
the container namespace, so a symlink in the rootfs never leads the runtime
to a path of the host.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Bundle, Runtime
from tests.runtime.features_helpers import (
    READY_THEN_WAIT,
    Background,
    host_mountinfo,
    run_sh,
    umount_below,
)


def make_secrets(bundle: Bundle) -> None:
    (bundle.rootfs / "secret.txt").write_text("top secret\n")
    d = bundle.rootfs / "secretdir"
    d.mkdir()
    (d / "inner").write_text("hidden\n")


def test_masked_file_reads_empty(runtime: Runtime, bundle: Bundle) -> None:
    make_secrets(bundle)
    bundle.config["linux"]["maskedPaths"] = ["/secret.txt"]
    out = run_sh(runtime, bundle, "cat /secret.txt; echo end; cat /secretdir/inner")
    assert out == "end\nhidden\n"


def test_masked_directory_is_empty(runtime: Runtime, bundle: Bundle) -> None:
    make_secrets(bundle)
    bundle.config["linux"]["maskedPaths"] = ["/secretdir"]
    out = run_sh(runtime, bundle, "ls -A /secretdir; echo end; cat /secret.txt")
    assert out == "end\ntop secret\n"
    assert (bundle.rootfs / "secretdir" / "inner").read_text() == "hidden\n"


def test_default_masked_proc_paths(runtime: Runtime, bundle: Bundle) -> None:
    # of the base config's list, the ones this kernel has
    out = run_sh(runtime, bundle, "wc -c < /proc/timer_list; ls -A /sys/firmware | wc -l")
    assert out.split() == ["0", "0"]


def test_missing_masked_path_is_ignored(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["linux"]["maskedPaths"].append("/does/not/exist")
    assert run_sh(runtime, bundle, "echo ran") == "ran\n"


def test_readonly_path(runtime: Runtime, bundle: Bundle) -> None:
    make_secrets(bundle)
    bundle.config["linux"]["readonlyPaths"] = ["/secretdir"]
    out = run_sh(
        runtime,
        bundle,
        "cat /secretdir/inner; touch /secretdir/new 2>&1; echo rc=$?; touch /elsewhere && echo rw",
    )
    assert out.splitlines()[0] == "hidden"
    assert "Read-only file system" in out
    assert "rc=1" in out
    assert out.splitlines()[-1] == "rw"
    assert not (bundle.rootfs / "secretdir" / "new").exists()


def test_default_readonly_proc_sys(runtime: Runtime, bundle: Bundle) -> None:
    out = run_sh(runtime, bundle, "(echo x > /proc/sys/kernel/domainname) 2>&1; echo rc=$?")
    assert "Read-only file system" in out
    assert "rc=1" in out


def test_masked_and_readonly_paths_through_symlink_stay_inside(
    runtime: Runtime, bundle: Bundle, tmp_path: Path
) -> None:
    """A rootfs symlink to a host path: the host path is neither masked nor made read-only."""
    host = tmp_path / "host-secrets"
    host.mkdir()
    (host / "file").write_text("host data\n")
    (bundle.rootfs / "masked").symlink_to(host / "file")
    (bundle.rootfs / "rodir").symlink_to(host)
    bundle.config["linux"]["maskedPaths"] += ["/masked", "/rodir"]
    bundle.config["linux"]["readonlyPaths"] += ["/rodir"]
    bundle.set_args("sh", "-c", READY_THEN_WAIT + "echo done")

    def host_mounts() -> list[str]:
        return [m.mount_point for m in host_mountinfo() if str(host) in m.mount_point]

    try:
        with Background(runtime, bundle) as bg:
            bg.wait_ready()
            assert host_mounts() == []
            assert (host / "file").read_text() == "host data\n"
            (host / "written-during").write_text("still writable\n")
            p = bg.finish()
    finally:
        umount_below(host)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "done\n"
    assert host_mounts() == []
    assert (host / "file").read_text() == "host data\n"
    assert (host / "written-during").exists()
