"""The container's root filesystem: the snapshotter's mounts at ``<bundle>/rootfs``.

containerd hands the shim the mounts of the container's snapshot
(``CreateTaskRequest.rootfs``, usually one overlay or bind mount); the shim
mounts them before ``runtime create`` and unmounts them when the task is
deleted, and the ``delete`` action does it after a dead shim
(runtime/v2/README.md "Root Filesystems").
"""

from __future__ import annotations

import errno
import os

from dockyard.errors import InvalidArgument, SystemFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dockyard.spec.mount import Mount

# Errors of mount(2) that mean the request was bad, not the host.
_BAD_MOUNT_ERRNOS = frozenset(
    (errno.EINVAL, errno.ENODEV, errno.ENOENT, errno.ENOTDIR, errno.E2BIG, errno.ENAMETOOLONG)
)


def _filesystems() -> set[str]:
    try:
        with open("/proc/filesystems") as f:
            return {line.split()[-1] for line in f if line.strip()}
    except OSError:
        return set()


def mount_rootfs(mounts: list[Mount], rootfs: str) -> None:
    """Mount the snapshotter's mounts at ``rootfs``; bad ones are InvalidArgument,
    and nothing stays mounted on any error."""
    from dockyard.spec.mount import mount_all

    known = None
    for i, m in enumerate(mounts):
        if m.type == "bind" or "bind" in m.options or "rbind" in m.options:
            continue  # the kernel ignores the type of a bind mount
        known = known if known is not None else _filesystems()
        if not m.type or (known and m.type not in known):
            raise InvalidArgument(
                f"rootfs mount {i} ({m.type or 'no type'} from {m.source or 'no source'}): "
                f"unknown filesystem type {m.type!r}"
            )
    try:
        os.mkdir(rootfs, 0o711)
    except FileExistsError:
        pass
    try:
        mount_all(mounts, rootfs)
    except OSError as e:
        what = f"rootfs: {_lower(e.strerror or str(e))}"
        if e.errno in _BAD_MOUNT_ERRNOS:
            raise InvalidArgument(what) from None
        raise SystemFailure(what) from None


def unmount_rootfs(rootfs: str) -> None:
    from dockyard.spec.mount import unmount_all

    try:
        unmount_all(rootfs)
    except OSError as e:
        raise SystemFailure(f"rootfs: {_lower(e.strerror or str(e))}") from None


def _lower(message: str) -> str:
    # libc's "mount x on y: Invalid argument" -> "...: invalid argument"
    head, sep, tail = message.rpartition(": ")
    return f"{head}{sep}{tail[:1].lower()}{tail[1:]}" if sep else message
