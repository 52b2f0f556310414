"""OCI device cgroup rules (config-linux.md "Allowed Device list").

The list is applied in order, as cgroup v1's ``devices.allow`` and
``devices.deny`` writes are. ``Emulator`` reproduces what the v1 kernel
makes of such a sequence (a default plus exceptions), so that cgroup v2's
BPF filter, compiled from the emulator's result, behaves exactly as v1 does.
"""

from __future__ import annotations

from dockyard.runtime.cgroups import resources as R

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Access bits as the kernel's bpf_cgroup_dev_ctx encodes them.
ACC_MKNOD = 1
ACC_READ = 2
ACC_WRITE = 4
ACC_ALL = ACC_MKNOD | ACC_READ | ACC_WRITE
_BITS = {"r": ACC_READ, "w": ACC_WRITE, "m": ACC_MKNOD}


class DeviceRule:
    __slots__ = ("access", "allow", "major", "minor", "type")

    def __init__(self, allow: bool, type: str, major: int, minor: int, access: int) -> None:
        self.allow = allow
        self.type = type  # "a", "c" or "b"
        self.major = major  # -1: any
        self.minor = minor  # -1: any
        self.access = access  # ACC_* bits

    def _key(self) -> tuple[bool, str, int, int, int]:
        return (self.allow, self.type, self.major, self.minor, self.access)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceRule) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"DeviceRule({'allow' if self.allow else 'deny'} {self.v1()})"

    @property
    def is_reset(self) -> bool:
        """ "a *:* rwm": v1 resets the whole list to allow-all or deny-all."""
        return self.type == "a"

    def v1(self) -> str:
        """The line written to ``devices.allow`` or ``devices.deny``."""
        if self.is_reset:
            return "a"
        major = "*" if self.major < 0 else str(self.major)
        minor = "*" if self.minor < 0 else str(self.minor)
        return f"{self.type} {major}:{minor} {access_string(self.access)}"


def access_string(bits: int) -> str:
    return "".join(c for c in "rwm" if bits & _BITS[c])


def parse_rules(entries: list[dict[str, Any]], where: str = "devices") -> list[DeviceRule]:
    """Validate OCI device entries and normalise them.

    An entry of type "a" is a reset only when it covers every device and all
    of "rwm"; v1 would read any "a ..." line as that reset, so a narrower "a"
    entry (``{"allow": true, "access": "m"}``) is split into its "c" and "b"
    halves, which is what it means.
    """
    rules: list[DeviceRule] = []
    for i, entry in enumerate(entries):
        at = f"{where}[{i}]"
        allow = R.get_bool(entry, "allow", at + ".allow")
        if allow is None:
            raise R.bad(at + ".allow", None, "is required")
        kind = R.get_str(entry, "type", at + ".type") or "a"
        if kind not in ("a", "b", "c"):
            raise R.bad(at + ".type", kind, 'must be "a", "b" or "c"')
        major = R.get_int(entry, "major", at + ".major", -1, (1 << 31) - 1)
        minor = R.get_int(entry, "minor", at + ".minor", -1, (1 << 31) - 1)
        access = R.get_str(entry, "access", at + ".access") or "rwm"
        bits = 0
        for c in access:
            if c not in _BITS:
                raise R.bad(at + ".access", access, 'must be made of "r", "w" and "m"')
            bits |= _BITS[c]
        major = -1 if major is None else major
        minor = -1 if minor is None else minor
        if kind == "a" and (major >= 0 or minor >= 0 or bits != ACC_ALL):
            rules.append(DeviceRule(allow, "c", major, minor, bits))
            rules.append(DeviceRule(allow, "b", major, minor, bits))
        else:
            rules.append(DeviceRule(allow, kind, major, minor, bits))
    return rules


class Emulator:
    """What cgroup v1's devices controller holds after a sequence of writes.

    Starts as a fresh cgroup below an unrestricted parent: allow-all, no
    exceptions. Exceptions always carry the action opposite to the default.
    """

    def __init__(self) -> None:
        self.default_allow = True
        self.exceptions: dict[tuple[str, int, int], int] = {}

    def apply(self, rule: DeviceRule) -> None:
        if rule.is_reset:
            self.default_allow = rule.allow
            self.exceptions.clear()
            return
        key = (rule.type, rule.major, rule.minor)
        if rule.allow != self.default_allow:
            self.exceptions[key] = self.exceptions.get(key, 0) | rule.access
        elif key in self.exceptions:
            # v1 only narrows an exception with exactly the same type and numbers.
            left = self.exceptions[key] & ~rule.access
            if left:
                self.exceptions[key] = left
            else:
                del self.exceptions[key]

    def allows(self, kind: str, major: int, minor: int, access: int) -> bool:
        """The kernel's verdict for one access (v1 ``__devcgroup_check_permission``)."""
        for (t, ma, mi), bits in self.exceptions.items():
            if t != kind or ma not in (-1, major) or mi not in (-1, minor):
                continue
            if self.default_allow and access & bits:
                return False  # any denied bit denies
            if not self.default_allow and not access & ~bits:
                return True  # an allow exception must cover every bit asked for
        return self.default_allow


def emulate(rules: list[DeviceRule]) -> Emulator:
    emu = Emulator()
    for rule in rules:
        emu.apply(rule)
    return emu


# The devices runc allows in every container after the configured rules
# (libcontainer/specconv AllowedDevices): mknod of anything, the standard
# character devices, the console and ptys. The runtime appends these to
# linux.resources.devices, as runc does; the OCI default devices need them.
DEFAULT_ALLOWED: tuple[dict[str, Any], ...] = (
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # /dev/null
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},  # /dev/random
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},  # /dev/full
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},  # /dev/tty
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},  # /dev/zero
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},  # /dev/urandom
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},  # /dev/console
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # /dev/pts/*
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # /dev/ptmx
)
