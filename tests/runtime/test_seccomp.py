"""linux.seccomp (config-linux.md "Seccomp").

busybox makes the syscalls directly: ``mkdir`` calls mkdir(2) and ``chmod``
calls chmod(2) on x86_64, so the filters name both the old and the *at
variants.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import select
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Bundle, Runtime
from tests.runtime.features_helpers import run_fails, run_sh, skip_if_runc

NATIVE_ARCH = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}

MKDIR = ["mkdir", "mkdirat"]

# what busybox sh and its applets here need (and a runtime's last steps
# before and through execve), for filters whose default is to refuse
BUSYBOX_SYSCALLS = [
    "access", "arch_prctl", "brk", "capget", "capset", "chdir", "clock_gettime",
    "clock_nanosleep", "clone", "clone3", "close", "close_range", "dup", "dup2", "dup3",
    "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_wait", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fchdir", "fcntl", "fork", "fstat",
    "fstatfs", "futex", "getcwd", "getdents64", "getegid", "geteuid", "getgid", "getgroups",
    "getpgrp", "getpid", "getppid", "getrandom", "getrlimit", "gettid", "getuid", "ioctl",
    "lseek", "lstat", "madvise", "mmap", "mprotect", "mremap", "munmap", "nanosleep",
    "newfstatat", "open", "openat", "pipe", "pipe2", "poll", "ppoll", "prctl", "pread64",
    "prlimit64", "pselect6", "read", "readlink", "readlinkat", "rseq", "rt_sigaction",
    "rt_sigprocmask", "rt_sigreturn", "sched_getaffinity", "sched_yield", "select",
    "set_robust_list", "set_tid_address", "setgid", "setgroups", "setpgid", "setresgid",
    "setresuid", "setsid", "setuid", "sigaltstack", "stat", "statfs", "statx", "sysinfo",
    "tgkill", "tkill", "umask", "uname", "wait4", "waitid", "write", "writev",
]  # fmt: skip


def native_arches() -> list[str]:
    arches = NATIVE_ARCH.get(platform.machine())
    if not arches:
        pytest.skip(f"no seccomp architecture list for {platform.machine()}")
    return arches


def with_seccomp(bundle: Bundle, default: str, syscalls: list[dict[str, Any]], **kw: Any) -> None:
    bundle.config["linux"]["seccomp"] = {
        "defaultAction": default,
        "architectures": native_arches(),
        "syscalls": syscalls,
        **kw,
    }


def test_blocked_mkdir(runtime: Runtime, bundle: Bundle) -> None:
    with_seccomp(bundle, "SCMP_ACT_ALLOW", [{"names": MKDIR, "action": "SCMP_ACT_ERRNO"}])
    out = run_sh(runtime, bundle, "mkdir /x 2>&1; echo rc=$?; touch /y && echo touched")
    assert "Operation not permitted" in out
    assert "rc=1" in out and "touched" in out
    assert not (bundle.rootfs / "x").exists()


def test_custom_errno(runtime: Runtime, bundle: Bundle) -> None:
    with_seccomp(
        bundle,
        "SCMP_ACT_ALLOW",
        [{"names": MKDIR, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSPC}],
    )
    out = run_sh(runtime, bundle, "mkdir /x 2>&1; echo rc=$?")
    assert os.strerror(errno.ENOSPC) in out
    assert "rc=1" in out


def test_argument_conditions(runtime: Runtime, bundle: Bundle) -> None:
    """chmod to 0700 is refused, any other mode is allowed."""
    with_seccomp(
        bundle,
        "SCMP_ACT_ALLOW",
        [
            {
                "names": ["chmod"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 1, "value": 0o700, "op": "SCMP_CMP_EQ"}],
            },
            {
                "names": ["fchmodat"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 2, "value": 0o700, "op": "SCMP_CMP_EQ"}],
            },
        ],
    )
    out = run_sh(
        runtime,
        bundle,
        "touch /tmp/f; chmod 700 /tmp/f 2>/dev/null; echo a=$?; "
        "chmod 755 /tmp/f; echo b=$?; stat -c %a /tmp/f",
    )
    assert out.split() == ["a=1", "b=0", "755"]


def test_masked_argument_condition(runtime: Runtime, bundle: Bundle) -> None:
    """SCMP_CMP_MASKED_EQ: refuse any mode with the setuid bit."""
    rule = {"index": 1, "value": 0o4000, "valueTwo": 0o4000, "op": "SCMP_CMP_MASKED_EQ"}
    with_seccomp(
        bundle,
        "SCMP_ACT_ALLOW",
        [
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "args": [rule]},
            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "args": [{**rule, "index": 2}]},
        ],
    )
    out = run_sh(
        runtime,
        bundle,
        "touch /tmp/f; chmod 4755 /tmp/f 2>/dev/null; echo a=$?; chmod 0750 /tmp/f; echo b=$?",
    )
    assert out.split() == ["a=1", "b=0"]


def test_default_errno_with_allow_list(runtime: Runtime, bundle: Bundle) -> None:
    with_seccomp(
        bundle, "SCMP_ACT_ERRNO", [{"names": BUSYBOX_SYSCALLS, "action": "SCMP_ACT_ALLOW"}]
    )
    out = run_sh(runtime, bundle, "echo hello; mkdir /x 2>&1; echo rc=$?")
    assert out.splitlines()[0] == "hello"
    assert "Operation not permitted" in out and "rc=1" in out


def test_default_errno_ret(runtime: Runtime, bundle: Bundle) -> None:
    with_seccomp(
        bundle,
        "SCMP_ACT_ERRNO",
        [{"names": BUSYBOX_SYSCALLS, "action": "SCMP_ACT_ALLOW"}],
        defaultErrnoRet=errno.EROFS,
    )
    out = run_sh(runtime, bundle, "mkdir /x 2>&1; echo rc=$?")
    assert os.strerror(errno.EROFS) in out and "rc=1" in out


@pytest.mark.parametrize("action", ["SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS"])
def test_kill_action(runtime: Runtime, bundle: Bundle, action: str) -> None:
    with_seccomp(bundle, "SCMP_ACT_ALLOW", [{"names": MKDIR, "action": action}])
    bundle.set_args("mkdir", "/x")
    p = runtime.run(bundle, check=False)
    # the container's init dies of SIGSYS: 128 + 31
    assert p.returncode == 159, p.stderr
    assert not (bundle.rootfs / "x").exists()


def test_kill_action_in_child(runtime: Runtime, bundle: Bundle) -> None:
    with_seccomp(bundle, "SCMP_ACT_ALLOW", [{"names": MKDIR, "action": "SCMP_ACT_KILL"}])
    out = run_sh(runtime, bundle, "mkdir /x; echo rc=$?")
    assert out.strip() == "rc=159"


def test_filter_without_architectures_is_native(runtime: Runtime, bundle: Bundle) -> None:
    bundle.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": MKDIR, "action": "SCMP_ACT_ERRNO"}],
    }
    out = run_sh(runtime, bundle, "mkdir /x 2>&1; echo rc=$?")
    assert "Operation not permitted" in out and "rc=1" in out


def test_unknown_architecture_is_an_error(runtime: Runtime, bundle: Bundle) -> None:
    with_seccomp(bundle, "SCMP_ACT_ALLOW", [{"names": MKDIR, "action": "SCMP_ACT_ERRNO"}])
    bundle.config["linux"]["seccomp"]["architectures"] = ["SCMP_ARCH_NOPE"]
    run_fails(runtime, bundle)


def test_unknown_action_is_an_error(runtime: Runtime, bundle: Bundle) -> None:
    with_seccomp(bundle, "SCMP_ACT_ALLOW", [{"names": MKDIR, "action": "SCMP_ACT_NOPE"}])
    run_fails(runtime, bundle)


# <linux/seccomp.h>: struct seccomp_notif / seccomp_notif_resp and their ioctls
_NOTIF_FMT = "=QIIiIQ6Q"
_RESP_FMT = "=QqiI"
_IOC_RECV = 0xC0000000 | (struct.calcsize(_NOTIF_FMT) << 16) | (ord("!") << 8) | 0
_IOC_SEND = 0xC0000000 | (struct.calcsize(_RESP_FMT) << 16) | (ord("!") << 8) | 1


class NotifyAgent(threading.Thread):
    """A seccomp agent at listenerPath: takes the fd, answers every call with EXDEV."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(1)
        self.srv.settimeout(20)
        self.state: dict[str, Any] = {}
        self.answered = 0
        self.error = ""

    def run(self) -> None:
        fd = -1
        try:
            conn, _ = self.srv.accept()
            with conn:
                msg, fds, _, _ = socket.recv_fds(conn, 65536, 4)
                while chunk := conn.recv(65536):
                    msg += chunk
            self.state = json.loads(msg)
            fd = fds[0]
            while select.select([fd], [], [], 10)[0]:
                buf = bytearray(struct.calcsize(_NOTIF_FMT))
                try:
                    fcntl.ioctl(fd, _IOC_RECV, buf)
                except OSError:
                    return  # the filtered process is gone
                notif_id = struct.unpack(_NOTIF_FMT, buf)[0]
                resp = struct.pack(_RESP_FMT, notif_id, 0, -errno.EXDEV, 0)
                try:
                    fcntl.ioctl(fd, _IOC_SEND, resp)
                    self.answered += 1
                except OSError:
                    return
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            if fd >= 0:
                os.close(fd)
            self.srv.close()


@pytest.mark.parametrize("nnp", [True, False])
def test_notify_goes_to_the_listener(
    runtime: Runtime, bundle: Bundle, tmp_path: Path, nnp: bool
) -> None:
    skip_if_runc(runtime, "1.1.5 never returns from a foreground run with SCMP_ACT_NOTIFY here")
    listener = tmp_path / "agent.sock"
    agent = NotifyAgent(listener)
    agent.start()
    bundle.config["process"]["noNewPrivileges"] = nnp
    with_seccomp(
        bundle,
        "SCMP_ACT_ALLOW",
        [{"names": MKDIR, "action": "SCMP_ACT_NOTIFY"}],
        listenerPath=str(listener),
        listenerMetadata="hello-agent",
    )
    try:
        out = run_sh(runtime, bundle, "mkdir /tmp/x 2>&1; echo rc=$?")
    finally:
        agent.join(30)
    assert not agent.error, agent.error
    assert "cross-device" in out.lower() and "rc=1" in out, out
    assert agent.answered >= 1
    assert agent.state["fds"] == ["seccompFd"]
    assert agent.state["metadata"] == "hello-agent"
    assert agent.state["state"]["bundle"] == str(bundle.path)
