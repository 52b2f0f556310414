"""Lifecycle (runtime-spec runtime.md "Lifecycle", "Operations") and runc's management verbs.

Each test writes a config for a busybox bundle and checks what the
container and the host observe: the state JSON, the processes, the cgroup
files, the state directory under ``--root``.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runtime, new_id
from tests.runtime.helpers import (
    call_detached,
    cgroup_dirs_of,
    cgroup_file,
    config_problems,
    entries_under,
    find_cgroup_dirs,
    pid_alive,
    spawn,
    wait_for,
    wait_status,
)

# A container that says it is up, then waits for the test to let it go.
WAIT_FOR_GO = "echo up > /up; while [ ! -e /go ]; do sleep 0.02; done"
# An init that keeps running until SIGTERM, and records that it got it.
TRAP_TERM = "trap 'echo TERM > /got; exit 0' TERM; echo up > /up; while :; do sleep 0.05; done"


def sh(bundle: Bundle, script: str) -> Bundle:
    return bundle.set_args("sh", "-c", script).write()


def create(runtime: Runtime, bundle: Bundle, cid: str, *flags: str) -> None:
    call_detached(runtime, "create", *flags, "--bundle", str(bundle.path), cid)


def run_d(runtime: Runtime, bundle: Bundle, cid: str, *flags: str) -> int:
    call_detached(runtime, "run", "-d", *flags, "--bundle", str(bundle.path), cid)
    return int(runtime.state(cid)["pid"])


def up(bundle: Bundle) -> None:
    wait_for(lambda: (bundle.rootfs / "up").exists(), what="the container to start its program")


def state_fails(runtime: Runtime, cid: str) -> bool:
    return runtime("state", cid, check=False).returncode != 0


# --- create, start, state ---------------------------------------------------


def test_create_does_not_run_the_program_until_start(bundle: Bundle, runtime: Runtime) -> None:
    cid = new_id()
    create(runtime, sh(bundle, WAIT_FOR_GO), cid)
    st = runtime.state(cid)
    assert st["status"] == "created"
    assert pid_alive(st["pid"])
    # runtime.md: process.args MUST NOT be applied until start
    assert not (bundle.rootfs / "up").exists()

    runtime("start", cid)
    up(bundle)
    assert runtime.state(cid)["status"] == "running"

    (bundle.rootfs / "go").touch()
    wait_status(runtime, cid, "stopped")
    runtime("delete", cid)
    assert state_fails(runtime, cid)


def test_state_fields(bundle: Bundle, runtime: Runtime) -> None:
    bundle.config["annotations"] = {"org.dockyard.test": "yes", "other": "x y"}
    (bundle.rootfs / "marker-of-this-rootfs").write_text("here")
    cid = new_id()
    create(runtime, sh(bundle, "sleep 100"), cid)
    st = runtime.state(cid)
    assert isinstance(st["ociVersion"], str) and st["ociVersion"]
    assert st["id"] == cid
    assert st["status"] == "created"
    assert isinstance(st["pid"], int) and st["pid"] > 0
    assert st["bundle"] == str(bundle.path)
    assert os.path.isabs(st["bundle"])
    assert st["annotations"] == bundle.config["annotations"]
    # the pid is the container's process: its root is the bundle's rootfs
    proc_root = Path(f"/proc/{st['pid']}/root")
    assert (proc_root / "marker-of-this-rootfs").read_text() == "here"
    assert os.stat(proc_root).st_ino == os.stat(bundle.rootfs).st_ino


def test_state_of_unknown_container_fails(runtime: Runtime) -> None:
    p = runtime("state", new_id(), check=False)
    assert p.returncode != 0
    assert p.stderr.strip()


def test_create_twice_with_the_same_id_fails(
    make_bundle: Callable[[], Bundle], runtime: Runtime
) -> None:
    first, second = make_bundle(), make_bundle()
    cid = new_id()
    create(runtime, sh(first, "sleep 100"), cid)
    pid = runtime.state(cid)["pid"]
    p = call_detached(
        runtime, "create", "--bundle", str(sh(second, "sleep 100").path), cid, check=False
    )
    assert p.returncode != 0
    assert p.stderr.strip()
    # the first container is untouched
    st = runtime.state(cid)
    assert (st["status"], st["pid"], st["bundle"]) == ("created", pid, str(first.path))


def test_start_fails_unless_created(bundle: Bundle, runtime: Runtime) -> None:
    cid = new_id()
    create(runtime, sh(bundle, WAIT_FOR_GO), cid)
    runtime("start", cid)
    up(bundle)
    p = runtime("start", cid, check=False)
    assert p.returncode != 0, "start of a running container must fail"
    (bundle.rootfs / "go").touch()
    wait_status(runtime, cid, "stopped")
    p = runtime("start", cid, check=False)
    assert p.returncode != 0, "start of a stopped container must fail"
    assert runtime.state(cid)["status"] == "stopped"


# --- run ---------------------------------------------------------------------


def test_run_detached(bundle: Bundle, runtime: Runtime) -> None:
    cid = new_id()
    pid = run_d(runtime, sh(bundle, WAIT_FOR_GO), cid)
    up(bundle)
    assert runtime.state(cid)["status"] == "running"
    assert pid_alive(pid)
    (bundle.rootfs / "go").touch()
    wait_status(runtime, cid, "stopped")
    assert not pid_alive(pid)


def test_run_foreground_returns_exit_code_and_output(bundle: Bundle, runtime: Runtime) -> None:
    cid = new_id()
    bundle.set_args("sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3")
    p = runtime.run(bundle, cid, check=False)
    assert p.returncode == 3
    assert p.stdout == "to-stdout\n"
    assert "to-stderr" in p.stderr
    # a foreground run deletes its container when the process exits
    assert state_fails(runtime, cid)
    assert not [e for e in entries_under(runtime.root) if cid in e]


def test_run_foreground_signal_exit_code(bundle: Bundle, runtime: Runtime) -> None:
    # a container killed by a signal is reported the shell's way: 128 + signal
    cid = new_id()
    sh(bundle, WAIT_FOR_GO)
    proc = spawn(runtime, "run", "--bundle", str(bundle.path), cid)
    try:
        up(bundle)
        runtime("kill", cid, "KILL")
        assert proc.wait(timeout=10) == 128 + signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert state_fails(runtime, cid)


# --- kill --------------------------------------------------------------------


@pytest.mark.parametrize("sig", ["KILL", "SIGKILL", "9", "SIGTERM", "TERM", "15", None])
def test_kill_signal_forms(bundle: Bundle, runtime: Runtime, sig: str | None) -> None:
    cid = new_id()
    run_d(runtime, sh(bundle, TRAP_TERM), cid)
    up(bundle)
    runtime("kill", cid, *([sig] if sig else []))
    wait_status(runtime, cid, "stopped")
    term = sig is None or "TERM" in sig or sig == "15"  # kill's default signal is SIGTERM
    assert (bundle.rootfs / "got").exists() == term


def test_kill_unknown_signal_fails(bundle: Bundle, runtime: Runtime) -> None:
    cid = new_id()
    run_d(runtime, sh(bundle, TRAP_TERM), cid)
    up(bundle)
    for bad in ("SIGNOPE", "NOPE", "-1", "99999"):
        p = runtime("kill", cid, bad, check=False)
        assert p.returncode != 0, f"kill {bad} was accepted"
    assert runtime.state(cid)["status"] == "running"


def test_kill_all_reaches_every_process(bundle: Bundle, runtime: Runtime, tmp_path: Path) -> None:
    cid = new_id()
    # init ignores SIGTERM; an exec'd sleep does not
    run_d(runtime, sh(bundle, "trap '' TERM; echo up > /up; while :; do sleep 0.05; done"), cid)
    up(bundle)
    pid_file = tmp_path / "exec.pid"
    call_detached(runtime, "exec", "-d", "--pid-file", str(pid_file), cid, "sleep", "100")
    exec_pid = int(pid_file.read_text())
    assert pid_alive(exec_pid)

    runtime("kill", cid, "TERM")  # to init only: ignored, and the exec'd process is not hit
    assert runtime.state(cid)["status"] == "running"
    assert pid_alive(exec_pid)

    runtime("kill", "--all", cid, "TERM")
    wait_for(lambda: not pid_alive(exec_pid), what="the exec'd process to get SIGTERM")
    assert runtime.state(cid)["status"] == "running"

    runtime("kill", "--all", cid, "KILL")
    wait_status(runtime, cid, "stopped")


# --- delete ------------------------------------------------------------------


def test_delete_running_needs_force(bundle: Bundle, runtime: Runtime) -> None:
    cid = new_id()
    pid = run_d(runtime, sh(bundle, "sleep 100"), cid)
    cgroups = cgroup_dirs_of(pid)
    assert cgroups
    p = runtime("delete", cid, check=False)
    assert p.returncode != 0
    assert runtime.state(cid)["status"] == "running"
    assert pid_alive(pid)

    runtime("delete", "--force", cid)
    wait_for(lambda: not pid_alive(pid), what="the container process to die")
    assert state_fails(runtime, cid)
    assert not [d for d in cgroups if d.exists()]
    assert not find_cgroup_dirs(bundle.config["linux"]["cgroupsPath"])
    assert not [e for e in entries_under(runtime.root) if cid in e]


def test_delete_created_needs_force(bundle: Bundle, runtime: Runtime) -> None:
    """runtime.md "delete": not stopped is an error with no effect (runc deletes it)."""
    if runtime.name == "runc":
        pytest.skip("runc deviates: 1.1.5 deletes a created container without --force")
    cid = new_id()
    create(runtime, sh(bundle, "true"), cid)
    p = runtime("delete", cid, check=False)
    assert p.returncode != 0 and "created" in p.stderr
    assert runtime.state(cid)["status"] == "created"
    runtime("delete", "--force", cid)
    assert state_fails(runtime, cid)


def test_start_without_process_is_an_error(bundle: Bundle, runtime: Runtime) -> None:
    """runtime.md: process may be left out until start, which then fails."""
    if runtime.name == "runc":
        pytest.skip("runc deviates: 1.1.5 refuses create without process")
    cid = new_id()
    del bundle.config["process"]
    create(runtime, bundle.write(), cid)
    assert runtime.state(cid)["status"] == "created"
    p = runtime("start", cid, check=False)
    assert p.returncode != 0 and "process" in p.stderr
    wait_status(runtime, cid, "stopped")
    runtime("delete", cid)


def test_delete_removes_state_and_cgroup(bundle: Bundle, runtime: Runtime) -> None:
    cid = new_id()
    create(runtime, sh(bundle, "true"), cid)
    pid = runtime.state(cid)["pid"]
    cgroups = cgroup_dirs_of(pid)
    cgroups_path = bundle.config["linux"]["cgroupsPath"]
    # the config's cgroupsPath is where the container is
    assert any(str(d).endswith(cgroups_path) for d in cgroups), cgroups
    assert [e for e in entries_under(runtime.root) if cid in e]

    runtime("start", cid)
    wait_status(runtime, cid, "stopped")
    runtime("delete", cid)
    assert not [d for d in cgroups if d.exists()]
    assert not find_cgroup_dirs(cgroups_path)
    assert not [e for e in entries_under(runtime.root) if cid in e]
    assert state_fails(runtime, cid)
    assert runtime("delete", cid, check=False).returncode != 0


# --- list, ps ----------------------------------------------------------------


def test_list(make_bundle: Callable[[], Bundle], runtime: Runtime) -> None:
    created, running = new_id(), new_id()
    b1, b2 = make_bundle(), make_bundle()
    create(runtime, sh(b1, "sleep 100"), created)
    pid = run_d(runtime, sh(b2, "sleep 100"), running)

    lines = runtime("list").stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "PID", "STATUS", "BUNDLE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[running][1:4] == [str(pid), "running", str(b2.path)]
    assert rows[created][2:4] == ["created", str(b1.path)]

    listed = json.loads(runtime("list", "-f", "json").stdout)
    by_id = {c["id"]: c for c in listed}
    assert set(by_id) == {created, running}
    assert by_id[running]["status"] == "running"
    assert by_id[running]["pid"] == pid
    assert by_id[created]["status"] == "created"
    assert by_id[created]["bundle"] == str(b1.path)

    assert sorted(runtime("list", "-q").stdout.split()) == sorted([created, running])


def test_ps(bundle: Bundle, runtime: Runtime, tmp_path: Path) -> None:
    cid = new_id()
    pid = run_d(runtime, sh(bundle, "sleep 100"), cid)
    pid_file = tmp_path / "exec.pid"
    call_detached(runtime, "exec", "-d", "--pid-file", str(pid_file), cid, "sleep", "99")
    exec_pid = int(pid_file.read_text())

    pids = json.loads(runtime("ps", "-f", "json", cid).stdout)
    assert sorted(pids) == sorted([pid, exec_pid])

    table = runtime("ps", cid).stdout.splitlines()
    header = table[0].split()
    assert "PID" in header
    col = header.index("PID")
    rows = {int(line.split()[col]): line for line in table[1:]}
    assert set(rows) == {pid, exec_pid}
    assert "sleep 99" in rows[exec_pid]


# --- pause, resume -----------------------------------------------------------


def _counter(bundle: Bundle) -> int:
    try:
        return int((bundle.rootfs / "count").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def test_pause_and_resume(bundle: Bundle, runtime: Runtime) -> None:
    cid = new_id()
    counting = (
        "i=0; while :; do i=$((i+1)); echo $i > /count.new; mv /count.new /count; sleep 0.01; done"
    )
    pid = run_d(runtime, sh(bundle, counting), cid)
    wait_for(lambda: _counter(bundle) > 2, what="the counter to run")

    runtime("pause", cid)
    assert runtime.state(cid)["status"] == "paused"
    freezer = cgroup_file(pid, "freezer", "freezer.state", "cgroup.freeze")
    assert freezer.read_text().strip() in ("FROZEN", "1")
    before = _counter(bundle)
    # a frozen container makes no progress: nothing to poll for but time itself
    time.sleep(0.2)
    assert _counter(bundle) == before

    runtime("resume", cid)
    assert runtime.state(cid)["status"] == "running"
    assert freezer.read_text().strip() in ("THAWED", "0")
    wait_for(lambda: _counter(bundle) > before + 2, what="the counter to go on")


def test_pause_of_a_stopped_container_fails(bundle: Bundle, runtime: Runtime) -> None:
    cid = new_id()
    create(runtime, sh(bundle, "true"), cid)
    runtime("start", cid)
    wait_status(runtime, cid, "stopped")
    assert runtime("pause", cid, check=False).returncode != 0
    assert runtime("resume", cid, check=False).returncode != 0


# --- update, events ----------------------------------------------------------

CGROUP_MOUNT = {
    "destination": "/sys/fs/cgroup",
    "type": "cgroup",
    "source": "cgroup",
    "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
}
# the container reads its own limits from its cgroup mount, v1 or v2 layout
READ_LIMITS = (
    "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max;"
    "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"
)

MIB = 1024 * 1024


def _limits_outside(pid: int) -> tuple[int, str]:
    mem = cgroup_file(pid, "memory", "memory.limit_in_bytes", "memory.max").read_text().strip()
    pids = cgroup_file(pid, "pids", "pids.max", "pids.max").read_text().strip()
    return int(mem), pids


def _limits_inside(runtime: Runtime, cid: str) -> tuple[int, str]:
    out = runtime("exec", cid, "sh", "-c", READ_LIMITS).stdout.split()
    return int(out[0]), out[1]


def _limited_container(bundle: Bundle, runtime: Runtime) -> tuple[str, int]:
    bundle.config["mounts"].append(CGROUP_MOUNT)
    bundle.config["linux"]["resources"]["memory"] = {"limit": 64 * MIB}
    bundle.config["linux"]["resources"]["pids"] = {"limit": 100}
    cid = new_id()
    pid = run_d(runtime, sh(bundle, "sleep 100"), cid)
    assert _limits_outside(pid) == (64 * MIB, "100")
    assert _limits_inside(runtime, cid) == (64 * MIB, "100")
    return cid, pid


def test_update_with_flags(bundle: Bundle, runtime: Runtime) -> None:
    cid, pid = _limited_container(bundle, runtime)
    runtime("update", "--memory", str(96 * MIB), "--pids-limit", "50", cid)
    assert _limits_outside(pid) == (96 * MIB, "50")
    assert _limits_inside(runtime, cid) == (96 * MIB, "50")


def test_update_with_resources_file(bundle: Bundle, runtime: Runtime, tmp_path: Path) -> None:
    cid, pid = _limited_container(bundle, runtime)
    resources = tmp_path / "resources.json"
    resources.write_text(json.dumps({"memory": {"limit": 128 * MIB}, "pids": {"limit": 77}}))
    runtime("update", "--resources", str(resources), cid)
    assert _limits_outside(pid) == (128 * MIB, "77")
    assert _limits_inside(runtime, cid) == (128 * MIB, "77")


def test_update_of_unknown_container_fails(runtime: Runtime) -> None:
    assert runtime("update", "--pids-limit", "10", new_id(), check=False).returncode != 0


def test_events_stats(bundle: Bundle, runtime: Runtime) -> None:
    bundle.config["linux"]["resources"]["memory"] = {"limit": 64 * MIB}
    bundle.config["linux"]["resources"]["pids"] = {"limit": 100}
    cid = new_id()
    run_d(runtime, sh(bundle, "sleep 100"), cid)
    out = runtime("events", "--stats", cid, timeout=20).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    event = json.loads(lines[0])
    assert event["type"] == "stats"
    assert event["id"] == cid
    data = event["data"]
    assert data["pids"]["current"] >= 1
    assert data["pids"]["limit"] == 100
    assert data["memory"]["usage"]["limit"] == 64 * MIB
    assert data["memory"]["usage"]["usage"] > 0
    assert data["cpu"]["usage"]["total"] > 0


# --- files the runtime writes ------------------------------------------------


def test_pid_file(make_bundle: Callable[[], Bundle], runtime: Runtime, tmp_path: Path) -> None:
    cid1, cid2 = new_id(), new_id()
    pf1, pf2 = tmp_path / "create.pid", tmp_path / "run.pid"
    create(runtime, sh(make_bundle(), "sleep 100"), cid1, "--pid-file", str(pf1))
    assert int(pf1.read_text().strip()) == runtime.state(cid1)["pid"]
    run_d(runtime, sh(make_bundle(), "sleep 100"), cid2, "--pid-file", str(pf2))
    assert int(pf2.read_text().strip()) == runtime.state(cid2)["pid"]


def test_root_dir_is_private(bundle: Bundle, runtime: Runtime) -> None:
    assert not runtime.root.exists()
    cid = new_id()
    create(runtime, sh(bundle, "sleep 100"), cid)
    assert stat.S_IMODE(runtime.root.stat().st_mode) == 0o700


# --- features, spec ----------------------------------------------------------


def test_features(runtime: Runtime) -> None:
    f = json.loads(runtime("features").stdout)
    assert f["ociVersionMin"].startswith("1.0")
    assert f["ociVersionMax"].startswith("1.")
    assert {"prestart", "createRuntime", "createContainer", "startContainer"} <= set(f["hooks"])
    assert {"poststart", "poststop"} <= set(f["hooks"])
    assert {"ro", "rw", "bind", "rbind", "nosuid", "nodev", "noexec"} <= set(f["mountOptions"])
    linux = f["linux"]
    assert {"pid", "network", "ipc", "uts", "mount", "user", "cgroup"} <= set(linux["namespaces"])
    assert {"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_CHOWN"} <= set(linux["capabilities"])
    assert isinstance(linux["cgroup"]["v1"], bool) and isinstance(linux["cgroup"]["v2"], bool)
    assert isinstance(linux["seccomp"]["enabled"], bool)
    if linux["seccomp"]["enabled"]:
        assert {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL"} <= set(
            linux["seccomp"]["actions"]
        )


def _runnable(cfg: dict, bundle: Bundle) -> dict:
    """The generated config, made runnable in the test's bundle without a terminal."""
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["sh", "-c", "echo generated-config-ran"]
    cfg["linux"]["cgroupsPath"] = bundle.config["linux"]["cgroupsPath"]
    return cfg


def test_spec_writes_a_valid_config(bundle: Bundle, runtime: Runtime) -> None:
    runtime("spec", "--bundle", str(bundle.path))
    cfg = json.loads((bundle.path / "config.json").read_text())
    assert config_problems(cfg) == []
    assert cfg["root"]["path"] == "rootfs"
    assert cfg["process"]["args"]
    kinds = [ns["type"] for ns in cfg["linux"]["namespaces"]]
    assert {"pid", "mount"} <= set(kinds)
    assert "user" not in kinds

    bundle.config = _runnable(cfg, bundle)
    p = runtime.run(bundle)
    assert p.stdout == "generated-config-ran\n"


def test_spec_rootless(bundle: Bundle, runtime: Runtime) -> None:
    runtime("spec", "--rootless", "--bundle", str(bundle.path))
    cfg = json.loads((bundle.path / "config.json").read_text())
    assert config_problems(cfg) == []
    kinds = [ns["type"] for ns in cfg["linux"]["namespaces"]]
    assert "user" in kinds
    uid_maps, gid_maps = cfg["linux"]["uidMappings"], cfg["linux"]["gidMappings"]
    assert [m["hostID"] for m in uid_maps if m["containerID"] == 0] == [os.getuid()]
    assert [m["hostID"] for m in gid_maps if m["containerID"] == 0] == [os.getgid()]

    bundle.config = _runnable(cfg, bundle)
    p = runtime.run(bundle)
    assert p.stdout == "generated-config-ran\n"


def test_spec_refuses_to_overwrite(tmp_path: Path, runtime: Runtime) -> None:
    existing = tmp_path / "config.json"
    existing.write_text('{"mine": true}\n')
    p = runtime("spec", check=False, cwd=tmp_path)
    assert p.returncode != 0
    assert "config.json" in p.stderr
    assert existing.read_text() == '{"mine": true}\n'
    p = runtime("spec", "--bundle", str(tmp_path), check=False)
    assert p.returncode != 0
    assert existing.read_text() == '{"mine": true}\n'


def test_spec_in_missing_bundle_fails(tmp_path: Path, runtime: Runtime) -> None:
    missing = tmp_path / "no-such-bundle"
    assert runtime("spec", "--bundle", str(missing), check=False).returncode != 0
    assert not missing.exists()


def _keys_visible(bundle: Bundle) -> None:
    masked = bundle.config["linux"]["maskedPaths"]
    bundle.config["linux"]["maskedPaths"] = [p for p in masked if p != "/proc/keys"]


def test_new_session_keyring_named_after_the_container(bundle: Bundle, runtime: Runtime) -> None:
    _keys_visible(bundle)
    bundle.set_args("cat", "/proc/keys")
    cid = new_id()
    out = runtime.run(bundle, cid).stdout
    assert any(line.split()[-2:] == [f"_ses.{cid}:", "empty"] for line in out.splitlines()), out


def test_no_new_keyring_keeps_the_callers(bundle: Bundle, runtime: Runtime) -> None:
    _keys_visible(bundle)
    bundle.set_args("cat", "/proc/keys").write()
    cid = new_id()
    p = runtime("run", "--no-new-keyring", "--bundle", str(bundle.path), cid)
    assert f"_ses.{cid}:" not in p.stdout, p.stdout


def test_no_pivot(bundle: Bundle, runtime: Runtime) -> None:
    """--no-pivot: the rootfs is moved over / and chrooted into; the program sees only it."""
    (bundle.rootfs / "marker").write_text("inside\n")
    bundle.set_args("sh", "-c", "cat /marker; ls /; test -e /work && echo host-visible; true")
    bundle.write()
    p = runtime("run", "--no-pivot", "--bundle", str(bundle.path), new_id())
    assert p.stdout.startswith("inside\n"), p.stdout
    assert "host-visible" not in p.stdout
    assert "bin" in p.stdout.split()


def test_create_killed_half_way_can_be_deleted(bundle: Bundle, runtime: Runtime) -> None:
    """A create killed with SIGKILL (its createRuntime hook hangs) leaves a record
    that state reports and delete --force cleans up: no cgroup, no process."""
    if runtime.name == "runc":
        pytest.skip("runc deviates: 1.1.5 leaves no state to delete after a killed create")
    marker = bundle.path / "hook-pid"
    hook = f"echo $$ > {marker}.tmp; mv {marker}.tmp {marker}; exec sleep 60"
    bundle.config["hooks"] = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", hook]}]}
    bundle.set_args("sleep", "100").write()
    cid = new_id()
    proc = spawn(runtime, "create", "--bundle", str(bundle.path), cid)
    try:
        wait_for(marker.exists, what="the createRuntime hook to start")
        assert runtime.state(cid)["status"] == "creating"
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if marker.exists():  # the hook outlives the killed runtime: end it
            try:
                os.kill(int(marker.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    st = runtime.state(cid)
    assert st["status"] == "stopped", st
    p = runtime("kill", cid, "KILL", check=False)
    assert p.returncode != 0 and "not running" in p.stderr, p.stderr
    runtime("delete", "--force", cid)
    assert state_fails(runtime, cid)
    wait_for(
        lambda: not find_cgroup_dirs(bundle.config["linux"]["cgroupsPath"]),
        what="the cgroup to go",
    )
    assert not [e for e in entries_under(runtime.root) if cid in e]


def test_start_works_with_fd_numbers_past_1024(bundle: Bundle, runtime: Runtime) -> None:
    """The shim calls ``start`` in its own thread, where fd numbers can pass 1024
    (select's limit) once it holds many containers' stdio."""
    if runtime.name != "dockyard-runtime":
        pytest.skip("calls dockyard-runtime's start in this process")
    import resource

    from dockyard.runtime.start import start

    cid = new_id()
    create(runtime, sh(bundle, WAIT_FOR_GO), cid)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    try:
        if soft < 1200:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2048), hard))
        while not held or held[-1] < 1100:
            held.append(os.dup(0))
        start(str(runtime.root), cid)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    up(bundle)
    (bundle.rootfs / "go").touch()
    wait_status(runtime, cid, "stopped")
    runtime("delete", cid)
