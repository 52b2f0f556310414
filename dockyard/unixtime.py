"""Times as the stores keep them: integer nanoseconds since the epoch.

Every SQLite-backed store (images, leases, snapshots, the supervisor's
containers) writes ``time.time_ns()`` and reads it back as an aware UTC
``datetime``. Integers throughout: a float of today's nanoseconds is off by
a few hundred of them, enough to turn a microsecond.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

NANOSECONDS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_unix_nanos(ns: int) -> datetime:
    """``ns`` as an aware UTC datetime, truncated to the microsecond (as
    protobuf's ``Timestamp.ToDatetime`` truncates)."""
    seconds, rest = divmod(ns, NANOSECONDS)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // 1000)


def to_unix_nanos(t: datetime) -> int:
    """An aware datetime as nanoseconds since the epoch (a naive one is UTC)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * NANOSECONDS + delta.microseconds * 1000


def now() -> datetime:
    """The current time as the stores would read it back."""
    return from_unix_nanos(time.time_ns())
