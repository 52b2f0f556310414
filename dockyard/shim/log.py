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


def _write(level: str, msg: str) -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"
    line = f'time="{stamp}" level={level} msg={_quote(msg)}{_fields}\n'
    try:
        os.write(2, line.encode(errors="replace"))
    except OSError:
        pass


def debug(msg: str) -> None:
    if _debug:
        _write("debug", msg)


def info(msg: str) -> None:
    _write("info", msg)


def warn(msg: str) -> None:
    _write("warning", msg)


def error(msg: str) -> None:
    _write("error", msg)
