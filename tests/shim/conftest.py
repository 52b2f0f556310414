"""Fixtures of the shim's tests: an events sink and shims that are always cleaned up."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.compat import host
from tests.conftest import Bundle
from tests.shim.harness import EventSink, ShimUnderTest, rmtree, short_dir


class ShimEnv:
    """A namespace, an events sink and a private runtime root for one test's shims."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.namespace = "dyshim-" + uuid.uuid4().hex[:8]
        self.sink = EventSink(base)
        self.runtime_root = base / "root"
        self.shims: list[ShimUnderTest] = []

    def shim(self, bundle: Bundle | Path, cid: str | None = None) -> ShimUnderTest:
        path = bundle.path if isinstance(bundle, Bundle) else bundle
        s = ShimUnderTest(
            path,
            self.namespace,
            cid or "c" + uuid.uuid4().hex[:10],
            self.sink,
            address=str(self.base / "containerd.sock"),
        )
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


@pytest.fixture
def shim_env() -> Iterator[ShimEnv]:
    created = host.CreatedDirs("/run/containerd", "/run/containerd/s")
    base = short_dir("dys")
    env = ShimEnv(base)
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
