"""A container's runtime options, whichever of containerd's forms they come in.

``CreateTaskRequest.options`` (and the bytes on the ``start`` action's
stdin) carry one of:

- ``containerd.runc.v1.Options``: the runc shim's own options (``binary_name``,
  ``root``, ``no_pivot_root``, ...), what a supervisor sets;
- ``containerd.linux.runc.CreateOptions`` / ``RuncOptions``: the legacy
  runtime's, which ctr 1.6 sends for ``--no-pivot`` to a runtime whose name
  does not start with ``io.containerd.runc``;
- ``runtimeoptions.v1.Options``: a ``config_path`` to a TOML file of runc
  options (``ctr run --runtime-config-path``), keys as containerd's CRI
  writes them (``BinaryName = "runc"``) or in snake case (``binary_name``).

They all become one ``ShimOptions``. The shim saves what it resolved from
them in the bundle (``options.json``), for the ``delete`` action after a
crash.
"""

from __future__ import annotations

import os

from dockyard.errors import InvalidArgument
from dockyard.shim import messages as m
from dockyard.shim.codec import DecodeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

OPTIONS_FILE = "options.json"

# TOML/CRI key (CamelCase and snake_case) -> ShimOptions attribute and type.
_FIELDS: dict[str, type] = {
    "binary_name": str,
    "root": str,
    "no_pivot_root": bool,
    "no_new_keyring": bool,
    "shim_cgroup": str,
    "io_uid": int,
    "io_gid": int,
    "systemd_cgroup": bool,
    "criu_path": str,
    "criu_image_path": str,
    "criu_work_path": str,
}
_CAMEL = {"".join(p.capitalize() for p in k.split("_")): k for k in _FIELDS}


class ShimOptions:
    """The runc shim's options, defaults where unset."""

    def __init__(self, **values: Any) -> None:
        self.binary_name = ""
        self.root = ""
        self.no_pivot_root = False
        self.no_new_keyring = False
        self.shim_cgroup = ""
        self.io_uid = 0
        self.io_gid = 0
        self.systemd_cgroup = False
        self.criu_path = ""
        self.criu_image_path = ""
        self.criu_work_path = ""
        for k, v in values.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        return f"ShimOptions({vars(self)!r})"


def _from_message(msg: Any) -> ShimOptions:
    out = ShimOptions()
    for name in _FIELDS:
        if hasattr(msg, name):
            setattr(out, name, getattr(msg, name))
    return out


def parse(value: m.Any | None) -> ShimOptions:
    """The options in a CreateTaskRequest's ``options`` (absent: defaults)."""
    if value is None or not value.type_url:
        return ShimOptions()
    name = value.type_url.rsplit("/", 1)[-1]
    try:
        if name == m.RuncShimOptions.FULL_NAME:
            return _from_message(m.RuncShimOptions.FromString(value.value))
        if name == m.LegacyCreateOptions.FULL_NAME:
            return _from_message(m.LegacyCreateOptions.FromString(value.value))
        if name == m.LegacyRuncOptions.FULL_NAME:
            legacy = m.LegacyRuncOptions.FromString(value.value)
            return ShimOptions(
                binary_name=legacy.runtime,
                root=legacy.runtime_root,
                criu_path=legacy.criu_path,
                systemd_cgroup=legacy.systemd_cgroup,
            )
        if name == m.RuntimeOptions.FULL_NAME:
            generic = m.RuntimeOptions.FromString(value.value)
            return read_config(generic.config_path) if generic.config_path else ShimOptions()
    except DecodeError as e:
        raise InvalidArgument(f"runtime options of type {value.type_url!r}: {e}") from None
    raise InvalidArgument(f"runtime options of type {value.type_url!r}: not known to this shim")


def read_config(path: str) -> ShimOptions:
    """A TOML file of runc options (``runtimeoptions.v1.Options.config_path``)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise InvalidArgument(f"runtime config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"runtime config {path}: {e}") from None
    out = ShimOptions()
    for key, value in data.items():
        name = _CAMEL.get(key, key)
        kind = _FIELDS.get(name)
        if kind is None:
            raise InvalidArgument(f"runtime config {path}: unknown option {key!r}")
        if type(value) is not kind:
            raise InvalidArgument(
                f"runtime config {path}: option {key!r} must be a {kind.__name__}"
            )
        setattr(out, name, value)
    return out


def save(bundle: str, runtime: str, root: str, systemd_cgroup: bool) -> None:
    """What the ``delete`` action needs to clean up without the shim."""
    from dockyard import jsonio
    from dockyard.atomicfile import replace_file

    data = {"runtime": runtime, "root": root, "systemd_cgroup": systemd_cgroup}
    replace_file(os.path.join(bundle, OPTIONS_FILE), jsonio.dumps(data).encode())


def load(bundle: str) -> dict[str, Any] | None:
    from dockyard import jsonio

    try:
        data = jsonio.load_file(os.path.join(bundle, OPTIONS_FILE))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
