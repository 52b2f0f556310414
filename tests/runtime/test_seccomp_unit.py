"""Seccomp filters built from linux.seccomp, checked by the behaviour of a forked child."""

from __future__ import annotations

import errno
import functools
import json
import os
import resource
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dockyard.errors import ConfigError, SystemFailure, Unsupported
from dockyard.runtime import libc, seccomp
from dockyard.spec import runtime as spec

pytestmark = pytest.mark.skipif(not seccomp.available(), reason="libseccomp is not installed")


def allow_all_but(*rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": list(rules), **extra}


def _reap(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def _read_all(fd: int, timeout: float = 10.0) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def run_filtered(
    cfg: dict[str, Any],
    body: Callable[[], str],
    *,
    no_new_privs: bool = True,
    before_load: Callable[[], None] | None = None,
) -> tuple[int, str]:
    """Fork; the child loads the filter built from ``cfg`` and runs ``body``.

    Returns the child's wait status and what ``body`` returned (or the error).
    """
    filt = seccomp.build_filter(cfg)
    r, w = os.pipe()
    try:
        pid = os.fork()
    except BaseException:
        os.close(r)
        os.close(w)
        filt.release()
        raise
    if pid == 0:
        code = 0
        try:
            os.close(r)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGSYS would dump core
            if before_load:
                before_load()
            if no_new_privs:
                libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
            filt.load()
            out = body()
        except BaseException as e:
            out = f"error {type(e).__name__}: {e}"
            code = 1
        try:
            os.write(w, out.encode())
        finally:
            os._exit(code)
    os.close(w)
    filt.release()
    try:
        report = _read_all(r).decode()
    finally:
        os.close(r)
        status = _reap(pid)
    return status, report


def errno_of(fn: Callable[[], object]) -> str:
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return "ok"


# --- behaviour of a loaded filter -----------------------------------------------


def test_denied_syscall_returns_eperm(tmp_path: Path) -> None:
    cfg = allow_all_but({"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"})
    status, out = run_filtered(
        cfg,
        lambda: f"{errno_of(lambda: os.mkdir(tmp_path / 'd'))} {errno_of(os.getcwd)}",
    )
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out == "EPERM ok"
    assert not (tmp_path / "d").exists()


def test_custom_errno_ret(tmp_path: Path) -> None:
    cfg = allow_all_but(
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}
    )
    status, out = run_filtered(cfg, lambda: errno_of(lambda: os.mkdir(tmp_path / "d")))
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out == "ENOSYS"


def test_argument_condition_blocks_only_matching_calls() -> None:
    cfg = allow_all_but(
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 0, "value": socket.AF_INET, "op": "SCMP_CMP_EQ"}],
        }
    )

    def body() -> str:
        inet = errno_of(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
        unix = errno_of(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close())
        return f"{inet} {unix}"

    status, out = run_filtered(cfg, body)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out == "EPERM ok"


def test_two_conditions_on_one_argument_become_separate_rules() -> None:
    # As runc: libseccomp cannot AND two comparisons of one argument, so each
    # becomes its own rule (the conditions are ORed).
    cfg = allow_all_but(
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EAFNOSUPPORT,
            "args": [
                {"index": 0, "value": socket.AF_INET, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": socket.AF_INET6, "op": "SCMP_CMP_EQ"},
            ],
        }
    )

    def body() -> str:
        results = []
        for family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            results.append(errno_of(functools.partial(socket.socket, family, socket.SOCK_DGRAM)))
        return " ".join(results)

    status, out = run_filtered(cfg, body)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out == "EAFNOSUPPORT EAFNOSUPPORT ok"


def test_conditions_on_different_arguments_are_anded() -> None:
    cfg = allow_all_but(
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ERRNO",
            "args": [
                {"index": 0, "value": socket.AF_INET, "op": "SCMP_CMP_EQ"},
                # SOCK_CLOEXEC may be or-ed into the type: compare the low bits
                {
                    "index": 1,
                    "value": 0xF,
                    "valueTwo": socket.SOCK_DGRAM,
                    "op": "SCMP_CMP_MASKED_EQ",
                },
            ],
        }
    )

    def body() -> str:
        dgram = errno_of(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
        stream = errno_of(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
        return f"{dgram} {stream}"

    status, out = run_filtered(cfg, body)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out == "EPERM ok"


@pytest.mark.parametrize(
    "action", ["SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD"]
)
def test_kill_action_kills_with_sigsys(action: str) -> None:
    cfg = allow_all_but({"names": ["getppid"], "action": action})
    status, out = run_filtered(cfg, lambda: str(os.getppid()))
    assert os.WIFSIGNALED(status), f"child exited {status:#x}: {out}"
    assert os.WTERMSIG(status) == signal.SIGSYS
    assert out == ""


# What the child needs between loading the filter and exiting.
CHILD_NEEDS = [
    "read",
    "write",
    "close",
    "exit",
    "exit_group",
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "madvise",
    "mprotect",
    "futex",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "getpid",
    "gettid",
    "fstat",
    "newfstatat",
    "lseek",
    "getrandom",
    "clock_gettime",
]


def test_default_deny_with_default_errno_ret(tmp_path: Path) -> None:
    cfg = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EROFS,
        "syscalls": [{"names": CHILD_NEEDS, "action": "SCMP_ACT_ALLOW"}],
    }
    status, out = run_filtered(
        cfg,
        lambda: f"{errno_of(lambda: os.mkdir(tmp_path / 'd'))} {errno_of(os.getcwd)}",
    )
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out == "EROFS EROFS"


def test_unknown_syscall_names_are_skipped(tmp_path: Path) -> None:
    cfg = allow_all_but(
        {"names": ["no_such_syscall_xyz", "mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}
    )
    with seccomp.build_filter(cfg) as filt:
        assert filt.skipped == ["no_such_syscall_xyz"]
    status, out = run_filtered(cfg, lambda: errno_of(lambda: os.mkdir(tmp_path / "d")))
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out == "EPERM"


def test_rule_with_the_default_action_is_dropped() -> None:
    cfg = allow_all_but({"names": ["getpid"], "action": "SCMP_ACT_ALLOW"})
    with seccomp.build_filter(cfg) as filt:
        assert "getpid" not in filt.pfc()


def test_load_without_no_new_privs_needs_cap_sys_admin() -> None:
    def drop_sys_admin() -> None:
        eff, perm, inh = libc.capget()
        libc.capset(eff & ~(1 << 21), perm & ~(1 << 21), inh)

    cfg = allow_all_but({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"})
    status, out = run_filtered(
        cfg, lambda: "loaded", no_new_privs=False, before_load=drop_sys_admin
    )
    assert os.waitstatus_to_exitcode(status) == 1
    assert "SystemFailure: load seccomp filter: permission denied" in out
    assert "noNewPrivileges" in out


def test_flags_load() -> None:
    flags = [f for f in seccomp.supported()["supportedFlags"] if f != "SECCOMP_FILTER_FLAG_LOG"] + [
        "SECCOMP_FILTER_FLAG_LOG"
    ]
    cfg = allow_all_but({"names": ["getcwd"], "action": "SCMP_ACT_ERRNO"}, flags=flags)
    status, out = run_filtered(cfg, lambda: errno_of(os.getcwd))
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out == "EPERM"


def test_known_but_unsupported_flag() -> None:
    feats = seccomp.supported()
    missing = [f for f in feats["knownFlags"] if f not in feats["supportedFlags"]]
    if not missing:
        pytest.skip("every known flag is supported here")
    with pytest.raises(Unsupported, match=rf"flags\[0\]: seccomp flag {missing[0]}"):
        seccomp.build_filter(allow_all_but(flags=[missing[0]]))


# --- the filter as built (pseudo filter code) --------------------------------------


def test_architectures_and_errno_in_filter_code() -> None:
    cfg = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.ENOSYS,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}],
    }
    with seccomp.build_filter(cfg) as filt:
        pfc = filt.pfc()
    assert "action ERRNO(38);" in pfc
    assert "filter for arch x86 " in pfc or os.uname().machine != "x86_64"
    assert "filter for arch x32 " in pfc or os.uname().machine != "x86_64"
    assert 'syscall "read"' in pfc


def test_arch_unknown_to_libseccomp_is_a_warning() -> None:
    if "SCMP_ARCH_LOONGARCH64" in seccomp.supported()["archs"]:
        pytest.skip("this libseccomp knows every spec architecture")
    warnings: list[str] = []
    cfg = allow_all_but(architectures=["SCMP_ARCH_LOONGARCH64"])
    with seccomp.build_filter(cfg, warn=warnings.append):
        pass
    assert len(warnings) == 1 and "SCMP_ARCH_LOONGARCH64" in warnings[0]


def test_masked_eq_uses_value_as_mask() -> None:
    cfg = allow_all_but(
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 0, "value": 0x7E020000, "op": "SCMP_CMP_MASKED_EQ"}],
        }
    )
    with seccomp.build_filter(cfg) as filt:
        assert "& 0x7e020000 == 0" in filt.pfc()


def test_release_twice_and_use_after_release() -> None:
    filt = seccomp.build_filter(allow_all_but())
    filt.release()
    filt.release()
    with pytest.raises(SystemFailure, match="released"):
        filt.load()


# --- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "field", "words"),
    [
        ([], "linux.seccomp", "must be an object"),
        ({}, "linux.seccomp.defaultAction", "is required"),
        ({"defaultAction": "SCMP_ACT_BOGUS"}, "linux.seccomp.defaultAction", "unknown action"),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1},
            "linux.seccomp.defaultErrnoRet",
            "not valid with action SCMP_ACT_ALLOW",
        ),
        (
            {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1},
            "linux.seccomp.defaultErrnoRet",
            "out of range",
        ),
        (
            {"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/x"},
            "linux.seccomp.defaultAction",
            "cannot be the default",
        ),
        (
            allow_all_but(architectures=["SCMP_ARCH_VAX"]),
            "linux.seccomp.architectures[0]",
            "unknown architecture",
        ),
        (
            allow_all_but(flags=["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_NOPE"]),
            "linux.seccomp.flags[1]",
            "unknown seccomp flag",
        ),
        (
            allow_all_but({"names": ["mkdir"], "action": "SCMP_ACT_DENY"}),
            "linux.seccomp.syscalls[0].action",
            "unknown action 'SCMP_ACT_DENY'",
        ),
        (
            allow_all_but({"names": ["mkdir"]}),
            "linux.seccomp.syscalls[0].action",
            "is required",
        ),
        (
            allow_all_but({"names": [], "action": "SCMP_ACT_ERRNO"}),
            "linux.seccomp.syscalls[0].names",
            "at least one",
        ),
        (
            allow_all_but({"names": ["mkdir", 3], "action": "SCMP_ACT_ERRNO"}),
            "linux.seccomp.syscalls[0].names[1]",
            "non-empty string",
        ),
        (
            allow_all_but({"names": ["mkdir"], "action": "SCMP_ACT_KILL", "errnoRet": 1}),
            "linux.seccomp.syscalls[0].errnoRet",
            "not valid with action SCMP_ACT_KILL",
        ),
        (
            allow_all_but(
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
                {
                    "names": ["socket"],
                    "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_SIMILAR"}],
                },
            ),
            "linux.seccomp.syscalls[1].args[0].op",
            "unknown operator 'SCMP_CMP_SIMILAR'",
        ),
        (
            allow_all_but(
                {
                    "names": ["socket"],
                    "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 6, "value": 2, "op": "SCMP_CMP_EQ"}],
                }
            ),
            "linux.seccomp.syscalls[0].args[0].index",
            "out of range 0..5",
        ),
        (
            allow_all_but(
                {
                    "names": ["socket"],
                    "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 0, "value": 1 << 64, "op": "SCMP_CMP_EQ"}],
                }
            ),
            "linux.seccomp.syscalls[0].args[0].value",
            "out of range",
        ),
        (
            allow_all_but(
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0}]}
            ),
            "linux.seccomp.syscalls[0].args[0].value",
            "is required",
        ),
        (
            allow_all_but({"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}),
            "linux.seccomp.listenerPath",
            "required when SCMP_ACT_NOTIFY",
        ),
        (
            allow_all_but(
                {"names": ["write"], "action": "SCMP_ACT_NOTIFY"}, listenerPath="/run/agent.sock"
            ),
            "linux.seccomp.syscalls[0].names",
            "cannot be used for write",
        ),
        (
            allow_all_but(listenerMetadata="x"),
            "linux.seccomp.listenerMetadata",
            "without listenerPath",
        ),
    ],
)
def test_invalid_config_names_the_field(cfg: Any, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        seccomp.build_filter(cfg)
    assert info.value.field == field
    assert words in str(info.value)
    assert str(info.value).startswith(f"config.json: {field}: ")


# --- features -----------------------------------------------------------------------


def test_supported_features() -> None:
    feats = seccomp.supported()
    assert feats["enabled"] is True
    assert set(feats["actions"]) == set(seccomp.ACTIONS)
    assert "SCMP_CMP_MASKED_EQ" in feats["operators"] and len(feats["operators"]) == 7
    native = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}
    if os.uname().machine in native:
        assert native[os.uname().machine] in feats["archs"]
    assert set(feats["supportedFlags"]) <= set(feats["knownFlags"])
    assert "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" in feats["knownFlags"]
    json.dumps(feats)


def test_names_match_the_spec_tables() -> None:
    assert set(seccomp.ACTIONS) == set(spec.SECCOMP_ACTIONS)
    assert set(seccomp.OPERATORS) == set(spec.SECCOMP_OPERATORS)
    assert set(seccomp.FLAGS) == set(spec.SECCOMP_FLAGS)
    assert set(seccomp.ARCHITECTURES) == set(spec.SECCOMP_ARCHES)


def test_libseccomp_version() -> None:
    version = seccomp.libseccomp_version()
    assert version is not None and version >= (2, 0, 0)
    assert seccomp.api_level() >= 1


# --- notify: the fd goes to the agent with the container process state ----------------

# <linux/seccomp.h>: _IOWR('!', 0, struct seccomp_notif) and _IOWR('!', 1, ..._resp)
_NOTIF_FMT = "=QIIiIQ6Q"  # id, pid, flags, data.nr, data.arch, data.ip, data.args
_RESP_FMT = "=QqiI"  # id, val, error, flags
_IOC_RECV = 0xC0000000 | (struct.calcsize(_NOTIF_FMT) << 16) | (ord("!") << 8) | 0
_IOC_SEND = 0xC0000000 | (struct.calcsize(_RESP_FMT) << 16) | (ord("!") << 8) | 1


def test_notify_fd_is_sent_to_the_listener_and_answers(tmp_path: Path) -> None:
    if seccomp.api_level() < 5:
        pytest.skip("seccomp notify needs libseccomp API level 5")
    import fcntl

    listener = str(tmp_path / "agent.sock")
    cfg = allow_all_but(
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"},
        listenerPath=listener,
        listenerMetadata="MKNOD=/dev/null",
    )
    state = {
        "ociVersion": "1.2.0",
        "id": "web",
        "status": "creating",
        "pid": 0,
        "bundle": "/b",
    }
    filt = seccomp.build_filter(cfg)
    assert filt.uses_notify and filt.listener_path == listener
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(listener)
    srv.listen(1)
    srv.settimeout(10)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            srv.close()
            libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
            fd = filt.load()
            assert fd is not None and fd >= 0
            # In the runtime the init hands the fd to its parent, which sends
            # it; here the child does both.
            seccomp.send_listener_fd(listener, fd, {**state, "pid": os.getpid()}, "MKNOD=/dev/null")
            os.close(fd)
            out = errno_of(lambda: os.mkdir(tmp_path / "d"))
        except BaseException as e:
            out = f"error {type(e).__name__}: {e}"
            code = 1
        try:
            os.write(w, out.encode())
        finally:
            os._exit(code)
    os.close(w)
    filt.release()
    agent_fd = -1
    try:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(10)
            msg, fds, _, _ = socket.recv_fds(conn, 65536, 4)
            while chunk := conn.recv(65536):
                msg += chunk
        assert len(fds) == 1
        agent_fd = fds[0]
        for extra in fds[1:]:
            os.close(extra)
        process_state = json.loads(msg)
        assert process_state["fds"] == ["seccompFd"]
        assert process_state["pid"] == pid
        assert process_state["metadata"] == "MKNOD=/dev/null"
        assert process_state["ociVersion"] == "1.2.0"
        assert process_state["state"]["id"] == "web"
        assert "seccomp notify" in os.readlink(f"/proc/self/fd/{agent_fd}")

        # Answer the child's mkdir with EXDEV, as an agent would.
        ready, _, _ = select.select([agent_fd], [], [], 10)
        assert ready, "no seccomp notification arrived"
        buf = bytearray(struct.calcsize(_NOTIF_FMT))
        fcntl.ioctl(agent_fd, _IOC_RECV, buf)
        notif_id, notif_pid, _, nr, _, _, *_args = struct.unpack(_NOTIF_FMT, buf)
        assert notif_pid == pid
        assert nr in (83, 258, 34)  # mkdir/mkdirat on x86_64, mkdirat on aarch64
        fcntl.ioctl(agent_fd, _IOC_SEND, struct.pack(_RESP_FMT, notif_id, 0, -errno.EXDEV, 0))
        report = _read_all(r).decode()
    finally:
        if agent_fd >= 0:
            os.close(agent_fd)
        os.close(r)
        srv.close()
        status = _reap(pid)
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert report == "EXDEV"


def test_send_listener_fd_failure_names_the_socket(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(SystemFailure, match=r"send seccomp notify fd to .*nosock"):
            seccomp.send_listener_fd(str(tmp_path / "nosock"), r, {"pid": 1})
    finally:
        os.close(r)
        os.close(w)
