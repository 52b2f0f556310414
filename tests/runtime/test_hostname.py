"""hostname and domainname (config.md "Hostname", "Domainname").

Both need a private UTS namespace: setting either without one would change
the host's, so the runtime must refuse it.
"""

from __future__ import annotations

import socket

from tests.conftest import Bundle, Runtime
from tests.runtime.features_helpers import run_fails, run_sh, skip_if_runc


def drop_uts(bundle: Bundle) -> None:
    ns = bundle.config["linux"]["namespaces"]
    bundle.config["linux"]["namespaces"] = [n for n in ns if n["type"] != "uts"]


def test_hostname(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["hostname"] = "box-1.example"
    out = run_sh(runtime, bundle, "hostname; cat /proc/sys/kernel/hostname")
    assert out.split() == ["box-1.example", "box-1.example"]
    assert socket.gethostname() != "box-1.example"


def test_domainname(runtime: Runtime, bundle: Bundle) -> None:
    skip_if_runc(runtime, "1.1.5 predates the domainname field and ignores it")
    bundle.config["domainname"] = "example.org"
    out = run_sh(runtime, bundle, "cat /proc/sys/kernel/domainname; hostname")
    assert out.split() == ["example.org", "dockyard"]
    with open("/proc/sys/kernel/domainname") as f:
        assert f.read().strip() != "example.org"


def test_new_uts_namespace_without_hostname_keeps_the_hosts(
    runtime: Runtime, bundle: Bundle
) -> None:
    del bundle.config["hostname"]
    assert run_sh(runtime, bundle, "hostname").strip() == socket.gethostname()


def test_hostname_without_uts_namespace_is_an_error(runtime: Runtime, bundle: Bundle) -> None:
    drop_uts(bundle)
    bundle.config["hostname"] = "not-the-host"
    run_fails(runtime, bundle)
    assert socket.gethostname() != "not-the-host"


def test_domainname_without_uts_namespace_is_an_error(runtime: Runtime, bundle: Bundle) -> None:
    skip_if_runc(runtime, "1.1.5 predates the domainname field and ignores it")
    drop_uts(bundle)
    del bundle.config["hostname"]
    bundle.config["domainname"] = "example.org"
    run_fails(runtime, bundle)


def test_no_hostname_and_no_uts_namespace_runs(runtime: Runtime, bundle: Bundle) -> None:
    drop_uts(bundle)
    del bundle.config["hostname"]
    assert run_sh(runtime, bundle, "hostname").strip() == socket.gethostname()
