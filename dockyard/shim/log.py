"""The shim's log: logrus-style text lines on stderr.

The long-running shim's stderr is the ``log`` FIFO of its bundle, which
containerd copies into its own log (runtime/v2/README.md "Debugging and Shim
Logs"). Writing never blocks or fails the shim: the FIFO is non-blocking and
a line that does not fit is dropped. The ``logging`` package is not used; it
costs start-up time and memory for what is one line per event.
"""

from __future__ import annotations

import os
import time

_debug = False
_fields = ""


def configure(*, debug: bool = False, **fields: str) -> None:
    """Debug lines on or off; fields added to every line (namespace, id)."""
    global _debug, _fields
    _debug = debug
    _fields = "".join(f" {k}={_quote(v)}" for k, v in fields.items())


def _quote(v: str) -> str:
    if v and all(c.isalnum() or c in "-_./:" for c in v):
        return v
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def line(level: str, msg: str) -> bytes:
    """One log line as the shim writes it."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"
    return f'time="{stamp}" level={level} msg={_quote(msg)}{_fields}\n'.encode(errors="replace")


def _write(level: str, msg: str) -> None:
    try:
        os.write(2, line(level, msg))
    except OSError:
        pass


def to_fifo(level: str, msg: str, path: str = "log") -> None:
    """A line for containerd's log from a short-lived action, whose stderr is
    its answer: into the bundle's ``log`` FIFO, if someone reads it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, line(level, msg))
    except OSError:
        pass
    finally:
        os.close(fd)


def debug(msg: str) -> None:
    if _debug:
        _write("debug", msg)


def info(msg: str) -> None:
    _write("info", msg)


def warn(msg: str) -> None:
    _write("warning", msg)


def error(msg: str) -> None:
    _write("error", msg)
