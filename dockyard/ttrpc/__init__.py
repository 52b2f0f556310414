"""ttrpc, containerd's lightweight RPC over unix sockets, without a protobuf runtime.

The shim serves containerd's shim v2 task API with it and the supervisor
serves the events Forward service with it; both interoperate with Go's
ttrpc 1.1 (the one containerd 1.6 vendors). Payloads are raw bytes here:
callers encode their own messages, or use ``register_typed``/``call_typed``
with any class that has ``FromString``/``SerializeToString``.
"""

from dockyard.ttrpc import codes
from dockyard.ttrpc.client import Client
from dockyard.ttrpc.server import Context, Handler, Server
from dockyard.ttrpc.status import ConnectionClosed, Error

__all__ = ["Client", "ConnectionClosed", "Context", "Error", "Handler", "Server", "codes"]
