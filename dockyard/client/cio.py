"""A task's or exec's stdio: FIFOs the shim opens, copied to and from Python streams.

As containerd's ``cio`` package: a *creator* is called with the process id
and makes an :class:`IO` whose ``config`` (the FIFO paths and whether there
is a terminal) goes into the task's create or exec request. The FIFOs live
in a fresh directory under a root (``<id>-stdin``, ``<id>-stdout``,
``<id>-stderr``, as ``cio.NewFIFOSetInDir``), and threads copy:

- stdin: from ``bytes`` or a binary file into the FIFO, then close it, so
  the process reads end of file;
- stdout, stderr: from the FIFO into a binary file object (``io.BytesIO`` to
  capture) until the shim closes its end, which it does once the process
  and whatever else held its stdio are gone.

Each FIFO is opened by its thread, which blocks until the shim opens the
other end (containerd's ``fifo.OpenFifo`` with ``O_NONBLOCK`` does the
same in a goroutine). ``cancel()`` unblocks the opens that have not
happened, for a process that never started; ``wait()`` waits for the
output copies; ``close()`` removes the FIFOs and their directory. Each
copy closes its own end of its FIFO when it is done.

With a terminal there is no stderr: the shim sends the terminal's output
to stdout. ``null_io`` gives a process no stdio at all, and ``log_uri``
hands the shim a ``file://`` or ``binary://`` URI to write to itself.
``attach`` opens the FIFOs of a process that is already running (after the
client restarted), without creating them.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO as FileIO
from typing import Protocol

from dockyard.errors import SystemFailure

DEFAULT_FIFO_ROOT = "/run/dockyard/fifo"
_CHUNK = 32 << 10

Source = bytes | FileIO[bytes]


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class Config:
    """What the create or exec request says about stdio."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


class _Fifo:
    """One FIFO opened by a copy thread; its pending open can be cancelled.

    The descriptor belongs to the thread alone: it is closed by the thread
    once the copy ends, never from outside, where its number could already
    name another file by the time the thread used it again.
    """

    def __init__(self, path: str, flags: int) -> None:
        self.path = path
        self._flags = flags
        self._lock = threading.Lock()
        self._opened = threading.Event()
        self._cancelled = False
        self._unblock: int | None = None
        self.fd: int | None = None

    def open(self) -> int | None:
        """Block until the other end opens; None if cancelled first."""
        try:
            fd: int | None = os.open(self.path, self._flags | os.O_CLOEXEC)
        except OSError:
            self._opened.set()
            raise
        with self._lock:
            self._opened.set()
            if self._cancelled and fd is not None:
                os.close(fd)
                fd = None
            self.fd = fd
        return fd

    def cancel(self) -> None:
        """Make a pending open return (and be abandoned); no effect once opened."""
        with self._lock:
            if self._opened.is_set() or self._cancelled:
                return
            self._cancelled = True
            # Opening read-write never blocks on Linux and counts as both
            # ends, so the thread's open returns; it is closed right after.
            try:
                self._unblock = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                self._unblock = None
        if self._unblock is not None:
            self._opened.wait()
            os.close(self._unblock)
            self._unblock = None

    def close(self) -> None:
        with self._lock:
            fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


class IO:
    """A process's stdio: the config for the request, and the copies behind it."""

    def __init__(self, config: Config, remove: Callable[[], None] | None = None) -> None:
        self.config = config
        self._remove = remove  # removes the FIFOs (and their directory)
        self._fifos: list[_Fifo] = []
        self._copies: list[threading.Thread] = []  # stdout and stderr: waited for
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stdin_done = False
        self._stdin_sent = False
        self._on_stdin_done: Callable[[], None] | None = None

    def _start(self, name: str, target: Callable[[], None]) -> threading.Thread:
        t = threading.Thread(target=self._guard(target), name=name, daemon=True)
        t.start()
        return t

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as e:  # kept for the caller: a thread cannot raise
                self.errors.append(e)

        return run

    def copy_out(self, path: str, sink: Sink) -> None:
        fifo = _Fifo(path, os.O_RDONLY)
        self._fifos.append(fifo)

        def copy() -> None:
            fd = fifo.open()
            if fd is None:
                return
            try:
                while True:
                    data = os.read(fd, _CHUNK)
                    if not data:
                        break
                    sink.write(data)
                flush = getattr(sink, "flush", None)
                if callable(flush):
                    flush()
            finally:
                fifo.close()

        self._copies.append(self._start(f"copy {os.path.basename(path)}", copy))

    def copy_in(self, path: str, source: Source) -> None:
        fifo = _Fifo(path, os.O_WRONLY)
        self._fifos.append(fifo)

        def copy() -> None:
            try:
                fd = fifo.open()
            except OSError:
                self._stdin_finished(False)
                raise
            if fd is None:
                self._stdin_finished(False)
                return
            try:
                if isinstance(source, bytes | bytearray | memoryview):
                    _write_all(fd, bytes(source))
                else:
                    while True:
                        data = source.read(_CHUNK)
                        if not data:
                            break
                        _write_all(fd, data)
            except BrokenPipeError:
                pass  # the process closed its stdin: nothing more to send
            finally:
                fifo.close()
                self._stdin_finished(True)

        self._start(f"copy {os.path.basename(path)}", copy)

    def _stdin_finished(self, sent: bool) -> None:
        with self._lock:
            self._stdin_done, self._stdin_sent = True, sent
            callback = self._on_stdin_done if sent else None
            self._on_stdin_done = None
        if callback is not None:
            callback()

    def on_stdin_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once stdin has all been sent (now, if it has).

        The shims keep a writer of their own on the stdin FIFO, so the
        process reads end of file only once it is told to close it (a
        ``CloseIO``): the task handles do that here, as dockerd does when
        its stdin copy ends. Never called without a stdin to copy.
        """
        with self._lock:
            if not self._stdin_done:
                self._on_stdin_done = callback
                return
            sent = self._stdin_sent
        if sent:
            callback()

    def cancel(self) -> None:
        """Abandon every FIFO the shim has not opened (the process never started)."""
        for fifo in self._fifos:
            fifo.cancel()

    def wait(self, timeout: float | None = None) -> None:
        """Wait until stdout and stderr are copied to the end."""
        for t in self._copies:
            t.join(timeout)

    def close(self) -> None:
        """Remove the FIFOs (call after the process is deleted).

        Pending opens are abandoned; a copy still running ends by itself
        when the shim closes its end, and closes its own descriptor then.
        """
        self.cancel()
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


Creator = Callable[[str], IO]
"""Makes a process's IO given its id (the container id, or the exec id)."""

Attach = Callable[[Config], IO]
"""Opens the stdio of a running process, given the config it was created with."""


def _mkfifo(path: str) -> None:
    try:
        os.mkfifo(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise SystemFailure(f"mkfifo {path}: {e.strerror or e}") from None


def new_fifo_dir(root: str) -> str:
    """A private directory for one process's FIFOs under ``root``."""
    try:
        os.makedirs(root, 0o700, exist_ok=True)
        return tempfile.mkdtemp(dir=root)
    except OSError as e:
        raise SystemFailure(f"fifo dir under {root}: {e.strerror or e}") from None


def streams(
    stdin: Source | None = None,
    stdout: Sink | None = None,
    stderr: Sink | None = None,
    *,
    terminal: bool = False,
    fifo_root: str = DEFAULT_FIFO_ROOT,
) -> Creator:
    """A creator copying ``stdin`` in and the output to ``stdout``/``stderr``
    (``cio.NewCreator(cio.WithStreams(...), cio.WithFIFODir(...))``).

    Without stdin the process's stdin is empty; output without a stream to
    go to is discarded. With ``terminal`` the output all comes on stdout.
    With no stream at all the process gets no stdio (as ``null_io``).
    """

    def create(id: str) -> IO:
        if stdin is None and stdout is None and stderr is None:
            return null_io(id)
        directory = new_fifo_dir(fifo_root)
        try:
            # containerd's runc shim copies stdout and stderr whenever a
            # process has any stdio, and fails on an empty path: both are
            # always FIFOs (stderr not with a terminal), as ctr makes them.
            paths = {
                name: os.path.join(directory, f"{id}-{name}")
                for name, wanted in (
                    ("stdin", stdin is not None),
                    ("stdout", True),
                    ("stderr", not terminal),
                )
                if wanted
            }
            for path in paths.values():
                _mkfifo(path)
            config = Config(
                paths.get("stdin", ""), paths.get("stdout", ""), paths.get("stderr", ""), terminal
            )
            io = IO(config, lambda: shutil.rmtree(directory, ignore_errors=True))
            _start_copies(io, config, stdin, stdout, stderr)
            return io
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    return create


class _Discard:
    def write(self, data: bytes, /) -> int:
        return len(data)


_DISCARD = _Discard()


def _start_copies(
    io: IO, config: Config, stdin: Source | None, stdout: Sink | None, stderr: Sink | None
) -> None:
    """Copy into the stdin FIFO, and out of the output FIFOs (what has no
    sink is read and discarded, so the process never blocks on it)."""
    # a log URI (file://, binary://) is the shim's to write, not a FIFO of ours
    if config.stdin and "://" not in config.stdin and stdin is not None:
        io.copy_in(config.stdin, stdin)
    if config.stdout and "://" not in config.stdout:
        io.copy_out(config.stdout, stdout or _DISCARD)
    if config.stderr and "://" not in config.stderr:
        io.copy_out(config.stderr, stderr or _DISCARD)


def null_io(id: str) -> IO:
    """No stdio: the process gets /dev/null for all three (``cio.NullIO``)."""
    return IO(Config())


def log_uri(uri: str) -> Creator:
    """Stdout and stderr to a URI the shim handles itself (``cio.LogURI``):
    ``file:///path`` appends to a file, ``binary:///path?args`` runs a logger."""

    def create(id: str) -> IO:
        return IO(Config(stdout=uri, stderr=uri))

    return create


def attach(
    stdin: Source | None = None, stdout: Sink | None = None, stderr: Sink | None = None
) -> Attach:
    """Reopen the FIFOs of a running process (``cio.NewAttach``), after a
    restart of the client; none is created. Closing the IO removes the FIFOs
    and, once empty, their directories, as the Go client's ``loadFifos``."""

    def open_existing(config: Config) -> IO:
        paths = [p for p in (config.stdin, config.stdout, config.stderr) if p and "://" not in p]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise SystemFailure(
                f"attach: {os.strerror(errno.ENOENT).lower()}: {', '.join(missing)}"
            )
        io = IO(config, lambda: _remove_fifos(paths))
        _start_copies(io, config, stdin, stdout, stderr)
        return io

    return open_existing


def _remove_fifos(paths: list[str]) -> None:
    for p in paths:
        try:
            if stat.S_ISFIFO(os.lstat(p).st_mode):
                os.remove(p)
        except OSError:
            pass
    for d in {os.path.dirname(p) for p in paths}:
        try:
            os.rmdir(d)  # only if nothing else is in it
        except OSError:
            pass
