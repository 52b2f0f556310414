"""Shared fixtures: busybox bundles, a runtime under test, and leak checks.

The runtime under test is ``dockyard-runtime`` unless ``DOCKYARD_TEST_RUNTIME``
names another binary (``runc``, ``crun``): the feature tests are written
against what the OCI runtime spec says, so they must pass against runc too.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.spec.runtime import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    DOCKER_DEFAULT_CAPABILITIES,
)
from tests import leaks

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def runtime_command() -> list[str]:
    """The argv prefix that runs the runtime under test."""
    name = os.environ.get("DOCKYARD_TEST_RUNTIME", "dockyard-runtime")
    if name == "dockyard-runtime":
        exe = shutil.which("dockyard-runtime", path=os.path.dirname(sys.executable))
        return [exe] if exe else [sys.executable, "-m", "dockyard.runtime"]
    found = shutil.which(name)
    if not found:
        pytest.skip(f"runtime {name} is not installed")
    return [found]


def runtime_name() -> str:
    return os.path.basename(os.environ.get("DOCKYARD_TEST_RUNTIME", "dockyard-runtime"))


def base_config(test_id: str) -> dict[str, Any]:
    """A non-terminal config much like ``runc spec`` with Docker's default caps."""
    caps = list(DOCKER_DEFAULT_CAPABILITIES)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["true"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": list(caps),
                "effective": list(caps),
                "permitted": list(caps),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "dockyard",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
        ],
        "linux": {
            "cgroupsPath": f"/dockyard-test-{test_id}",
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"},
                {"type": "network"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
            ],
            "maskedPaths": list(DEFAULT_MASKED_PATHS),
            "readonlyPaths": list(DEFAULT_READONLY_PATHS),
        },
    }


_ROOTFS_CACHE: dict[str, Path] = {}


def _busybox_rootfs_template(base: Path) -> Path:
    """Build a busybox rootfs once per session; tests get copies of it."""
    if "t" in _ROOTFS_CACHE:
        return _ROOTFS_CACHE["t"]
    root = base / "busybox-rootfs"
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for a in applets:
        if a != "busybox":
            (root / "bin" / a).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    _ROOTFS_CACHE["t"] = root
    return root


class Bundle:
    """An OCI bundle: ``config`` is edited by the test, then ``write()`` saves it."""

    def __init__(self, path: Path, template: Path, test_id: str) -> None:
        self.path = path
        self.rootfs = path / "rootfs"
        shutil.copytree(template, self.rootfs, symlinks=True)
        self.config = base_config(test_id)

    def write(self) -> Bundle:
        (self.path / "config.json").write_text(json.dumps(self.config, indent=1))
        return self

    def set_args(self, *args: str) -> Bundle:
        self.config["process"]["args"] = list(args)
        return self


class Runtime:
    """Runs the runtime under test with a private ``--root``; remembers ids for cleanup."""

    def __init__(self, root: Path) -> None:
        self.argv = runtime_command()
        self.name = runtime_name()
        self.root = root
        self.ids: set[str] = set()

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        if len(args) >= 2 and args[0] in ("create", "run"):
            self.ids.add(args[-1])
        kw.setdefault("capture_output", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.run(
            [*self.argv, "--root", str(self.root), *args],
            text=True,
            timeout=timeout,
            check=False,
            **kw,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"{self.name} {' '.join(args)} exited {p.returncode}\n"
                f"stdout: {p.stdout}\nstderr: {p.stderr}"
            )
        return p

    def run(
        self, bundle: Bundle, cid: str | None = None, check: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Foreground ``run``: the container's stdout/stderr are captured."""
        bundle.write()
        return self("run", "--bundle", str(bundle.path), cid or new_id(), check=check, **kw)

    def state(self, cid: str) -> dict[str, Any]:
        return json.loads(self("state", cid).stdout)

    def cleanup(self) -> None:
        for cid in list(self.ids):
            self("delete", "--force", cid, check=False, timeout=30)
        self.ids.clear()


def new_id() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dockyard")


@pytest.fixture
def bundle(session_dir: Path, tmp_path: Path) -> Bundle:
    return Bundle(tmp_path / "bundle", _busybox_rootfs_template(session_dir), new_id())


@pytest.fixture
def make_bundle(session_dir: Path, tmp_path: Path) -> Any:
    """For tests that need several bundles: ``make_bundle()`` returns a fresh one."""
    count = iter(range(1000))

    def make() -> Bundle:
        return Bundle(
            tmp_path / f"bundle{next(count)}", _busybox_rootfs_template(session_dir), new_id()
        )

    return make


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    root = tmp_path / "state"
    rt = Runtime(root)
    try:
        yield rt
    finally:
        rt.cleanup()
        leftovers = [p.name for p in root.iterdir()] if root.exists() else []
        assert not leftovers, f"state left behind under {root}: {leftovers}"


@pytest.fixture
def config_copy() -> Any:
    return copy.deepcopy


@pytest.fixture(scope="session", autouse=True)
def leak_check() -> Iterator[None]:
    """Fail the run if the session left mounts, cgroups, processes or netns behind."""
    before = leaks.snapshot()
    yield
    after = leaks.snapshot()
    problems = leaks.compare(before, after)
    if problems:
        pytest.fail("resources leaked by the test session:\n" + "\n".join(problems), False)
