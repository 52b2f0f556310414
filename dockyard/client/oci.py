"""Runtime specs for containers, with the defaults Docker gives them.

``docker_default_spec`` builds the config.json (runtime-spec 1.x, as a plain
dict) that dockerd would hand its runtime for ``docker run`` of an image: the
image config's Env, Entrypoint, Cmd, WorkingDir and User merged with what the
caller asks for, and Docker's defaults for everything else (capabilities,
mounts, masked and readonly paths, device rules, namespaces, sysctls, the
default seccomp profile). The defaults follow moby as of Docker 29.7
(``daemon/oci_linux.go``, ``daemon/pkg/oci/defaults.go``, the seccomp
profile in ``seccomp_default``), except that a time namespace is only asked
for (``time_namespace=True``), since runtimes before runc 1.2 refuse one.

The rootfs is untrusted: /etc/passwd and /etc/group are read through
openat2(RESOLVE_IN_ROOT), so neither a symlink nor ``..`` can lead out of it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from dockyard.client import seccomp_default
from dockyard.errors import InvalidArgument
from dockyard.runtime import libc
from dockyard.runtime.cgroups import detect_mode
from dockyard.runtime.rootfs import secure_join
from dockyard.spec.image import ImageConfig, host_platform
from dockyard.spec.runtime import (
    CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    DOCKER_DEFAULT_CAPABILITIES,
    OCI_VERSION,
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHM_SIZE = 64 << 20  # docker run --shm-size's default
DEFAULT_CGROUP_PARENT = "/docker"

# uids and gids above this are refused, as Docker does (32-bit safe; the
# kernel's own limit is 2**32 - 2).
MAX_ID = 2**31 - 1

# A passwd or group file larger than this is not one: refuse it rather than
# read a huge file from an untrusted image into memory.
MAX_USER_FILE_SIZE = 16 << 20


# ---------------------------------------------------------------------------
# Reading the rootfs


def read_rootfs_file(rootfs: str, path: str, limit: int = MAX_USER_FILE_SIZE) -> bytes | None:
    """The contents of regular file ``path`` of the container's rootfs, or None.

    ``path`` is resolved as if ``rootfs`` were ``/``: symlinks, absolute or
    relative, and ``..`` never lead out of it. None when the file is missing
    or is not a regular file (a device or fifo is never opened for reading).
    """
    try:
        root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidArgument(f"open rootfs {rootfs!r}: {(e.strerror or str(e)).lower()}")
    try:
        try:
            fd = _open_in_root(root_fd, rootfs, path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                return None
            raise InvalidArgument(
                f"open {path} in rootfs {rootfs!r}: {(e.strerror or str(e)).lower()}"
            )
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            # Reopen the O_PATH handle for reading: the file it names is the
            # one resolution found, whatever changed in the rootfs since.
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(fd)
        with os.fdopen(rfd, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise InvalidArgument(f"{path} in rootfs {rootfs!r}: larger than {limit} bytes")
        return data
    finally:
        os.close(root_fd)


def _open_in_root(root_fd: int, rootfs: str, path: str) -> int:
    """An O_PATH descriptor of ``path`` resolved inside the root."""
    rel = path.lstrip("/") or "."
    try:
        return libc.openat2(
            root_fd, rel, os.O_PATH, 0, libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
        )
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EPERM):
            raise
    # Kernels before 5.6 (or a seccomp filter that hides openat2): resolve by
    # hand, open without following a last symlink, and check where it landed.
    real_root = os.path.realpath(rootfs)
    target = secure_join(real_root, path)
    fd = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    landed = os.readlink(f"/proc/self/fd/{fd}")
    if landed != real_root and not landed.startswith(real_root.rstrip("/") + "/"):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "resolved outside the rootfs", path)
    return fd


# ---------------------------------------------------------------------------
# Users and groups (Docker's rules: moby/sys/user GetExecUser, daemon getUser)


@dataclass(frozen=True)
class User:
    """The user a container's process runs as (runtime-spec ``process.user``).

    ``additional_gids`` starts with ``gid`` itself, then the groups of
    /etc/group that list the user, then the ``group_add`` ones, as dockerd
    writes them. ``home`` is the passwd entry's, "" when there is none.
    """

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = ""

    def to_spec(self) -> dict[str, Any]:
        return {"uid": self.uid, "gid": self.gid, "additionalGids": list(self.additional_gids)}


class _PasswdEntry(NamedTuple):
    name: str
    uid: int
    gid: int
    home: str


class _GroupEntry(NamedTuple):
    name: str
    gid: int
    members: tuple[str, ...]


_INT_RE = re.compile(r"[+-]?[0-9]+\Z")


def _field_int(text: str) -> int:
    # A number field that does not parse counts as 0, as in Docker: some
    # images have odd files, and refusing them would refuse the image.
    return int(text) if _INT_RE.match(text) else 0


def _lines(data: bytes) -> Iterable[list[str]]:
    for raw in data.decode("utf-8", "surrogateescape").split("\n"):
        line = raw.strip()
        # Blank lines and comments are skipped in both files (Docker skips
        # comments only in /etc/group; in /etc/passwd one would parse as a
        # bogus uid 0 entry).
        if line and not line.startswith("#"):
            yield line.split(":")


def _parse_passwd(data: bytes) -> list[_PasswdEntry]:
    """passwd(5): name:password:UID:GID:GECOS:directory:shell; short lines are padded."""
    out = []
    for f in _lines(data):
        f += [""] * (7 - len(f))
        out.append(_PasswdEntry(f[0], _field_int(f[2]), _field_int(f[3]), f[5]))
    return out


def _parse_group(data: bytes) -> list[_GroupEntry]:
    """group(5): group_name:password:GID:user_list."""
    out = []
    for f in _lines(data):
        f += [""] * (4 - len(f))
        members = tuple(f[3].split(",")) if f[3] else ()
        out.append(_GroupEntry(f[0], _field_int(f[2]), members))
    return out


def _numeric_id(value: str) -> int | None:
    """The id ``value`` names, or None when it is a name; out of range is an error."""
    if not _INT_RE.match(value):
        return None
    n = int(value)
    if not 0 <= n <= MAX_ID:
        raise InvalidArgument(f"invalid id {value!r}: uids and gids must be in range 0-{MAX_ID}")
    return n


def _group_id(groups: Sequence[_GroupEntry], spec: str) -> int:
    """The gid a group spec names: a number as it is (an entry of that gid
    would only say the same), a name through /etc/group."""
    gid = _numeric_id(spec)
    if gid is not None:
        return gid
    match = next((g for g in groups if g.name == spec), None)
    if match is None:
        raise InvalidArgument(f"unable to find group {spec}: no matching entries in group file")
    return match.gid


def resolve_user(rootfs: str, user: str = "", group_add: Sequence[str] = ()) -> User:
    """Resolve a Docker user spec through the rootfs's /etc/passwd and /etc/group.

    ``user`` is one of "", "name", "uid", "name:group", "uid:gid",
    "name:gid", "uid:group". Numeric ids need no entry (nor the files at all);
    names do. Supplementary groups come from /etc/group membership when no
    group is given explicitly. ``group_add`` (``docker run --group-add``)
    adds groups by name or id. Raises InvalidArgument naming what is missing.
    """
    user_arg, _, rest = user.partition(":")
    group_arg = rest.partition(":")[0]
    uid_arg = _numeric_id(user_arg) if user_arg else None

    passwd_data = read_rootfs_file(rootfs, "/etc/passwd")
    group_data = read_rootfs_file(rootfs, "/etc/group")
    passwd = _parse_passwd(passwd_data) if passwd_data is not None else []
    groups = _parse_group(group_data) if group_data is not None else []

    uid, gid, home, matched_name = 0, 0, "", ""
    if not user_arg:
        found = next((p for p in passwd if p.uid == 0), None)
    elif uid_arg is not None:
        found = next((p for p in passwd if p.uid == uid_arg), None)
    else:
        found = next((p for p in passwd if p.name == user_arg), None)
    if found is not None:
        uid, gid, home, matched_name = found.uid, found.gid, found.home, found.name
    elif user_arg:
        if uid_arg is None:
            raise InvalidArgument(
                f"unable to find user {user_arg}: no matching entries in passwd file"
            )
        uid = uid_arg

    supplementary: list[int] = []
    if group_arg:
        gid = _group_id(groups, group_arg)
    elif matched_name:
        # Supplementary groups only for the implicit form: "name:group"
        # means exactly that group, as su(1) -g does.
        supplementary = [g.gid for g in groups if matched_name in g.members]

    extra: list[int] = []
    for spec in group_add:
        gid_add = _group_id(groups, spec)
        if not 0 <= gid_add <= MAX_ID:
            raise InvalidArgument(f"group {spec}: gid {gid_add} out of range 0-{MAX_ID}")
        if gid_add not in extra:
            extra.append(gid_add)

    return User(uid, gid, (gid, *supplementary, *extra), home)


# ---------------------------------------------------------------------------
# Capabilities


def host_capabilities() -> list[str]:
    """The capabilities this host grants (our bounding set), in kernel order.

    What "all capabilities" means for ``--privileged`` and ``--cap-add ALL``:
    a capability the kernel lacks, or one taken from the daemon (in a
    container, say), can not be given to a container either.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    mask = int(line.split()[1], 16)
                    break
            else:
                mask = -1
    except OSError:
        mask = -1
    return [name for name, bit in CAPABILITIES.items() if mask & (1 << bit)]


def _normalize_capabilities(names: Iterable[str], available: Sequence[str]) -> list[str]:
    out = []
    for raw in names:
        name = raw.upper()
        if name != "ALL" and not name.startswith("CAP_"):
            name = "CAP_" + name
        if name != "ALL":
            if name not in CAPABILITIES:
                raise InvalidArgument(f"unknown capability: {name!r}")
            if name not in available:
                raise InvalidArgument(
                    f"capability not supported by the kernel or not available here: {name!r}"
                )
        out.append(name)
    return out


def docker_capabilities(
    cap_add: Iterable[str] = (), cap_drop: Iterable[str] = (), privileged: bool = False
) -> list[str]:
    """Docker's default capabilities with ``--cap-add``/``--cap-drop`` applied.

    Names may omit ``CAP_`` and be in any case; ``ALL`` adds every capability
    the host has (except those dropped), or drops all (keeping those added).
    Privileged containers get every capability of the host.
    """
    if privileged:
        return host_capabilities()
    adds, drops = list(cap_add), list(cap_drop)
    if not adds and not drops:
        return list(DOCKER_DEFAULT_CAPABILITIES)
    available = host_capabilities()
    drop = _normalize_capabilities(drops, available)
    add = _normalize_capabilities(adds, available)
    if "ALL" in add:
        return [c for c in available if c not in drop]
    if "ALL" in drop:
        return [c for c in add if c != "ALL"]
    caps = [c for c in DOCKER_DEFAULT_CAPABILITIES if c not in drop]
    # each once (dockerd lists one added twice if it was there already; the
    # runtime grants the same either way)
    return caps + [c for c in dict.fromkeys(add) if c not in caps]


# ---------------------------------------------------------------------------
# Seccomp

# GOARCH (the image spec's and Docker's names) -> libseccomp's native name,
# which the profile's arch conditions use.
_NATIVE_ARCH = {
    "386": "x86",
    "amd64": "amd64",
    "arm": "arm",
    "arm64": "arm64",
    "loong64": "loongarch64",
    "mips64": "mips64",
    "mips64p32": "mips64n32",
    "mips64le": "mipsel64",
    "mips64p32le": "mips3l64n32",
    "mipsle": "mipsel",
    "ppc": "ppc",
    "ppc64": "ppc64",
    "ppc64le": "ppc64le",
    "riscv64": "riscv64",
    "s390": "s390",
    "s390x": "s390x",
}

# native name -> SCMP_ARCH_* (runtime-spec config-linux.md "Seccomp")
_SCMP_ARCH = {
    "x86": "SCMP_ARCH_X86",
    "amd64": "SCMP_ARCH_X86_64",
    "arm": "SCMP_ARCH_ARM",
    "arm64": "SCMP_ARCH_AARCH64",
    "loongarch64": "SCMP_ARCH_LOONGARCH64",
    "mips64": "SCMP_ARCH_MIPS64",
    "mips64n32": "SCMP_ARCH_MIPS64N32",
    "mipsel64": "SCMP_ARCH_MIPSEL64",
    "mips3l64n32": "SCMP_ARCH_MIPSEL64N32",
    "mipsel": "SCMP_ARCH_MIPSEL",
    "ppc": "SCMP_ARCH_PPC",
    "ppc64": "SCMP_ARCH_PPC64",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "riscv64": "SCMP_ARCH_RISCV64",
    "s390": "SCMP_ARCH_S390",
    "s390x": "SCMP_ARCH_S390X",
}


def host_kernel() -> tuple[int, int]:
    """This kernel's version and major revision, e.g. (6, 1) for 6.1.0-13-amd64."""
    parts = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(parts.group(1)), int(parts.group(2))) if parts else (0, 0)


def seccomp_profile(
    capabilities: Iterable[str],
    arch: str | None = None,
    kernel: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Docker's default seccomp profile as a runtime-spec ``linux.seccomp``.

    ``capabilities`` is the container's bounding set (rules for
    CAP_SYS_ADMIN and the like apply only with it); ``arch`` is in Go's
    spelling (``amd64``, ``arm64``; default: this host's) and decides the
    filter's architectures and the architecture-specific rules; ``kernel``
    (default: this host's) decides rules that need a minimum kernel.
    """
    arch = arch or host_platform().architecture
    native = _NATIVE_ARCH.get(arch)
    if native is None:
        raise InvalidArgument(f"seccomp: unknown architecture {arch!r}")
    caps = frozenset(capabilities)
    kernel = kernel or host_kernel()
    out: dict[str, Any] = {
        "defaultAction": seccomp_default.DEFAULT_ACTION,
        "defaultErrnoRet": seccomp_default.DEFAULT_ERRNO_RET,
    }
    scmp = _SCMP_ARCH[native]
    if scmp in seccomp_default.SUB_ARCHITECTURES:
        out["architectures"] = [scmp, *seccomp_default.SUB_ARCHITECTURES[scmp]]
    syscalls = []
    for rule in seccomp_default.RULES:
        if not rule.applies(native, caps, kernel):
            continue
        entry: dict[str, Any] = {"names": list(rule.names), "action": rule.action}
        if rule.errno_ret is not None:
            entry["errnoRet"] = rule.errno_ret
        if rule.args:
            entry["args"] = [a.to_spec() for a in rule.args]
        syscalls.append(entry)
    out["syscalls"] = syscalls
    return out


# ---------------------------------------------------------------------------
# Process: args, env, cwd


def _container_config(image_config: ImageConfig | Mapping[str, Any] | None) -> Mapping[str, Any]:
    if image_config is None:
        return {}
    if isinstance(image_config, ImageConfig):
        return image_config.config
    return image_config


def _strings(config: Mapping[str, Any], key: str) -> list[str] | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"image config: {key} must be a list of strings")
    return list(value)


def command(
    image_config: ImageConfig | Mapping[str, Any] | None,
    args: Sequence[str] | None = None,
    entrypoint: Sequence[str] | None = None,
) -> list[str]:
    """``process.args``: the entrypoint, then the command.

    As ``docker run``: the image's Cmd is replaced by ``args`` when given; an
    ``entrypoint`` replaces the image's and then drops its Cmd too (an empty
    one, ``--entrypoint ""``, only clears the image's entrypoint).
    """
    config = _container_config(image_config)
    cmd = list(args) if args else None
    if entrypoint:
        ep = list(entrypoint)
    else:
        if cmd is None:
            cmd = _strings(config, "Cmd")
        ep = [] if entrypoint is not None else _strings(config, "Entrypoint") or []
    argv = ep + (cmd or [])
    if not argv:
        raise InvalidArgument("no command specified: neither the image nor the caller gives one")
    return argv


def _env_key(entry: str) -> str:
    return entry.partition("=")[0]


def merge_env(image_env: Sequence[str], env: Sequence[str]) -> list[str]:
    """The container's env over the image's: the container's entries first,
    then the image's whose names it does not set (a bare ``NAME`` in ``env``
    also hides the image's ``NAME``)."""
    if not env:
        return list(image_env)
    keys = {_env_key(e) for e in env}
    return list(env) + [e for e in image_env if _env_key(e) not in keys]


def process_env(env: Sequence[str], hostname: str, terminal: bool) -> list[str]:
    """The env dockerd gives the process: PATH, HOSTNAME (and TERM with a
    terminal) as defaults that ``env`` overrides in place; a bare ``NAME`` in
    ``env`` unsets that default; the rest of ``env`` follows in order."""
    out = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"]
    if terminal:
        out.append("TERM=xterm")
    defaults = {_env_key(e): i for i, e in enumerate(out)}
    removed: set[int] = set()
    for entry in env:
        key, eq, _ = entry.partition("=")
        if not eq:
            if key in defaults:
                removed.add(defaults[key])
            continue
        if key in defaults:
            out[defaults[key]] = entry
        else:
            out.append(entry)
    return [e for i, e in enumerate(out) if i not in removed]


def _clean_cwd(cwd: str) -> str:
    if not cwd.startswith("/"):
        raise InvalidArgument(f"working directory {cwd!r} is invalid: it must be an absolute path")
    cleaned = posixpath.normpath(cwd)
    # normpath keeps a leading "//" (POSIX leaves it implementation-defined).
    return "/" + cleaned.lstrip("/")


# ---------------------------------------------------------------------------
# Mounts, paths, devices, namespaces


def default_mounts(shm_size: int = DEFAULT_SHM_SIZE) -> list[dict[str, Any]]:
    """Docker's default mounts, in its order; ``/dev/shm`` of ``shm_size`` bytes.

    Not built from runc spec's (``dockyard.spec.runtime.default_spec``): those
    come in another order, /proc without options, cgroup with ``relatime``
    and /dev/shm of a fixed size, so each list follows its reference whole.
    """
    nodev = ["nosuid", "noexec", "nodev"]
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": list(nodev)},
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
            # gid 5 is "tty" in every common distribution; ptmxmode lets any
            # user open /dev/ptmx of the new instance.
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [*nodev, "ro"]},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["ro", *nodev],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": list(nodev),
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": [*nodev, "mode=1777", f"size={shm_size}"],
        },
    ]


# Docker masks what runc spec does and two side channels more: interrupt
# counts per CPU (/proc/interrupts, moby advisory GHSA-6fw5-f8r9-fgfm) and
# energy counters (/sys/devices/virtual/powercap, Platypus, GHSA-jq35-85cj-fj4p).
# moby lists its paths sorted.
_MASKED_PATHS = tuple(
    sorted((*DEFAULT_MASKED_PATHS, "/proc/interrupts", "/sys/devices/virtual/powercap"))
)


def _possible_cpus() -> list[int]:
    """CPU numbers from /sys/devices/system/cpu/possible ("0-3,8")."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
    except OSError:
        return []
    cpus: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def default_masked_paths() -> list[str]:
    """Docker's masked paths, with each CPU's thermal_throttle counters that
    exist on this host (another side channel)."""
    paths = list(_MASKED_PATHS)
    for cpu in _possible_cpus():
        p = f"/sys/devices/system/cpu/cpu{cpu}/thermal_throttle"
        if os.path.exists(p):
            paths.append(p)
    return paths


def _device_rule(allow: bool, kind: str, major: int, minor: int) -> dict[str, Any]:
    return {"allow": allow, "type": kind, "major": major, "minor": minor, "access": "rwm"}


def default_device_rules() -> list[dict[str, Any]]:
    """Docker's device cgroup rules: deny everything, then the standard nodes.

    The runtime adds its own allow-list on top (as runc does: mknod of any
    node, the default devices, /dev/pts/*, /dev/net/tun); ``/dev/ptmx`` of
    the host (5:2) is not among these, and 10:229 (/dev/fuse) is denied.
    """
    return [
        {"allow": False, "access": "rwm"},
        _device_rule(True, "c", 1, 5),  # /dev/zero
        _device_rule(True, "c", 1, 3),  # /dev/null
        _device_rule(True, "c", 1, 9),  # /dev/urandom
        _device_rule(True, "c", 1, 8),  # /dev/random
        _device_rule(True, "c", 5, 0),  # /dev/tty
        _device_rule(True, "c", 5, 1),  # /dev/console
        _device_rule(False, "c", 10, 229),  # /dev/fuse
    ]


_DEVICE_RULE_RE = re.compile(r"([acb]) ([0-9]+|\*):([0-9]+|\*) ([rwm]{1,3})\Z")


def parse_device_cgroup_rule(rule: str) -> dict[str, Any]:
    """``docker run --device-cgroup-rule``: ``"c 1:3 mr"``, ``"a *:* rwm"``."""
    m = _DEVICE_RULE_RE.match(rule)
    if m is None:
        raise InvalidArgument(
            f"invalid device cgroup rule {rule!r}: want 'TYPE MAJOR:MINOR ACCESS'"
        )
    kind, major, minor, access = m.groups()
    out: dict[str, Any] = {"allow": True, "type": kind}
    if major != "*":
        out["major"] = int(major)
    if minor != "*":
        out["minor"] = int(minor)
    out["access"] = access
    return out


# Directories of /dev whose nodes a privileged container does not get: they
# are per-container mounts (pts, shm, mqueue), links (fd) or tool state.
_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


def host_devices(path: str = "/dev") -> list[dict[str, Any]]:
    """Every block and character device under ``path``, as ``linux.devices``
    entries with the host's numbers, mode and owner (for ``--privileged``)."""
    out: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return out
    for name in names:
        full = os.path.join(path, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if name not in _SKIPPED_DEV_DIRS:
                out.extend(host_devices(full))
            continue
        # /dev/console is the container's own (the runtime sets it up).
        if name == "console":
            continue
        if stat.S_ISBLK(st.st_mode):
            kind = "b"
        elif stat.S_ISCHR(st.st_mode):
            kind = "c"
        else:
            continue
        out.append(
            {
                "path": full,
                "type": kind,
                "major": os.major(st.st_rdev),
                "minor": os.minor(st.st_rdev),
                "fileMode": st.st_mode & ~stat.S_IFMT(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
            }
        )
    return out


def default_network_sysctls(user_namespace: bool = False) -> dict[str, str]:
    """The sysctls Docker sets in a container's own network namespace, those
    this kernel has: ping without CAP_NET_RAW, and ports below 1024 without
    CAP_NET_BIND_SERVICE (the default capabilities allow both anyway)."""
    out: dict[str, str] = {}
    # A user namespace can not open ping sockets for every group.
    if (
        not user_namespace
        and not libc.in_user_namespace()
        and os.path.exists("/proc/sys/net/ipv4/ping_group_range")
    ):
        out["net.ipv4.ping_group_range"] = f"0 {MAX_ID}"
    if os.path.exists("/proc/sys/net/ipv4/ip_unprivileged_port_start"):
        out["net.ipv4.ip_unprivileged_port_start"] = "0"
    return out


def _namespace(kind: str, mode: str) -> dict[str, str] | None:
    """None for "host", a new namespace for "private", or join a path."""
    if mode == "host":
        return None
    if mode == "private":
        return {"type": kind}
    if mode.startswith("/"):
        return {"type": kind, "path": mode}
    raise InvalidArgument(f"invalid {kind} namespace {mode!r}: want private, host or a path")


# ---------------------------------------------------------------------------
# The spec


def docker_default_spec(
    *,
    rootfs: str,
    image_config: ImageConfig | Mapping[str, Any] | None = None,
    args: Sequence[str] | None = None,
    entrypoint: Sequence[str] | None = None,
    env: Sequence[str] = (),
    user: str | None = None,
    group_add: Sequence[str] = (),
    cwd: str | None = None,
    container_id: str | None = None,
    hostname: str | None = None,
    domainname: str = "",
    terminal: bool = False,
    root_path: str | None = None,
    readonly_rootfs: bool = False,
    cgroups_path: str | None = None,
    cgroup_parent: str = DEFAULT_CGROUP_PARENT,
    arch: str | None = None,
    cap_add: Sequence[str] = (),
    cap_drop: Sequence[str] = (),
    privileged: bool = False,
    seccomp: bool = True,
    no_new_privileges: bool = False,
    oom_score_adj: int = 0,
    shm_size: int = DEFAULT_SHM_SIZE,
    ulimits: Mapping[str, tuple[int, int]] | None = None,
    sysctls: Mapping[str, str] | None = None,
    device_cgroup_rules: Sequence[str] = (),
    mounts: Sequence[Mapping[str, Any]] = (),
    network_namespace: str = "private",
    ipc_namespace: str = "private",
    pid_namespace: str = "private",
    uts_namespace: str = "private",
    cgroup_namespace: str | None = None,
    time_namespace: bool = False,
) -> dict[str, Any]:
    """The config.json dockerd would write for ``docker run`` of this image.

    - ``rootfs``: the container's root filesystem (its /etc/passwd and
      /etc/group resolve ``user``); ``root.path`` is ``root_path`` if given
      (a bundle-relative "rootfs", say), else ``rootfs``.
    - ``image_config``: the image's config (``ImageConfig``) or its
      container-config object (the ``config`` of the image config JSON).
    - ``args`` replace the image's Cmd; ``entrypoint`` its Entrypoint (see
      ``command``); ``env`` is merged over the image's Env; ``user`` and
      ``cwd`` replace the image's User and WorkingDir when not empty.
    - ``container_id`` gives the default hostname (its first 12 characters)
      and cgroups path (``cgroup_parent``/id), unless ``hostname`` or
      ``cgroups_path`` say otherwise.
    - ``cap_add``/``cap_drop``/``privileged`` as ``docker run``'s flags;
      ``seccomp=False`` runs unconfined (privileged containers always do).
    - ``mounts`` (OCI mount objects: volumes, /etc/hosts, ...) replace the
      default mount of the same destination, all of /dev's when one is /dev.
    - namespaces: "private" (a new one), "host", or the path of one to join;
      ``ipc_namespace`` also takes "none" (private, no /dev/shm). A cgroup
      namespace is private on cgroup v2 hosts and the host's on v1 unless
      ``cgroup_namespace`` says; ``time_namespace`` asks for a new one.
    - ``ulimits``: name (``nofile``) -> (soft, hard).
    Raises InvalidArgument for a bad user, capability, command or option.
    """
    config = _container_config(image_config)
    caps = docker_capabilities(cap_add, cap_drop, privileged)
    argv = command(config, args, entrypoint)

    user_spec = user or config.get("User") or ""
    if not isinstance(user_spec, str):
        raise InvalidArgument("image config: User must be a string")
    resolved = resolve_user(rootfs, user_spec, group_add)

    workdir = cwd or config.get("WorkingDir") or "/"
    if not isinstance(workdir, str):
        raise InvalidArgument("image config: WorkingDir must be a string")

    if hostname is None:
        hostname = container_id[:12] if container_id else ""
    image_env = _strings(config, "Env") or []
    # HOSTNAME names the container even when it shares the host's UTS
    # namespace (and so the host's hostname), as with dockerd.
    process_environment = process_env(merge_env(image_env, list(env)), hostname, terminal)
    if uts_namespace == "host":
        hostname = ""
    # runc and dockyard-runtime set HOME from passwd when the env has none;
    # saying it here makes the spec tell the whole truth.
    if not any(_env_key(e) == "HOME" for e in process_environment):
        process_environment.append(f"HOME={resolved.home or '/'}")

    process: dict[str, Any] = {
        "terminal": terminal,
        "user": resolved.to_spec(),
        "args": argv,
        "env": process_environment,
        "cwd": _clean_cwd(workdir),
        "capabilities": {"bounding": caps, "effective": list(caps), "permitted": list(caps)},
        "oomScoreAdj": oom_score_adj,
    }
    if ulimits:
        process["rlimits"] = [
            {"type": "RLIMIT_" + name.upper(), "soft": soft, "hard": hard}
            for name, (soft, hard) in ulimits.items()
        ]
    if no_new_privileges:
        process["noNewPrivileges"] = True

    # namespaces, in Docker's order
    if ipc_namespace not in ("private", "host", "none") and not ipc_namespace.startswith("/"):
        raise InvalidArgument(
            f"invalid ipc namespace {ipc_namespace!r}: want private, none, host or a path"
        )
    if cgroup_namespace is None:
        cgroup_namespace = "private" if detect_mode() == "v2" else "host"
    if cgroup_namespace not in ("private", "host"):
        raise InvalidArgument(
            f"invalid cgroup namespace {cgroup_namespace!r}: want private or host"
        )
    wanted = [
        _namespace("mount", "private"),
        _namespace("network", network_namespace),
        {"type": "time"} if time_namespace else None,
        _namespace("uts", uts_namespace),
        _namespace("pid", pid_namespace),
        _namespace("ipc", "private" if ipc_namespace == "none" else ipc_namespace),
        _namespace("cgroup", cgroup_namespace),
    ]
    namespaces = [ns for ns in wanted if ns is not None]

    # mounts: the caller's replace the defaults they cover
    own = [dict(m) for m in mounts]
    if ipc_namespace == "host":
        # the host's IPC namespace comes with the host's /dev/shm
        own.insert(
            0,
            {
                "destination": "/dev/shm",
                "type": "bind",
                "source": "/dev/shm",
                "options": ["rbind", "rprivate"],
            },
        )
    own_dests = {m.get("destination") for m in own}
    all_mounts = []
    for m in default_mounts(shm_size):
        dest = m["destination"]
        if dest in own_dests or ("/dev" in own_dests and dest.startswith("/dev/")):
            continue
        if dest == "/dev/shm" and ipc_namespace == "none":
            continue
        # a read-only rootfs makes the default mounts read-only too, but
        # for those a process must be able to write to
        writable = dest in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue")
        if readonly_rootfs and not writable and "ro" not in m["options"]:
            m["options"].append("ro")
        if privileged and m["type"] in ("sysfs", "cgroup"):
            m["options"] = [o for o in m["options"] if o != "ro"]
        all_mounts.append(m)
    all_mounts.extend(own)

    # devices
    if privileged:
        device_rules: list[dict[str, Any]] = [{"allow": True, "access": "rwm"}]
    else:
        device_rules = default_device_rules()
        device_rules.extend(parse_device_cgroup_rule(r) for r in device_cgroup_rules)

    linux: dict[str, Any] = {}
    all_sysctls = default_network_sysctls() if network_namespace == "private" else {}
    all_sysctls.update(sysctls or {})
    if all_sysctls:
        linux["sysctl"] = all_sysctls
    linux["resources"] = {"devices": device_rules}
    if cgroups_path is None and container_id:
        cgroups_path = posixpath.join(cgroup_parent, container_id)
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    linux["namespaces"] = namespaces
    if privileged:
        linux["devices"] = host_devices()
    elif seccomp:
        linux["seccomp"] = seccomp_profile(caps, arch)
    if not privileged:
        linux["maskedPaths"] = default_masked_paths()
        linux["readonlyPaths"] = list(DEFAULT_READONLY_PATHS)

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": root_path or rootfs},
    }
    if readonly_rootfs:
        spec["root"]["readonly"] = True
    if hostname:
        spec["hostname"] = hostname
    if domainname:
        spec["domainname"] = domainname
    spec["mounts"] = all_mounts
    spec["linux"] = linux
    return spec
