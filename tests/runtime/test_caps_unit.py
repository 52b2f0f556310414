"""Capabilities: parsing to masks, and the order of the kernel calls around setuid."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from dockyard.errors import ConfigError, InvalidArgument, SystemFailure
from dockyard.runtime import caps, libc
from dockyard.spec.runtime import DOCKER_DEFAULT_CAPABILITIES

DOCKER_DEFAULT = list(DOCKER_DEFAULT_CAPABILITIES)
ALL_BITS = (1 << 41) - 1


def mask(*names: str) -> int:
    m = 0
    for n in names:
        m |= 1 << caps.cap_number(n)
    return m


class RecordingSys:
    """Stands in for the libc seam: records every call, fails on request."""

    PR_SET_KEEPCAPS = libc.PR_SET_KEEPCAPS
    PR_CAPBSET_DROP = libc.PR_CAPBSET_DROP
    PR_CAP_AMBIENT = libc.PR_CAP_AMBIENT
    PR_CAP_AMBIENT_RAISE = libc.PR_CAP_AMBIENT_RAISE
    PR_CAP_AMBIENT_CLEAR_ALL = libc.PR_CAP_AMBIENT_CLEAR_ALL

    def __init__(self, effective: int = ALL_BITS) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.effective = effective
        # (call name, first argument after the option) -> errno to fail with
        self.fail: dict[tuple[Any, ...], int] = {}

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        self.calls.append(("prctl", option, arg2, arg3))
        for key in (("prctl", option, arg2, arg3), ("prctl", option, arg2), ("prctl", option)):
            if key in self.fail:
                raise OSError(self.fail[key], os.strerror(self.fail[key]))
        return 0

    def capget(self, pid: int = 0) -> tuple[int, int, int]:
        self.calls.append(("capget",))
        return (self.effective, self.effective, 0)

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        self.calls.append(("capset", effective, permitted, inheritable))
        if ("capset",) in self.fail:
            raise OSError(self.fail[("capset",)], os.strerror(self.fail[("capset",)]))


def drops(calls: list[tuple[Any, ...]]) -> list[int]:
    return [c[2] for c in calls if c[:2] == ("prctl", libc.PR_CAPBSET_DROP)]


# --- names and numbers -------------------------------------------------------


def test_cap_number_and_names() -> None:
    assert caps.cap_number("CAP_CHOWN") == 0
    assert caps.cap_number("CAP_SYS_ADMIN") == 21
    assert caps.cap_number("CAP_CHECKPOINT_RESTORE") == 40
    names = caps.cap_names()
    assert names[0] == "CAP_CHOWN" and names[-1] == "CAP_CHECKPOINT_RESTORE"
    assert [caps.cap_number(n) for n in names] == list(range(len(names)))
    with pytest.raises(InvalidArgument, match="CAP_NOPE"):
        caps.cap_number("CAP_NOPE")


def test_last_cap(tmp_path: Path) -> None:
    f = tmp_path / "cap_last_cap"
    f.write_text("38\n")
    assert caps.last_cap(str(f)) == 38
    assert caps.last_cap(str(tmp_path / "missing")) == 40
    if os.path.exists(caps.CAP_LAST_CAP_PATH):
        assert caps.last_cap() >= 36


# --- parsing -------------------------------------------------------------------


def test_parse_to_masks() -> None:
    sets = caps.parse_capabilities(
        {
            "bounding": DOCKER_DEFAULT,
            "effective": DOCKER_DEFAULT,
            "permitted": DOCKER_DEFAULT,
            "inheritable": ["CAP_KILL"],
            "ambient": ["CAP_KILL"],
        },
        last=40,
    )
    want = mask(*DOCKER_DEFAULT)
    assert want == 0xA80425FB  # Docker's default set, as /proc/<pid>/status shows it
    assert (sets.bounding, sets.effective, sets.permitted) == (want, want, want)
    assert sets.inheritable == sets.ambient == 1 << 5
    assert sets.ignored == []


def test_absent_sets_are_empty() -> None:
    sets = caps.parse_capabilities({"bounding": ["CAP_CHOWN"]}, last=40)
    assert sets.bounding == 1
    assert sets.effective == sets.permitted == sets.inheritable == sets.ambient == 0


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"bounding": ["CAP_CHOWN", "CAP_FLY"]}, "process.capabilities.bounding[1]"),
        ({"effective": ["chown"]}, "process.capabilities.effective[0]"),
        ({"ambient": [21]}, "process.capabilities.ambient[0]"),
        ({"permitted": "CAP_CHOWN"}, "process.capabilities.permitted"),
        ({"sideways": []}, "process.capabilities.sideways"),
    ],
)
def test_parse_rejects_bad_names_with_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        caps.parse_capabilities(config, last=40)
    assert info.value.field == field
    assert field in str(info.value)


def test_parse_rejects_non_object() -> None:
    with pytest.raises(ConfigError, match=r"process\.capabilities: must be an object"):
        caps.parse_capabilities(["CAP_CHOWN"], last=40)  # type: ignore[arg-type]


def test_caps_above_kernel_last_are_ignored_with_warning() -> None:
    warnings: list[str] = []
    sets = caps.prepare_capabilities(
        {"bounding": ["CAP_CHOWN", "CAP_BPF", "CAP_PERFMON"], "effective": ["CAP_BPF"]},
        last=37,
        warn=warnings.append,
    )
    assert sets is not None
    assert sets.bounding == 1 and sets.effective == 0
    assert sets.ignored == ["CAP_PERFMON", "CAP_BPF"]
    assert warnings == ["ignoring capabilities unknown to this kernel: CAP_PERFMON, CAP_BPF"]


def test_validate_does_not_need_the_kernel() -> None:
    caps.validate_capabilities({"bounding": ["CAP_CHECKPOINT_RESTORE"]})
    with pytest.raises(ConfigError):
        caps.validate_capabilities({"bounding": ["CAP_XYZ"]})


# --- order of the kernel calls ------------------------------------------------


def test_two_phases_in_runc_order() -> None:
    sys = RecordingSys()
    sets = caps.CapSets(
        bounding=mask(*DOCKER_DEFAULT),
        effective=mask("CAP_CHOWN", "CAP_KILL"),
        permitted=mask("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"),
        inheritable=mask("CAP_NET_BIND_SERVICE"),
        ambient=mask("CAP_NET_BIND_SERVICE"),
        last=40,
    )
    caps.apply_before_setuid(sets, sys=sys)
    sys.calls.append(("setuid",))  # what the init process does between the phases
    caps.apply_after_setuid(sets, sys=sys)

    kept = {caps.cap_number(n) for n in DOCKER_DEFAULT}
    assert drops(sys.calls) == [n for n in range(41) if n not in kept]
    ndrops = len(drops(sys.calls))
    assert sys.calls[0] == ("capget",)  # CAP_SETPCAP is checked first
    assert sys.calls[1 + ndrops :] == [
        ("prctl", libc.PR_SET_KEEPCAPS, 1, 0),
        ("setuid",),
        ("prctl", libc.PR_SET_KEEPCAPS, 0, 0),
        ("capset", sets.effective, sets.permitted, sets.inheritable),
        ("prctl", libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL, 0),
        ("prctl", libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_RAISE, 10),
    ]


def test_apply_capabilities_wrapper_parses_once() -> None:
    sys = RecordingSys()
    warnings: list[str] = []
    config = {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}
    sets = caps.apply_capabilities(config, before_setuid=True, sys=sys, warn=warnings.append)
    assert isinstance(sets, caps.CapSets)
    again = caps.apply_capabilities(sets, before_setuid=False, sys=sys, warn=warnings.append)
    assert again is sets
    assert ("capset", 1 << 5, 1 << 5, 0) in sys.calls
    assert 5 not in drops(sys.calls) and 0 in drops(sys.calls)
    assert warnings == []


def test_no_capabilities_in_config_leaves_sets_alone() -> None:
    sys = RecordingSys()
    sets = caps.apply_capabilities(None, before_setuid=True, sys=sys)
    caps.apply_capabilities(sets, before_setuid=False, sys=sys)
    assert sys.calls == [
        ("prctl", libc.PR_SET_KEEPCAPS, 1, 0),
        ("prctl", libc.PR_SET_KEEPCAPS, 0, 0),
    ]


def test_empty_bounding_drops_everything_up_to_last_cap() -> None:
    sys = RecordingSys()
    caps.apply_before_setuid(caps.CapSets(last=37), sys=sys)
    assert drops(sys.calls) == list(range(38))


def test_bounding_without_setpcap_is_skipped_with_warning() -> None:
    sys = RecordingSys(effective=ALL_BITS & ~(1 << caps.CAP_SETPCAP))
    warnings: list[str] = []
    caps.apply_before_setuid(caps.CapSets(last=40), sys=sys, warn=warnings.append)
    assert drops(sys.calls) == []
    assert "CAP_SETPCAP" in warnings[0]
    assert sys.calls[-1] == ("prctl", libc.PR_SET_KEEPCAPS, 1, 0)


def test_bounding_drop_einval_ignored_eperm_fails() -> None:
    sys = RecordingSys()
    sys.fail[("prctl", libc.PR_CAPBSET_DROP, 3)] = errno.EINVAL
    caps.apply_before_setuid(caps.CapSets(last=5), sys=sys)
    assert drops(sys.calls) == [0, 1, 2, 3, 4, 5]

    sys = RecordingSys()
    sys.fail[("prctl", libc.PR_CAPBSET_DROP, 2)] = errno.EPERM
    with pytest.raises(SystemFailure, match="drop CAP_DAC_READ_SEARCH from the bounding set"):
        caps.apply_before_setuid(caps.CapSets(last=5), sys=sys)
    # stopped at the failure: keep-caps is not set after a failed drop
    assert ("prctl", libc.PR_SET_KEEPCAPS, 1, 0) not in sys.calls


def test_capset_failure_names_the_masks() -> None:
    sys = RecordingSys()
    sys.fail[("capset",)] = errno.EPERM
    sets = caps.CapSets(effective=0b11, permitted=0b01, last=40)
    with pytest.raises(SystemFailure) as info:
        caps.apply_after_setuid(sets, sys=sys)
    msg = str(info.value)
    assert "set capabilities" in msg and "effective 0x3" in msg
    assert "not a subset of permitted" in msg and "operation not permitted" in msg


def test_ambient_raise_failure_is_a_warning() -> None:
    sys = RecordingSys()
    sys.fail[("prctl", libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_RAISE, 5)] = errno.EPERM
    warnings: list[str] = []
    sets = caps.CapSets(ambient=mask("CAP_KILL", "CAP_NET_BIND_SERVICE"), last=40)
    caps.apply_after_setuid(sets, sys=sys, warn=warnings.append)
    raised = [c[3] for c in sys.calls if c[:3] == ("prctl", 47, 2)]
    assert raised == [5, 10]
    assert warnings == ["cannot raise ambient capability CAP_KILL: Operation not permitted"]


def test_kernel_without_ambient_support() -> None:
    sys = RecordingSys()
    sys.fail[("prctl", libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)] = errno.EINVAL
    warnings: list[str] = []
    caps.apply_after_setuid(caps.CapSets(ambient=1, last=40), sys=sys, warn=warnings.append)
    assert warnings == ["ambient capabilities are not supported by this kernel"]
    assert not [c for c in sys.calls if c[:3] == ("prctl", 47, 2)]


# --- for real, in a forked child ------------------------------------------------


def _status_masks() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                out[key] = int(value.strip(), 16)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_real_kernel_in_child_across_setuid() -> None:
    config = {
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"],
        "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "inheritable": ["CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"],
    }
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            sets = caps.apply_capabilities(config, before_setuid=True)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            caps.apply_capabilities(sets, before_setuid=False)
            m = _status_masks()
            os.write(w, " ".join(f"{k}={v}" for k, v in sorted(m.items())).encode())
            code = 0
        except BaseException as e:
            os.write(w, f"error {e!r}".encode())
        finally:
            os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            report = f.read().decode()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    got = dict(kv.split("=") for kv in report.split())
    assert int(got["CapBnd"]) == mask(*config["bounding"]) & ((1 << (caps.last_cap() + 1)) - 1)
    assert int(got["CapEff"]) == mask("CAP_KILL", "CAP_NET_BIND_SERVICE")
    assert int(got["CapPrm"]) == mask("CAP_KILL", "CAP_NET_BIND_SERVICE")
    assert int(got["CapInh"]) == mask("CAP_NET_BIND_SERVICE")
    assert int(got["CapAmb"]) == mask("CAP_NET_BIND_SERVICE")
