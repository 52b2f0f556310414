"""linux.sysctl (config-linux.md "Sysctl").

Only sysctls that belong to a namespace the container has of its own may be
set: net.* with a network namespace, the IPC ones (kernel.msg*, kernel.sem,
kernel.shm*, fs.mqueue.*) with an IPC namespace, kernel.hostname and
kernel.domainname with a UTS namespace. Anything else would change the host.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Bundle, Runtime
from tests.runtime.features_helpers import run_fails, run_sh, skip_if_runc


def proc_sys(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def host_value(key: str) -> str:
    return proc_sys(key).read_text().strip()


def read_inside(runtime: Runtime, bundle: Bundle, sysctl: dict[str, str]) -> dict[str, str]:
    bundle.config["linux"]["sysctl"] = sysctl
    out = run_sh(runtime, bundle, "; ".join(f"cat {proc_sys(k)}" for k in sysctl))
    return dict(zip(sysctl, out.split("\n"), strict=False))


def drop_ns(bundle: Bundle, ns_type: str) -> None:
    ns = bundle.config["linux"]["namespaces"]
    bundle.config["linux"]["namespaces"] = [n for n in ns if n["type"] != ns_type]


def test_network_sysctls(runtime: Runtime, bundle: Bundle) -> None:
    want = {"net.ipv4.ip_forward": "1", "net.core.somaxconn": "321"}
    before = {k: host_value(k) for k in want}
    assert read_inside(runtime, bundle, want) == want
    assert {k: host_value(k) for k in want} == before


def test_ipc_sysctls(runtime: Runtime, bundle: Bundle) -> None:
    want = {"kernel.msgmax": "4096", "kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "20"}
    before = {k: host_value(k) for k in want}
    assert read_inside(runtime, bundle, want) == want
    assert {k: host_value(k) for k in want} == before


def test_uts_domainname_sysctl(runtime: Runtime, bundle: Bundle) -> None:
    want = {"kernel.domainname": "sysctl.example"}
    before = host_value("kernel.domainname")
    assert read_inside(runtime, bundle, want) == want
    assert host_value("kernel.domainname") == before


def test_uts_hostname_sysctl(runtime: Runtime, bundle: Bundle) -> None:
    skip_if_runc(runtime, "1.1.5 refuses kernel.hostname even without a hostname field")
    del bundle.config["hostname"]
    want = {"kernel.hostname": "from-sysctl"}
    assert read_inside(runtime, bundle, want) == want
    assert host_value("kernel.hostname") != "from-sysctl"


@pytest.mark.parametrize(
    ("key", "value"),
    [("vm.swappiness", "10"), ("kernel.pid_max", "40000"), ("fs.file-max", "1000")],
)
def test_host_wide_sysctl_is_refused(
    runtime: Runtime, bundle: Bundle, key: str, value: str
) -> None:
    before = host_value(key)
    bundle.config["linux"]["sysctl"] = {key: value}
    assert key in run_fails(runtime, bundle)
    assert host_value(key) == before


@pytest.mark.parametrize(
    ("key", "value", "ns_type"),
    [
        ("net.ipv4.ip_forward", "1", "network"),
        ("kernel.msgmax", "1234", "ipc"),
        ("fs.mqueue.msg_max", "12", "ipc"),
        ("kernel.domainname", "nope.example", "uts"),
    ],
)
def test_namespaced_sysctl_without_its_namespace_is_refused(
    runtime: Runtime, bundle: Bundle, key: str, value: str, ns_type: str
) -> None:
    before = host_value(key)
    drop_ns(bundle, ns_type)
    if ns_type == "uts":
        del bundle.config["hostname"]
    bundle.config["linux"]["sysctl"] = {key: value}
    assert key in run_fails(runtime, bundle)
    assert host_value(key) == before


def test_unknown_sysctl_is_an_error(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["linux"]["sysctl"] = {"net.ipv4.no_such_setting": "1"}
    run_fails(runtime, bundle)
