"""The last steps before the container's program runs, shared by init and exec.

Order (as runc's finalizeNamespace and the spec require): rlimits and the
keyring while still privileged; personality, scheduler, io priority; close
every fd the runtime holds; change directory (after closing, so no fd can be
a way out of the rootfs: CVE-2024-21626) and find the program; the seccomp
filter here only when it must be loaded with CAP_SYS_ADMIN (no
noNewPrivileges); bounding set, groups, gid, uid, capabilities; no_new_privs;
then, as late as possible, the seccomp filter and execve.
"""

from __future__ import annotations

import os
import resource

from dockyard.errors import ConfigError, SystemFailure
from dockyard.runtime import caps as capmod
from dockyard.runtime import libc
from dockyard.spec.runtime import RLIMITS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dockyard.runtime.nsexec import Channel


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def env_dict(env: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for kv in env:
        k, _, v = kv.partition("=")
        out[k] = v
    return out


def lookup_home(uid: int) -> str:
    """HOME from /etc/passwd of the (already entered) root, as runc sets it."""
    try:
        with open("/etc/passwd") as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) >= 6 and parts[2] == str(uid):
                    return parts[5] or "/"
    except OSError:
        pass
    return "/"


def find_executable(arg0: str, env: dict[str, str]) -> str:
    """Resolve args[0] against the container's PATH (inside the new root)."""
    if "/" in arg0:
        if not os.path.exists(arg0):
            raise SystemFailure(f'exec: "{arg0}": no such file or directory')
        return arg0
    for d in (env.get("PATH") or DEFAULT_PATH).split(":"):
        p = os.path.join(d or ".", arg0)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise SystemFailure(f'exec: "{arg0}": executable file not found in $PATH')


def set_rlimits(rlimits: list[dict[str, Any]]) -> None:
    for i, r in enumerate(rlimits):
        num = RLIMITS.get(r["type"])
        if num is None:
            raise ConfigError(f"process.rlimits[{i}].type", f"unknown rlimit {r['type']!r}")
        soft, hard = int(r["soft"]), int(r["hard"])
        inf = resource.RLIM_INFINITY
        try:
            resource.setrlimit(num, (inf if soft < 0 else soft, inf if hard < 0 else hard))
        except (ValueError, OSError) as e:
            cur = resource.getrlimit(num)
            raise SystemFailure(
                f"set {r['type']} to soft {soft} hard {hard}: {e} "
                f"(current hard limit {cur[1]}; raising it needs CAP_SYS_RESOURCE)"
            ) from None


def write_oom_score_adj(pid: int, value: int) -> None:
    """Written by the runtime on the host, as runc does: the init is not dumpable,
    so in a user namespace it could not open its own /proc files."""
    path = f"/proc/{pid}/oom_score_adj"
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as e:
        with open(path) as f:
            cur = int(f.read().strip())
        hint = "; lowering it needs CAP_SYS_RESOURCE" if value < cur else ""
        raise SystemFailure(
            f"set oom_score_adj to {value}: {os.strerror(e.errno or 0).lower()} "
            f"(current value {cur}{hint})"
        ) from None


def close_fds_except(keep: set[int]) -> None:
    """Close every fd not in ``keep``: no runtime fd may reach the container.

    By ranges with close_range(2), not by listing /proc/self/fd: after
    pivot_root, /proc is whatever the container's rootfs and mounts made it.
    """
    low = 0
    for fd in sorted(keep):
        if fd > low:
            _close_range(low, fd - 1)
        low = max(low, fd + 1)
    _close_range(low, 0xFFFFFFFF)


def _close_range(first: int, last: int) -> None:
    try:
        libc.close_range(first, last)
    except OSError:  # kernels before 5.9: the slow way
        os.closerange(first, min(last + 1, os.sysconf("SC_OPEN_MAX")))


def change_dir(cwd: str) -> None:
    """chdir into the container's cwd and make sure it is inside its root."""
    try:
        os.chdir(cwd)
    except OSError as e:
        raise SystemFailure(f"chdir to cwd {cwd!r}: {os.strerror(e.errno or 0).lower()}") from None
    try:
        here = os.getcwd()
    except OSError:
        here = "(unreachable)"
    if not here.startswith("/"):
        raise SystemFailure(f"cwd {cwd!r} is outside the container's root")


def set_user(user: dict[str, Any], userns_setgroups: bool = True) -> None:
    uid = int(user.get("uid", 0))
    gid = int(user.get("gid", 0))
    groups = [int(g) for g in user.get("additionalGids") or []]
    try:
        if userns_setgroups:
            os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise SystemFailure(
            f"set user {uid}:{gid} groups {groups}: {os.strerror(e.errno or 0).lower()}"
        ) from None
    umask = user.get("umask")
    os.umask(0o022 if umask is None else int(umask))


def can_setgroups() -> bool:
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() != "deny"
    except OSError:
        return True


IOPRIO_CLASSES = {"IOPRIO_CLASS_RT": 1, "IOPRIO_CLASS_BE": 2, "IOPRIO_CLASS_IDLE": 3}
SCHED_POLICIES = {
    "SCHED_OTHER": 0,
    "SCHED_FIFO": 1,
    "SCHED_RR": 2,
    "SCHED_BATCH": 3,
    "SCHED_ISO": 4,
    "SCHED_IDLE": 5,
    "SCHED_DEADLINE": 6,
}
SCHED_FLAGS = {
    "SCHED_FLAG_RESET_ON_FORK": 0x01,
    "SCHED_FLAG_RECLAIM": 0x02,
    "SCHED_FLAG_DL_OVERRUN": 0x04,
    "SCHED_FLAG_KEEP_POLICY": 0x08,
    "SCHED_FLAG_KEEP_PARAMS": 0x10,
    "SCHED_FLAG_UTIL_CLAMP_MIN": 0x20,
    "SCHED_FLAG_UTIL_CLAMP_MAX": 0x40,
}
PERSONALITIES = {"LINUX": 0x0000, "LINUX32": 0x0008}


def set_io_priority(io: dict[str, Any]) -> None:
    """process.ioPriority (config.md): ioprio_set(2) with (class << 13) | priority."""
    value = (IOPRIO_CLASSES[io["class"]] << 13) | int(io.get("priority", 0))
    try:
        libc.ioprio_set(value)
    except OSError as e:
        raise SystemFailure(
            f"set io priority {io['class']} {io.get('priority', 0)}: "
            f"{os.strerror(e.errno or 0).lower()}"
        ) from None


def set_scheduler(sc: dict[str, Any]) -> None:
    """process.scheduler (config.md): sched_setattr(2)."""
    flags = 0
    for f in sc.get("flags") or []:
        flags |= SCHED_FLAGS[f]
    try:
        libc.sched_setattr(
            SCHED_POLICIES[sc["policy"]],
            flags,
            int(sc.get("nice", 0)),
            int(sc.get("priority", 0)),
            int(sc.get("runtime", 0)),
            int(sc.get("deadline", 0)),
            int(sc.get("period", 0)),
        )
    except OSError as e:
        raise SystemFailure(
            f"set scheduler {sc['policy']}: {os.strerror(e.errno or 0).lower()}"
        ) from None


def set_personality(p: dict[str, Any]) -> None:
    """linux.personality: the execution domain (LINUX32 makes uname say i686)."""
    domain = p.get("domain", "LINUX")
    if domain not in PERSONALITIES:
        raise ConfigError("linux.personality.domain", f"unsupported domain {domain!r}")
    if p.get("flags"):
        raise ConfigError("linux.personality.flags", "no personality flags are supported")
    try:
        libc.personality(PERSONALITIES[domain])
    except OSError as e:
        raise SystemFailure(
            f"set personality {domain}: {os.strerror(e.errno or 0).lower()}"
        ) from None


def _quiet(message: str) -> None:
    pass


class Finalizer:
    """Carries one process through finalize -> exec.

    Built in the runtime before it forks into the container: everything that
    needs the host's files (Python modules, libseccomp) is loaded here, since
    after pivot_root or setns into the mount namespace they are out of reach.
    """

    def __init__(
        self,
        proc: dict[str, Any],
        seccomp_cfg: dict[str, Any] | None,
        personality: dict[str, Any] | None = None,
    ) -> None:
        self.proc = proc
        self.args: list[str] = list(proc.get("args") or [])
        if not self.args:
            raise ConfigError("process.args", "must name the program to run")
        self.env = env_dict(proc.get("env") or [])
        self.user = proc.get("user") or {}
        self.nnp = bool(proc.get("noNewPrivileges"))
        # the init's stderr is the container's: no warnings there (runc logs them)
        self.caps = capmod.prepare_capabilities(proc.get("capabilities"), warn=_quiet)
        self.seccomp = None
        if seccomp_cfg:
            from dockyard.runtime import seccomp

            self.seccomp = seccomp.build_filter(seccomp_cfg)
        self.notify_fd: int | None = None
        self.personality = personality
        if proc.get("terminal"):
            from dockyard.runtime import console  # noqa: F401

    def finalize(self, keep_fds: set[int]) -> None:
        """Everything up to (not including) waiting for start and execve."""
        if self.personality:
            set_personality(self.personality)
        if self.proc.get("scheduler"):
            set_scheduler(self.proc["scheduler"])
        if self.proc.get("ioPriority"):
            set_io_priority(self.proc["ioPriority"])
        close_fds_except(keep_fds)
        change_dir(self.proc.get("cwd") or "/")
        if "HOME" not in self.env:
            self.env["HOME"] = lookup_home(int(self.user.get("uid", 0)))
        if "PATH" not in self.env:
            self.env["PATH"] = DEFAULT_PATH
        self.exe = find_executable(self.args[0], self.env)
        # without no_new_privs the filter needs CAP_SYS_ADMIN: load it before
        # the capabilities go, and after the steps above that it might forbid
        if self.seccomp is not None and not self.nnp:
            self.notify_fd = self.seccomp.load()
        capmod.apply_before_setuid(self.caps, warn=_quiet)
        set_user(self.user, can_setgroups())
        capmod.apply_after_setuid(self.caps, warn=_quiet)
        if self.nnp:
            libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)

    def report_ready(self, ch: Channel) -> None:
        """After finalize: say "ready", then end the talk with the parent.

        With no_new_privs the filter is loaded only now, after the change of
        user (runc's order). Its SCMP_ACT_NOTIFY fd goes to the parent, which
        passes it to listenerPath (nsexec.await_done). The channel is closed
        last: the parent reads EOF, as the filter may forbid sending more.
        """
        ch.send("ready")
        if self.seccomp is not None and self.nnp:
            self.notify_fd = self.seccomp.load()
        if self.notify_fd is not None:
            ch.send("seccomp", "", fd=self.notify_fd)
            ch.expect("ok")
            os.close(self.notify_fd)
            self.notify_fd = None
        ch.close()

    def exec(self) -> None:
        reset_signals()
        try:
            os.execve(self.exe, self.args, self.env)
        except OSError as e:
            raise SystemFailure(
                f'exec: "{self.args[0]}": {os.strerror(e.errno or 0).lower()}'
            ) from None


def reset_signals() -> None:
    """Give the program every signal at its default and none blocked, as runc does.

    execve keeps ignored signals ignored and the mask as it is: CPython
    ignores SIGPIPE and SIGXFSZ at start-up, so without this a container's
    ``yes | head`` would never end by SIGPIPE. (``_signal``: ``signal``
    imports enum, too costly at every runtime start.)
    """
    import _signal  # type: ignore[import-not-found]  # no stub; the C module of signal

    for signum in range(1, _signal.NSIG):
        try:
            if _signal.getsignal(signum) == _signal.SIG_IGN:
                _signal.signal(signum, _signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass  # SIGKILL, SIGSTOP and the reserved real-time ones
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])
