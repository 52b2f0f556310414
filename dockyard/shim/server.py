"""The long-running shim: the task API on its socket, the reaper on its signals.

Started by ``start`` with the listening socket as fd 3 (or ``-socket``), in
the bundle directory. It logs to the bundle's ``log`` FIFO when containerd
has one open, becomes a child subreaper, and blocks SIGCHLD, SIGTERM,
SIGINT and SIGUSR2 in every thread: the main thread takes them with
``sigwait``, reaping on SIGCHLD, ending on SIGTERM/SIGINT, and on SIGUSR2
when ``Shutdown`` asked it to. The ttrpc server, the event publisher, the
stdio copies and the exit handlers run in threads of their own.
"""

from __future__ import annotations

# _signal, not signal: sigwait may return a number with no enum member, and
# signal.py imports enum (and functools) on every shim start.
import _signal  # type: ignore[import-not-found]
import _socket  # not socket: see dockyard.ttrpc.wire
import os
import threading

from dockyard.shim import log, preload
from dockyard.shim.manager import read_address, remove_socket
from dockyard.shim.publisher import Publisher
from dockyard.shim.reaper import Reaper
from dockyard.shim.service import TASK_SERVICE, TaskService
from dockyard.ttrpc import Server, favor_latency

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dockyard.shim.main import Flags

SIGNALS = {_signal.SIGCHLD, _signal.SIGTERM, _signal.SIGINT, _signal.SIGUSR2}
# How long the ending shim waits for its last answers and events to go out.
DRAIN_TIMEOUT = 5.0


def _log_to_fifo() -> None:
    """stderr -> the bundle's ``log`` FIFO, if containerd holds it open for reading."""
    try:
        fd = os.open("log", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return  # no FIFO (a supervisor that does not read shim logs)
    os.dup2(fd, 2)
    os.close(fd)


def _set_subreaper() -> None:
    from dockyard.runtime import libc

    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)


def _timed(name: str, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """A handler that logs each call and how long it took (with -debug)."""
    import time

    def call(req: Any, ctx: Any) -> Any:
        t0 = time.monotonic()
        try:
            return fn(req, ctx)
        finally:
            log.debug(f"{name} {getattr(req, 'id', '')} {(time.monotonic() - t0) * 1000:.1f} ms")

    return call


def _preload() -> None:
    """Everything a fork of this shim may import, while no other thread exists
    (see ``preload``), when it will run dockyard-runtime in-process; done
    already in a shim forked from the template. A shim that runs its runtime
    as a command forks no Python and imports lazily, as it always did."""
    if preload.loaded("runtime"):
        return
    from dockyard.shim.container import shim_dir
    from dockyard.shim.runtime import default_runs_in_process

    if default_runs_in_process(shim_dir()):
        preload.shim()
        preload.runtime()


def serve(flags: Flags) -> int:
    favor_latency()
    _preload()
    if flags.bundle:
        os.chdir(flags.bundle)
    _log_to_fifo()
    log.configure(debug=flags.debug, namespace=flags.namespace, pid=str(os.getpid()))
    # Before any thread exists, so that every thread inherits the mask.
    _signal.pthread_sigmask(_signal.SIG_BLOCK, SIGNALS)
    _set_subreaper()
    if flags.socket:
        from dockyard.shim.manager import new_socket

        listener = new_socket("unix://" + flags.socket)
    else:
        listener = _socket.socket(fileno=3)
        # Inherited as fd 3: no command the shim starts may inherit it too.
        os.set_inheritable(listener.fileno(), False)

    ending = threading.Event()

    def request_shutdown() -> None:
        ending.set()
        os.kill(os.getpid(), _signal.SIGUSR2)

    publisher = Publisher(os.environ.get("TTRPC_ADDRESS", ""), flags.namespace)
    reaper = Reaper()
    service = TaskService(flags.namespace, publisher, reaper, request_shutdown)
    reaper.on_exit = service.on_exit
    server = Server()
    handlers = service.handlers()
    if flags.debug:
        handlers = {name: (cls, _timed(name, fn)) for name, (cls, fn) in handlers.items()}
    server.register_typed(TASK_SERVICE, handlers)
    server.serve_in_thread(listener)
    log.info("serving the task api")

    while True:
        sig = _signal.sigwait(SIGNALS)
        if sig == _signal.SIGCHLD:
            reaper.reap()
        elif sig in (_signal.SIGTERM, _signal.SIGINT):
            log.info(f"caught signal {sig}: ending")
            break
        elif ending.is_set():
            break

    server.shutdown()
    server.wait(DRAIN_TIMEOUT)
    service.wait_exits(DRAIN_TIMEOUT)
    if not publisher.close(DRAIN_TIMEOUT):
        log.error("publisher not closed: events may be lost")
    address = read_address(".")
    if address:
        remove_socket(address)
    elif flags.socket:
        remove_socket("unix://" + flags.socket)
    return 0
