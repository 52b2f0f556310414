"""The ttrpc events endpoint shims publish to: ``containerd.services.events.ttrpc.v1.Events``.

A shim learns the address from ``TTRPC_ADDRESS`` in its environment and
forwards each task event (``/tasks/exit``, ``/tasks/start``, ...) there, in
an envelope with its own timestamp and namespace (containerd's
``services/events/ttrpc.go``). Each envelope is decoded and checked as the
gRPC Forward's are (``services.events.from_message``) and handed to the
exchange as it came; one it refuses is refused here, so the shim sees the
error.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2

from dockyard.api.services.ttrpc.events.v1 import events_pb2
from dockyard.errors import SystemFailure
from dockyard.supervisor.daemon import remove_stale_socket
from dockyard.supervisor.services.events import from_message
from dockyard.ttrpc import Context, Server

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor

log = logging.getLogger("dockyard.supervisor")

SERVICE = "containerd.services.events.ttrpc.v1.Events"


def forward(sup: Supervisor, request: events_pb2.ForwardRequest, ctx: Context) -> empty_pb2.Empty:
    sup.events.forward(from_message(request.envelope))
    return empty_pb2.Empty()


def serve(sup: Supervisor) -> Server:
    """Listen on the config's ttrpc address (mode 0660) until the daemon stops."""
    address = sup.config.ttrpc_address
    os.makedirs(os.path.dirname(address), mode=0o711, exist_ok=True)
    remove_stale_socket(address)
    server = Server()
    server.register_typed(
        SERVICE,
        {"Forward": (events_pb2.ForwardRequest, lambda req, ctx: forward(sup, req, ctx))},
    )
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address)
        os.chmod(address, 0o660)
        os.chown(address, 0, sup.config.gid)
        listener.listen(128)
    except OSError as e:
        listener.close()
        raise SystemFailure(f"listen on {address}: {e.strerror or e}") from None
    server.serve_in_thread(listener)
    log.info("serving ttrpc events on %s", address)

    def close() -> None:
        server.close()
        try:
            os.unlink(address)
        except FileNotFoundError:
            pass

    sup.on_close(close)
    return server
