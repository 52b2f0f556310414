"""Capabilities of the container process (config.md "process.capabilities").

The init process applies them in two phases around its change of user, in
the order runc's ``finalizeNamespace`` uses:

1. ``apply_before_setuid``: drop from the bounding set every capability not
   listed in ``bounding`` (this needs CAP_SETPCAP, which is still effective
   here), then set PR_SET_KEEPCAPS so that setuid(2) to a non-zero uid keeps
   the permitted set instead of clearing it.
2. the caller changes groups, gid and uid;
3. ``apply_after_setuid``: clear PR_SET_KEEPCAPS, capset(2) the effective,
   permitted and inheritable sets, then clear the ambient set and raise each
   ambient capability.

Every kernel call goes through a ``sys`` object (default: the libc seam), so
the order and the masks can be checked by a test that records the calls.
"""

from __future__ import annotations

import os
import sys as _sys

from dockyard.errors import ConfigError, InvalidArgument, SystemFailure
from dockyard.runtime import libc
from dockyard.spec.runtime import CAPABILITIES, CAPABILITY_SETS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    class CapSyscalls(Protocol):
        """What this module needs of the kernel; ``dockyard.runtime.libc`` provides it."""

        PR_SET_KEEPCAPS: int
        PR_CAPBSET_DROP: int
        PR_CAP_AMBIENT: int
        PR_CAP_AMBIENT_RAISE: int
        PR_CAP_AMBIENT_CLEAR_ALL: int

        def prctl(
            self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0
        ) -> int: ...

        def capget(self, pid: int = 0) -> tuple[int, int, int]: ...

        def capset(self, effective: int, permitted: int, inheritable: int) -> None: ...


CAP_SETPCAP = 8
SETS = CAPABILITY_SETS
CAP_LAST_CAP_PATH = "/proc/sys/kernel/cap_last_cap"


def cap_number(name: str) -> int:
    """The kernel's number for a capability name such as ``CAP_CHOWN``."""
    try:
        return CAPABILITIES[name]
    except KeyError:
        raise InvalidArgument(f"unknown capability {name!r}") from None


def cap_names() -> list[str]:
    """Every capability name known to dockyard, in the kernel's order."""
    return sorted(CAPABILITIES, key=CAPABILITIES.__getitem__)


def last_cap(path: str = CAP_LAST_CAP_PATH) -> int:
    """The highest capability number this kernel knows."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        # Kernels older than 3.2 lack the file; fall back to our own table.
        return max(CAPABILITIES.values())


def _warn_stderr(message: str) -> None:
    _sys.stderr.write(f"warning: {message}\n")


class CapSets:
    """The five capability sets as 64-bit masks, ready for the kernel.

    ``ignored`` lists names known to the spec but not to this kernel (above
    cap_last_cap); the runtime-spec asks for a warning, not a failure.
    """

    __slots__ = ("ambient", "bounding", "effective", "ignored", "inheritable", "last", "permitted")

    def __init__(
        self,
        bounding: int = 0,
        effective: int = 0,
        inheritable: int = 0,
        permitted: int = 0,
        ambient: int = 0,
        *,
        last: int = 63,
        ignored: list[str] | None = None,
    ) -> None:
        self.bounding = bounding
        self.effective = effective
        self.inheritable = inheritable
        self.permitted = permitted
        self.ambient = ambient
        self.last = last
        self.ignored = ignored if ignored is not None else []

    def __repr__(self) -> str:
        return (
            f"CapSets(bounding={self.bounding:#x}, effective={self.effective:#x}, "
            f"inheritable={self.inheritable:#x}, permitted={self.permitted:#x}, "
            f"ambient={self.ambient:#x}, last={self.last})"
        )


def parse_capabilities(
    caps: dict[str, Any] | None,
    *,
    last: int | None = None,
    field: str = "process.capabilities",
) -> CapSets:
    """Validate ``process.capabilities`` and turn it into masks.

    A name dockyard does not know is a config error; a name the spec knows
    but this kernel does not (number above ``last``) is left out and listed
    in ``CapSets.ignored``. An absent set is empty, as in runc.
    """
    if last is None:
        last = last_cap()
    sets = CapSets(last=last)
    if caps is None:
        return sets
    if not isinstance(caps, dict):
        raise ConfigError(field, "must be an object")
    for key in caps:
        if key not in SETS:
            raise ConfigError(f"{field}.{key}", "unknown capability set")
    ignored: set[str] = set()
    for which in SETS:
        names = caps.get(which)
        if names is None:
            continue
        if not isinstance(names, list):
            raise ConfigError(f"{field}.{which}", "must be an array of strings")
        mask = 0
        for i, name in enumerate(names):
            if not isinstance(name, str):
                raise ConfigError(f"{field}.{which}[{i}]", "must be a string")
            number = CAPABILITIES.get(name)
            if number is None:
                raise ConfigError(f"{field}.{which}[{i}]", f"unknown capability {name!r}")
            if number > last:
                ignored.add(name)
                continue
            mask |= 1 << number
        setattr(sets, which, mask)
    sets.ignored = sorted(ignored, key=CAPABILITIES.__getitem__)
    return sets


def validate_capabilities(caps: Any, field: str = "process.capabilities") -> None:
    """Check names and types only, without asking the kernel (for ``create``)."""
    parse_capabilities(caps, last=max(CAPABILITIES.values()), field=field)


def _name(number: int) -> str:
    for name, n in CAPABILITIES.items():
        if n == number:
            return name
    return f"capability {number}"


def _fail(what: str, err: OSError) -> SystemFailure:
    reason = os.strerror(err.errno) if err.errno else str(err)
    return SystemFailure(f"{what}: {reason.lower()}")


def drop_bounding_set(
    sets: CapSets,
    *,
    sys: CapSyscalls = libc,
    warn: Callable[[str], None] = _warn_stderr,
) -> None:
    """PR_CAPBSET_DROP every capability up to cap_last_cap not in ``sets.bounding``."""
    effective = sys.capget()[0]
    if not effective & (1 << CAP_SETPCAP):
        # As runc: without CAP_SETPCAP the bounding set cannot shrink; the
        # capset below still limits what the process holds.
        warn("cannot drop capabilities from the bounding set without CAP_SETPCAP")
        return
    for number in range(sets.last + 1):
        if sets.bounding & (1 << number):
            continue
        try:
            sys.prctl(sys.PR_CAPBSET_DROP, number)
        except OSError as e:
            if e.errno == 22:  # EINVAL: not a capability this kernel knows
                continue
            raise _fail(f"drop {_name(number)} from the bounding set", e) from None


def set_keepcaps(keep: bool, *, sys: CapSyscalls = libc) -> None:
    """PR_SET_KEEPCAPS: keep the permitted set across a setuid away from uid 0."""
    try:
        sys.prctl(sys.PR_SET_KEEPCAPS, 1 if keep else 0)
    except OSError as e:
        raise _fail(f"{'set' if keep else 'clear'} keep-capabilities", e) from None


def apply_before_setuid(
    sets: CapSets | None,
    *,
    sys: CapSyscalls = libc,
    warn: Callable[[str], None] = _warn_stderr,
) -> None:
    """Phase 1, before setgroups/setgid/setuid: shrink the bounding set, keep caps.

    ``None`` (no ``process.capabilities`` in the config) leaves the sets as
    they are, as runc does.
    """
    if sets is not None:
        drop_bounding_set(sets, sys=sys, warn=warn)
    set_keepcaps(True, sys=sys)


def apply_after_setuid(
    sets: CapSets | None,
    *,
    sys: CapSyscalls = libc,
    warn: Callable[[str], None] = _warn_stderr,
) -> None:
    """Phase 2, after the change of user: the process's own sets, then ambient."""
    set_keepcaps(False, sys=sys)
    if sets is None:
        return
    try:
        sys.capset(sets.effective, sets.permitted, sets.inheritable)
    except OSError as e:
        hint = ""
        if e.errno == 1 and sets.effective & ~sets.permitted:
            hint = " (effective set is not a subset of permitted)"
        raise _fail(
            f"set capabilities (effective {sets.effective:#x}, permitted {sets.permitted:#x}, "
            f"inheritable {sets.inheritable:#x}){hint}",
            e,
        ) from None
    try:
        sys.prctl(sys.PR_CAP_AMBIENT, sys.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as e:
        if e.errno == 22:  # EINVAL: kernel before 4.3 has no ambient set
            if sets.ambient:
                warn("ambient capabilities are not supported by this kernel")
            return
        raise _fail("clear ambient capabilities", e) from None
    for number in range(sets.last + 1):
        if not sets.ambient & (1 << number):
            continue
        try:
            sys.prctl(sys.PR_CAP_AMBIENT, sys.PR_CAP_AMBIENT_RAISE, number)
        except OSError as e:
            # The kernel refuses (EPERM) a cap not both permitted and
            # inheritable; runc warns and goes on, so do we.
            warn(f"cannot raise ambient capability {_name(number)}: {os.strerror(e.errno or 0)}")


def prepare_capabilities(
    caps: dict[str, Any] | None,
    *,
    warn: Callable[[str], None] = _warn_stderr,
    last: int | None = None,
) -> CapSets | None:
    """Parse ``process.capabilities`` once and warn about names this kernel lacks."""
    if caps is None:
        return None
    sets = parse_capabilities(caps, last=last)
    if sets.ignored:
        warn("ignoring capabilities unknown to this kernel: " + ", ".join(sets.ignored))
    return sets


def apply_capabilities(
    caps: dict[str, Any] | CapSets | None,
    *,
    before_setuid: bool,
    sys: CapSyscalls = libc,
    warn: Callable[[str], None] = _warn_stderr,
) -> CapSets | None:
    """One phase of the capability setup; returns the parsed sets for the next.

    Call with ``before_setuid=True`` before changing user and with
    ``before_setuid=False`` after; pass the returned value to the second call
    so the config is parsed (and its warnings given) once.
    """
    sets = (
        caps if isinstance(caps, CapSets) or caps is None else prepare_capabilities(caps, warn=warn)
    )
    if before_setuid:
        apply_before_setuid(sets, sys=sys, warn=warn)
    else:
        apply_after_setuid(sets, sys=sys, warn=warn)
    return sets
