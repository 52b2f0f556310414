"""File descriptors and the working directory must not let a container reach the host.

- Only stdio, plus exactly what ``--preserve-fds N`` asks for (3 .. 3+N-1),
  reaches the container's process: a caller's stray inheritable fds, and
  the runtime's own (state dir, cgroup dirs, sockets), must not.
- ``process.cwd`` is resolved inside the container: a cwd through a leaked
  fd (``/proc/self/fd/N``, the CVE-2024-21626 class) or a symlink that
  climbs out of the rootfs must end in an error or a cwd inside the rootfs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.conftest import Bundle, Runtime, new_id
from tests.runtime.helpers import (
    call_detached,
    fd_numbers,
    inheritable_fds,
    run_with_fds,
    wait_status,
)

LIST_FDS = ["ls", "/proc/self/fd"]
# ``ls`` opens the directory it lists: with stdio only, it shows 0, 1, 2 and 3
STDIO_AND_LS = [0, 1, 2, 3]


@pytest.fixture
def stray_fds() -> Iterator[list[int]]:
    """Inheritable fds at numbers a careless caller might hold, beside pytest's own."""
    fds = inheritable_fds(4)
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def pipe_with(data: bytes) -> int:
    """The read end of a pipe that holds ``data`` and then EOF."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


def running(runtime: Runtime, bundle: Bundle) -> str:
    cid = new_id()
    bundle.set_args("sleep", "1000").write()
    call_detached(runtime, "run", "-d", "--bundle", str(bundle.path), cid)
    return cid


# --- fds ---------------------------------------------------------------------


def test_run_passes_only_stdio(bundle: Bundle, runtime: Runtime, stray_fds: list[int]) -> None:
    bundle.set_args(*LIST_FDS)
    p = runtime.run(bundle, pass_fds=stray_fds)
    assert fd_numbers(p.stdout) == STDIO_AND_LS


def test_create_start_passes_only_stdio(
    bundle: Bundle, runtime: Runtime, stray_fds: list[int]
) -> None:
    bundle.set_args("sh", "-c", "ls /proc/self/fd > /fds").write()
    cid = new_id()
    call_detached(runtime, "create", "--bundle", str(bundle.path), cid, pass_fds=stray_fds)
    runtime("start", cid, pass_fds=stray_fds)
    wait_status(runtime, cid, "stopped")
    assert fd_numbers((bundle.rootfs / "fds").read_text()) == STDIO_AND_LS


def test_fake_proc_in_the_rootfs_hides_no_fd(
    bundle: Bundle, runtime: Runtime, stray_fds: list[int]
) -> None:
    """No /proc mount and a rootfs /proc that lists fake fds: still only 0-2 reach the
    program (the runtime must not trust a listing of the container's /proc)."""
    bundle.config["mounts"] = [m for m in bundle.config["mounts"] if m["destination"] != "/proc"]
    bundle.config["linux"]["maskedPaths"] = []
    bundle.config["linux"]["readonlyPaths"] = []
    fake = bundle.rootfs / "proc" / "self" / "fd"
    fake.mkdir(parents=True)
    for name in ("0", "1", "2"):
        (fake / name).write_text("")
    bundle.set_args("sleep", "1000").write()
    cid = new_id()
    p = call_detached(runtime, "run", "-d", "--bundle", str(bundle.path), cid, check=False)
    if p.returncode != 0:  # refusing is fine (runc does), with a clear word on /proc
        assert "proc" in p.stderr, p.stderr
        return
    pid = runtime.state(cid)["pid"]
    assert sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2]


def test_run_preserve_fds(bundle: Bundle, runtime: Runtime) -> None:
    bundle.set_args("sh", "-c", "ls /proc/self/fd; echo --; cat <&3; cat <&4").write()
    cid = new_id()
    three, four, five = pipe_with(b"three\n"), pipe_with(b"four\n"), pipe_with(b"five\n")
    try:
        p = run_with_fds(
            runtime,
            ["run", "--preserve-fds", "2", "--bundle", str(bundle.path), cid],
            {3: three, 4: four, 5: five},
        )
    finally:
        for fd in (three, four, five):
            os.close(fd)
    assert p.returncode == 0, p.stderr
    listing, data = p.stdout.split("--\n")
    # 3 and 4 are preserved, 5 is not: ls's own fd takes number 5
    assert fd_numbers(listing) == [0, 1, 2, 3, 4, 5]
    assert data == "three\nfour\n"


def test_run_preserve_fds_zero(bundle: Bundle, runtime: Runtime) -> None:
    bundle.set_args(*LIST_FDS).write()
    extra = pipe_with(b"x")
    try:
        p = run_with_fds(
            runtime, ["run", "--preserve-fds", "0", "--bundle", str(bundle.path), new_id()],
            {3: extra},
        )  # fmt: skip
    finally:
        os.close(extra)
    assert p.returncode == 0, p.stderr
    assert fd_numbers(p.stdout) == STDIO_AND_LS


def test_exec_passes_only_stdio(bundle: Bundle, runtime: Runtime, stray_fds: list[int]) -> None:
    cid = running(runtime, bundle)
    p = runtime("exec", cid, *LIST_FDS, pass_fds=stray_fds)
    assert fd_numbers(p.stdout) == STDIO_AND_LS
    # nor do the container's init fds show up in what exec sees of init
    p = runtime("exec", cid, "ls", "/proc/1/fd")
    assert fd_numbers(p.stdout) == [0, 1, 2]


def test_exec_preserve_fds(bundle: Bundle, runtime: Runtime) -> None:
    cid = running(runtime, bundle)
    three, four = pipe_with(b"three\n"), pipe_with(b"four\n")
    try:
        p = run_with_fds(
            runtime,
            ["exec", "--preserve-fds", "1", cid, "sh", "-c", "ls /proc/self/fd; echo --; cat <&3"],
            {3: three, 4: four},
        )
    finally:
        os.close(three)
        os.close(four)
    assert p.returncode == 0, p.stderr
    listing, data = p.stdout.split("--\n")
    assert fd_numbers(listing) == [0, 1, 2, 3, 4]
    assert data == "three\n"


# --- cwd ---------------------------------------------------------------------

# Climb physically from the cwd: inside the container that ends at its "/";
# from a cwd outside the rootfs it ends at the host's root.
WHERE_AM_I = (
    "ls -a; echo --; i=0; while [ $i -lt 40 ]; do cd -P .. || exit 9; i=$((i+1)); done; "
    "if [ . -ef / ]; then echo INSIDE; else echo ESCAPED; ls -a; fi"
)


def assert_not_outside(p_stdout: str, bundle: Bundle) -> None:
    listing, _, verdict = p_stdout.partition("--\n")
    assert "config.json" not in listing.split(), f"the bundle is visible from the cwd: {listing}"
    assert verdict.split()[:1] == ["INSIDE"], f"cwd outside the rootfs: {p_stdout}"
    assert "work" not in verdict.split()


def check_cwd(runtime: Runtime, bundle: Bundle, cwd: str) -> None:
    bundle.config["process"]["cwd"] = cwd
    bundle.set_args("sh", "-c", WHERE_AM_I)
    p = runtime.run(bundle, check=False)
    if p.returncode == 0:
        assert_not_outside(p.stdout, bundle)
    else:
        assert p.stderr.strip(), "a refused cwd needs an error message"
        assert "INSIDE" not in p.stdout and "ESCAPED" not in p.stdout


@pytest.mark.parametrize("fd", range(3, 11))
def test_cwd_through_a_leaked_fd(bundle: Bundle, runtime: Runtime, fd: int) -> None:
    check_cwd(runtime, bundle, f"/proc/self/fd/{fd}")


def test_cwd_through_a_climbing_symlink(bundle: Bundle, runtime: Runtime) -> None:
    (bundle.rootfs / "escape").symlink_to("../../../../../../../..")
    check_cwd(runtime, bundle, "/escape")
    check_cwd(runtime, bundle, "/escape/tmp")


def test_cwd_through_a_symlink_to_a_host_path(bundle: Bundle, runtime: Runtime) -> None:
    # an absolute target names a host path only if resolved outside the container
    (bundle.rootfs / "hostlink").symlink_to(bundle.path)
    check_cwd(runtime, bundle, "/hostlink")
    assert not (bundle.path / "rootfs" / "rootfs").exists()


@pytest.mark.parametrize("fd", range(3, 11))
def test_exec_cwd_through_a_leaked_fd(bundle: Bundle, runtime: Runtime, fd: int) -> None:
    cid = running(runtime, bundle)
    p = runtime("exec", "--cwd", f"/proc/self/fd/{fd}", cid, "sh", "-c", WHERE_AM_I, check=False)
    if p.returncode == 0:
        assert_not_outside(p.stdout, bundle)
    else:
        assert "INSIDE" not in p.stdout and "ESCAPED" not in p.stdout


def test_exec_cwd_through_a_climbing_symlink(bundle: Bundle, runtime: Runtime) -> None:
    (bundle.rootfs / "escape").symlink_to("../../../../../../../..")
    cid = running(runtime, bundle)
    p = runtime("exec", "--cwd", "/escape", cid, "sh", "-c", WHERE_AM_I, check=False)
    if p.returncode == 0:
        assert_not_outside(p.stdout, bundle)
