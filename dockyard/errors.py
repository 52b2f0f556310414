"""The one error hierarchy of dockyard.

Every layer raises these; each boundary maps them once: the runtime to exit
codes, the supervisor and shim to gRPC status codes, the engine to HTTP
statuses. Messages are lowercase and say what failed and on what.
"""

from __future__ import annotations


class DockyardError(Exception):
    """Base of every error dockyard raises on purpose."""

    exit_code = 1
    grpc_code = "UNKNOWN"
    http_status = 500


class InvalidArgument(DockyardError):
    """The caller asked for something malformed (bad flag, bad config field)."""

    grpc_code = "INVALID_ARGUMENT"
    http_status = 400


class ConfigError(InvalidArgument):
    """An OCI config.json field is missing, of the wrong type or invalid.

    ``field`` is the JSON path of the offending field, e.g. ``linux.namespaces[2].type``.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"config.json: {field}: {message}" if field else f"config.json: {message}")


class NotFound(DockyardError):
    grpc_code = "NOT_FOUND"
    http_status = 404


class AlreadyExists(DockyardError):
    grpc_code = "ALREADY_EXISTS"
    http_status = 409


class FailedPrecondition(DockyardError):
    """The object is in the wrong state for the operation (e.g. start a running container)."""

    grpc_code = "FAILED_PRECONDITION"
    http_status = 409


class Unsupported(DockyardError):
    """The request is valid but this host or build cannot honour it (AppArmor, Intel RDT, ...)."""

    grpc_code = "UNIMPLEMENTED"
    http_status = 501


class SystemFailure(DockyardError):
    """A kernel or host operation failed; the message names the operation and its target."""

    grpc_code = "INTERNAL"
    http_status = 500
