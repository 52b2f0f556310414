"""POSIX-platform hooks (config.md "POSIX-platform Hooks", runtime.md "Lifecycle").

Every hook appends a line to one log and saves the state it got on stdin.
The log lives in the rootfs: the host sees it at ``<bundle>/rootfs/hooklog``
and startContainer, whose path resolves in the container, at ``/hooklog``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from dockyard.runtime.cgroups import parse_proc_cgroup
from tests.conftest import Bundle, Runtime, new_id
from tests.runtime.features_helpers import is_runc, skip_if_runc
from tests.runtime.helpers import wait_for

CREATE_HOOKS = ["prestart", "createRuntime", "createContainer"]
ALL_HOOKS = [*CREATE_HOOKS, "startContainer", "poststart", "poststop"]


def logging_hook(bundle: Bundle, name: str) -> dict[str, Any]:
    """A hook that logs "<name> <args> <env>" and keeps its stdin."""
    in_container = name == "startContainer"
    base = "" if in_container else str(bundle.rootfs)
    script = (
        f'echo "{name} $0 $1 $HOOK_VAR" >> {base}/hooklog; '
        f"cat > {base}/state-{name}.json; "
        f"env > {base}/env-{name}"
    )
    return {
        # startContainer runs in the container: its busybox sh
        "path": "/bin/sh",
        "args": ["sh", "-c", script, f"{name}-arg0", f"{name}-arg1"],
        "env": [f"HOOK_VAR={name}-env"],
    }


def host_hook(script: str, **kw: Any) -> dict[str, Any]:
    return {"path": "/bin/sh", "args": ["sh", "-c", script], **kw}


def create(runtime: Runtime, bundle: Bundle, cid: str) -> subprocess.CompletedProcess[str]:
    """``create`` with the container's stdio in a file: it outlives the runtime."""
    bundle.write()
    log = bundle.path / f"create-{cid}.log"
    with open(log, "w") as f:
        p = runtime(
            "create",
            "--bundle",
            str(bundle.path),
            cid,
            check=False,
            capture_output=False,
            stdout=f,
            stderr=f,
        )
    return subprocess.CompletedProcess(p.args, p.returncode, log.read_text(), "")


def hook_log(bundle: Bundle) -> list[str]:
    path = bundle.rootfs / "hooklog"
    return path.read_text().splitlines() if path.exists() else []


def hook_names(bundle: Bundle) -> list[str]:
    return [line.split()[0] for line in hook_log(bundle)]


def hook_state(bundle: Bundle, name: str) -> dict[str, Any]:
    return json.loads((bundle.rootfs / f"state-{name}.json").read_text())


def wait_stopped(runtime: Runtime, cid: str) -> None:
    wait_for(lambda: runtime.state(cid)["status"] == "stopped", 10, what=f"{cid} to stop")


def cgroup_exists(bundle: Bundle) -> bool:
    path = bundle.config["linux"]["cgroupsPath"].lstrip("/")
    return any((Path("/sys/fs/cgroup") / c / path).exists() for c in ("pids", "memory", "devices"))


def assert_nothing_left(runtime: Runtime, bundle: Bundle, cid: str) -> None:
    assert runtime("state", cid, check=False).returncode != 0
    assert cid not in runtime("list", "-q").stdout.split()
    assert not cgroup_exists(bundle)


def test_hooks_run_in_order_with_state_env_and_args(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["hooks"] = {name: [logging_hook(bundle, name)] for name in ALL_HOOKS}
    bundle.config["annotations"] = {"org.example.hooks": "yes"}
    bundle.set_args("sh", "-c", "echo container >> /hooklog")
    cid = new_id()

    p = create(runtime, bundle, cid)
    assert p.returncode == 0, p.stdout
    after_create = hook_names(bundle)
    assert after_create[:3] == CREATE_HOOKS
    assert "startContainer" not in after_create and "poststop" not in after_create
    pid = runtime.state(cid)["pid"]

    runtime("start", cid)
    # poststart runs before start returns
    assert "poststart" in hook_names(bundle)
    wait_stopped(runtime, cid)
    runtime("delete", cid)
    names = hook_names(bundle)
    assert names.index("startContainer") < names.index("container")
    assert names.index("createContainer") < names.index("poststart")
    assert names[-1] == "poststop"
    assert sorted(names) == sorted([*ALL_HOOKS, "container"])

    # args (args[0] is argv[0]: sh) and env
    for line in hook_log(bundle):
        name, *rest = line.split()
        if name != "container":
            assert rest == [f"{name}-arg0", f"{name}-arg1", f"{name}-env"]
    env = (bundle.rootfs / "env-createRuntime").read_text().splitlines()
    # the hook's env is the configured one (sh itself adds PWD)
    assert [e for e in env if not e.startswith("PWD=")] == ["HOOK_VAR=createRuntime-env"]

    # the state on stdin (runtime.md "State")
    bundle_path = os.path.realpath(bundle.path)
    for name in ALL_HOOKS:
        state = hook_state(bundle, name)
        assert state["ociVersion"]
        assert state["id"] == cid
        assert os.path.realpath(state["bundle"]) == bundle_path
        assert state["annotations"] == {"org.example.hooks": "yes"}
    for name in ("createRuntime", "createContainer"):
        assert hook_state(bundle, name)["status"] == "creating"
    # the OCI validation suite (runtime-tools hooks_stdin) wants prestart to see
    # "created" and poststart "running"; runc 1.1.5 passes "creating" to prestart
    prestart = hook_state(bundle, "prestart")["status"]
    assert prestart == ("creating" if is_runc(runtime) else "created")
    assert hook_state(bundle, "startContainer")["status"] == "created"
    poststart = hook_state(bundle, "poststart")["status"]
    assert poststart == ("created" if is_runc(runtime) else "running")
    assert hook_state(bundle, "poststop")["status"] == "stopped"
    # hooks in the runtime namespace see the container's pid as the host does
    for name in ("prestart", "createRuntime", "poststart"):
        assert hook_state(bundle, name)["pid"] == pid


def test_poststart_runs_at_start_not_at_create(runtime: Runtime, bundle: Bundle) -> None:
    skip_if_runc(runtime, "1.1.5 runs poststart hooks during create")
    bundle.config["hooks"] = {
        name: [logging_hook(bundle, name)] for name in ("startContainer", "poststart")
    }
    bundle.set_args("sh", "-c", "echo container >> /hooklog; sleep 1")
    cid = new_id()
    assert create(runtime, bundle, cid).returncode == 0
    assert hook_names(bundle) == []
    runtime("start", cid)
    names = hook_names(bundle)
    assert names[0] == "startContainer"
    assert "poststart" in names
    poststart = hook_state(bundle, "poststart")["status"]
    assert poststart == ("created" if is_runc(runtime) else "running")


@pytest.mark.parametrize("stage", CREATE_HOOKS)
def test_failing_create_hook_fails_create(runtime: Runtime, bundle: Bundle, stage: str) -> None:
    marker = bundle.path / "later-hook-ran"
    bundle.config["hooks"] = {stage: [host_hook("exit 3"), host_hook(f"touch {marker}")]}
    cid = new_id()
    p = create(runtime, bundle, cid)
    assert p.returncode != 0
    assert not marker.exists(), "hooks after the failing one must not run"
    assert_nothing_left(runtime, bundle, cid)


def test_hook_timeout_fails_create_and_leaves_nothing(runtime: Runtime, bundle: Bundle) -> None:
    pidfile = bundle.path / "hook.pid"
    bundle.config["hooks"] = {
        "createRuntime": [host_hook(f"echo $$ > {pidfile}; exec sleep 30", timeout=1)]
    }
    cid = new_id()
    t0 = time.monotonic()
    p = create(runtime, bundle, cid)
    elapsed = time.monotonic() - t0
    assert p.returncode != 0
    assert elapsed < 10, f"create took {elapsed:.1f}s with a 1s hook timeout"
    assert "timeout" in p.stdout.lower() or "timed out" in p.stdout.lower(), p.stdout
    assert_nothing_left(runtime, bundle, cid)
    hook_pid = int(pidfile.read_text())

    def hook_gone() -> bool:
        try:
            with open(f"/proc/{hook_pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_for(hook_gone, 5, what="the timed out hook to be killed")


def test_poststop_failure_does_not_fail_delete(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["hooks"] = {"poststop": [host_hook("exit 1")]}
    cid = new_id()
    assert create(runtime, bundle, cid).returncode == 0
    runtime("delete", "--force", cid)
    assert_nothing_left(runtime, bundle, cid)


def test_poststop_failure_runs_remaining_hooks(runtime: Runtime, bundle: Bundle) -> None:
    skip_if_runc(runtime, "1.1.5 stops at the first failing poststop hook")
    marker = bundle.path / "second-poststop"
    bundle.config["hooks"] = {"poststop": [host_hook("exit 1"), host_hook(f"touch {marker}")]}
    cid = new_id()
    assert create(runtime, bundle, cid).returncode == 0
    runtime("delete", "--force", cid)
    assert marker.exists()


def test_poststart_failure_does_not_fail_start(runtime: Runtime, bundle: Bundle) -> None:
    skip_if_runc(runtime, "1.1.5 runs poststart in create and fails it")
    marker = bundle.path / "second-poststart"
    bundle.config["hooks"] = {"poststart": [host_hook("exit 1"), host_hook(f"touch {marker}")]}
    bundle.set_args("true")
    cid = new_id()
    assert create(runtime, bundle, cid).returncode == 0
    runtime("start", cid)
    assert marker.exists()
    wait_stopped(runtime, cid)


@pytest.mark.parametrize("stage", ["createRuntime", "createContainer"])
def test_create_hooks_see_the_init_in_its_cgroup(
    runtime: Runtime, bundle: Bundle, stage: str
) -> None:
    """The init is moved into the container's cgroup before any create hook runs
    (dockyard moves it while it builds the rootfs, not before)."""
    out = bundle.path / "hook-cgroup"
    if stage == "createRuntime":
        # the runtime's namespace: the init's pid comes with the state
        script = (
            f"pid=$(sed -n 's/.*\"pid\": *\\([0-9]*\\).*/\\1/p'); cat /proc/$pid/cgroup > {out}"
        )
    else:
        # run by the init itself, before pivot_root: the hook is in its cgroup
        script = f"cat > /dev/null; cat /proc/self/cgroup > {out}"
    bundle.config["hooks"] = {stage: [host_hook(script)]}
    cid = new_id()
    try:
        assert create(runtime, bundle, cid).returncode == 0
        # every hierarchy the host has (v1 controllers, and the cgroup2 one on
        # a hybrid or a unified host) places it at the container's path
        placed = parse_proc_cgroup(out.read_text())
        assert placed
        path = bundle.config["linux"]["cgroupsPath"]
        assert all(p == path for p in placed.values()), placed
    finally:
        runtime("delete", "--force", cid, check=False)
