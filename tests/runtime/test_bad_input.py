"""Invalid config.json: a clear error that names the field, and nothing left behind.

runtime.md, "Create": if the runtime cannot apply a property as specified,
it MUST generate an error and a new container MUST NOT be created. So no
state under ``--root``, no cgroup at the config's ``cgroupsPath``, no new
mount on the host and no process that was started for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Bundle, Runtime, new_id, runtime_name
from tests.runtime.helpers import (
    call_detached,
    entries_under,
    find_cgroup_dirs,
    mounts,
    new_mounts,
    processes_touching,
)

Config = dict[str, Any]


@dataclass
class Case:
    name: str
    # edits the config in place, or returns the file's text (None: remove the file)
    edit: Callable[[Config], str | bool | None]
    # the field the error must name (any of these words, case-insensitive)
    words: tuple[str, ...]
    # runc's message names the field too
    runc_names_it: bool = True


def put(path: str, value: Any) -> Callable[[Config], bool]:
    def edit(cfg: Config) -> bool:
        *parents, last = path.split(".")
        node: Any = cfg
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
        return True

    return edit


def add(path: str, item: Any) -> Callable[[Config], bool]:
    def edit(cfg: Config) -> bool:
        node: Any = cfg
        for key in path.split("."):
            node = node[key]
        node.append(item)
        return True

    return edit


DELETE = object()

CASES = [
    Case("bad json", lambda cfg: "{not json", ("config.json",), runc_names_it=False),
    Case("empty file", lambda cfg: "", ("config.json",), runc_names_it=False),
    Case("no config.json", lambda cfg: None, ("config.json",), runc_names_it=False),
    Case("top level is a list", lambda cfg: "[]", ("config.json",), runc_names_it=False),
    Case("ociVersion not a string", put("ociVersion", 1), ("ociVersion",)),
    Case("args a string", put("process.args", "true"), ("args",)),
    Case("args empty", put("process.args", []), ("args",)),
    Case("uid a string", put("process.user.uid", "root"), ("uid",)),
    Case("env a string", put("process.env", "PATH=/bin"), ("env",)),
    Case("terminal a string", put("process.terminal", "yes"), ("terminal",)),
    Case("cwd relative", put("process.cwd", "tmp"), ("cwd",)),
    Case("cwd empty", put("process.cwd", ""), ("cwd",)),
    Case("capabilities not a list", put("process.capabilities.bounding", "ALL"), ("bounding",)),
    Case(
        "rlimit unknown",
        put("process.rlimits", [{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}]),
        ("rlimit",),
    ),
    Case("no root", put("root", DELETE), ("root",)),
    Case("rootfs missing", put("root.path", "no-such-rootfs"), ("no-such-rootfs",)),
    Case("hostname a number", put("hostname", 5), ("hostname",)),
    Case("unknown namespace", add("linux.namespaces", {"type": "bogus"}), ("namespace",)),
    Case(
        "duplicate namespace",
        add("linux.namespaces", {"type": "pid"}),
        ("namespace",),
        runc_names_it=False,
    ),
    Case(
        "namespace path missing",
        add("linux.namespaces", {"type": "cgroup", "path": "/no/such/ns"}),
        ("/no/such/ns",),
    ),
    Case("mounts not a list", put("mounts", {"destination": "/x"}), ("mounts",)),
    Case(
        "mount without destination",
        add("mounts", {"type": "tmpfs", "source": "tmpfs"}),
        ("destination",),
    ),
    Case("mount type a number", add("mounts", {"destination": "/x", "type": 5}), ("type",)),
    Case(
        "memory limit a string",
        put("linux.resources", {"memory": {"limit": "lots"}}),
        ("limit",),
    ),
    Case(
        "seccomp bad default action",
        put("linux.seccomp", {"defaultAction": "SCMP_ACT_BOGUS"}),
        ("defaultAction",),
        runc_names_it=False,
    ),
    Case(
        "seccomp bad syscall action",
        put(
            "linux.seccomp",
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOPE"}],
            },
        ),
        ("action",),
    ),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def write_config(bundle: Bundle, case: Case) -> None:
    config = bundle.path / "config.json"
    result = case.edit(bundle.config)
    if result is None:
        config.unlink(missing_ok=True)
    elif isinstance(result, str):
        config.write_text(result)
    else:
        config.write_text(json.dumps(bundle.config))


@pytest.mark.parametrize("verb", ["create", "run"])
def test_invalid_config_is_refused(
    bundle: Bundle, runtime: Runtime, case: Case, verb: str, tmp_path: Path
) -> None:
    # the user program would leave this mark if it ever ran
    bundle.set_args("sh", "-c", "touch /ran; sleep 100")
    cgroups_path = bundle.config["linux"]["cgroupsPath"]
    write_config(bundle, case)
    cid = new_id()
    mounts_before = mounts()

    args = [verb, *(["-d"] if verb == "run" else []), "--bundle", str(bundle.path), cid]
    p = call_detached(runtime, *args, check=False)

    assert p.returncode != 0, f"{case.name} was accepted"
    message = p.stderr.strip()
    assert message, "no error message on stderr"
    if runtime_name() == "dockyard-runtime" or case.runc_names_it:
        lowered = message.lower()
        assert any(w.lower() in lowered for w in case.words), (
            f"the error does not name {' or '.join(case.words)}: {message}"
        )
    # nothing left behind
    assert runtime("state", cid, check=False).returncode != 0
    assert entries_under(runtime.root) == []
    assert not find_cgroup_dirs(cgroups_path)
    assert new_mounts(mounts_before, tmp_path) == []
    assert not processes_touching(bundle.path, needles=[cid])
    assert not (bundle.rootfs / "ran").exists()
