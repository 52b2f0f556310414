"""Forking a process into a container's namespaces, in two stages.

Stage 1 is forked from the runtime. It joins the namespaces given by path,
unshares a new user namespace (the parent writes its id maps), then the other
new namespaces, and forks stage 2 — which is the one that really lives in a
new pid namespace, since unshare(CLONE_NEWPID) only applies to children.
Stage 1 reports stage 2's pid and exits, so stage 2 is reparented to the
nearest subreaper (the shim, or the runtime itself for a foreground ``run``).

The parent talks to both stages over one SOCK_SEQPACKET socketpair; every
message is one datagram: a verb, a space, and an optional payload.
"""

from __future__ import annotations

import _socket
import os
import sys

from dockyard.errors import DockyardError, SystemFailure
from dockyard.runtime import libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn


_BYTEORDER = sys.byteorder

# setns order: the user namespace first (it grants the capabilities to join
# the rest), the mount namespace last (it changes what later paths mean).
JOIN_ORDER = ["user", "cgroup", "ipc", "uts", "network", "pid", "time", "mount"]


class Channel:
    """One end of the parent/child sync socket."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.fds: list[int] = []  # received with the last message

    def send(self, verb: str, payload: str = "", fd: int | None = None) -> None:
        data = f"{verb} {payload}".encode()
        if fd is None:
            self.sock.send(data)
        else:
            anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd.to_bytes(4, _BYTEORDER))]
            self.sock.sendmsg([data], anc)

    def recv(self) -> tuple[str, str]:
        data, anc, _, _ = self.sock.recvmsg(1 << 20, _socket.CMSG_SPACE(4))
        self.fds = [
            int.from_bytes(d[i : i + 4], _BYTEORDER)
            for level, kind, d in anc
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
            for i in range(0, len(d) - len(d) % 4, 4)
        ]
        if not data:
            return "eof", ""
        verb, _, payload = data.decode().partition(" ")
        return verb, payload

    def expect(self, verb: str) -> str:
        got, payload = self.recv()
        if got == "error":
            raise SystemFailure(payload)
        if got != verb:
            raise SystemFailure(f"container init: expected {verb!r}, got {got!r} {payload}")
        return payload

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()


def await_done(ch: Channel, seccomp_cfg: dict[str, Any] | None, state: dict[str, Any]) -> None:
    """Wait for the child's "ready" (Finalizer.report_ready), then forward a
    seccomp notify fd to its listener, until EOF."""
    ch.expect("ready")
    while True:
        verb, payload = ch.recv()
        if verb == "eof":
            return
        if verb == "seccomp" and ch.fds and seccomp_cfg:
            from dockyard.runtime.seccomp import send_listener_fd

            fd = ch.fds[0]
            try:
                send_listener_fd(
                    seccomp_cfg["listenerPath"],
                    fd,
                    state,
                    seccomp_cfg.get("listenerMetadata"),
                )
            finally:
                os.close(fd)
            ch.send("ok")
            continue
        if verb == "error":
            raise SystemFailure(payload)
        raise SystemFailure(f"container init: unexpected message {verb!r} after ready")


def report_and_exit(ch: Channel, e: BaseException) -> NoReturn:
    """Send an error to the parent from a child stage and exit without cleanup handlers."""
    msg = str(e) if isinstance(e, DockyardError | OSError) else f"{type(e).__name__}: {e}"
    if isinstance(e, OSError) and not isinstance(e, DockyardError):
        msg = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
        msg = msg[0].lower() + msg[1:] if msg else msg
    try:
        ch.send("error", msg)
    except OSError:
        try:
            sys.stderr.write(f"dockyard-runtime: {msg}\n")
        except Exception:
            pass
    os._exit(1)


def _write_id_maps(pid: int, cfg_linux: dict[str, Any]) -> None:
    def fmt(maps: list[dict[str, int]]) -> str:
        return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in maps)

    uid = cfg_linux.get("uidMappings") or []
    gid = cfg_linux.get("gidMappings") or []
    try:
        if gid and os.geteuid() != 0:
            with open(f"/proc/{pid}/setgroups", "w") as f:
                f.write("deny")
        if uid:
            with open(f"/proc/{pid}/uid_map", "w") as f:
                f.write(fmt(uid))
        if gid:
            with open(f"/proc/{pid}/gid_map", "w") as f:
                f.write(fmt(gid))
    except OSError as e:
        raise SystemFailure(
            f"write uid/gid mappings for pid {pid}: {os.strerror(e.errno or 0).lower()}"
        ) from None


def spawn(
    *,
    join: dict[str, str],
    new: list[str],
    linux: dict[str, Any],
    child: Callable[[Channel], NoReturn],
    before_go: Callable[[int], None] | None = None,
) -> tuple[int, Channel]:
    """Fork stage 1 and stage 2; return (stage 2's pid, the parent's channel).

    ``join`` maps OCI namespace type -> path to setns into; ``new`` lists the
    types to unshare. ``before_go(stage1_pid)`` runs in the parent before
    stage 1 continues (cgroup placement, so a cgroup namespace roots there).
    ``child`` runs in stage 2 and never returns.
    """
    # open the namespace files now: their paths mean something only on the host
    ns_fds: list[tuple[str, int]] = []
    try:
        for kind in JOIN_ORDER:
            if kind in join:
                try:
                    fd = os.open(join[kind], os.O_RDONLY | os.O_CLOEXEC)
                except OSError as e:
                    raise SystemFailure(
                        f"open {kind} namespace {join[kind]}: {os.strerror(e.errno or 0).lower()}"
                    ) from None
                ns_fds.append((kind, fd))
        psock, csock = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            psock.close()
            _stage1(Channel(csock), ns_fds, new, linux, child)
        csock.close()
    finally:
        for _, fd in ns_fds:
            os.close(fd)
    parent = Channel(psock)
    try:
        if before_go:
            before_go(pid)
        parent.send("go")
        init_pid = 0
        while not init_pid:
            verb, payload = parent.recv()
            if verb == "usermap":
                _write_id_maps(pid, linux)
                parent.send("ok")
            elif verb == "pid":
                init_pid = int(payload)
            elif verb == "error":
                raise SystemFailure(payload)
            else:
                raise SystemFailure(f"container init: unexpected message {verb!r} from stage 1")
    except BaseException:
        parent.close()
        _reap(pid)
        raise
    _reap(pid)
    return init_pid, parent


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _stage1(
    ch: Channel,
    ns_fds: list[tuple[str, int]],
    new: list[str],
    linux: dict[str, Any],
    child: Callable[[Channel], NoReturn],
) -> NoReturn:
    try:
        ch.expect("go")
        for kind, fd in ns_fds:
            try:
                libc.setns(fd, libc.NAMESPACES[kind][0])
            except OSError as e:
                raise SystemFailure(
                    f"join {kind} namespace: {os.strerror(e.errno or 0).lower()}"
                ) from None
            os.close(fd)
        if "user" in new:
            libc.unshare(libc.CLONE_NEWUSER)
            ch.send("usermap")
            ch.expect("ok")
        if "user" in new or any(k == "user" for k, _ in ns_fds):
            # become root of the user namespace we are now in
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        flags = 0
        for kind in new:
            if kind != "user":
                flags |= libc.NAMESPACES[kind][0]
        if flags:
            try:
                libc.unshare(flags)
            except OSError as e:
                raise SystemFailure(
                    f"create namespaces {', '.join(k for k in new if k != 'user')}: "
                    f"{os.strerror(e.errno or 0).lower()}"
                ) from None
        if "time" in new:
            _write_time_offsets(linux.get("timeOffsets") or {})
        # The init and this stage share the channel: the init must not speak
        # before "pid" is sent, or the parent would read its first message
        # in place of the pid (seen under load). A pipe holds it until then.
        hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                os.close(hold_w)
                os.read(hold_r, 1)
                os.close(hold_r)
                child(ch)
            except BaseException as e:
                report_and_exit(ch, e)
        os.close(hold_r)
        ch.send("pid", str(pid))
        os.write(hold_w, b"g")
        os.close(hold_w)
    except BaseException as e:
        report_and_exit(ch, e)
    os._exit(0)


def _write_time_offsets(offsets: dict[str, dict[str, int]]) -> None:
    lines = []
    for clock, name in (("monotonic", "monotonic"), ("boottime", "boottime")):
        o = offsets.get(clock)
        if o:
            lines.append(f"{name} {o.get('secs', 0)} {o.get('nanosecs', 0)}\n")
    if lines:
        with open("/proc/self/timens_offsets", "w") as f:
            f.write("".join(lines))
