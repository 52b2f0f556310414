"""The overlayfs snapshotter (containerd's plugins/snapshots/overlay).

Each snapshot is ``snapshots/<id>/fs`` (its own changes: overlay's upper
directory, or the layer's content once committed) and, for active ones,
``snapshots/<id>/work`` (overlay's work directory). Mounts:

- active, no parent: a read-write bind of ``fs``;
- active with parents: ``overlay`` with ``upperdir``, ``workdir`` and
  ``lowerdir`` = the parents' ``fs``, nearest first;
- view of nothing or of one snapshot: a read-only bind of that ``fs``;
- view of a longer chain: ``overlay`` with only lower directories (read-only
  by nature).

``index=off`` is always passed: with the index on (a module parameter some
distributions set), overlay ties an upper to the lowers it was first mounted
with, and layers shared by many snapshots would then fail to mount.
``userxattr`` is added inside a user namespace, where the ``trusted.*``
xattrs overlay uses by default are out of reach.

Chains too long for mount(2)'s one page are the mounter's concern
(:func:`dockyard.spec.mount.mount_all`); the mounts returned here carry the
full paths, as containerd's do, so any containerd-compatible mounter works.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from dockyard.errors import Unsupported
from dockyard.image.snapshots import Kind, Snapshotter
from dockyard.image.snapshots.metadata import Record
from dockyard.runtime import libc
from dockyard.spec.mount import Mount

# Overlay's limit on stacked lower layers (OVL_MAX_STACK).
MAX_LAYERS = 500


def check_overlay(root: str) -> None:
    """Raise Unsupported unless an overlay with two lowers mounts on ``root``'s filesystem."""
    try:
        with open("/proc/filesystems") as f:
            listed = any(line.split()[-1:] == ["overlay"] for line in f)
    except OSError:
        listed = False
    probe = tempfile.mkdtemp(prefix="overlay-check-", dir=root)
    try:
        for d in ("l1", "l2", "u", "w", "m"):
            os.mkdir(os.path.join(probe, d))
        data = f"lowerdir={probe}/l1:{probe}/l2,upperdir={probe}/u,workdir={probe}/w" + (
            ",userxattr" if libc.in_user_namespace() else ""
        )
        try:
            libc.mount("overlay", f"{probe}/m", "overlay", 0, data)
        except OSError as e:
            why = "not in /proc/filesystems" if not listed else (e.strerror or str(e))
            raise Unsupported(f"overlayfs snapshotter on {root}: overlay mount failed: {why}")
        libc.umount2(f"{probe}/m", libc.MNT_DETACH)
    finally:
        shutil.rmtree(probe, ignore_errors=True)


class OverlaySnapshotter(Snapshotter):
    name = "overlayfs"

    def __init__(self, root: str) -> None:
        super().__init__(root)
        try:
            check_overlay(self.root)
        except BaseException:
            self.close()
            raise
        self._extra = ["index=off"]
        if libc.in_user_namespace():
            self._extra.append("userxattr")

    def _populate(self, path: str, kind: Kind, parent: Record | None) -> None:
        fs = os.path.join(path, "fs")
        os.mkdir(fs, 0o755)
        if kind == Kind.ACTIVE:
            os.mkdir(os.path.join(path, "work"), 0o700)
        if parent is not None:
            # the merged root takes the upper's owner: keep the parent's
            st = os.stat(os.path.join(self._dir(parent.id), "fs"))
            os.chown(fs, st.st_uid, st.st_gid)

    def _own_dir(self, sid: int) -> str:
        return os.path.join(self._dir(sid), "fs")

    def _mounts(self, rec: Record, chain: list[int]) -> list[Mount]:
        if len(chain) + (rec.kind == Kind.ACTIVE) > MAX_LAYERS:
            raise Unsupported(
                f'snapshot "{rec.key}": {len(chain)} parents, overlay stacks at most {MAX_LAYERS}'
            )
        if not chain:
            ro = "ro" if rec.kind == Kind.VIEW else "rw"
            return [Mount("bind", self._own_dir(rec.id), [ro, "rbind"])]
        if rec.kind == Kind.VIEW and len(chain) == 1:
            return [Mount("bind", self._own_dir(chain[0]), ["ro", "rbind"])]
        options = list(self._extra)
        if rec.kind == Kind.ACTIVE:
            options += [
                f"workdir={os.path.join(self._dir(rec.id), 'work')}",
                f"upperdir={self._own_dir(rec.id)}",
            ]
        options.append("lowerdir=" + ":".join(self._own_dir(i) for i in chain))
        return [Mount("overlay", "overlay", options)]
