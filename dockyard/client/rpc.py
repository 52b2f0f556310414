"""The connection under every service wrapper: one gRPC channel, the request
metadata containerd expects, and the one mapping of gRPC status codes back to
dockyard's errors.

containerd reads the namespace of a request from the ``containerd-namespace``
metadata key and the lease it runs under from ``containerd-lease``
(containerd's ``namespaces`` and ``leases`` packages); a request without a
namespace is refused. The lease is held in a context variable so that
``with client.lease():`` in one thread does not put other threads' requests
under it, as the Go client keeps it in a ``context.Context``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from dockyard.errors import (
    AlreadyExists,
    DockyardError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SystemFailure,
    Unsupported,
)

NAMESPACE_KEY = "containerd-namespace"
LEASE_KEY = "containerd-lease"

# containerd's client takes up to 16 MiB per message either way (its
# defaults.DefaultMaxRecvMsgSize / DefaultMaxSendMsgSize).
MAX_MESSAGE_SIZE = 16 << 20

# The reverse of the errors' own ``grpc_code``, for the codes containerd's
# errdefs.FromGRPC knows; it reads OUT_OF_RANGE as an invalid argument too.
_ERRORS: dict[grpc.StatusCode, type[DockyardError]] = {
    grpc.StatusCode[cls.grpc_code]: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Unsupported)
}
_ERRORS[grpc.StatusCode.OUT_OF_RANGE] = InvalidArgument

# Codes that say the call did not reach a server's answer: the message is
# grpc's own, so it is prefixed with what was asked and of whom.
_TRANSPORT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


def from_grpc(err: grpc.RpcError, what: str = "") -> DockyardError:
    """The dockyard error for a failed gRPC call (containerd's ``errdefs.FromGRPC``).

    NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT, FAILED_PRECONDITION and
    UNIMPLEMENTED map to their namesakes; every other code is a
    SystemFailure. The server's message is kept as it is: containerd's and
    dockyard's already say what failed and on what.
    """
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    message = details or code.name.lower().replace("_", " ")
    if code in _TRANSPORT and what:
        message = f"{what}: {code.name.lower().replace('_', ' ')}: {message}"
    cls = _ERRORS.get(code, SystemFailure)
    return cls(message)


_T = TypeVar("_T")

# Calls that take as long as they take (a wait, a subscription, a stream of
# a large blob) pass this as their timeout.
NO_TIMEOUT: float | None = None


class _Default:
    """The client's own timeout, as opposed to a given one or none."""


DEFAULT = _Default()


class Connection:
    """A channel to the daemon and the namespace and lease requests carry.

    ``with_namespace`` gives a view on the same channel; only the connection
    that opened the channel closes it.
    """

    def __init__(
        self,
        address: str,
        namespace: str,
        timeout: float | None,
        *,
        channel: grpc.Channel | None = None,
        lease: contextvars.ContextVar[str | None] | None = None,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.timeout = timeout
        self._owner = channel is None
        self.channel: grpc.Channel = channel or grpc.insecure_channel(
            "unix:" + address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
                ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
            ],
        )
        # One variable per daemon: views in other namespaces share the lease
        # of the code running, as the Go client's context carries both.
        self.lease_var: contextvars.ContextVar[str | None] = lease or contextvars.ContextVar(
            "containerd-lease", default=None
        )
        self._stubs: dict[type, Any] = {}

    def view(self, namespace: str) -> Connection:
        return Connection(
            self.address, namespace, self.timeout, channel=self.channel, lease=self.lease_var
        )

    def wait_ready(self, timeout: float) -> None:
        """Block until the channel connects; SystemFailure after ``timeout`` seconds."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise SystemFailure(
                f"connect to {self.address}: no answer within {timeout:g}s"
            ) from None

    def close(self) -> None:
        if self._owner:
            self.channel.close()

    def stub(self, cls: Callable[[grpc.Channel], _T]) -> _T:
        """The generated stub ``cls`` on this channel (made once)."""
        key = cls if isinstance(cls, type) else type(cls)
        found = self._stubs.get(key)
        if found is None:
            found = self._stubs[key] = cls(self.channel)
        return found

    def metadata(self) -> list[tuple[str, str]]:
        md = [(NAMESPACE_KEY, self.namespace)]
        lease = self.lease_var.get()
        if lease:
            md.append((LEASE_KEY, lease))
        return md

    def call(self, method: Any, request: Any, *, timeout: float | _Default | None = DEFAULT) -> Any:
        """A unary call; a failure is raised as the dockyard error for its code."""
        deadline = self.timeout if isinstance(timeout, _Default) else timeout
        try:
            return method(request, metadata=self.metadata(), timeout=deadline)
        except grpc.RpcError as e:
            raise from_grpc(e, self._what(method)) from None

    def stream(self, method: Any, request: Any) -> Iterator[Any]:
        """A server-streaming call's responses, with errors mapped; no deadline."""
        responses = method(request, metadata=self.metadata())
        try:
            yield from responses
        except grpc.RpcError as e:
            raise from_grpc(e, self._what(method)) from None
        finally:
            responses.cancel()

    def _what(self, method: Any) -> str:
        name = getattr(method, "_method", b"")
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        return f"{name or 'call'} on {self.address}"
