"""ttrpc, containerd's lightweight RPC over unix sockets, without a protobuf runtime.

The shim serves containerd's shim v2 task API with it and the supervisor
serves the events Forward service with it; both interoperate with Go's
ttrpc 1.1 (the one containerd 1.6 vendors). Payloads are raw bytes here:
callers encode their own messages, or use ``register_typed``/``call_typed``
with any class that has ``FromString``/``SerializeToString``.
"""

import sys

from dockyard.ttrpc import codes
from dockyard.ttrpc.client import Client
from dockyard.ttrpc.server import Context, Handler, Server
from dockyard.ttrpc.status import ConnectionClosed, Error

__all__ = [
    "Client",
    "ConnectionClosed",
    "Context",
    "Error",
    "Handler",
    "Server",
    "codes",
    "favor_latency",
]

# How long a thread may run Python before one waiting for the GIL gets it.
SWITCH_INTERVAL = 0.0005


def favor_latency() -> None:
    """Hand the GIL over within half a millisecond instead of CPython's 5 ms.

    A request crosses threads in a server (a reader, a handler, a writer,
    and on the caller's side the reader that wakes the waiting caller). A
    thread that wants the GIL while another runs Python waits up to the
    switch interval: measured here as up to 5 ms between a shim's handler
    returning and the supervisor having the answer, about 0.5 ms with this.
    For the processes that serve (the shim, the supervisor), at start.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
