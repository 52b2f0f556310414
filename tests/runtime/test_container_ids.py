"""Container ids that could name a path outside ``--root``, or that no tool can show, are refused.

The id becomes a directory name under ``--root`` (and in logs and cgroup
paths): every verb must refuse the bad ones before touching anything.
"""

from __future__ import annotations

import pytest

from tests.conftest import Bundle, Runtime, new_id, runtime_name
from tests.runtime.helpers import call_detached, entries_under, find_cgroup_dirs

BAD_IDS = {
    "empty": "",
    "slash": "a/b",
    "absolute": "/etc",
    "dot": ".",
    "dotdot": "..",
    "climbing": "../../escape",
    "leading-dash": "-abc",
    "too-long": "a" * 1100,
    "control-char": "a\x01b",
    "newline": "a\nb",
    "escape-seq": "a\x1b[2Jb",
    "space": "a b",
}


@pytest.fixture(params=sorted(BAD_IDS), ids=sorted(BAD_IDS))
def bad_id(request: pytest.FixtureRequest) -> str:
    return BAD_IDS[request.param]


def refused(p_returncode: int, p_stderr: str) -> None:
    assert p_returncode != 0
    assert p_stderr.strip(), "a refused id needs an error message"
    if runtime_name() == "dockyard-runtime":
        # the message says what was wrong: the container id
        assert "id" in p_stderr.lower()


def test_create_and_run_refuse_bad_ids(bundle: Bundle, runtime: Runtime, bad_id: str) -> None:
    bundle.set_args("sleep", "100").write()
    outside = bundle.path.parent
    before = sorted(p.name for p in outside.iterdir())
    for verb in (["create"], ["run", "-d"]):
        p = call_detached(runtime, *verb, "--bundle", str(bundle.path), bad_id, check=False)
        runtime.ids.discard(bad_id)  # nothing to delete, and delete would get the bad id again
        refused(p.returncode, p.stderr)
        assert entries_under(runtime.root) == []
        assert not find_cgroup_dirs(bundle.config["linux"]["cgroupsPath"])
    # nothing beside --root either (an id like ../x would land there)
    assert sorted(p.name for p in outside.iterdir() if p.name != runtime.root.name) == [
        n for n in before if n != runtime.root.name
    ]


def test_other_verbs_refuse_bad_ids(runtime: Runtime, bad_id: str) -> None:
    for args in (
        ["state", bad_id],
        ["delete", bad_id],
        ["delete", "--force", bad_id],
        ["kill", bad_id, "KILL"],
        ["start", bad_id],
        ["exec", bad_id, "true"],
    ):
        p = runtime(*args, check=False)
        assert p.returncode != 0, args
        assert p.stderr.strip(), args
    assert entries_under(runtime.root) == []


def test_good_ids_are_accepted(bundle: Bundle, runtime: Runtime) -> None:
    # what containerd and Docker generate: hex digests, names with . _ - +
    bundle.set_args("true").write()
    for cid in ("a" * 64, "web.1_x-y", "C0ntainer+" + new_id()):
        p = call_detached(runtime, "create", "--bundle", str(bundle.path), cid, check=False)
        assert p.returncode == 0, p.stderr
        assert runtime.state(cid)["id"] == cid
        runtime("delete", "--force", cid)
