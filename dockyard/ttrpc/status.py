"""The errors a ttrpc call ends with, and how exceptions become statuses."""

from __future__ import annotations

import errno

from dockyard.errors import DockyardError
from dockyard.ttrpc import codes


class Error(DockyardError):
    """A call ended with a non-OK google.rpc.Status.

    ``code`` is the numeric gRPC code, ``message`` the status message and
    ``details`` the status details as ``(type_url, value)`` pairs. Being a
    DockyardError, it passes through the other layers' mappings unchanged:
    ``grpc_code`` is the code's name.
    """

    def __init__(
        self, code: int, message: str, details: tuple[tuple[str, bytes], ...] = ()
    ) -> None:
        super().__init__(message)
        # A raised error is never OK: a handler that raises Error(0, ...) failed.
        self.code = code if code != codes.OK else codes.UNKNOWN
        self.message = message
        self.details = details
        self.grpc_code = codes.name(self.code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.grpc_code}, {self.message!r})"


class ConnectionClosed(Error):
    """The connection ended before the call's response arrived (or before it was sent).

    Every call pending on the connection fails with it at once. Its code is
    UNAVAILABLE, gRPC's code for a transport that went away.
    """

    def __init__(self, message: str) -> None:
        super().__init__(codes.UNAVAILABLE, message)


# Go's ttrpc maps a handler's plain os errors this way (convertCode in its
# services.go); containerd turns the codes back into errdefs errors, so a Go
# client tells "not found" from other failures only through them.
_ERRNO_CODES = {
    errno.ENOENT: codes.NOT_FOUND,
    errno.EEXIST: codes.ALREADY_EXISTS,
    errno.ENOTEMPTY: codes.ALREADY_EXISTS,
    errno.EPERM: codes.PERMISSION_DENIED,
    errno.EACCES: codes.PERMISSION_DENIED,
}


def status_of(exc: BaseException) -> tuple[int, str, tuple[tuple[str, bytes], ...]]:
    """The (code, message, details) a handler's exception is answered with."""
    if isinstance(exc, Error):
        return exc.code, exc.message, exc.details
    message = str(exc) or type(exc).__name__
    if isinstance(exc, DockyardError):
        return codes.from_name(exc.grpc_code), message, ()
    if isinstance(exc, OSError) and exc.errno in _ERRNO_CODES:
        return _ERRNO_CODES[exc.errno], message, ()
    return codes.UNKNOWN, message, ()
