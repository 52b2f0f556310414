"""Child processes of the shim: starting commands and reaping every exit.

The shim is a child subreaper (``PR_SET_CHILD_SUBREAPER``): a container's
processes are reparented to it when the runtime that forked them exits, and
so are their orphans. One loop reaps them all with ``waitpid(-1)``, so no
other code may wait for a child itself: a runtime command started here is
registered before it can be reaped, and its caller waits for the exit the
loop hands over. Every other exit (container processes, orphans) goes to the
``on_exit`` callback, the shim's task service, which matches it to a process.

``Launcher`` is what the runtime driver needs: start a command, wait for
it. ``Reaper`` is the launcher of the long-running shim; ``DirectLauncher``
the one of short-lived actions (``delete``), where nothing else reaps.
"""

from __future__ import annotations

import os
import signal
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

# Signals the shim ignores or handles that its commands must get back at their
# defaults (Python ignores SIGPIPE and SIGXFSZ; ignoring survives exec).
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


class Exit:
    """One reaped process: its pid, status (128+signal when killed) and when."""

    __slots__ = ("pid", "status", "timestamp_ns")

    def __init__(self, pid: int, status: int, timestamp_ns: int) -> None:
        self.pid = pid
        self.status = status
        self.timestamp_ns = timestamp_ns

    def __repr__(self) -> str:
        return f"Exit(pid={self.pid}, status={self.status})"


def exit_status(wait_status: int) -> int:
    """A ``waitpid`` status as containerd reports it: the code, or 128+signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    return 255


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
        pid = spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr)
        cmd = _DirectCommand(pid)
        return cmd


class _DirectCommand(Command):
    def wait(self) -> int:
        if not self._done.is_set():
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
        with self._lock:
            pid = spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr)
            cmd = Command(pid)
            self._commands[pid] = cmd
        return cmd

    def reap(self) -> list[Exit]:
        """Reap every child that has exited (call on SIGCHLD); return what was reaped."""
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
