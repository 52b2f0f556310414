"""``exec``: a new process in a running container, with runc's flags.

The exec'd process must be in every namespace and cgroup of the container,
with what the flags and ``--process`` file ask for, and its exit status
must be the runtime's.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runtime, new_id, runtime_name
from tests.runtime.helpers import (
    call_detached,
    cgroup_dirs_of,
    pid_alive,
    wait_for,
    wait_status,
)

CAP_SYS_ADMIN = 21
NAMESPACES = ("pid", "net", "ipc", "uts", "mnt", "cgroup", "user")


def running(runtime: Runtime, bundle: Bundle) -> tuple[str, int]:
    """A detached container whose init sleeps: (id, host pid of init)."""
    cid = new_id()
    bundle.set_args("sleep", "1000").write()
    call_detached(runtime, "run", "-d", "--bundle", str(bundle.path), cid)
    return cid, int(runtime.state(cid)["pid"])


@pytest.fixture
def container(bundle: Bundle, runtime: Runtime) -> tuple[str, int]:
    return running(runtime, bundle)


def status_caps(text: str, field: str) -> int:
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in {text!r}")


def test_exec_args_output_and_exit_code(runtime: Runtime, container: tuple[str, int]) -> None:
    cid, _ = container
    p = runtime("exec", cid, "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert p.returncode == 7
    assert p.stdout == "out\n"
    assert "err" in p.stderr
    for code in (0, 1, 42, 255):
        assert runtime("exec", cid, "sh", "-c", f"exit {code}", check=False).returncode == code


def test_exec_starts_with_default_signals(runtime: Runtime, container: tuple[str, int]) -> None:
    cid, _ = container
    status = runtime("exec", cid, "cat", "/proc/self/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(fields["SigIgn"], 16) == 0 and int(fields["SigBlk"], 16) == 0


def test_exec_killed_by_signal(runtime: Runtime, container: tuple[str, int]) -> None:
    cid, _ = container
    p = runtime("exec", cid, "sh", "-c", "kill -KILL $$", check=False)
    assert p.returncode == 128 + signal.SIGKILL


def test_exec_env_cwd_user(runtime: Runtime, container: tuple[str, int]) -> None:
    cid, _ = container
    script = 'echo "$FOO|$BAR"; pwd; id -u; id -g'
    p = runtime(
        "exec", "-e", "FOO=bar", "-e", "BAR=x y", "--cwd", "/tmp", "-u", "1000:1001",
        cid, "sh", "-c", script,
    )  # fmt: skip
    assert p.stdout.splitlines() == ["bar|x y", "/tmp", "1000", "1001"]


def test_exec_inherits_config_env(runtime: Runtime, container: tuple[str, int]) -> None:
    cid, _ = container
    # PATH comes from the config's process.env; without it busybox's applets are not found
    p = runtime("exec", cid, "sh", "-c", 'echo "$PATH"')
    assert p.stdout.strip() == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_exec_process_file(runtime: Runtime, container: tuple[str, int], tmp_path: Path) -> None:
    cid, _ = container
    process = {
        "terminal": False,
        "user": {"uid": 65534, "gid": 65534, "additionalGids": [5, 6]},
        "args": ["sh", "-c", 'echo "$GREETING"; pwd; id -u; id -g; id -G'],
        "env": ["PATH=/bin", "GREETING=from process.json"],
        "cwd": "/home",
    }
    spec = tmp_path / "process.json"
    spec.write_text(json.dumps(process))
    p = runtime("exec", "--process", str(spec), cid)
    lines = p.stdout.splitlines()
    assert lines[:4] == ["from process.json", "/home", "65534", "65534"]
    assert set(lines[4].split()) == {"65534", "5", "6"}


def test_exec_cap_adds_a_capability(runtime: Runtime, container: tuple[str, int]) -> None:
    cid, _ = container
    plain = runtime("exec", cid, "cat", "/proc/self/status").stdout
    added = runtime("exec", "--cap", "CAP_SYS_ADMIN", cid, "cat", "/proc/self/status").stdout
    assert not status_caps(plain, "CapEff") & (1 << CAP_SYS_ADMIN)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert status_caps(added, field) & (1 << CAP_SYS_ADMIN), field
        # nothing else changes
        assert status_caps(added, field) & ~(1 << CAP_SYS_ADMIN) == status_caps(plain, field)


def test_exec_no_new_privs(bundle: Bundle, runtime: Runtime) -> None:
    bundle.config["process"]["noNewPrivileges"] = False
    cid, _ = running(runtime, bundle)
    grep = ["grep", "NoNewPrivs", "/proc/self/status"]
    assert runtime("exec", cid, *grep).stdout.split() == ["NoNewPrivs:", "0"]
    assert runtime("exec", "--no-new-privs", cid, *grep).stdout.split() == ["NoNewPrivs:", "1"]


def test_exec_detached_pid_file(
    runtime: Runtime, container: tuple[str, int], tmp_path: Path
) -> None:
    cid, init = container
    pid_file = tmp_path / "exec.pid"
    call_detached(runtime, "exec", "-d", "--pid-file", str(pid_file), cid, "sleep", "99")
    pid = int(pid_file.read_text().strip())
    assert pid_alive(pid)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"sleep", b"99"]
    assert os.stat(f"/proc/{pid}/root").st_ino == os.stat(f"/proc/{init}/root").st_ino
    runtime("kill", "--all", cid, "KILL")
    wait_for(lambda: not pid_alive(pid), what="the exec'd process to be killed")


def test_exec_joins_namespaces_and_cgroups(
    runtime: Runtime, container: tuple[str, int], tmp_path: Path
) -> None:
    cid, init = container
    pid_file = tmp_path / "exec.pid"
    call_detached(runtime, "exec", "-d", "--pid-file", str(pid_file), cid, "sleep", "98")
    pid = int(pid_file.read_text().strip())
    # as the host sees them
    for ns in NAMESPACES:
        assert os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/{init}/ns/{ns}"), ns
    for ns in ("pid", "net", "ipc", "uts", "mnt"):
        assert os.readlink(f"/proc/{init}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert cgroup_dirs_of(pid) == cgroup_dirs_of(init)

    # as the container sees them: the same as its pid 1's
    script = (
        f"for n in {' '.join(NAMESPACES)}; do "
        "echo $(readlink /proc/1/ns/$n) $(readlink /proc/self/ns/$n); done"
    )
    for line in runtime("exec", cid, "sh", "-c", script).stdout.splitlines():
        of_init, of_exec = line.split()
        assert of_init == of_exec
    inside = runtime("exec", cid, "sh", "-c", "cat /proc/1/cgroup; echo --; cat /proc/self/cgroup")
    of_init, of_exec = inside.stdout.split("--\n")
    assert of_init == of_exec


def test_exec_sees_the_container_pid_namespace(
    runtime: Runtime, container: tuple[str, int]
) -> None:
    cid, _ = container
    out = runtime("exec", cid, "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$")
    first, me = out.stdout.splitlines()
    assert first.split() == ["sleep", "1000"]
    assert int(me) > 1


def test_exec_missing_program_fails(runtime: Runtime, container: tuple[str, int]) -> None:
    cid, _ = container
    p = runtime("exec", cid, "/no/such/program", check=False)
    assert p.returncode != 0
    assert "/no/such/program" in p.stderr
    assert runtime.state(cid)["status"] == "running"


def test_exec_into_a_stopped_container_fails(bundle: Bundle, runtime: Runtime) -> None:
    cid = new_id()
    bundle.set_args("true").write()
    call_detached(runtime, "create", "--bundle", str(bundle.path), cid)
    runtime("start", cid)
    wait_status(runtime, cid, "stopped")
    p = runtime("exec", cid, "echo", "never", check=False)
    assert p.returncode != 0
    assert "never" not in p.stdout
    assert "stopped" in p.stderr


@pytest.mark.skipif(
    runtime_name() == "runc",
    reason="runc 1.1.5 execs into a created container; dockyard refuses before start",
)
def test_exec_into_a_created_container_fails(bundle: Bundle, runtime: Runtime) -> None:
    cid = new_id()
    bundle.set_args("sleep", "1000").write()
    call_detached(runtime, "create", "--bundle", str(bundle.path), cid)
    p = runtime("exec", cid, "echo", "never", check=False)
    assert p.returncode != 0
    assert "never" not in p.stdout
    assert "created" in p.stderr
    assert runtime.state(cid)["status"] == "created"


def test_exec_into_an_unknown_container_fails(runtime: Runtime) -> None:
    p = runtime("exec", new_id(), "true", check=False)
    assert p.returncode != 0
    assert p.stderr.strip()


def test_exec_into_a_paused_container_fails(runtime: Runtime, container: tuple[str, int]) -> None:
    cid, _ = container
    runtime("pause", cid)
    try:
        p = runtime("exec", cid, "echo", "never", check=False, timeout=20)
        assert p.returncode != 0
        assert "paused" in p.stderr
    finally:
        runtime("resume", cid)
