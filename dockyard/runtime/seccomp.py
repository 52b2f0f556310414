"""Seccomp filter of the container process (config-linux.md "Seccomp"), via libseccomp.

``build_filter`` validates ``linux.seccomp`` and builds a libseccomp context;
the init process loads it as late as possible before execve, after the
change of user and capabilities (then it needs no_new_privs), or, when
``process.noNewPrivileges`` is false, before dropping capabilities (loading
without no_new_privs needs CAP_SYS_ADMIN). libseccomp is opened on first use,
so importing this module costs nothing on a host without it.
"""

from __future__ import annotations

import ctypes
import os
import sys as _sys

from dockyard.errors import ConfigError, SystemFailure, Unsupported
from dockyard.spec.runtime import SECCOMP_ARCHES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

FIELD = "linux.seccomp"
LIBRARY = "libseccomp.so.2"

EPERM = 1
_ERRNO_MAX = 0xFFFF  # SECCOMP_RET_DATA holds 16 bits
_UINT64_MAX = (1 << 64) - 1
_MAX_ARGS = 6  # a Linux syscall has at most six arguments

# Action values from libseccomp's seccomp.h. SCMP_ACT_KILL is KILL_THREAD.
ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_NOTIFY": 0x7FC00000,
}
# The actions whose low 16 bits carry an errno (config-linux.md: errnoRet).
ERRNO_ACTIONS = frozenset({"SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"})

# enum scmp_compare
OPERATORS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# The spec's architecture names; libseccomp's are the lowercase tail.
ARCHITECTURES = SECCOMP_ARCHES

# enum scmp_filter_attr
_ATTR_CTL_NNP = 3
_ATTR_CTL_TSYNC = 4
_ATTR_CTL_LOG = 6
_ATTR_CTL_SSB = 7
_ATTR_CTL_OPTIMIZE = 8
_ATTR_API_SYSRAWRC = 9
_ATTR_CTL_WAITKILL = 10

# seccomp(2) flags -> the filter attribute libseccomp sets them with
FLAGS: dict[str, int] = {
    "SECCOMP_FILTER_FLAG_TSYNC": _ATTR_CTL_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": _ATTR_CTL_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": _ATTR_CTL_SSB,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": _ATTR_CTL_WAITKILL,
}

_NR_SCMP_ERROR = -1
_EEXIST = 17
_EACCES = 13

# runc's threshold for asking libseccomp for a binary-tree filter
_OPTIMIZE_ABOVE = 32


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp"""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Version(ctypes.Structure):
    """struct scmp_version"""

    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


_lib_cache: list[ctypes.CDLL] = []


def _lib() -> ctypes.CDLL:
    """libseccomp with the prototypes this module uses; opened once."""
    if _lib_cache:
        return _lib_cache[0]
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError:
        raise Unsupported(f"seccomp: cannot load {LIBRARY}") from None
    ctx, u32, c_int = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    lib.seccomp_init.argtypes, lib.seccomp_init.restype = [u32], ctx
    lib.seccomp_release.argtypes, lib.seccomp_release.restype = [ctx], None
    lib.seccomp_load.argtypes, lib.seccomp_load.restype = [ctx], c_int
    lib.seccomp_attr_set.argtypes, lib.seccomp_attr_set.restype = [ctx, c_int, u32], c_int
    lib.seccomp_arch_add.argtypes, lib.seccomp_arch_add.restype = [ctx, u32], c_int
    lib.seccomp_arch_native.argtypes, lib.seccomp_arch_native.restype = [], u32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = u32
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.restype = c_int
    lib.seccomp_rule_add_array.argtypes = [ctx, u32, c_int, ctypes.c_uint, ctypes.c_void_p]
    lib.seccomp_rule_add_array.restype = c_int
    lib.seccomp_notify_fd.argtypes, lib.seccomp_notify_fd.restype = [ctx], c_int
    lib.seccomp_export_pfc.argtypes, lib.seccomp_export_pfc.restype = [ctx, c_int], c_int
    lib.seccomp_api_get.argtypes, lib.seccomp_api_get.restype = [], ctypes.c_uint
    lib.seccomp_version.argtypes = []
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    _lib_cache.append(lib)
    return lib


def available() -> bool:
    try:
        _lib()
    except Unsupported:
        return False
    return True


def libseccomp_version() -> tuple[int, int, int] | None:
    """(major, minor, micro) of the loaded libseccomp, or None without it."""
    try:
        v = _lib().seccomp_version().contents
    except Unsupported:
        return None
    return (int(v.major), int(v.minor), int(v.micro))


def api_level() -> int:
    """libseccomp's API level for this kernel (5: notify, 6: notify with TSYNC)."""
    return int(_lib().seccomp_api_get())


def _version_text() -> str:
    v = libseccomp_version()
    return ".".join(map(str, v)) if v else "(none)"


def _warn_stderr(message: str) -> None:
    _sys.stderr.write(f"warning: {message}\n")


# --- validation ------------------------------------------------------------


def _uint(value: Any, field: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, "must be an unsigned integer")
    if not 0 <= value <= maximum:
        raise ConfigError(field, f"{value} is out of range 0..{maximum}")
    return value


def _str_list(value: Any, field: str) -> list[str]:
    if not isinstance(value, list):
        raise ConfigError(field, "must be an array of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{field}[{i}]", "must be a non-empty string")
    return value


def _action(name: Any, errno_ret: Any, field: str, errno_field: str) -> int:
    """The libseccomp action value for a spec action name and its errnoRet."""
    if not isinstance(name, str):
        raise ConfigError(field, "must be a string")
    value = ACTIONS.get(name)
    if value is None:
        raise ConfigError(field, f"unknown action {name!r}")
    if name in ERRNO_ACTIONS:
        code = EPERM if errno_ret is None else _uint(errno_ret, errno_field, _ERRNO_MAX)
        return value | code
    if errno_ret is not None:
        # config-linux.md: an errnoRet with an action without an errno is an error
        raise ConfigError(errno_field, f"is not valid with action {name}")
    return value


class _Rule:
    """One validated ``syscalls[]`` entry."""

    __slots__ = ("action", "action_name", "conditions", "field", "names")

    def __init__(
        self,
        field: str,
        names: list[str],
        action_name: str,
        action: int,
        conditions: list[tuple[int, int, int, int]],
    ) -> None:
        self.field = field
        self.names = names
        self.action_name = action_name
        self.action = action
        self.conditions = conditions


class Spec:
    """``linux.seccomp`` validated and translated to libseccomp's numbers."""

    __slots__ = (
        "architectures",
        "default_action",
        "flags",
        "listener_metadata",
        "listener_path",
        "rules",
        "uses_notify",
    )

    def __init__(self) -> None:
        self.default_action = 0
        self.architectures: list[str] = []
        self.flags: list[str] = []
        self.listener_path: str | None = None
        self.listener_metadata: str | None = None
        self.rules: list[_Rule] = []
        self.uses_notify = False


def _conditions(args: Any, field: str) -> list[tuple[int, int, int, int]]:
    if args is None:
        return []
    if not isinstance(args, list):
        raise ConfigError(field, "must be an array of objects")
    out = []
    for i, arg in enumerate(args):
        f = f"{field}[{i}]"
        if not isinstance(arg, dict):
            raise ConfigError(f, "must be an object")
        for key in ("index", "value", "op"):
            if key not in arg:
                raise ConfigError(f"{f}.{key}", "is required")
        index = _uint(arg["index"], f"{f}.index", _MAX_ARGS - 1)
        value = _uint(arg["value"], f"{f}.value", _UINT64_MAX)
        value_two = _uint(arg.get("valueTwo", 0), f"{f}.valueTwo", _UINT64_MAX)
        op_name = arg["op"]
        op = OPERATORS.get(op_name) if isinstance(op_name, str) else None
        if op is None:
            raise ConfigError(f"{f}.op", f"unknown operator {op_name!r}")
        out.append((index, op, value, value_two))
    return out


def validate(cfg: Any, field: str = FIELD) -> Spec:
    """Check ``linux.seccomp`` against config-linux.md without libseccomp."""
    if not isinstance(cfg, dict):
        raise ConfigError(field, "must be an object")
    spec = Spec()
    if "defaultAction" not in cfg:
        raise ConfigError(f"{field}.defaultAction", "is required")
    spec.default_action = _action(
        cfg["defaultAction"],
        cfg.get("defaultErrnoRet"),
        f"{field}.defaultAction",
        f"{field}.defaultErrnoRet",
    )
    if cfg["defaultAction"] == "SCMP_ACT_NOTIFY":
        # as runc: the init could not hand over the notify fd if every call waited on it
        raise ConfigError(f"{field}.defaultAction", "SCMP_ACT_NOTIFY cannot be the default action")

    archs = _str_list(cfg.get("architectures") or [], f"{field}.architectures")
    for i, arch in enumerate(archs):
        if arch not in ARCHITECTURES:
            raise ConfigError(f"{field}.architectures[{i}]", f"unknown architecture {arch!r}")
    spec.architectures = archs

    flags = _str_list(cfg.get("flags") or [], f"{field}.flags")
    for i, flag in enumerate(flags):
        if flag not in FLAGS:
            raise ConfigError(f"{field}.flags[{i}]", f"unknown seccomp flag {flag!r}")
    spec.flags = flags

    for key in ("listenerPath", "listenerMetadata"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            raise ConfigError(f"{field}.{key}", "must be a string")
    spec.listener_path = cfg.get("listenerPath") or None
    spec.listener_metadata = cfg.get("listenerMetadata") or None
    if spec.listener_metadata and not spec.listener_path:
        raise ConfigError(f"{field}.listenerMetadata", "must not be set without listenerPath")

    syscalls = cfg.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise ConfigError(f"{field}.syscalls", "must be an array of objects")
    for i, entry in enumerate(syscalls):
        f = f"{field}.syscalls[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f, "must be an object")
        if "names" not in entry:
            raise ConfigError(f"{f}.names", "is required")
        names = _str_list(entry["names"], f"{f}.names")
        if not names:
            raise ConfigError(f"{f}.names", "must contain at least one syscall name")
        if "action" not in entry:
            raise ConfigError(f"{f}.action", "is required")
        action = _action(entry["action"], entry.get("errnoRet"), f"{f}.action", f"{f}.errnoRet")
        if entry["action"] == "SCMP_ACT_NOTIFY":
            spec.uses_notify = True
            if "write" in names:
                # as runc: the init reports the notify fd to its parent with write(2)
                raise ConfigError(f"{f}.names", "SCMP_ACT_NOTIFY cannot be used for write")
        conditions = _conditions(entry.get("args"), f"{f}.args")
        spec.rules.append(_Rule(f, names, entry["action"], action, conditions))
    if spec.uses_notify and not spec.listener_path:
        raise ConfigError(f"{field}.listenerPath", "is required when SCMP_ACT_NOTIFY is used")
    return spec


# --- the filter --------------------------------------------------------------


class Filter:
    """A libseccomp context built from ``linux.seccomp``, not yet loaded.

    ``skipped`` lists the syscall names this libseccomp does not know; like
    runc, their rules are left out rather than failing the container.
    """

    def __init__(self, ctx: int, spec: Spec, skipped: list[str]) -> None:
        self._ctx: int | None = ctx
        self.spec = spec
        self.skipped = skipped

    @property
    def uses_notify(self) -> bool:
        return self.spec.uses_notify

    @property
    def listener_path(self) -> str | None:
        return self.spec.listener_path

    @property
    def listener_metadata(self) -> str | None:
        return self.spec.listener_metadata

    def _context(self) -> int:
        if self._ctx is None:
            raise SystemFailure("seccomp: filter already released")
        return self._ctx

    def load(self) -> int | None:
        """Install the filter on the calling process; return the notify fd if NOTIFY is used.

        Needs no_new_privs or CAP_SYS_ADMIN. The notify fd is close-on-exec;
        hand it to the runtime (then ``send_listener_fd``) before execve.
        """
        lib = _lib()
        ctx = self._context()
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            hint = ""
            if -rc == _EACCES:
                hint = " (set process.noNewPrivileges or keep CAP_SYS_ADMIN until it is loaded)"
            raise SystemFailure(f"load seccomp filter: {os.strerror(-rc).lower()}{hint}")
        if not self.spec.uses_notify:
            return None
        fd = lib.seccomp_notify_fd(ctx)
        if fd < 0:
            raise SystemFailure(f"get seccomp notify fd: {os.strerror(-fd).lower()}")
        return int(fd)

    def pfc(self) -> str:
        """The filter as libseccomp's pseudo filter code, for debugging and tests."""
        fd = os.memfd_create("seccomp-pfc", os.MFD_CLOEXEC)
        try:
            rc = _lib().seccomp_export_pfc(self._context(), fd)
            if rc < 0:
                raise SystemFailure(f"export seccomp filter: {os.strerror(-rc).lower()}")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks).decode()
        finally:
            os.close(fd)

    def release(self) -> None:
        """Free the context; a loaded filter stays in force. Safe to call twice."""
        if self._ctx is not None:
            _lib().seccomp_release(self._ctx)
            self._ctx = None

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        if self._ctx is not None and _lib_cache:
            _lib_cache[0].seccomp_release(self._ctx)
            self._ctx = None


def _add_rule(lib: ctypes.CDLL, ctx: int, rule: _Rule, number: int, name: str) -> None:
    groups: list[list[tuple[int, int, int, int]]]
    indexes = [c[0] for c in rule.conditions]
    if len(set(indexes)) != len(indexes):
        # libseccomp cannot AND two conditions on one argument: like runc,
        # fall back to one rule per condition.
        groups = [[c] for c in rule.conditions]
    else:
        groups = [rule.conditions]
    for group in groups:
        array = (_ArgCmp * max(len(group), 1))(*(_ArgCmp(*c) for c in group))
        rc = lib.seccomp_rule_add_array(ctx, rule.action, number, len(group), array)
        if rc < 0:
            raise ConfigError(
                f"{rule.field}.names",
                f"add seccomp rule for syscall {name!r}: {os.strerror(-rc).lower()}",
            )


def build_filter(
    seccomp_cfg: Any,
    *,
    field: str = FIELD,
    warn: Callable[[str], None] = _warn_stderr,
) -> Filter:
    """Validate ``linux.seccomp`` and build its libseccomp context (not loaded)."""
    spec = validate(seccomp_cfg, field)
    lib = _lib()
    ctx = lib.seccomp_init(spec.default_action)
    if not ctx:
        raise SystemFailure("seccomp: cannot create filter context")
    try:
        skipped = _populate(lib, ctx, spec, field, warn)
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return Filter(ctx, spec, skipped)


def _populate(
    lib: ctypes.CDLL, ctx: int, spec: Spec, field: str, warn: Callable[[str], None]
) -> list[str]:
    # no_new_privs is process.noNewPrivileges' business, not libseccomp's.
    if lib.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 0) < 0:
        raise SystemFailure("seccomp: cannot turn off no_new_privs on load")
    # Return the kernel's errno from seccomp_load instead of ECANCELED.
    lib.seccomp_attr_set(ctx, _ATTR_API_SYSRAWRC, 1)

    for i, arch in enumerate(spec.architectures):
        token = lib.seccomp_arch_resolve_name(arch[len("SCMP_ARCH_") :].lower().encode())
        if not token:
            # Syscalls of an ABI the filter lacks meet the bad-arch action
            # (kill), which is stricter than any rule left out here.
            warn(f"seccomp: libseccomp {_version_text()} does not know {arch}; ignored")
            continue
        rc = lib.seccomp_arch_add(ctx, token)
        if rc < 0 and -rc != _EEXIST:
            raise ConfigError(
                f"{field}.architectures[{i}]", f"add {arch}: {os.strerror(-rc).lower()}"
            )

    for i, flag in enumerate(spec.flags):
        rc = lib.seccomp_attr_set(ctx, FLAGS[flag], 1)
        if rc < 0:
            raise Unsupported(
                f"{field}.flags[{i}]: seccomp flag {flag} is not supported by "
                f"libseccomp {_version_text()} on this kernel"
            )

    if spec.uses_notify:
        need = 6 if "SECCOMP_FILTER_FLAG_TSYNC" in spec.flags else 5
        level = api_level()
        if level < need:
            raise Unsupported(
                f"seccomp: SCMP_ACT_NOTIFY needs libseccomp API level {need}, "
                f"have {level} (libseccomp {_version_text()})"
            )

    if len(spec.rules) > _OPTIMIZE_ABOVE:
        lib.seccomp_attr_set(ctx, _ATTR_CTL_OPTIMIZE, 2)  # older libseccomp: not fatal

    skipped: list[str] = []
    for rule in spec.rules:
        if rule.action == spec.default_action:
            continue  # redundant; libseccomp refuses it
        for name in rule.names:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number == _NR_SCMP_ERROR:
                skipped.append(name)
                continue
            _add_rule(lib, ctx, rule, number, name)
    return skipped


# --- seccomp listener (config-linux.md "The Container Process State") --------


def send_listener_fd(
    path: str,
    fd: int,
    state: dict[str, Any],
    metadata: str | None = None,
    *,
    pid: int | None = None,
) -> None:
    """Send the notify fd and the container process state to the agent at ``path``.

    ``state`` is the container's state (runtime.md "State"); one connection,
    one message, fds only in the first sendmsg, then the connection is closed.
    """
    import json
    import socket

    message: dict[str, Any] = {
        "ociVersion": state.get("ociVersion", ""),
        "fds": ["seccompFd"],
        "pid": state.get("pid", 0) if pid is None else pid,
        "state": state,
    }
    if metadata:
        message["metadata"] = metadata
    data = json.dumps(message).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(path)
            sent = socket.send_fds(sock, [data], [fd])
            if sent < len(data):
                sock.sendall(data[sent:])
    except OSError as e:
        reason = os.strerror(e.errno).lower() if e.errno else str(e)
        raise SystemFailure(f"send seccomp notify fd to {path}: {reason}") from None


# --- features (features-linux.md "Seccomp") -----------------------------------


def supported() -> dict[str, Any]:
    """The ``linux.seccomp`` object of the runtime's ``features`` output."""
    if not available():
        return {"enabled": False}
    lib = _lib()
    archs = [
        a for a in ARCHITECTURES if lib.seccomp_arch_resolve_name(a[10:].lower().encode()) != 0
    ]
    supported_flags = []
    ctx = lib.seccomp_init(ACTIONS["SCMP_ACT_ALLOW"])
    if ctx:
        try:
            for flag, attr in FLAGS.items():
                if lib.seccomp_attr_set(ctx, attr, 1) == 0:
                    supported_flags.append(flag)
        finally:
            lib.seccomp_release(ctx)
    return {
        "enabled": True,
        "actions": sorted(ACTIONS),
        "operators": sorted(OPERATORS),
        "archs": sorted(archs),
        "knownFlags": list(FLAGS),
        "supportedFlags": supported_flags,
    }
