"""The process object: args, env, cwd, user, umask, rlimits, capabilities,
noNewPrivileges and oomScoreAdj (config.md "Process", "User", "POSIX process").

The test hosts lack CAP_SYS_RESOURCE: rlimits above the current hard limit
and a lower oomScoreAdj cannot be granted, and the runtime must say so.
"""

from __future__ import annotations

import os
import resource

import pytest

from tests.conftest import Bundle, Runtime
from tests.runtime.features_helpers import (
    cap_mask,
    host_has_cap,
    run_fails,
    run_sh,
    skip_if_runc,
    status_fields,
)


def test_args_are_passed_verbatim(runtime: Runtime, bundle: Bundle) -> None:
    bundle.set_args("printf", "[%s]\n", "two words", "", "it's", "$HOME", "a\nb")
    assert runtime.run(bundle).stdout == "[two words]\n[]\n[it's]\n[$HOME]\n[a\nb]\n"


def test_args_path_lookup_uses_container_env(runtime: Runtime, bundle: Bundle) -> None:
    (bundle.rootfs / "opt" / "bin").mkdir(parents=True)
    (bundle.rootfs / "opt" / "bin" / "hello").symlink_to("/bin/busybox")
    bundle.config["process"]["env"] = ["PATH=/opt/bin:/bin"]
    bundle.set_args("hello")
    p = runtime.run(bundle, check=False)
    # busybox names its applet after argv[0]: it runs, and refuses the name
    assert "hello: applet not found" in p.stdout + p.stderr


def test_missing_executable_is_an_error(runtime: Runtime, bundle: Bundle) -> None:
    bundle.set_args("/no/such/program")
    assert "/no/such/program" in run_fails(runtime, bundle)


def test_env(runtime: Runtime, bundle: Bundle) -> None:
    os.environ["DOCKYARD_TEST_HOST_ONLY"] = "leak"
    try:
        env = ["PATH=/bin", "FOO=bar baz", "EMPTY=", "EQ=a=b"]
        bundle.config["process"]["env"] = env
        bundle.set_args("env")
        lines = runtime.run(bundle).stdout.splitlines()
    finally:
        del os.environ["DOCKYARD_TEST_HOST_ONLY"]
    # runtimes may add HOME (runc does, from /etc/passwd); nothing of the host
    assert [ln for ln in lines if not ln.startswith("HOME=")] == env


def test_cwd(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["process"]["cwd"] = "/etc"
    bundle.set_args("pwd")
    assert runtime.run(bundle).stdout == "/etc\n"


def test_missing_cwd_is_created(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["process"]["cwd"] = "/srv/app"
    bundle.set_args("pwd")
    assert runtime.run(bundle).stdout == "/srv/app\n"
    assert (bundle.rootfs / "srv" / "app").is_dir()


def test_relative_cwd_is_an_error(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["process"]["cwd"] = "etc"
    assert "cwd" in run_fails(runtime, bundle)


def test_user_uid_gid_additional_gids(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1001, "additionalGids": [5, 6]}
    st = status_fields(run_sh(runtime, bundle, "id -u; id -g; cat /proc/self/status"))
    assert st["Uid"].split() == ["1000"] * 4
    assert st["Gid"].split() == ["1001"] * 4
    assert sorted(int(g) for g in st["Groups"].split()) == [5, 6]


def test_user_without_additional_gids_has_no_groups(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    st = status_fields(run_sh(runtime, bundle, "cat /proc/self/status"))
    assert st["Uid"].split()[0] == "1000"
    # nothing of the runtime's own supplementary groups survives
    assert st["Groups"].split() in ([], ["1000"])


def test_umask(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["process"]["user"]["umask"] = 0o027
    out = run_sh(runtime, bundle, "umask; touch /tmp/f; stat -c %a /tmp/f")
    assert out.split() == ["0027", "640"]


def test_rlimits_below_hard_limit(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["process"]["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": 1500, "hard": 2000},
        {"type": "RLIMIT_NPROC", "soft": 200, "hard": 300},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
    ]
    out = run_sh(runtime, bundle, "ulimit -n; ulimit -Hn; cat /proc/self/limits")
    lines = out.splitlines()
    assert lines[:2] == ["1500", "2000"]
    limits = {ln[:26].strip(): ln[26:].split()[:2] for ln in lines[3:]}
    assert limits["Max open files"] == ["1500", "2000"]
    assert limits["Max processes"] == ["200", "300"]
    assert limits["Max core file size"] == ["0", "0"]


def test_rlimit_above_hard_limit_is_a_clear_error(runtime: Runtime, bundle: Bundle) -> None:
    if host_has_cap("CAP_SYS_RESOURCE"):
        pytest.skip("the host may raise rlimits (CAP_SYS_RESOURCE)")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    bundle.config["process"]["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": hard + 1000, "hard": hard + 1000}
    ]
    assert "rlimit" in run_fails(runtime, bundle)


def test_unknown_rlimit_is_an_error(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["process"]["rlimits"] = [{"type": "RLIMIT_NOPE", "soft": 1, "hard": 1}]
    assert "rlimit_nope" in run_fails(runtime, bundle)


def cap_sets(runtime: Runtime, bundle: Bundle, script: str = "") -> dict[str, int]:
    st = status_fields(run_sh(runtime, bundle, script + "cat /proc/self/status"))
    return {k: int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


def test_capabilities_match_config(runtime: Runtime, bundle: Bundle) -> None:
    caps = bundle.config["process"]["capabilities"]
    for s in ("bounding", "effective", "permitted"):
        caps[s] = [c for c in caps[s] if c != "CAP_NET_RAW"]
    got = cap_sets(runtime, bundle)
    want = cap_mask(caps["bounding"])
    assert got["CapBnd"] == want
    assert got["CapEff"] == want
    assert got["CapPrm"] == want
    assert got["CapInh"] == 0
    assert got["CapAmb"] == 0
    assert not got["CapEff"] & cap_mask(["CAP_NET_RAW"])


def test_capability_sets_differ(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["process"]["capabilities"] = {
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"],
        "permitted": ["CAP_CHOWN", "CAP_KILL"],
        "effective": ["CAP_CHOWN"],
        "inheritable": ["CAP_KILL"],
        "ambient": ["CAP_KILL"],
    }
    got = cap_sets(runtime, bundle)
    assert got["CapBnd"] == cap_mask(["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"])
    assert got["CapInh"] == cap_mask(["CAP_KILL"])
    assert got["CapAmb"] == cap_mask(["CAP_KILL"])
    # ambient capabilities are added to the permitted and effective sets at exec
    assert got["CapPrm"] == cap_mask(["CAP_CHOWN", "CAP_KILL"])
    assert got["CapEff"] & cap_mask(["CAP_CHOWN"])


def test_dropped_capability_is_enforced(runtime: Runtime, bundle: Bundle) -> None:
    caps = bundle.config["process"]["capabilities"]
    for s in ("bounding", "effective", "permitted"):
        caps[s] = [c for c in caps[s] if c != "CAP_CHOWN"]
    out = run_sh(
        runtime, bundle, "touch /tmp/f; chown 5 /tmp/f 2>&1; echo rc=$?; chmod 600 /tmp/f; echo ok"
    )
    assert "Operation not permitted" in out
    assert "rc=1" in out and "ok" in out


def test_non_root_user_gets_ambient_capabilities(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    bundle.config["process"]["capabilities"] = {
        "bounding": ["CAP_CHOWN"],
        "permitted": ["CAP_CHOWN"],
        "effective": ["CAP_CHOWN"],
        "inheritable": ["CAP_CHOWN"],
        "ambient": ["CAP_CHOWN"],
    }
    got = cap_sets(runtime, bundle)
    chown = cap_mask(["CAP_CHOWN"])
    assert got == {k: chown for k in got}


@pytest.mark.parametrize(("nnp", "want"), [(True, "1"), (False, "0")])
def test_no_new_privileges(runtime: Runtime, bundle: Bundle, nnp: bool, want: str) -> None:
    bundle.config["process"]["noNewPrivileges"] = nnp
    assert status_fields(run_sh(runtime, bundle, "cat /proc/self/status"))["NoNewPrivs"] == want


def test_oom_score_adj_raised(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["process"]["oomScoreAdj"] = 500
    assert run_sh(runtime, bundle, "cat /proc/self/oom_score_adj").strip() == "500"


def test_oom_score_adj_lowered_is_a_clear_error(runtime: Runtime, bundle: Bundle) -> None:
    if host_has_cap("CAP_SYS_RESOURCE"):
        pytest.skip("the host may lower oom_score_adj (CAP_SYS_RESOURCE)")
    with open("/proc/self/oom_score_adj") as f:
        current = int(f.read())
    if current <= -1000:
        pytest.skip("oom_score_adj is already at its minimum")
    bundle.config["process"]["oomScoreAdj"] = max(current - 100, -1000)
    assert "oom_score_adj" in run_fails(runtime, bundle)


def test_io_priority(runtime: Runtime, bundle: Bundle) -> None:
    """process.ioPriority: class BE (2) priority 6 is ioprio (2 << 13) | 6, read back by ionice."""
    skip_if_runc(runtime, "1.1.5 predates process.ioPriority")
    bundle.config["process"]["ioPriority"] = {"class": "IOPRIO_CLASS_BE", "priority": 6}
    out = run_sh(runtime, bundle, "ionice -p $$")
    assert "best-effort" in out and "prio 6" in out, out


def test_scheduler_batch_with_nice(runtime: Runtime, bundle: Bundle) -> None:
    """process.scheduler: SCHED_BATCH (3) with nice 7, seen in /proc/self/stat."""
    skip_if_runc(runtime, "1.1.5 predates process.scheduler")
    bundle.config["process"]["scheduler"] = {"policy": "SCHED_BATCH", "nice": 7}
    fields = run_sh(runtime, bundle, "cat /proc/self/stat").rsplit(")", 1)[1].split()
    # after ")": state is field 3, so nice (19) and policy (41) are at 16 and 38
    assert fields[16] == "7", fields
    assert fields[38] == "3", fields


def test_personality_linux32(runtime: Runtime, bundle: Bundle) -> None:
    """linux.personality LINUX32: uname reports a 32-bit machine."""
    skip_if_runc(runtime, "1.1.5 ignores linux.personality")
    if os.uname().machine != "x86_64":
        pytest.skip("LINUX32 is checked on x86_64 (uname -m says i686)")
    bundle.config["linux"]["personality"] = {"domain": "LINUX32"}
    assert run_sh(runtime, bundle, "uname -m").strip() == "i686"


def test_the_process_starts_with_default_signals(runtime: Runtime, bundle: Bundle) -> None:
    # No signal ignored or blocked: a runtime written in a language that
    # ignores SIGPIPE (Python does) must not hand that on through execve.
    bundle.set_args("cat", "/proc/self/status")
    fields = status_fields(runtime.run(bundle).stdout)
    assert int(fields["SigIgn"], 16) == 0, fields["SigIgn"]
    assert int(fields["SigBlk"], 16) == 0, fields["SigBlk"]
