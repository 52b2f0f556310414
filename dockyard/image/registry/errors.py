"""Registry answers turned into dockyard errors.

A registry reports failures as ``{"errors": [{"code", "message", "detail"}]}``
(distribution-spec, "Error Codes"); each code maps to one dockyard error class.
"""

from __future__ import annotations

import json

from dockyard.errors import DockyardError, InvalidArgument, NotFound, Unsupported


class Unauthorized(DockyardError):
    """The registry or its token server refused the credentials (or their absence)."""

    grpc_code = "UNAUTHENTICATED"
    http_status = 401


class RegistryError(DockyardError):
    """The registry failed or could not be reached (5xx, rate limits, broken connections)."""

    grpc_code = "UNAVAILABLE"
    http_status = 502


_BY_CODE: dict[str, type[DockyardError]] = {
    "BLOB_UNKNOWN": NotFound,
    "BLOB_UPLOAD_UNKNOWN": NotFound,
    "MANIFEST_UNKNOWN": NotFound,
    "NAME_UNKNOWN": NotFound,
    "BLOB_UPLOAD_INVALID": InvalidArgument,
    "DIGEST_INVALID": InvalidArgument,
    "MANIFEST_BLOB_UNKNOWN": InvalidArgument,
    "MANIFEST_INVALID": InvalidArgument,
    "MANIFEST_UNVERIFIED": InvalidArgument,
    "NAME_INVALID": InvalidArgument,
    "SIZE_INVALID": InvalidArgument,
    "TAG_INVALID": InvalidArgument,
    "RANGE_INVALID": InvalidArgument,
    "PAGINATION_NUMBER_INVALID": InvalidArgument,
    "UNAUTHORIZED": Unauthorized,
    "DENIED": Unauthorized,
    "UNSUPPORTED": Unsupported,
}

_BY_STATUS: dict[int, tuple[type[DockyardError], str]] = {
    400: (InvalidArgument, "bad request"),
    401: (Unauthorized, "unauthorized: authentication required"),
    403: (Unauthorized, "denied: access forbidden"),
    404: (NotFound, "not found"),
    405: (Unsupported, "operation not supported by the registry"),
    416: (InvalidArgument, "requested range not satisfiable"),
    429: (RegistryError, "too many requests"),
}


def from_response(what: str, status: int, body: bytes) -> DockyardError:
    """The error for a failed answer; ``what`` names the operation, registry, repo and ref."""
    errors = []
    try:
        doc = json.loads(body) if body else None
        if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
            errors = [e for e in doc["errors"] if isinstance(e, dict)]
    except ValueError:
        pass
    for e in errors:
        code = str(e.get("code", "")).upper()
        message = str(e.get("message") or code.lower().replace("_", " "))
        cls = _BY_CODE.get(code)
        if cls is None:
            cls = _BY_STATUS.get(status, (RegistryError, ""))[0]
        err = cls(f"{what}: {message.lower() if message.isupper() else message}")
        err.registry_code = code  # type: ignore[attr-defined]
        return err
    cls, text = _BY_STATUS.get(status, (RegistryError, f"http status {status}"))
    return cls(f"{what}: {text}")
