"""Fixtures of the shim's tests: an events sink and shims that are always cleaned up.

The task API tests run in three modes (``shim_env``'s parameter):

- ``in-process``: the shim started as a command, dockyard-runtime run in a
  fork of the shim (the default);
- ``command``: the same with dockyard-runtime run as a command
  (``DOCKYARD_SHIM_RUNTIME_IN_PROCESS=0``), as runc and crun always are;
- ``template``: the shim forked by a shim template (``DOCKYARD_SHIM_TEMPLATE``),
  as dockyard-supervisor starts it, with the runtime in-process.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockyard.shim.runtime import IN_PROCESS_ENV
from dockyard.shim.template import ENV as TEMPLATE_ENV
from dockyard.shim.template import Template
from tests.compat import host
from tests.conftest import Bundle
from tests.shim.harness import EventSink, ShimUnderTest, rmtree, shim_binary, short_dir

MODES = ("in-process", "command", "template")


class ShimEnv:
    """A namespace, an events sink and a private runtime root for one test's shims."""

    def __init__(self, base: Path, env: dict[str, str] | None = None, mode: str = "") -> None:
        self.base = base
        self.mode = mode  # one of MODES, or "" for a test's own setup
        self.namespace = "dyshim-" + uuid.uuid4().hex[:8]
        self.sink = EventSink(base)
        self.runtime_root = base / "root"
        self.shims: list[ShimUnderTest] = []
        # What the shims' environment gets besides the harness's own.
        self.env = env or {}

    def shim(self, bundle: Bundle | Path, cid: str | None = None) -> ShimUnderTest:
        path = bundle.path if isinstance(bundle, Bundle) else bundle
        s = ShimUnderTest(
            path,
            self.namespace,
            cid or "c" + uuid.uuid4().hex[:10],
            self.sink,
            address=str(self.base / "containerd.sock"),
        )
        s.env.update(self.env)
        self.shims.append(s)
        return s

    def cleanup(self) -> None:
        try:
            for s in self.shims:
                s.stop()
        finally:
            self.sink.close()
            host.remove_cgroups(self.namespace)
        left = [s.address for s in self.shims if s.address and os.path.exists(s.address[7:])]
        assert not left, f"shim sockets left behind: {left}"


@pytest.fixture(scope="session")
def shim_template() -> Iterator[Template]:
    """A shim template for the session, as dockyard-supervisor runs one."""
    base = short_dir("dyt")
    template = Template(str(base / "template.sock"), shim_binary=shim_binary())
    try:
        template.start()
        yield template
    finally:
        template.stop()
        rmtree(base)


def mode_env(mode: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The shim's environment for one of MODES."""
    if mode == "command":
        return {IN_PROCESS_ENV: "0"}
    if mode == "template":
        template: Template = request.getfixturevalue("shim_template")
        return {TEMPLATE_ENV: template.socket_path}
    return {}


@pytest.fixture(params=MODES)
def shim_env(request: pytest.FixtureRequest) -> Iterator[ShimEnv]:
    created = host.CreatedDirs("/run/containerd", "/run/containerd/s")
    base = short_dir("dys")
    env = ShimEnv(base, mode_env(request.param, request), request.param)
    try:
        yield env
    finally:
        try:
            env.cleanup()
        finally:
            rmtree(base)
            created.cleanup()


@pytest.fixture
def started(shim_env: ShimEnv) -> Callable[..., ShimUnderTest]:
    """``started(bundle)``: a shim already started for that bundle."""

    def start(bundle: Bundle | Path, cid: str | None = None) -> ShimUnderTest:
        s = shim_env.shim(bundle, cid)
        s.start()
        return s

    return start
