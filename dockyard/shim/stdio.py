"""A process's stdio as containerd hands it to the shim, and the copying.

The client names up to three paths (``stdin``, ``stdout``, ``stderr``):
FIFOs it created and reads/writes itself (what ``ctr`` passes), or
``file:///path`` for output appended to a file. The shim gives the
container pipes (or a pty, for a terminal) and copies between them and
those paths, as containerd-shim-runc-v2 does (pkg/process/io.go):

- output FIFOs are opened read-write, so opening never waits for the
  client and a client that goes away does not make writes fail;
- the stdin FIFO is opened for reading and, once, for writing by the shim
  itself: the container sees end-of-file only after ``CloseIO`` closes that
  writer and the client has closed its own;
- every copy runs in its own thread; ``wait`` tells when the output has all
  been written, which the shim awaits before it reports the exit;
- a terminal's pty master arrives over a console socket from the runtime
  (``--console-socket``); the window size is set on it with ``TIOCSWINSZ``.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import threading
import time

from dockyard.errors import InvalidArgument, SystemFailure, Unsupported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dockyard.shim.runtime import ChildStdio

BUFSIZE = 32 * 1024
# After the process exits, its output is awaited while it keeps flowing: up
# to IDLE_LIMIT seconds from the exit or the last byte read or written,
# whichever is later (a background process may hold the pipe open forever,
# a client stop reading), and never longer than DRAIN_LIMIT in all.
IDLE_LIMIT = 2.0
DRAIN_LIMIT = 30.0
# How often a pty master with no slave open is read again until the process
# exits (it may open its terminal again).
REOPEN_RETRY = 0.1


class Stdio:
    """The stdio paths of a process as the client gave them."""

    __slots__ = ("stderr", "stdin", "stdout", "terminal")

    def __init__(self, stdin: str = "", stdout: str = "", stderr: str = "", terminal: bool = False):
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.terminal = terminal


def _output_path(uri: str, which: str) -> str:
    """The filesystem path of an output URI; ``binary://`` is refused."""
    if "://" not in uri:
        return uri
    scheme, _, rest = uri.partition("://")
    if scheme == "fifo":
        return rest
    if scheme == "file":
        # What containerd's shim takes, Go's url.Parse(uri).Path: no query or
        # fragment, percent-escapes decoded (url.URL.String() writes them).
        rest = rest.partition("#")[0].partition("?")[0]
        if not rest.startswith("/"):
            raise InvalidArgument(f"{which} {uri!r}: a file:// URI needs an absolute path")
        return _unescape(rest, uri, which)
    if scheme == "binary":
        raise Unsupported(f"{which} {uri!r}: binary:// logging is not supported by this shim")
    raise InvalidArgument(f"{which} {uri!r}: unknown stdio scheme {scheme!r}")


def _unescape(path: str, uri: str, which: str) -> str:
    if "%" not in path:
        return path
    first, *escaped = path.split("%")
    out = bytearray(first.encode())
    for part in escaped:
        digits = part[:2]
        if len(digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise InvalidArgument(f"{which} {uri!r}: invalid escape %{digits}")
        out.append(int(digits, 16))
        out += part[2:].encode()
    return os.fsdecode(bytes(out))


def _open_output(uri: str, which: str) -> int:
    path = _output_path(uri, which)
    try:
        if uri.startswith("file://"):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if stat.S_ISFIFO(os.stat(path).st_mode):
            # Read-write: the open does not wait for a reader, and the FIFO
            # keeps a reader (us) should the client's go away.
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidArgument(f"open {which} {path}: {e.strerror}") from None


def _open_stdin(uri: str) -> tuple[int, int]:
    """(read fd, our own write fd) of the stdin FIFO."""
    path = _output_path(uri, "stdin")
    try:
        r = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidArgument(f"open stdin {path}: {e.strerror}") from None
    try:
        w = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        os.close(r)
        raise InvalidArgument(f"open stdin {path}: {e.strerror}") from None
    return r, w


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class _Copier:
    """Copies ``src`` to ``dst`` in a thread until EOF or the owner closes, then
    lets the owner close both (``dst`` once no other copy writes to it). Both
    fds are polled with a wake-up pipe, so a stuck reader or writer never
    keeps the thread past ``ProcessIO.close``."""

    def __init__(self, name: str, src: int, dst: int, owner: ProcessIO) -> None:
        self.src = src
        self.dst = dst
        self.wake = owner.wake_fd
        self.owner = owner
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _wait(self, fd: int, event: int) -> bool:
        """Wait until ``fd`` is ready for ``event``; False when woken to stop."""
        p = select.poll()
        p.register(fd, event | select.POLLHUP | select.POLLERR)
        p.register(self.wake, select.POLLIN)
        while True:
            ready = p.poll()
            if any(fd_ == self.wake for fd_, _ in ready):
                return False
            if ready:
                return True

    def _run(self) -> None:
        try:
            os.set_blocking(self.src, False)
            os.set_blocking(self.dst, False)
            while self._wait(self.src, select.POLLIN):
                try:
                    data = os.read(self.src, BUFSIZE)
                except BlockingIOError:
                    continue
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    # A pty master with no slave open. The process may open
                    # its terminal again (a daemon reopening /dev/tty): only
                    # its exit ends the copy, as containerd's epoll console.
                    if self.owner.exited.is_set():
                        break
                    self.owner.exited.wait(REOPEN_RETRY)
                    continue
                if not data:
                    break
                self.owner.progress = time.monotonic()
                view = memoryview(data)
                while view:
                    if not self._wait(self.dst, select.POLLOUT):
                        return
                    try:
                        n = os.write(self.dst, view)
                    except BlockingIOError:
                        continue
                    # A slow client taking the bytes is progress too.
                    self.owner.progress = time.monotonic()
                    view = view[n:]
        except OSError:
            pass  # the other side went away: nothing more can be copied
        finally:
            self.owner.release(self.src)
            self.owner.release(self.dst)
            self.done.set()


class ProcessIO:
    """The shim's side of one process's stdio: pipes or a pty, and the copies.

    Every fd the shim opens for the process is counted in ``_refs`` (once per
    copy that uses it, once for the process itself) and closed when the
    count drops to zero: a copy releases its fds when it ends, so the client
    sees end-of-file as soon as the output is through; ``close`` releases the
    rest and stops the copies still running.
    """

    def __init__(self, stdio: Stdio) -> None:
        self.stdio = stdio
        self.progress = time.monotonic()
        self._lock = threading.Lock()
        self._refs: dict[int, int] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._copiers: list[_Copier] = []
        self._output: list[_Copier] = []
        self._child: list[int] = []  # the runtime's ends, closed once it started
        self._stdin_writer = -1  # our own writer on the stdin FIFO
        self.console = -1  # the pty master of a terminal
        self.exited = threading.Event()  # the process has exited, or close()
        self._closed = False

    @property
    def wake_fd(self) -> int:
        return self._wake_r

    def _own(self, fd: int) -> int:
        with self._lock:
            self._refs[fd] = self._refs.get(fd, 0) + 1
        return fd

    def release(self, fd: int) -> None:
        with self._lock:
            n = self._refs.get(fd, 0) - 1
            if n > 0:
                self._refs[fd] = n
                return
            if fd not in self._refs:
                return
            del self._refs[fd]
        _close(fd)

    def _copy(self, name: str, src: int, dst: int) -> _Copier:
        self._own(src)
        self._own(dst)
        return _Copier(name, src, dst, self)

    # -- pipes ------------------------------------------------------------

    def open_pipes(self, uid: int = 0, gid: int = 0) -> ChildStdio:
        """Pipes for the runtime and container, copies to the client's paths; the
        fds the runtime command gets."""
        from dockyard.shim.runtime import ChildStdio

        child = ChildStdio()
        opened: dict[str, int] = {}
        try:
            for which in ("stdout", "stderr"):
                uri = getattr(self.stdio, which)
                if not uri:
                    continue
                if which == "stderr" and self.stdio.stdout.startswith("file://"):
                    # containerd's file logging: both streams go to stdout's file.
                    uri = self.stdio.stdout
                dst = opened.get(uri)
                if dst is None:
                    dst = opened[uri] = self._own(_open_output(uri, which))
                r, w = os.pipe2(os.O_CLOEXEC)
                self._child.append(w)
                c = self._copy(which, r, dst)  # from here close() closes r
                self._copiers.append(c)
                self._output.append(c)
                os.fchown(w, uid, gid)
                setattr(child, which, w)
            if self.stdio.stdin:
                src, self._stdin_writer = _open_stdin(self.stdio.stdin)
                try:
                    r, w = os.pipe2(os.O_CLOEXEC)
                except BaseException:
                    _close(src)
                    raise
                self._child.append(r)
                # When the FIFO ends the copy closes w: the container's stdin ends.
                self._copiers.append(self._copy("stdin", src, w))
                os.fchown(r, uid, gid)
                child.stdin = r
        except BaseException:
            for dst in opened.values():
                self.release(dst)
            self.close()
            raise
        # The copies hold the output fds from here on.
        for dst in opened.values():
            self.release(dst)
        return child

    def after_start(self) -> None:
        """The runtime has started the process: drop our copies of its ends, copy."""
        for fd in self._child:
            _close(fd)
        self._child = []
        for c in self._copiers:
            c.thread.start()

    # -- terminal ---------------------------------------------------------

    def attach_console(self, master: int) -> None:
        """Copy between the pty master and the client's paths; resize works on it."""
        self.console = self._own(master)
        try:
            if self.stdio.stdout:
                dst = _open_output(self.stdio.stdout, "stdout")
                c = self._copy("console-out", master, dst)
                self._output.append(c)
                self._copiers.append(c)
            if self.stdio.stdin:
                src, self._stdin_writer = _open_stdin(self.stdio.stdin)
                try:
                    dst = os.dup(master)  # a second fd of the master to write to
                except BaseException:
                    _close(src)
                    raise
                self._copiers.append(self._copy("console-in", src, dst))
        except BaseException:
            self.close()
            raise
        for c in self._copiers:
            c.thread.start()

    def resize(self, width: int, height: int) -> None:
        if self.console < 0:
            return
        import fcntl
        import struct
        import termios

        # uint32 on the wire, 16 bits in a winsize: cut as containerd's uint16() does
        size = struct.pack("HHHH", height & 0xFFFF, width & 0xFFFF, 0, 0)
        # Under the lock: close() may free the fd number meanwhile.
        with self._lock:
            if self.console < 0:
                return
            try:
                fcntl.ioctl(self.console, termios.TIOCSWINSZ, size)
            except OSError as e:
                raise SystemFailure(f"resize console: {e.strerror}") from None

    # -- lifetime ---------------------------------------------------------

    def close_stdin(self) -> None:
        """CloseIO: drop our writer of the stdin FIFO; EOF follows once the client's goes."""
        with self._lock:
            fd, self._stdin_writer = self._stdin_writer, -1
        if fd >= 0:
            _close(fd)

    def wait_output(self) -> bool:
        """The process has exited: wait until the output copies have reached EOF;
        give up once the output has been idle for IDLE_LIMIT since the exit or
        DRAIN_LIMIT has passed. True if all done."""
        self.exited.set()
        now = time.monotonic()
        # Quiet before the exit is not idle: the copy may not have run yet
        # since the process wrote its last bytes and exited.
        self.progress = max(self.progress, now)
        deadline = now + DRAIN_LIMIT
        for c in self._output:
            if c.thread.ident is None:
                continue  # never started
            while not c.done.wait(0.1):
                now = time.monotonic()
                if now > deadline or now - self.progress > IDLE_LIMIT:
                    return False
        return True

    def close(self) -> None:
        """Stop every copy and close every fd; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.exited.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        for c in self._copiers:
            if c.thread.ident is not None:
                c.thread.join()
            else:
                self.release(c.src)
                self.release(c.dst)
        with self._lock:
            console, self.console = self.console, -1
        if console >= 0:
            self.release(console)
        for fd in self._child:
            _close(fd)
        self._child = []
        self.close_stdin()
        _close(self._wake_r)
        _close(self._wake_w)


class ConsoleSocket:
    """A listening unix socket the runtime sends the pty master over (runc's
    ``--console-socket``), in a private directory under ``$TMPDIR``: the
    bundle path may be too long for a socket address."""

    def __init__(self) -> None:
        import socket

        base = os.environ.get("TMPDIR", "/tmp")
        self.dir = os.path.join(base, "pty" + os.urandom(8).hex())
        os.mkdir(self.dir, 0o700)
        self.path = os.path.join(self.dir, "pty.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(self.path)
            self.sock.listen(1)
        except OSError:
            self.close()
            raise

    def receive_master(self, timeout: float = 30.0) -> int:
        """The pty master fd the runtime sent (it connected during create/exec)."""
        import socket

        self.sock.settimeout(timeout)
        try:
            conn, _ = self.sock.accept()
        except (TimeoutError, OSError) as e:
            raise SystemFailure(f"receive console master: {e}") from None
        with conn:
            conn.settimeout(timeout)
            try:
                # Close-on-exec as they arrive: a runtime command another
                # thread spawns meanwhile must not inherit them. Not
                # socket.recv_fds, which drops its flags (Python < 3.13).
                _, ancillary, _, _ = conn.recvmsg(
                    4096, socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC
                )
            except OSError as e:
                raise SystemFailure(f"receive console master: {e}") from None
        fds: list[int] = []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += memoryview(data[: len(data) - len(data) % 4]).cast("i").tolist()
        if not fds:
            raise SystemFailure("receive console master: the runtime sent no fd")
        for extra in fds[1:]:
            _close(extra)
        return fds[0]

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass
