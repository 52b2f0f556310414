"""The shim template: one process that has imported the shim and dockyard-runtime
once, and forks the long-running shim of each container.

A shim started as a command costs an interpreter start and its imports
(tens of milliseconds), and every shim then holds its own copy of the same
modules (megabytes). Forked from the template instead, a shim starts at
once and shares those pages with the template and every other shim until
it writes to them.

The supervisor starts the template (``Template``) and gives the shims it
starts ``DOCKYARD_SHIM_TEMPLATE=<socket>``. A shim's ``start`` action then
makes its socket as always and, instead of starting itself, sends the
template its request: the long-running shim's argv, its environment, cwd
(the bundle) and umask, and the listening socket (SCM_RIGHTS). A *spare*,
a child the template forked ahead, takes the request, checks it, and
becomes the long-running shim exactly as a started one would be: a session
of its own, cwd the bundle, stdio ``/dev/null`` (the server then logs to
the bundle's FIFO), the listener as fd 3 and no other fd, no signal
blocked or handled, its own command line in ``/proc``. It answers its pid;
``start`` moves it into its cgroup and sets its OOM score as for a started
shim, then tells it to go on (one byte on the same connection: the shim
serves only once ``start`` has it, and ends if ``start`` goes away first).
Meanwhile the template forks the next spare. The template reaps its
children; shims keep running when the template or the supervisor ends (a
spare does not: it dies with the template).

Memory is the point, so the template keeps the pages it shares clean: it
runs nothing between forks but the fork loop (every page it wrote after a
fork would become a private copy in each shim alive: that is why the
spares, not the template, handle requests); ``gc.freeze`` before each fork
keeps a child's collector off the inherited objects; the free blocks of the
small-object allocator are filled, so that a shim allocates in pages of its
own instead of writing into hundreds of shared ones; the type attribute
cache is emptied, so that a shim's misses do not write to the strings the
template's entries name; the fork skips CPython's after-fork handlers,
needless for a single-threaded process.

``start`` never fails because of the template: if it does not answer,
refuses, or its shim dies before going on, the shim is started as a
command. Without the variable (under containerd) nothing changes.

Only root may ask: the socket is 0600 in a 0700 directory, and the peer's
uid (SO_PEERCRED) must be 0. The request is checked, not trusted: the
program must be the shim binary this template serves, the flags those of
the long-running shim (no action, no ``-socket``), the requester in the
template's namespaces and root directory; the spare runs nothing but the
shim's own ``main``.

Wire format, both ways: a 4-byte big-endian length, then JSON.
"""

from __future__ import annotations

import _socket  # not socket: its import costs start ~14 ms (enum, selectors)
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

ENV = "DOCKYARD_SHIM_TEMPLATE"
SHIM_NAME = "containerd-shim-dockyard-v2"
# start's side: how long the template may take to answer (it is single
# threaded: a fork is a millisecond or two), and the child's wait for "go".
CONNECT_TIMEOUT = 1.0
REPLY_TIMEOUT = 5.0
GO_TIMEOUT = 60.0
# The template's side: how long a client may take to send its request.
REQUEST_TIMEOUT = 5.0
MAX_MESSAGE = 1 << 20
# Bytes of blank argument the template gets, for the shims' command lines.
CMDLINE_ROOM = 512
_GO = b"g"
# Namespaces the requester must share with the template: the shim lives in
# the template's, and must see the paths and sockets its starter sees.
_NAMESPACES = ("mnt", "pid", "net", "ipc", "uts", "user", "cgroup")


class TemplateError(Exception):
    """The template could not fork this shim; ``start`` starts it as a command."""


# --- start's side ---------------------------------------------------------------------


def _send(sock: Any, data: dict[str, object], fds: tuple[int, ...] = ()) -> None:
    """One message (and fds, with its first bytes)."""
    from dockyard import jsonio

    body = jsonio.dumps(data).encode()
    payload = len(body).to_bytes(4, "big") + body
    if fds:
        rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
        sent = sock.sendmsg([payload], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        payload = payload[sent:]
    if payload:
        sock.sendall(payload)


def _recv_reply(sock: Any) -> object:
    from dockyard import jsonio

    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise TemplateError("connection closed mid-reply")
            data += chunk
        return data

    size = int.from_bytes(exact(4), "big")
    if size > MAX_MESSAGE:
        raise TemplateError(f"reply of {size} bytes is too long")
    try:
        return jsonio.loads(exact(size))
    except (ValueError, UnicodeDecodeError) as e:
        raise TemplateError(f"reply is not JSON: {e}") from None


class Forked:
    """A shim the template forked, waiting for ``go``."""

    def __init__(self, pid: int, conn: Any) -> None:
        self.pid = pid
        self._conn = conn

    def go(self) -> bool:
        """Let the shim serve; False if it is gone already (start it as a command)."""
        try:
            self._conn.sendall(_GO)
            return True
        except OSError:
            return False
        finally:
            self._conn.close()

    def cancel(self) -> None:
        """The shim will not be used: it sees end-of-file and ends."""
        self._conn.close()


def _umask() -> int:
    """This process's umask, read without setting it (other threads may create files)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def fork_shim(
    path: str,
    argv: list[str],
    listener: int,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str = "",
) -> Forked:
    """Ask the template at ``path`` to fork the long-running shim ``argv`` serving
    ``listener`` with ``env`` in ``cwd`` (default: ours); raises ``TemplateError``
    when it does not."""
    request = {
        "argv": argv,
        "env": dict(os.environ if env is None else env),
        "cwd": os.path.abspath(cwd or os.getcwd()),
        "umask": _umask(),
    }
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        conn.settimeout(CONNECT_TIMEOUT)
        conn.connect(path)
        conn.settimeout(REPLY_TIMEOUT)
        _send(conn, request, (listener,))
        reply = _recv_reply(conn)
        if not isinstance(reply, dict):
            raise TemplateError(f"unexpected reply {reply!r}")
        if "error" in reply:
            raise TemplateError(str(reply["error"]))
        pid = reply.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            raise TemplateError(f"unexpected reply {reply!r}")
    except TemplateError:
        conn.close()
        raise
    except OSError as e:
        conn.close()
        raise TemplateError(f"{path}: {e.strerror or e}") from None
    conn.settimeout(None)
    return Forked(pid, conn)


# --- the template's side ----------------------------------------------------------------


class _Stop(BaseException):
    """SIGTERM or SIGINT: the template ends."""


class _Request:
    __slots__ = ("argv", "cwd", "env", "umask")

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, umask: int) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.umask = umask


class _Spare:
    """A child of the template waiting to become the next shim.

    It accepts on the template's socket and handles one request: a refused
    one is answered and it accepts again; the first good one it takes, tells
    the template (which forks the next spare) and becomes that shim. So the
    template itself runs almost nothing between forks (every page it wrote
    after a fork would become a private copy in each shim alive), and a spare
    runs little Python of its own: what it needs is prepared by the template
    before the fork, and it calls the C-level primitives (``_socket``,
    ``os``) rather than their Python wrappers, each function run being pages
    written in the shim it becomes.
    """

    def __init__(self, server: Any, shim_binary: str) -> None:
        import _signal  # type: ignore[import-not-found]  # signal.py's wrappers run enum code
        import ctypes
        import gc
        import struct

        from dockyard import jsonio
        from dockyard.errors import DockyardError
        from dockyard.runtime import libc
        from dockyard.shim.main import main, parse_flags

        self.server = server
        self.shim_binary = shim_binary
        st = os.stat(shim_binary)
        self.shim_id = (st.st_dev, st.st_ino)
        self.namespaces = []
        for ns in _NAMESPACES:
            try:
                st = os.stat(f"/proc/self/ns/{ns}")
            except FileNotFoundError:
                continue  # not in this kernel
            self.namespaces.append((ns, (st.st_dev, st.st_ino)))
        st = os.stat("/")
        self.root_id = (st.st_dev, st.st_ino)
        self.ucred = struct.Struct("3i")
        self.cmsg_space = _socket.CMSG_SPACE(4 * 4)
        self.gc, self.signal, self.libc, self.ctypes = gc, _signal, libc, ctypes
        self.loads, self.dumps = jsonio.loads, jsonio.dumps
        self.flag_error = DockyardError
        self.parse_flags, self.main = parse_flags, main
        self.template = os.getpid()
        # The template's signal wake-up pipe: a spare closes it.
        self.wake_fds: tuple[int, ...] = ()

    # -- one request ------------------------------------------------------------------

    def _send(self, conn: Any, data: dict[str, object]) -> None:
        body = self.dumps(data).encode()
        conn.sendall(len(body).to_bytes(4, "big") + body)

    def _recv(self, conn: Any, n: int, fds: list[int]) -> bytes:
        data = b""
        while len(data) < n:
            chunk, anc, _, _ = conn.recvmsg(n - len(data), self.cmsg_space)
            for level, kind, raw in anc:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    fds.extend(
                        int.from_bytes(raw[i : i + 4], sys.byteorder)
                        for i in range(0, len(raw) - len(raw) % 4, 4)
                    )
            if not chunk:
                raise TemplateError("connection closed mid-request")
            data += chunk
        return data

    def _check_peer(self, conn: Any) -> None:
        """Root, in the template's namespaces and root directory."""
        raw = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, self.ucred.size)
        pid, uid, _ = self.ucred.unpack(raw)
        if uid != 0:
            raise TemplateError(f"peer uid {uid}: only root may use the shim template")
        for ns, mine in self.namespaces:
            st = os.stat(f"/proc/{pid}/ns/{ns}")
            if (st.st_dev, st.st_ino) != mine:
                raise TemplateError(f"peer {pid} is in another {ns} namespace")
        st = os.stat(f"/proc/{pid}/root")
        if (st.st_dev, st.st_ino) != self.root_id:
            raise TemplateError(f"peer {pid} has another root directory")

    def _check_listener(self, fd: int) -> None:
        try:
            s = _socket.socket(fileno=fd)
        except OSError:
            raise TemplateError("the fd sent is not a unix stream socket") from None
        try:
            if s.family != _socket.AF_UNIX or s.type != _socket.SOCK_STREAM:
                raise TemplateError("the fd sent is not a unix stream socket")
            if not s.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN):
                raise TemplateError("the socket sent is not listening")
        finally:
            s.detach()

    def _check_request(self, raw: object) -> _Request:
        if not isinstance(raw, dict):
            raise TemplateError("request is not a JSON object")
        argv, env, cwd, umask = raw.get("argv"), raw.get("env"), raw.get("cwd"), raw.get("umask")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise TemplateError("argv: not a list of strings")
        st = os.stat(argv[0]) if argv[0].startswith("/") else None
        if st is None or (st.st_dev, st.st_ino) != self.shim_id:
            raise TemplateError(f"argv[0] {argv[0]!r}: this template forks {self.shim_binary} only")
        try:
            flags = self.parse_flags(argv[1:])
        except self.flag_error as e:
            raise TemplateError(f"argv: {e}") from None
        if flags.action or flags.v or flags.socket or not flags.namespace or not flags.id:
            raise TemplateError("argv: not the long-running shim's (-namespace, -id, no action)")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
            for k, v in env.items()
        ):
            raise TemplateError("env: not a map of variable names to strings")
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise TemplateError(f"cwd {cwd!r}: not an absolute path")
        if os.stat(cwd).st_mode & 0o170000 != 0o040000:
            raise TemplateError(f"cwd {cwd!r}: not a directory")
        if not isinstance(umask, int) or not 0 <= umask <= 0o777:
            raise TemplateError(f"umask {umask!r}: not a umask")
        return _Request(argv, env, cwd, umask)

    def _take(self, conn: Any) -> tuple[_Request, int] | None:
        """Read and check one request: it and its listener, or None (answered)."""
        fds: list[int] = []
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            self._check_peer(conn)
            size = int.from_bytes(self._recv(conn, 4, fds), "big")
            if size > MAX_MESSAGE:
                raise TemplateError(f"request of {size} bytes is too long")
            try:
                raw = self.loads(self._recv(conn, size, fds))
            except (ValueError, UnicodeDecodeError) as e:
                raise TemplateError(f"request is not JSON: {e}") from None
            if len(fds) != 1:
                raise TemplateError(f"expected the shim's socket, got {len(fds)} fds")
            self._check_listener(fds[0])
            return self._check_request(raw), fds.pop()
        except (TemplateError, OSError) as e:
            if not isinstance(e, TemplateError):
                e = TemplateError(f"request: {e.strerror or e}")
            try:
                self._send(conn, {"error": str(e)})
            except OSError:
                pass
            return None
        finally:
            for fd in fds:
                os.close(fd)

    # -- the spare's life ---------------------------------------------------------------

    def run(self, taken: int) -> None:
        """Wait for a request, take it, become its shim. Never returns."""
        signal, libc = self.signal, self.libc
        try:
            signal.set_wakeup_fd(-1)
            for fd in self.wake_fds:
                os.close(fd)
            for sig in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            # A spare dies with the template; a shim does not.
            libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != self.template:
                os._exit(0)
            while True:
                fd, _ = self.server._accept()
                conn = _socket.socket(fileno=fd)
                got = self._take(conn)
                if got is None:
                    conn.close()
                    continue
                libc.prctl(libc.PR_SET_PDEATHSIG, 0)
                self.server.close()
                os.write(taken, b"t")
                os.close(taken)
                req, listener = got
                try:
                    self._send(conn, {"pid": os.getpid()})
                except OSError:
                    os._exit(0)  # start is gone
                self._become_shim(conn, listener, req)
        except BaseException:
            pass
        os._exit(1)

    def _become_shim(self, conn: Any, listener: int, req: _Request) -> None:
        """Wait for ``go``, become the shim ``start`` would have started, serve, exit."""
        code = 1
        try:
            os.setsid()
            conn.settimeout(GO_TIMEOUT)
            try:
                go = conn.recv(1)
            except OSError:
                go = b""
            if go != _GO:
                os._exit(0)  # start gave up on this shim
            conn.close()
            if listener != 3:
                os.dup2(listener, 3, inheritable=False)
            os.set_inheritable(3, False)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            try:
                self.libc.close_range(4)
            except OSError:
                os.closerange(4, os.sysconf("SC_OPEN_MAX"))
            os.chdir(req.cwd)
            os.umask(req.umask)
            self._set_cmdline(req.argv)
            _set_environ(req.env)
            sys.argv = list(req.argv)
            self.signal.pthread_sigmask(self.signal.SIG_SETMASK, ())
            self.gc.enable()
            code = self.main(req.argv[1:])
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            code = 1
        os._exit(code)

    def _set_cmdline(self, argv: list[str]) -> None:
        """Show the shim's own command line and name in ``/proc`` (ps, pgrep, top),
        not the template's: its argv is written over the template's (which
        ``Template`` pads to make room; cut short if it does not fit), and
        its name (``comm``) is set as exec would set it."""
        ctypes = self.ctypes
        try:
            with open("/proc/self/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            # arg_start and arg_end are fields 48 and 49; fields[0] is field 3.
            start, end = int(fields[45]), int(fields[46])
            room = end - start
            data = b"\0".join(a.encode() for a in argv)[: room - 1]
            ctypes.memmove(start, data.ljust(room, b"\0"), room)
            name = ctypes.create_string_buffer(argv[0].rpartition("/")[2].encode()[:15])
            self.libc.prctl(self.libc.PR_SET_NAME, ctypes.addressof(name))
        except (OSError, ValueError, IndexError):
            pass  # only cosmetic


def _set_environ(env: dict[str, str]) -> None:
    """``os.environ`` becomes ``env``, touching only what differs (usually a few)."""
    environ = os.environ
    for key in [k for k in environ if k not in env]:
        del environ[key]
    for key, value in env.items():
        if environ.get(key) != value:
            environ[key] = value


def _reap(signum: int, frame: object) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def _listen(path: str) -> Any:
    """The template's socket: 0600 in a directory only its owner may enter."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.stat(directory)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        from dockyard.errors import SystemFailure

        raise SystemFailure(
            f"shim template: directory {directory} must be owned by uid {os.geteuid()} "
            f"and closed to others (mode 0700), not {st.st_mode & 0o777:04o}"
        )
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            sock.bind(path)
        except OSError as e:
            import errno

            if e.errno != errno.EADDRINUSE:
                raise
            probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # a dead template's socket
            else:
                from dockyard.errors import AlreadyExists

                raise AlreadyExists(f"shim template: {path} is served already") from None
            finally:
                probe.close()
            sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _libc_fork() -> Callable[[], int]:
    """fork(2) through libc, without CPython's after-fork work in the child.

    That work (reinitializing the GIL, the import lock, the thread states,
    and the threading module's ``_after_fork``) is for a child of a process
    with other threads; the template has one thread, holds the GIL across
    the call (``PyDLL``) and is not importing, so the child's state is
    consistent as copied. Skipping it saves every spare about half a
    megabyte: running it writes to that many pages a spare would share.
    """
    import ctypes

    fork = ctypes.PyDLL(None, use_errno=True).fork
    fork.restype = ctypes.c_int
    fork.argtypes = ()

    def call() -> int:
        pid = int(fork())
        if pid < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        return pid

    return call


# Objects that only fill the free blocks of the template's allocator (see
# _fill_free_blocks); never used.
_FILLER: list[object] = []


def _fill_free_blocks() -> None:
    """Use up the free blocks in the partly used pools of CPython's small-object
    allocator, so that a child allocates in new pools of its own.

    Otherwise every object a shim allocates lands in a free block left here
    and there by the template's imports, and each such block's page, shared
    until then, becomes the shim's own copy: hundreds of pages to hold a few
    kilobytes. The free blocks are counted from ``sys._debugmallocstats`` and
    filled with objects of each size class (a few hundred kilobytes, shared).
    """
    for _ in range(3):
        stats = os.memfd_create("mallocstats", os.MFD_CLOEXEC)
        saved = os.dup(2)
        try:
            os.dup2(stats, 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        text = os.pread(stats, 1 << 20, 0).decode(errors="replace")
        os.close(stats)
        filled = 0
        for line in text.splitlines():
            fields = line.split()
            if len(fields) != 5 or not all(f.isdigit() for f in fields):
                continue
            size, avail = int(fields[1]), int(fields[4])
            if size == 16:
                _FILLER.extend(object() for _ in range(avail))
            elif size == 32:
                _FILLER.extend(float(i) + 0.5 for i in range(avail))
            else:
                # A bytes object of length n takes 33 + n bytes.
                _FILLER.extend(bytes(size - 33) for _ in range(avail))
            filled += avail
        if filled < 64:
            return


def _reset_type_cache() -> None:
    """Empty CPython's type attribute cache and give every class a fresh version tag.

    Each entry of that cache (4096 of them, in the interpreter's static
    state) holds a reference to an attribute name. A child that misses the
    cache drops the reference of the entry it replaces and takes one on its
    own name: two reference counts written, on two strings that are spread
    over the template's pages. The template's entries are left over from
    its imports and serve a shim little, so a shim replaced them by the
    hundred, each time copying the pages of two strings. Cleared, an
    evicted entry names ``None`` (libpython's static state, copied anyway).

    Clearing also voids every class's version tag; a lookup of a missing
    name on each class gives it a new one here, so a shim does not write a
    tag into each class it uses. The entries that lookup leaves name one
    string.
    """
    sys._clear_type_cache()
    missing = "\0dockyard-template"
    todo: list[type] = [object]
    seen: set[int] = set()
    while todo:
        cls = todo.pop()
        if id(cls) in seen:
            continue
        seen.add(id(cls))
        try:
            type.__getattribute__(cls, missing)
        except AttributeError:
            pass
        todo.extend(type.__subclasses__(cls))


def _fork_spares(spare: _Spare) -> None:
    """The template's loop: fork a spare, wait until it took a request (or died),
    fork the next, reaping exited shims meanwhile; until SIGTERM. Nothing else
    runs here, on purpose.

    Signals wake the loop through a wake-up fd (``signal.set_wakeup_fd``): a
    SIGCHLD that arrives just before the loop blocks would otherwise wait
    for the next request to be handled, and the shim it reports stay a zombie.
    """
    import gc
    import select
    import signal
    import time

    if len(os.listdir("/proc/self/task")) != 1:
        from dockyard.errors import SystemFailure

        raise SystemFailure("shim template: it must fork from a single thread")
    fork = _libc_fork()
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    spare.wake_fds = (wake_r, wake_w)
    _reset_type_cache()
    _fill_free_blocks()
    pid = 0
    pause = 0.0
    try:
        while True:
            r, w = os.pipe2(os.O_CLOEXEC)
            # What the template allocated so far stays unscanned in the child:
            # its collector does not write to every inherited object.
            gc.freeze()
            pid = fork()
            if pid == 0:
                os.close(r)
                spare.run(w)
            os.close(w)
            poller = select.poll()
            poller.register(r, select.POLLIN)
            poller.register(wake_r, select.POLLIN)
            took = b""
            try:
                while True:
                    ready = poller.poll()
                    if any(fd == wake_r for fd, _ in ready):
                        try:
                            os.read(wake_r, 512)
                        except BlockingIOError:
                            pass
                        _reap(0, None)
                    if any(fd == r for fd, _ in ready):
                        took = os.read(r, 1)
                        break
            finally:
                os.close(r)
            if took:
                pause = 0.0
            else:
                # The spare died without a request: do not fork in a tight loop.
                pause = min(max(pause * 2, 0.01), 1.0)
                time.sleep(pause)
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
        if pid > 0:
            try:
                os.kill(pid, 9)
            except OSError:
                pass


def serve(
    socket_path: str,
    shim_binary: str = "",
    *,
    ready_fd: int | None = None,
    die_with_parent: bool = False,
) -> int:
    """The template's main loop: import everything, listen, fork shims until SIGTERM.

    Single-threaded throughout, so every fork is safe. ``ready_fd`` gets
    ``ready\n`` once requests are served (then ``/dev/null`` in its place).
    """
    import gc
    import signal

    # No collection from here on: the imports below leave no holes in pages
    # the children share, and gc.freeze() before each fork does the rest.
    gc.disable()
    if die_with_parent:
        # A supervisor that is killed cannot stop its template: end with it
        # (the shims it forked are sessions of their own and keep running).
        from dockyard.runtime import libc

        parent = os.getppid()
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            return 0
    from dockyard.shim import preload

    preload.shim()
    preload.runtime()
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = _listen(socket_path)
    try:
        spare = _Spare(server, os.path.realpath(shim_binary or default_shim_binary()))
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, ready_fd)
            os.close(null)
        _fork_spares(spare)
    except _Stop:
        pass
    finally:
        server.close()
        try:
            os.unlink(socket_path)
        except OSError:
            pass
    return 0


def default_shim_binary() -> str:
    """The shim binary a supervisor would run: on PATH, else beside this Python."""
    import shutil

    found = shutil.which(SHIM_NAME)
    if found:
        return os.path.abspath(found)
    return os.path.join(os.path.dirname(sys.executable), SHIM_NAME)


# --- the supervisor's side ------------------------------------------------------------


class Template:
    """A template process for a supervisor: ``start`` it, give the shims ``env()``,
    ``stop`` it (by pid). It runs in a session of its own, so signals to the
    supervisor's process group do not reach it, and the shims it forked keep
    running when it ends."""

    def __init__(
        self,
        socket_path: str,
        *,
        shim_binary: str = "",
        python: str = "",
        stderr: int | None = None,
        die_with_parent: bool = False,
    ) -> None:
        """``stderr``: where the template's own errors go (default: inherited);
        ``die_with_parent``: the template ends when the thread that started it
        does (a supervisor's main thread), even when that one is killed."""
        self.socket_path = os.path.abspath(socket_path)
        self.shim_binary = shim_binary or default_shim_binary()
        self.python = python or sys.executable
        self.stderr = stderr
        self.die_with_parent = die_with_parent
        self._proc: Any = None

    @property
    def pid(self) -> int:
        return int(self._proc.pid) if self._proc is not None else 0

    def env(self) -> dict[str, str]:
        """What the shims' environment needs to use this template."""
        return {ENV: self.socket_path}

    def argv(self) -> list[str]:
        """The interpreter without site processing (as the launchers run it),
        with this package's directory on its path."""
        here = os.path.abspath(__file__)
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(here)))
        boot = (
            f"import sys; sys.path[:0] = [{package_parent!r}]; "
            "from dockyard.shim.template import main; raise SystemExit(main())"
        )
        return [
            *(self.python, "-I", "-S", "-c", boot),
            *("--socket", self.socket_path, "--shim", self.shim_binary),
            *(("--die-with-parent",) if self.die_with_parent else ()),
            # Room for each shim's own command line, written over this one.
            " " * CMDLINE_ROOM,
        ]

    def start(self, timeout: float = 30.0) -> None:
        """Start the template and wait until it serves; raises SystemFailure if it does not."""
        import select
        import subprocess

        from dockyard.errors import SystemFailure

        proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            start_new_session=True,
            close_fds=True,
        )
        self._proc = proc
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            line = proc.stdout.readline() if ready else b""
        finally:
            proc.stdout.close()
        if line != b"ready\n":
            self.stop()
            raise SystemFailure(
                f"shim template {self.socket_path}: "
                + ("not ready in time" if not ready else "exited before it was ready")
            )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start_shim(
        self,
        *,
        namespace: str,
        id: str,
        address: str,
        bundle: str,
        env: Mapping[str, str],
        options: bytes = b"",
        debug: bool = False,
    ) -> str:
        """The shim binary's ``start`` action, done in this process: no command run.

        For a supervisor that would run ``<shim> -namespace N -address A -id ID
        start`` in ``bundle`` with ``env`` and ``options`` on stdin: this makes
        the shim's socket and ``address`` file the same way, has the template
        fork the shim (with ``env``, in ``bundle``), joins it to the options'
        cgroup, gives it this process's OOM score + 1, and returns the address
        ``start`` would print; tens of milliseconds sooner (no interpreter to
        start). Raises ``TemplateError`` when the template cannot (then run the
        command as usual), and what ``start`` would fail with otherwise.
        """
        from dockyard.shim.manager import launch

        return launch(
            [self.shim_binary],
            namespace,
            id,
            address,
            bundle=bundle,
            env={**env, ENV: self.socket_path},
            options=options,
            debug=debug,
            oom_parent=os.getpid(),
            command_fallback=False,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """End the template (SIGTERM, then SIGKILL) and remove its socket; the
        shims it forked keep running."""
        import subprocess

        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> Template:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


USAGE = "usage: dockyard-shim-template --socket PATH [--shim SHIM_BINARY] [--die-with-parent]\n"


def main(argv: list[str] | None = None) -> int:
    """``dockyard-shim-template``: serve the shims of whoever runs our shim binary
    with ``DOCKYARD_SHIM_TEMPLATE`` set to the socket (a supervisor starts its
    own; under containerd, give containerd that variable). Ends on SIGTERM."""
    args = sys.argv[1:] if argv is None else argv
    opts: dict[str, str] = {}
    padded = False
    i = 0
    while i < len(args):
        name = args[i]
        if not name.strip():
            padded = True
            i += 1  # room for the shims' command lines (see Template.argv)
            continue
        if name == "--die-with-parent":
            opts[name] = "1"
            i += 1
            continue
        if name not in ("--socket", "--shim") or i + 1 >= len(args):
            sys.stderr.write(USAGE)
            return 2
        opts[name] = args[i + 1]
        i += 2
    if "--socket" not in opts:
        sys.stderr.write(USAGE)
        return 2
    if not padded and argv is None:
        # Started as a command: again, as a supervisor starts it, with room on
        # the command line for each shim's own (written over this one).
        again = Template(
            opts["--socket"],
            shim_binary=opts.get("--shim", ""),
            die_with_parent="--die-with-parent" in opts,
        ).argv()
        os.execv(again[0], again)
    from dockyard.errors import DockyardError

    try:
        return serve(
            opts["--socket"],
            opts.get("--shim", ""),
            ready_fd=1,
            die_with_parent="--die-with-parent" in opts,
        )
    except (DockyardError, OSError) as e:
        sys.stderr.write(f"dockyard-shim-template: {e}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
