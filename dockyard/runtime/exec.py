"""``exec``: run another process inside a running container.

The new process joins init's namespaces through /proc/<init>/ns/* and its
cgroup. The runtime's own process that joins is made non-dumpable before it
enters, so a process in the container can not open /proc/<pid>/exe of it
and reach the host's interpreter (the CVE-2019-5736 class); it stays so
until execve replaces it with the container's program.
"""

from __future__ import annotations

import os

from dockyard.errors import FailedPrecondition, InvalidArgument, SystemFailure
from dockyard.runtime import libc
from dockyard.runtime import state as st
from dockyard.runtime.children import kill_and_wait, wait_forwarding_signals, write_pid_file
from dockyard.runtime.nsexec import Channel, await_done, spawn
from dockyard.runtime.process import Finalizer, set_rlimits

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn


class ExecOptions:
    def __init__(
        self,
        *,
        process_file: str | None = None,
        args: list[str] | None = None,
        detach: bool = False,
        tty: bool = False,
        console_socket: str | None = None,
        pid_file: str | None = None,
        env: list[str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        additional_gids: list[int] | None = None,
        caps: list[str] | None = None,
        no_new_privs: bool = False,
        preserve_fds: int = 0,
    ) -> None:
        self.process_file = process_file
        self.args = list() if args is None else args
        self.detach = detach
        self.tty = tty
        self.console_socket = console_socket
        self.pid_file = pid_file
        self.env = list() if env is None else env
        self.cwd = cwd
        self.user = user
        self.additional_gids = list() if additional_gids is None else additional_gids
        self.caps = list() if caps is None else caps
        self.no_new_privs = no_new_privs
        self.preserve_fds = preserve_fds


def build_process(cfg: dict[str, Any], opts: ExecOptions) -> dict[str, Any]:
    """The process to run: --process FILE, or the container's process with overrides."""
    if opts.process_file:
        import json

        try:
            with open(opts.process_file) as f:
                proc: dict[str, Any] = json.load(f)
        except OSError as e:
            raise InvalidArgument(
                f"read process file {opts.process_file}: {os.strerror(e.errno or 0).lower()}"
            ) from None
        except ValueError as e:
            raise InvalidArgument(f"process file {opts.process_file}: invalid json: {e}") from None
        if not isinstance(proc, dict):
            raise InvalidArgument(f"process file {opts.process_file}: must be a json object")
        if not proc.get("args"):
            raise InvalidArgument(f"process file {opts.process_file}: args must not be empty")
        if not proc.get("cwd"):
            proc["cwd"] = "/"
        return proc
    if not opts.args:
        raise InvalidArgument("exec needs a command: give args or --process")
    base = dict(cfg.get("process") or {})
    proc = {
        "args": list(opts.args),
        "env": list(base.get("env") or []) + list(opts.env),
        "cwd": opts.cwd or base.get("cwd") or "/",
        "user": dict(base.get("user") or {"uid": 0, "gid": 0}),
        "terminal": opts.tty,
        "noNewPrivileges": bool(base.get("noNewPrivileges")) or opts.no_new_privs,
        "capabilities": {k: list(v) for k, v in (base.get("capabilities") or {}).items()},
        "rlimits": base.get("rlimits") or [],
    }
    if opts.user:
        u, _, g = opts.user.partition(":")
        try:
            proc["user"] = {"uid": int(u), "gid": int(g) if g else 0}
        except ValueError:
            raise InvalidArgument(f"invalid --user {opts.user!r}: want uid[:gid]") from None
    if opts.additional_gids:
        proc["user"]["additionalGids"] = list(opts.additional_gids)
    if opts.caps:
        from dockyard.runtime.caps import CAPABILITIES

        for c in opts.caps:
            if c not in CAPABILITIES:
                raise InvalidArgument(f"unknown capability {c!r} in --cap")
            for kind in ("bounding", "effective", "permitted", "ambient"):
                lst = proc["capabilities"].setdefault(kind, [])
                if c not in lst:
                    lst.append(c)
    if opts.tty:
        proc["terminal"] = True
    return proc


def exec_process(root: str, cid: str, opts: ExecOptions) -> int:
    """Run the process; returns its pid (detached) or its exit status (attached)."""
    s = st.load(root, cid)
    status = s.status()
    if status != st.RUNNING:
        raise FailedPrecondition(f"cannot exec in container {cid!r}: it is {status}, not running")
    cfg = s.config
    proc = build_process(cfg, opts)
    if proc.get("terminal") and not opts.console_socket and opts.detach:
        raise InvalidArgument("exec with a terminal needs --console-socket when detached")
    linux = cfg.get("linux") or {}
    init = s.pid
    join: dict[str, str] = {}
    for kind in s.data.get("namespaces") or [n["type"] for n in linux.get("namespaces") or []]:
        path = f"/proc/{init}/ns/{libc.NAMESPACES[kind][1]}"
        if os.readlink(path) != os.readlink(f"/proc/self/ns/{libc.NAMESPACES[kind][1]}"):
            join[kind] = path
    cg = s.cgroup()
    console_fd = None
    term = None
    if proc.get("terminal") and opts.console_socket:
        from dockyard.runtime.console import connect

        console_fd = connect(opts.console_socket)
    elif proc.get("terminal"):
        # attached exec -t with no console socket: we hold the pty (as run does)
        from dockyard.runtime.console import TerminalProxy

        term = TerminalProxy()
        console_fd = os.dup(term.remote_fd)
    for fd in range(3, 3 + opts.preserve_fds):
        os.set_inheritable(fd, True)

    fin = Finalizer(proc, linux.get("seccomp"), linux.get("personality"))

    def child(ch: Channel) -> NoReturn:
        _exec_child(ch, fin, console_fd, opts.preserve_fds)

    if not opts.detach:
        libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    # non-dumpable before any fork: the children inherit it until they execve
    libc.prctl(libc.PR_SET_DUMPABLE, 0)
    pid, ch = spawn(join=join, new=[], linux=linux, child=child, before_go=cg.apply)
    try:
        await_done(ch, linux.get("seccomp"), s.oci_state())
    except BaseException:
        kill_and_wait(pid)
        if term is not None:
            term.close()
        raise
    finally:
        ch.close()
        if console_fd is not None:
            os.close(console_fd)
    if opts.pid_file:
        write_pid_file(opts.pid_file, pid)
    if opts.detach:
        return pid
    if term is None:
        return wait_forwarding_signals(pid)
    try:
        term.receive_master()
        return term.serve(pid)
    finally:
        term.close()


def _exec_child(ch: Channel, fin: Finalizer, console_fd: int | None, preserve_fds: int) -> NoReturn:
    proc = fin.proc
    os.setsid()
    if proc.get("terminal") and console_fd is not None:
        from dockyard.runtime.console import setup_console

        setup_console(console_fd, proc.get("consoleSize"))
    if proc.get("rlimits"):
        set_rlimits(proc["rlimits"])
    keep = {0, 1, 2, ch.fileno(), *range(3, 3 + preserve_fds)}
    fin.finalize(keep)
    fin.report_ready(ch)
    try:
        fin.exec()
    except SystemFailure as e:
        os.write(2, f"dockyard-runtime: {e}\n".encode())
    os._exit(127)
