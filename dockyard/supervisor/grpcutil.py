"""What every gRPC service of the supervisor shares.

- ``namespace(context)``: the namespace a request is for, from containerd's
  ``containerd-namespace`` metadata (containerd's ``namespaces`` package).
- ``@rpc``: maps dockyard's errors to gRPC status codes once, here, and turns
  any other exception into INTERNAL with its message: a malformed request
  never takes the daemon down.
- ``batches``: a streamed list in messages of at most 100 entries, as
  containerd sends them.
- ``typed_any``: a record's kept ``Any`` as the message it goes out in.

The timestamp conversions are the API's (``dockyard.api.convert``), shared
with the client; the services import them from there.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import any_pb2

from dockyard.errors import DockyardError, FailedPrecondition
from dockyard.identifiers import validate_identifier

if TYPE_CHECKING:
    from dockyard.supervisor.metadata import Typed

log = logging.getLogger("dockyard.supervisor")

NAMESPACE_KEY = "containerd-namespace"


def namespace_of(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_KEY:
            return str(value)
    return None


def namespace(context: grpc.ServicerContext) -> str:
    """The request's namespace; FAILED_PRECONDITION when missing, as containerd answers."""
    ns = namespace_of(context)
    if not ns:
        raise FailedPrecondition("namespace is required")
    return validate_identifier("namespace", ns)


LIST_BATCH = 100
T = TypeVar("T")


def batches(items: Iterable[T], size: int = LIST_BATCH) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), none when there are none."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


_CODES = {code.name: code for code in grpc.StatusCode}


def _abort(context: grpc.ServicerContext, exc: BaseException, what: str) -> None:
    if isinstance(exc, DockyardError):
        context.abort(_CODES.get(exc.grpc_code, grpc.StatusCode.UNKNOWN), str(exc))
    log.exception("%s failed", what)
    context.abort(grpc.StatusCode.INTERNAL, f"{what}: {type(exc).__name__}: {exc}")


F = TypeVar("F", bound=Callable[..., Any])


def rpc(fn: F) -> F:
    """Wrap a servicer method (unary or response-streaming) with the error mapping."""
    what = fn.__qualname__
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from fn(self, request, context)
            except Exception as e:
                # grpc's abort raises; only ours and unexpected errors get here
                if _aborted(context):
                    raise
                _abort(context, e, what)

        return stream  # type: ignore[return-value]

    @functools.wraps(fn)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as e:
            if _aborted(context):
                raise
            _abort(context, e, what)

    return unary  # type: ignore[return-value]


def _aborted(context: grpc.ServicerContext) -> bool:
    # ServicerContext.abort raises a plain Exception after setting the code:
    # a handler that aborted itself must not be turned into INTERNAL.
    code = context.code()
    return code is not None and code != grpc.StatusCode.OK


def typed_any(value: Typed) -> any_pb2.Any | None:
    """A record's kept ``Any`` (container spec, runtime options) as a message; None if unset."""
    if not value:
        return None
    return any_pb2.Any(type_url=value.type_url, value=value.value)
