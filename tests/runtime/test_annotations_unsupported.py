"""annotations, and features this host cannot provide.

config.md "Annotations" and runtime.md "State": the annotations of the
config are part of the state. AppArmor, SELinux and Intel RDT are absent on
the test hosts; a config that asks for them must fail with an error that
names the feature, never run the container without the confinement it asked
for (config-linux.md "IntelRdt": an error when no resctrl is mounted).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runtime, new_id
from tests.runtime.features_helpers import READY_THEN_WAIT, Background, run_fails, skip_if_runc


def apparmor_enabled() -> bool:
    try:
        return Path("/sys/module/apparmor/parameters/enabled").read_text().strip() == "Y"
    except OSError:
        return False


def selinux_enabled() -> bool:
    return Path("/sys/fs/selinux/enforce").exists()


def resctrl_mounted() -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(" - resctrl " in line for line in f)


def test_annotations_in_state(runtime: Runtime, bundle: Bundle) -> None:
    annotations = {"org.example.owner": "team a", "org.example.empty": "", "com.x/y": "1=2"}
    bundle.config["annotations"] = annotations
    bundle.set_args("sh", "-c", READY_THEN_WAIT)
    cid = new_id()
    with Background(runtime, bundle, cid) as bg:
        bg.wait_ready()
        state = runtime.state(cid)
        assert state["annotations"] == annotations
        assert state["id"] == cid
        assert state["status"] == "running"
        assert os.path.realpath(state["bundle"]) == os.path.realpath(bundle.path)
        p = bg.finish()
    assert p.returncode == 0, p.stderr


def test_no_annotations_in_state(runtime: Runtime, bundle: Bundle) -> None:
    bundle.set_args("sh", "-c", READY_THEN_WAIT)
    cid = new_id()
    with Background(runtime, bundle, cid) as bg:
        bg.wait_ready()
        assert runtime.state(cid).get("annotations") in (None, {})
        bg.finish()


def test_apparmor_profile_without_apparmor(runtime: Runtime, bundle: Bundle) -> None:
    if apparmor_enabled():
        pytest.skip("AppArmor is enabled here")
    bundle.config["process"]["apparmorProfile"] = "docker-default"
    assert "apparmor" in run_fails(runtime, bundle)


def test_selinux_label_without_selinux(runtime: Runtime, bundle: Bundle) -> None:
    if selinux_enabled():
        pytest.skip("SELinux is enabled here")
    bundle.config["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0:c1,c2"
    assert "selinux" in run_fails(runtime, bundle)


def test_intel_rdt_schema_without_resctrl(runtime: Runtime, bundle: Bundle) -> None:
    if resctrl_mounted():
        pytest.skip("resctrl is mounted here")
    bundle.config["linux"]["intelRdt"] = {"closID": "dockyard-test", "l3CacheSchema": "L3:0=ff"}
    out = run_fails(runtime, bundle)
    assert "rdt" in out or "resctrl" in out


def test_intel_rdt_clos_id_without_resctrl(runtime: Runtime, bundle: Bundle) -> None:
    skip_if_runc(runtime, "1.1.5 ignores an intelRdt with only a closID when RDT is absent")
    if resctrl_mounted():
        pytest.skip("resctrl is mounted here")
    bundle.config["linux"]["intelRdt"] = {"closID": "dockyard-test"}
    out = run_fails(runtime, bundle)
    assert "rdt" in out or "resctrl" in out
