"""The supervisor's configuration: a TOML file, then flags over it.

The file's layout follows containerd's where the two overlap, so that an
operator finds the same keys::

    root = "/var/lib/dockyard"        # persistent state: content, snapshots, metadata.db
    state = "/run/dockyard"           # runtime state: bundles, shim sockets
    snapshotter = "overlayfs"         # the default snapshotter
    default_runtime = "io.containerd.dockyard.v2"
    shim_template = true              # fork dockyard's shims from a warm template

    [grpc]
    address = "/run/dockyard/supervisor.sock"
    gid = 0                           # group of the socket (mode 0660)

    [ttrpc]
    address = ""                      # default: <grpc address>.ttrpc

    [runtimes."io.containerd.runc.v2"]
    binary_name = "crun"              # default OCI runtime binary for this shim
"""

from __future__ import annotations

import grp
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from dockyard.errors import InvalidArgument

DEFAULT_ROOT = "/var/lib/dockyard"
DEFAULT_STATE = "/run/dockyard"
DEFAULT_ADDRESS = "/run/dockyard/supervisor.sock"
DEFAULT_RUNTIME = "io.containerd.dockyard.v2"
SNAPSHOTTERS = ("overlayfs", "native")


@dataclass
class RuntimeConfig:
    """Defaults for the containers of one runtime (shim) name."""

    binary_name: str = ""
    root: str = ""


@dataclass
class Config:
    root: str = DEFAULT_ROOT
    state: str = DEFAULT_STATE
    address: str = DEFAULT_ADDRESS
    ttrpc_address: str = ""
    gid: int = 0
    snapshotter: str = "overlayfs"
    default_runtime: str = DEFAULT_RUNTIME
    runtimes: dict[str, RuntimeConfig] = field(default_factory=dict)
    # gRPC worker threads: each streaming call (events subscribers, content
    # reads) and each task Wait (every foreground `ctr run`) holds one for
    # its duration. Threads are started only as needed.
    workers: int = 512
    # Fork dockyard's shims from a pre-imported template process (faster
    # starts, shared memory); off: every shim starts as a command.
    shim_template: bool = True

    def __post_init__(self) -> None:
        self.finish()

    def finish(self) -> None:
        """Derive what was left empty and check the values."""
        for name in ("root", "state", "address"):
            value = getattr(self, name)
            if not value or not os.path.isabs(value):
                raise InvalidArgument(f"config: {name} must be an absolute path, not {value!r}")
        if not self.ttrpc_address:
            self.ttrpc_address = self.address + ".ttrpc"
        if self.snapshotter not in SNAPSHOTTERS:
            raise InvalidArgument(
                f"config: snapshotter {self.snapshotter!r}: unknown ({', '.join(SNAPSHOTTERS)})"
            )
        if self.workers < 4:
            raise InvalidArgument(f"config: workers must be at least 4, not {self.workers}")


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InvalidArgument(f"config: [{key}] must be a table")
    return value


def _gid(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        try:
            return grp.getgrnam(value).gr_gid
        except KeyError:
            raise InvalidArgument(f"config: grpc.gid: no group named {value!r}") from None
    raise InvalidArgument(f"config: grpc.gid: want a group id or name, not {value!r}")


def from_dict(data: dict[str, Any]) -> Config:
    """A Config from the parsed TOML document; unknown keys are errors, so typos show."""
    known = {"root", "state", "snapshotter", "default_runtime", "grpc", "ttrpc", "runtimes"}
    known |= {"version", "workers", "shim_template"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidArgument(f"config: unknown key(s): {', '.join(unknown)}")
    kw: dict[str, Any] = {}
    for key in ("root", "state", "snapshotter", "default_runtime"):
        if key in data:
            if not isinstance(data[key], str):
                raise InvalidArgument(f"config: {key} must be a string")
            kw[key] = data[key]
    if "workers" in data:
        if not isinstance(data["workers"], int):
            raise InvalidArgument("config: workers must be an integer")
        kw["workers"] = data["workers"]
    if "shim_template" in data:
        if not isinstance(data["shim_template"], bool):
            raise InvalidArgument("config: shim_template must be true or false")
        kw["shim_template"] = data["shim_template"]
    g = _table(data, "grpc")
    if "address" in g:
        kw["address"] = str(g["address"])
    if "gid" in g:
        kw["gid"] = _gid(g["gid"])
    t = _table(data, "ttrpc")
    if t.get("address"):
        kw["ttrpc_address"] = str(t["address"])
    runtimes: dict[str, RuntimeConfig] = {}
    for name, opts in _table(data, "runtimes").items():
        if not isinstance(opts, dict):
            raise InvalidArgument(f"config: [runtimes.{name!r}] must be a table")
        bad = sorted(set(opts) - {"binary_name", "root"})
        if bad:
            raise InvalidArgument(f"config: runtimes.{name!r}: unknown key(s): {', '.join(bad)}")
        runtimes[name] = RuntimeConfig(**{k: str(v) for k, v in opts.items()})
    kw["runtimes"] = runtimes
    return Config(**kw)


def load(path: str | None) -> Config:
    """The file at ``path`` (defaults if None); a missing or malformed file is an error."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidArgument(f"config {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"config {path}: {e}") from None
    return from_dict(data)
