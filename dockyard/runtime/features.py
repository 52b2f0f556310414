"""``features``: what this runtime implements (runtime-spec features.md)."""

from __future__ import annotations

import os

from dockyard.runtime.rootfs import MOUNT_FLAGS, PROPAGATION
from dockyard.spec.runtime import CAPABILITIES, HOOK_NAMES, NAMESPACE_TYPES, OCI_VERSION

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def features() -> dict[str, Any]:
    from dockyard.runtime import seccomp
    from dockyard.runtime.cgroups import detect_mode

    namespaces = [n for n in NAMESPACE_TYPES if n != "time" or os.path.exists("/proc/self/ns/time")]
    mode = detect_mode()
    sec = seccomp.supported()
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": list(HOOK_NAMES),
        "mountOptions": sorted([*MOUNT_FLAGS, *PROPAGATION]),
        "linux": {
            "namespaces": namespaces,
            "capabilities": sorted(CAPABILITIES, key=CAPABILITIES.__getitem__),
            "cgroup": {
                "v1": mode in ("v1", "hybrid"),
                "v2": mode in ("v2", "hybrid"),
                "systemd": False,
                "systemdUser": False,
                "rdma": False,
            },
            "seccomp": sec,
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {
            "org.opencontainers.runc.checkpoint.enabled": "false",
            "io.github.dockyard.runtime.version": "0.1.0",
        },
    }
