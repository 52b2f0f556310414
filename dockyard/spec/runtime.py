"""OCI runtime spec: the types of config.json, its validation and the default spec.

This is the one place where the runtime spec's vocabulary lives (namespace
types, capabilities, rlimits, seccomp names, hook names); every layer imports
it. The runtime imports it on every start, so it stays small: the config is a
plain ``dict`` as ``json`` parsed it, and the validator is a table of checks
written from runtime-spec v1.2 (``config.md``, ``config-linux.md`` and
``schema/*.json``), not a JSON Schema engine.

Validation follows two rules of the spec (config.md "Extensibility", "Valid
values"): unknown properties are ignored, invalid values are errors. A JSON
``null`` counts as an absent property, as it does for the Go runtimes; the
validator deletes such keys so that users of the dict can rely on ``.get``.
"""

from __future__ import annotations

import os

from dockyard.errors import ConfigError

# Spelled out instead of importing typing: its import costs the runtime
# milliseconds on every start, and mypy honours any name TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    Check = Callable[[Any, str], None]

OCI_VERSION = "1.2.0"
"""The version of the runtime spec this module implements."""

# capabilities(7), include/uapi/linux/capability.h
CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

# The capabilities Docker gives a container unless told otherwise (moby's
# oci.DefaultCapabilities): the set the engine and the tests start from.
DOCKER_DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

# getrlimit(2); the generic Linux numbering (x86, arm, riscv, s390, ppc).
RLIMITS: dict[str, int] = {
    "RLIMIT_CPU": 0,
    "RLIMIT_FSIZE": 1,
    "RLIMIT_DATA": 2,
    "RLIMIT_STACK": 3,
    "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5,
    "RLIMIT_NPROC": 6,
    "RLIMIT_NOFILE": 7,
    "RLIMIT_MEMLOCK": 8,
    "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10,
    "RLIMIT_SIGPENDING": 11,
    "RLIMIT_MSGQUEUE": 12,
    "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14,
    "RLIMIT_RTTIME": 15,
}

# config-linux.md "Namespaces"
NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")

# config.md "POSIX-platform Hooks", in lifecycle order
HOOK_NAMES = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)

# config-linux.md "Seccomp"
SECCOMP_ACTIONS = (
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
)
# The last four arrived in runtime-spec 1.3; they are valid names, and whether
# this host can filter for them is the seccomp layer's business.
SECCOMP_ARCHES = (
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K",
    "SCMP_ARCH_SH",
    "SCMP_ARCH_SHEB",
)
SECCOMP_OPERATORS = (
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
)
SECCOMP_FLAGS = (
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
)

# The spec names the first four; runc also takes the recursive forms, and so
# do the configs written for it.
ROOTFS_PROPAGATIONS = (
    "shared",
    "slave",
    "private",
    "unbindable",
    "rshared",
    "rslave",
    "rprivate",
    "runbindable",
)

SCHEDULER_POLICIES = (
    "SCHED_OTHER",
    "SCHED_FIFO",
    "SCHED_RR",
    "SCHED_BATCH",
    "SCHED_ISO",
    "SCHED_IDLE",
    "SCHED_DEADLINE",
)
SCHEDULER_FLAGS = (
    "SCHED_FLAG_RESET_ON_FORK",
    "SCHED_FLAG_RECLAIM",
    "SCHED_FLAG_DL_OVERRUN",
    "SCHED_FLAG_KEEP_POLICY",
    "SCHED_FLAG_KEEP_PARAMS",
    "SCHED_FLAG_UTIL_CLAMP_MIN",
    "SCHED_FLAG_UTIL_CLAMP_MAX",
)
IOPRIO_CLASSES = ("IOPRIO_CLASS_RT", "IOPRIO_CLASS_BE", "IOPRIO_CLASS_IDLE")
DEVICE_TYPES = ("c", "b", "u", "p")

CONFIG_FILE = "config.json"


# ---------------------------------------------------------------------------
# Loading


def load_bundle_config(bundle: str, *, require_process: bool = True) -> dict[str, Any]:
    """Read, parse and validate ``<bundle>/config.json``.

    ``require_process`` defaults to true because create and run need the
    process (runtime.md "start"; runc refuses a config without one).
    Raises ``ConfigError`` for every problem, with the JSON path of the field.
    """
    path = os.path.join(bundle, CONFIG_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if not os.path.isdir(bundle):
            raise ConfigError("", f"bundle {bundle!r}: no such directory")
        raise ConfigError("", f"no config.json in bundle {bundle!r}")
    except OSError as e:
        reason = (e.strerror or str(e)).lower()
        raise ConfigError("", f"read {path!r}: {reason}")
    try:
        from dockyard import jsonio

        cfg: dict[str, Any] = jsonio.loads(data)
    except UnicodeDecodeError as e:
        raise ConfigError("", f"not valid UTF-8 at byte {e.start}")
    except ValueError as e:
        if not hasattr(e, "lineno"):
            raise ConfigError("", f"invalid JSON: {e}")
        line, col, msg = e.lineno, e.colno, e.msg.lower()  # type: ignore[attr-defined]
        raise ConfigError("", f"invalid JSON at line {line}, column {col}: {msg}")
    except RecursionError:
        raise ConfigError("", "invalid JSON: nested too deeply")
    validate_config(cfg, require_process=require_process)
    return cfg


def rootfs_path(bundle: str, cfg: dict[str, Any]) -> str:
    """The absolute path of the root filesystem; a relative ``root.path`` is
    relative to the bundle (config.md "Root")."""
    return os.path.normpath(os.path.join(os.path.abspath(bundle), cfg["root"]["path"]))


def validate_config(cfg: Any, *, require_process: bool = False) -> None:
    """Check a parsed config.json against runtime-spec v1.2 for Linux.

    Raises ``ConfigError(field, message)`` for the first problem found.
    ``process`` is optional in the spec until ``start``; pass
    ``require_process=True`` where it is needed. JSON nulls of known optional
    properties are removed from ``cfg`` in place.
    """
    _CONFIG(cfg, "")
    if require_process and "process" not in cfg:
        raise ConfigError("process", "required field is missing")


# ---------------------------------------------------------------------------
# The checks. Each check is a function (value, path) that raises ConfigError;
# the combinators below build them from the spec's tables.

_JSON_TYPES = {
    bool: "a boolean",
    int: "an integer",
    float: "a floating-point number",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _typed(value: Any, kind: type, path: str) -> None:
    # JSON has no floats-as-ints and bool is not an integer (Go agrees).
    if type(value) is not kind:
        got = _JSON_TYPES.get(type(value), type(value).__name__)
        raise ConfigError(path, f"must be {_JSON_TYPES[kind]}, not {got}")


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _string(value: Any, path: str) -> None:
    _typed(value, str, path)


def _boolean(value: Any, path: str) -> None:
    _typed(value, bool, path)


def _c_string(value: Any, path: str) -> None:
    """A string that reaches a syscall as a C string."""
    _typed(value, str, path)
    if "\0" in value:
        raise ConfigError(path, "must not contain a NUL byte")


def _abs_path(value: Any, path: str) -> None:
    _c_string(value, path)
    if not value.startswith("/"):
        raise ConfigError(path, f"must be an absolute path, not {value!r}")


def _non_empty(value: Any, path: str) -> None:
    _c_string(value, path)
    if not value:
        raise ConfigError(path, "must not be empty")


def _env_var(value: Any, path: str) -> None:
    # environ(7) entries are NAME=value; runc refuses the others as well.
    _c_string(value, path)
    if value.find("=") < 1:
        raise ConfigError(path, f"must be NAME=value, not {value!r}")


def _int(lo: int, hi: int) -> Check:
    def check(value: Any, path: str) -> None:
        _typed(value, int, path)
        if not lo <= value <= hi:
            raise ConfigError(path, f"must be between {lo} and {hi}, not {value}")

    return check


_INT32 = _int(-(2**31), 2**31 - 1)
_INT64 = _int(-(2**63), 2**63 - 1)
_UINT32 = _int(0, 2**32 - 1)
_UINT64 = _int(0, 2**64 - 1)


def _enum(values: Iterable[str], what: str) -> Check:
    allowed = frozenset(values)
    listing = ", ".join(values) if len(allowed) <= 10 else ""

    def check(value: Any, path: str) -> None:
        _typed(value, str, path)
        if value not in allowed:
            hint = f" (one of: {listing})" if listing else ""
            raise ConfigError(path, f"unknown {what} {value!r}{hint}")

    return check


def _list(item: Check, min_items: int = 0) -> Check:
    def check(value: Any, path: str) -> None:
        _typed(value, list, path)
        if len(value) < min_items:
            raise ConfigError(
                path, f"must have at least {min_items} entr{'y' if min_items == 1 else 'ies'}"
            )
        for i, v in enumerate(value):
            item(v, f"{path}[{i}]")

    return check


def _map(item: Check) -> Check:
    """An object with free keys, e.g. annotations or sysctl."""

    def check(value: Any, path: str) -> None:
        _typed(value, dict, path)
        for k, v in value.items():
            item(v, f'{path}["{k}"]')

    return check


def _obj(
    fields: dict[str, Check],
    required: tuple[str, ...] = (),
    then: Check | None = None,
) -> Check:
    """An object with known properties; unknown ones are ignored (config.md
    "Extensibility"). ``then`` checks rules that span properties."""

    def check(value: Any, path: str) -> None:
        _typed(value, dict, path)
        for name, sub in fields.items():
            if name not in value:
                continue
            if value[name] is None:
                del value[name]
            else:
                sub(value[name], _key(path, name))
        for name in required:
            if name not in value:
                raise ConfigError(_key(path, name), "required field is missing")
        if then is not None:
            then(value, path)

    return check


def _semver(value: Any, path: str) -> None:
    # config.md: ociVersion MUST be SemVer 2.0.0; check MAJOR.MINOR.PATCH.
    _typed(value, str, path)
    core = value.split("+", 1)[0].split("-", 1)[0]
    parts = core.split(".")
    rest = value[len(core) :]
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts) or rest in ("-", "+"):
        raise ConfigError(path, f"must be a SemVer version such as {OCI_VERSION!r}, not {value!r}")


def _page_size(value: Any, path: str) -> None:
    # schema: ^[1-9][0-9]*[KMG]B$
    _typed(value, str, path)
    num = value[:-2]
    if not (
        value[-2:] in ("KB", "MB", "GB")
        and num.isascii()
        and num.isdigit()
        and not num.startswith("0")
    ):
        raise ConfigError(path, f"must be a page size such as '2MB', not {value!r}")


def _access(value: Any, path: str) -> None:
    _typed(value, str, path)
    if not set(value) <= set("rwm"):
        raise ConfigError(path, f"must be made of the letters r, w and m, not {value!r}")


def _mem_bw_schema(value: Any, path: str) -> None:
    _typed(value, str, path)
    if not value.startswith("MB:") or "\n" in value:
        raise ConfigError(path, "must start with 'MB:' and be one line")


def _at_least_one(*names: str) -> Check:
    def check(value: Any, path: str) -> None:
        if not any(n in value for n in names):
            raise ConfigError(path, f"must set at least one of {', '.join(names)}")

    return check


def _unique(key: str, what: str) -> Check:
    """A list whose entries' ``key`` must not repeat."""

    def check(value: Any, path: str) -> None:
        seen: dict[Any, int] = {}
        for i, entry in enumerate(value):
            k = entry[key]
            if k in seen:
                raise ConfigError(
                    f"{path}[{i}].{key}", f"duplicate {what} {k!r} (also at {path}[{seen[k]}])"
                )
            seen[k] = i

    return check


def _all(*checks: Check) -> Check:
    def check(value: Any, path: str) -> None:
        for c in checks:
            c(value, path)

    return check


def _rlimit_order(value: Any, path: str) -> None:
    # setrlimit(2) fails with EINVAL when soft > hard: say so before starting.
    if value["soft"] > value["hard"]:
        raise ConfigError(
            _key(path, "soft"),
            f"soft limit {value['soft']} is above the hard limit {value['hard']}",
        )


def _device_numbers(value: Any, path: str) -> None:
    # config-linux.md "Devices": major, minor REQUIRED unless type is p.
    if value["type"] != "p":
        for name in ("major", "minor"):
            if name not in value:
                raise ConfigError(
                    _key(path, name), f"required for a device of type {value['type']!r}"
                )


def _mappings_pair(value: Any, path: str) -> None:
    # config.md "POSIX-platform Mounts": each mapping MUST come with the other.
    has_uid, has_gid = "uidMappings" in value, "gidMappings" in value
    if has_uid != has_gid:
        missing = "gidMappings" if has_uid else "uidMappings"
        other = "uidMappings" if has_uid else "gidMappings"
        raise ConfigError(_key(path, missing), f"required together with {other}")


def _listener(value: Any, path: str) -> None:
    if "listenerMetadata" in value and "listenerPath" not in value:
        raise ConfigError(_key(path, "listenerMetadata"), "must not be set without listenerPath")


_STRINGS = _list(_string)
_PATHS = _list(_abs_path)
_ENV = _list(_env_var)
_STRING_MAP = _map(_string)

_ID_MAPPING = _obj(
    {"containerID": _UINT32, "hostID": _UINT32, "size": _UINT32},
    required=("containerID", "hostID", "size"),
)
_ID_MAPPINGS = _list(_ID_MAPPING)

_HOOK = _obj(
    {"path": _abs_path, "args": _list(_c_string), "env": _ENV, "timeout": _int(1, 2**63 - 1)},
    required=("path",),
)

_MOUNT = _obj(
    {
        # Linux allows a relative destination (deprecated, relative to "/").
        "destination": _non_empty,
        "source": _c_string,
        "type": _c_string,
        "options": _list(_c_string),
        "uidMappings": _ID_MAPPINGS,
        "gidMappings": _ID_MAPPINGS,
    },
    required=("destination",),
    then=_mappings_pair,
)

_CAPABILITY = _enum(CAPABILITIES, "capability")

_PROCESS = _obj(
    {
        "terminal": _boolean,
        "consoleSize": _obj({"height": _UINT64, "width": _UINT64}, required=("height", "width")),
        "cwd": _abs_path,
        "env": _ENV,
        # config.md: at least one entry is REQUIRED (non-Windows).
        "args": _list(_c_string, min_items=1),
        "commandLine": _string,
        "rlimits": _all(
            _list(
                _obj(
                    {"type": _enum(RLIMITS, "rlimit"), "soft": _UINT64, "hard": _UINT64},
                    required=("type", "soft", "hard"),
                    then=_rlimit_order,
                )
            ),
            _unique("type", "rlimit"),
        ),
        "apparmorProfile": _string,
        "capabilities": _obj({name: _list(_CAPABILITY) for name in CAPABILITY_SETS}),
        "noNewPrivileges": _boolean,
        "oomScoreAdj": _int(-1000, 1000),
        "scheduler": _obj(
            {
                "policy": _enum(SCHEDULER_POLICIES, "scheduler policy"),
                "nice": _INT32,
                "priority": _INT32,
                "flags": _list(_enum(SCHEDULER_FLAGS, "scheduler flag")),
                "runtime": _UINT64,
                "deadline": _UINT64,
                "period": _UINT64,
            },
            required=("policy",),
        ),
        "selinuxLabel": _string,
        "ioPriority": _obj(
            {"class": _enum(IOPRIO_CLASSES, "I/O priority class"), "priority": _int(0, 7)},
            required=("class",),
        ),
        "user": _obj(
            {
                "uid": _UINT32,
                "gid": _UINT32,
                "umask": _UINT32,
                "additionalGids": _list(_UINT32),
                "username": _string,
            },
            required=("uid", "gid"),
        ),
    },
    required=("cwd", "args"),
)

_NAMESPACE = _obj(
    {"type": _enum(NAMESPACE_TYPES, "namespace type"), "path": _abs_path},
    required=("type",),
)

_DEVICE = _obj(
    {
        "type": _enum(DEVICE_TYPES, "device type"),
        "path": _abs_path,
        "major": _INT64,
        "minor": _INT64,
        # The schema caps this at 0o777, but containerd writes the mode of
        # host devices with the set-id and sticky bits (st_mode & ~S_IFMT).
        "fileMode": _int(0, 0o7777),
        "uid": _UINT32,
        "gid": _UINT32,
    },
    required=("type", "path"),
    then=_device_numbers,
)

_BLKIO_WEIGHT_RANGE = _int(10, 1000)  # blkio.weight's range (the cgroup v1 docs)


def _BLKIO_WEIGHT(value: Any, path: str) -> None:
    """10..1000, or 0: what dockerd sends for "not set", and runc leaves alone."""
    if value != 0 or type(value) is not int:
        _BLKIO_WEIGHT_RANGE(value, path)


_BLKIO_THROTTLE = _list(
    _obj({"major": _INT64, "minor": _INT64, "rate": _UINT64}, required=("major", "minor", "rate"))
)

_RESOURCES = _obj(
    {
        "devices": _list(
            _obj(
                {
                    "allow": _boolean,
                    "type": _enum(("a", "c", "b"), "device type"),
                    "major": _INT64,
                    "minor": _INT64,
                    "access": _access,
                },
                required=("allow",),
            )
        ),
        "memory": _obj(
            {
                "limit": _INT64,
                "reservation": _INT64,
                "swap": _INT64,
                "kernel": _INT64,
                "kernelTCP": _INT64,
                "swappiness": _int(0, 100),
                "disableOOMKiller": _boolean,
                "useHierarchy": _boolean,
                "checkBeforeUpdate": _boolean,
            }
        ),
        "cpu": _obj(
            {
                "shares": _UINT64,
                "quota": _INT64,
                "burst": _UINT64,
                "period": _UINT64,
                "realtimeRuntime": _INT64,
                "realtimePeriod": _UINT64,
                "cpus": _string,
                "mems": _string,
                "idle": _INT64,
            }
        ),
        "pids": _obj({"limit": _INT64}, required=("limit",)),
        "blockIO": _obj(
            {
                "weight": _BLKIO_WEIGHT,
                "leafWeight": _BLKIO_WEIGHT,
                "weightDevice": _list(
                    _obj(
                        {
                            "major": _INT64,
                            "minor": _INT64,
                            "weight": _BLKIO_WEIGHT,
                            "leafWeight": _BLKIO_WEIGHT,
                        },
                        required=("major", "minor"),
                        then=_at_least_one("weight", "leafWeight"),
                    )
                ),
                "throttleReadBpsDevice": _BLKIO_THROTTLE,
                "throttleWriteBpsDevice": _BLKIO_THROTTLE,
                "throttleReadIOPSDevice": _BLKIO_THROTTLE,
                "throttleWriteIOPSDevice": _BLKIO_THROTTLE,
            }
        ),
        "hugepageLimits": _list(
            _obj({"pageSize": _page_size, "limit": _UINT64}, required=("pageSize", "limit"))
        ),
        "network": _obj(
            {
                "classID": _UINT32,
                "priorities": _list(
                    _obj({"name": _string, "priority": _UINT32}, required=("name", "priority"))
                ),
            }
        ),
        "rdma": _map(
            _obj(
                {"hcaHandles": _UINT32, "hcaObjects": _UINT32},
                then=_at_least_one("hcaHandles", "hcaObjects"),
            )
        ),
        "unified": _STRING_MAP,
    }
)

_SECCOMP_ACTION = _enum(SECCOMP_ACTIONS, "seccomp action")

_SECCOMP = _obj(
    {
        "defaultAction": _SECCOMP_ACTION,
        "defaultErrnoRet": _UINT32,
        "architectures": _list(_enum(SECCOMP_ARCHES, "seccomp architecture")),
        "flags": _list(_enum(SECCOMP_FLAGS, "seccomp flag")),
        "listenerPath": _string,
        "listenerMetadata": _string,
        "syscalls": _list(
            _obj(
                {
                    "names": _list(_non_empty, min_items=1),
                    "action": _SECCOMP_ACTION,
                    "errnoRet": _UINT32,
                    "args": _list(
                        _obj(
                            {
                                # a syscall has six arguments
                                "index": _int(0, 5),
                                "value": _UINT64,
                                "valueTwo": _UINT64,
                                "op": _enum(SECCOMP_OPERATORS, "seccomp operator"),
                            },
                            required=("index", "value", "op"),
                        )
                    ),
                },
                required=("names", "action"),
            )
        ),
    },
    required=("defaultAction",),
    then=_listener,
)

_TIME_OFFSET = _obj({"secs": _INT64, "nanosecs": _UINT32})

_LINUX = _obj(
    {
        "namespaces": _all(_list(_NAMESPACE), _unique("type", "namespace type")),
        "uidMappings": _ID_MAPPINGS,
        "gidMappings": _ID_MAPPINGS,
        "timeOffsets": _obj({"boottime": _TIME_OFFSET, "monotonic": _TIME_OFFSET}),
        "devices": _list(_DEVICE),
        "cgroupsPath": _string,
        "resources": _RESOURCES,
        "intelRdt": _obj(
            {
                "closID": _string,
                "l3CacheSchema": _string,
                "memBwSchema": _mem_bw_schema,
                "enableCMT": _boolean,
                "enableMBM": _boolean,
            }
        ),
        "sysctl": _STRING_MAP,
        "seccomp": _SECCOMP,
        "rootfsPropagation": _enum(ROOTFS_PROPAGATIONS, "rootfs propagation"),
        "maskedPaths": _PATHS,
        "readonlyPaths": _PATHS,
        "mountLabel": _string,
        "personality": _obj(
            {"domain": _enum(("LINUX", "LINUX32"), "personality domain"), "flags": _STRINGS},
            required=("domain",),
        ),
    }
)

_CONFIG = _obj(
    {
        "ociVersion": _semver,
        "root": _obj({"path": _non_empty, "readonly": _boolean}, required=("path",)),
        "process": _PROCESS,
        "hostname": _string,
        "domainname": _string,
        "mounts": _list(_MOUNT),
        "hooks": _obj({name: _list(_HOOK) for name in HOOK_NAMES}),
        "annotations": _STRING_MAP,
        "linux": _LINUX,
    },
    # root is OPTIONAL only on Windows (config.md "Root").
    required=("ociVersion", "root"),
)


# ---------------------------------------------------------------------------
# The default spec

# config-linux.md "Masked Paths": paths of /proc and /sys that leak host
# information or let a container touch hardware; each is hidden under an
# empty tmpfs or /dev/null. runc spec's list, in its order; Docker's masks
# more (dockyard.client.oci).
DEFAULT_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)

# config-linux.md "Readonly Paths": the same for runc spec and Docker.
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def default_spec(rootless: bool = False) -> dict[str, Any]:
    """The config that ``runc spec`` (``--rootless``) writes, as a new dict.

    As runc 1.2 and later: no ambient capabilities, and a cgroup namespace
    only where the host runs the unified cgroup v2 hierarchy.
    """
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    namespaces = ["pid", "network", "ipc", "uts", "mount"]
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        namespaces.append("cgroup")
    devpts_options = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]
    sys_mount: dict[str, Any] = {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    }
    linux: dict[str, Any] = {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [],
        "maskedPaths": list(DEFAULT_MASKED_PATHS),
        "readonlyPaths": list(DEFAULT_READONLY_PATHS),
    }
    if rootless:
        # An unprivileged user can map only itself; a new network namespace
        # would have no way out, and sysfs can only be mounted by the owner
        # of the network namespace, hence the bind mount; it owns no cgroup.
        namespaces = [ns for ns in namespaces if ns != "network"] + ["user"]
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
        del linux["resources"]
        devpts_options.remove("gid=5")  # group 5 is not mapped
        sys_mount = {
            "destination": "/sys",
            "type": "none",
            "source": "/sys",
            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
        }
    linux["namespaces"] = [{"type": ns} for ns in namespaces]
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm",
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": list(caps),
                "effective": list(caps),
                "permitted": list(caps),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "dockyard",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": devpts_options,
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            sys_mount,
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
        ],
        "linux": linux,
    }
