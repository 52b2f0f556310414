"""Child processes of the shim: starting commands and reaping every exit.

The shim is a child subreaper (``PR_SET_CHILD_SUBREAPER``): a container's
processes are reparented to it when the runtime that forked them exits, and
so are their orphans. One loop reaps them all with ``waitpid(-1)``, so no
other code may wait for a child itself: a runtime command started here is
registered before it can be reaped, and its caller waits for the exit the
loop hands over. Every other exit (container processes, orphans) goes to the
``on_exit`` callback, the shim's task service, which matches it to a process.

``Launcher`` is what the runtime driver needs: start a command (or fork a
function, for a runtime run as a library), wait for it. ``Reaper`` is the
launcher of the long-running shim; ``DirectLauncher`` the one of short-lived
actions (``delete``), where nothing else reaps.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # not signal: see server.py
import gc
import os
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

# Signals the shim ignores or handles that its commands must get back at their
# defaults (Python ignores SIGPIPE and SIGXFSZ; ignoring survives exec).
_DEFAULT_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)


class Exit:
    """One reaped process: its pid, status (128+signal when killed) and when."""

    __slots__ = ("pid", "status", "timestamp_ns")

    def __init__(self, pid: int, status: int, timestamp_ns: int) -> None:
        self.pid = pid
        self.status = status
        self.timestamp_ns = timestamp_ns

    def __repr__(self) -> str:
        return f"Exit(pid={self.pid}, status={self.status})"


def spawn(
    argv: Sequence[str],
    *,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    extra: Mapping[int, int] | None = None,
    env: Mapping[str, str] | None = None,
    setsid: bool = False,
) -> int:
    """Start ``argv`` (``argv[0]`` a path) with the given fds; return its pid.

    Unset standard streams are ``/dev/null``; ``extra`` maps child fd -> our
    fd. No other fd is inherited (ours are all close-on-exec). The child
    starts with no blocked signals and default dispositions, whatever the
    shim's threads block.
    """
    null = -1
    actions: list[tuple[int, ...]] = []
    try:
        for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
            if fd is None:
                if null < 0:
                    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                fd = null
            actions.append((os.POSIX_SPAWN_DUP2, fd, target))
        for target, fd in (extra or {}).items():
            actions.append((os.POSIX_SPAWN_DUP2, fd, target))
        return os.posix_spawn(
            argv[0],
            list(argv),
            dict(os.environ if env is None else env),
            file_actions=actions,
            setsigmask=(),
            setsigdef=_DEFAULT_SIGNALS,
            setsid=setsid,
        )
    finally:
        if null >= 0:
            os.close(null)


def fork_call(
    fn: Callable[[], int],
    *,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
) -> int:
    """Run ``fn`` in a forked child that looks like a freshly started command; its pid.

    The child gets the given fds as its stdio (unset: ``/dev/null``) and no
    other fd: everything above 2 is closed by range, so no socket, pipe or
    FIFO of the shim reaches it or what it forks, exactly as with ``spawn``.
    No signal is blocked (the shim's threads block some); the dispositions
    are a Python process's own, as a runtime command's would be. Its stdio
    objects are new (another thread may have held the old ones' locks when
    the shim forked) and the cyclic GC is off: a finalizer of an object of
    the shim must not close an fd number the child has reused. It ends with
    ``os._exit`` and ``fn``'s return value, never returning here.

    Only the forking thread exists in the child: ``fn`` must need no lock
    another thread of the shim may hold, and so no module that is not fully
    imported yet unless no other thread can be importing it (see
    ``dockyard.shim.preload``).
    """
    null = -1
    if stdin is None or stdout is None or stderr is None:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    fds = (
        null if stdin is None else stdin,
        null if stdout is None else stdout,
        null if stderr is None else stderr,
    )
    try:
        pid = os.fork()
        if pid == 0:
            _child(fn, fds)
    finally:
        if null >= 0:
            os.close(null)
    return pid


def _child(fn: Callable[[], int], fds: tuple[int, int, int]) -> None:
    code = 1
    try:
        gc.disable()
        # A source among 0-2 that is not its own target would be overwritten
        # by an earlier dup2: move it up first (0-2 are open, so dup gives > 2).
        moved = [fd if fd == i or fd > 2 else os.dup(fd) for i, fd in enumerate(fds)]
        for i, fd in enumerate(moved):
            if fd == i:
                os.set_inheritable(i, True)
            else:
                os.dup2(fd, i)
        _close_from(3)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(  # noqa: SIM115
            2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1
        )
        code = int(fn() or 0)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:
        try:
            os.write(2, f"{type(e).__name__}: {e}\n".encode(errors="replace"))
        except OSError:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            code = code or 1
        os._exit(code)


def _close_from(first: int) -> None:
    """Close every fd from ``first`` up: close_range(2), or one by one on old kernels."""
    from dockyard.runtime import libc

    try:
        libc.close_range(first)
    except OSError:
        os.closerange(first, os.sysconf("SC_OPEN_MAX"))


class Command:
    """A started command; ``wait`` returns its exit status."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._done = threading.Event()
        self._status = -1

    def _set(self, status: int) -> None:
        self._status = status
        self._done.set()

    def wait(self) -> int:
        self._done.wait()
        return self._status


class Launcher:
    """Starts commands and waits for them (the seam the runtime driver uses)."""

    def launch(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> Command:
        raise NotImplementedError

    def call(
        self,
        fn: Callable[[], int],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> Command:
        """Like ``launch``, for ``fn`` run in a forked child (see ``fork_call``)."""
        raise NotImplementedError


class DirectLauncher(Launcher):
    """For a process that reaps nothing else: wait with ``waitpid`` on the pid."""

    def launch(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> Command:
        return _DirectCommand(spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr))

    def call(
        self,
        fn: Callable[[], int],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> Command:
        return _DirectCommand(fork_call(fn, stdin=stdin, stdout=stdout, stderr=stderr))


class _DirectCommand(Command):
    def wait(self) -> int:
        if not self._done.is_set():
            from dockyard.runtime.children import exit_status

            _, status = os.waitpid(self.pid, 0)
            self._set(exit_status(status))
        return self._status


class Reaper(Launcher):
    """Reaps every child of the shim; hands each exit to its waiter or ``on_exit``."""

    def __init__(self, on_exit: Callable[[Exit], None] | None = None) -> None:
        self.on_exit = on_exit
        # Held while a command is started and registered, and while an exit is
        # looked up: an exit reaped in between waits for the registration.
        self._lock = threading.Lock()
        self._commands: dict[int, Command] = {}

    def launch(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> Command:
        return self._register(lambda: spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr))

    def call(
        self,
        fn: Callable[[], int],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> Command:
        return self._register(lambda: fork_call(fn, stdin=stdin, stdout=stdout, stderr=stderr))

    def _register(self, start: Callable[[], int]) -> Command:
        """Start a child with ``start`` and register it before the loop can reap it."""
        with self._lock:
            cmd = Command(start())
            self._commands[cmd.pid] = cmd
        return cmd

    def reap(self) -> list[Exit]:
        """Reap every child that has exited (call on SIGCHLD); return what was reaped."""
        # Imported here, not above: the shim's start command imports this
        # module (for spawn) and needs none of dockyard-runtime.
        from dockyard.runtime.children import exit_status

        reaped: list[Exit] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            reaped.append(Exit(pid, exit_status(status), time.time_ns()))
        for e in reaped:
            with self._lock:
                cmd = self._commands.pop(e.pid, None)
            if cmd is not None:
                cmd._set(e.status)
            elif self.on_exit is not None:
                self.on_exit(e)
        return reaped
