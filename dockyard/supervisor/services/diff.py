"""containerd.services.diff.v1.Diff: apply a layer onto mounts, and make a layer from two.

The "walking" differ of containerd (``diff/apply``, ``diff/walking``) over
the image library's safe applier and diff writer:

- ``Apply`` reads the blob from the namespace's content (tar, gzip or zstd,
  by media type), applies it and answers the uncompressed descriptor (its
  digest is the diff ID). One overlay mount with an upper directory is
  applied straight into that directory with overlay whiteouts, the lower
  directories as parents (containerd's fast path); anything else is
  mounted on a temporary directory first.
- ``Diff`` mounts both sides read-only, writes the changes as a layer into
  the namespace's content under ``ref`` (made up when empty), labels a
  compressed one with ``containerd.io/uncompressed``, and answers its
  descriptor.

Mounts come from the client: they are checked before anything is mounted.
Only bind and overlay mounts of this supervisor's own snapshot directories
(below a snapshotter's ``snapshots`` directory, never its root with the
records) are taken, with options from a fixed list, so a request cannot make
the daemon write a layer into, or read one out of, any other place. Overlay
paths are checked as overlayfs reads them: a backslash keeps the character
after it, a comma would end the option (refused), and a path option comes
once (the kernel keeps the last ``lowerdir=``, the long-overlay mount joins
them all). What is mounted is unmounted on every path, errors included.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, cast

import grpc

from dockyard.api.convert import descriptor_from_proto, descriptor_to_proto, mount_from_proto
from dockyard.api.services.diff.v1 import diff_pb2 as pb
from dockyard.api.services.diff.v1 import diff_pb2_grpc
from dockyard.api.types import mount_pb2
from dockyard.errors import (
    AlreadyExists,
    DockyardError,
    InvalidArgument,
    SystemFailure,
    Unsupported,
)
from dockyard.image.archive import apply_layer, write_diff
from dockyard.image.archive.diff import Compression
from dockyard.image.unpack import UNCOMPRESSED_LABEL
from dockyard.runtime import libc
from dockyard.runtime.rootfs import MOUNT_FLAGS
from dockyard.spec.image import Descriptor, MediaType, layer_compression
from dockyard.spec.mount import Mount, mount_all, unescape_overlay, unmount_all
from dockyard.supervisor.content import NamespacedWriter, check_digest
from dockyard.supervisor.grpcutil import namespace, rpc
from dockyard.supervisor.services.leases import lease_of

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor

# media type -> compression of the layers Diff writes (containerd's walking
# differ writes tar and tar+gzip; zstd comes with the image library)
DIFF_TYPES: dict[str, Compression] = {
    MediaType.OCI_LAYER: "none",
    MediaType.OCI_LAYER_GZIP: "gzip",
    MediaType.OCI_LAYER_ZSTD: "zstd",
}
_OVERLAY_PATHS = ("lowerdir", "upperdir", "workdir")
# overlay options that take no path
_OVERLAY_VALUES = ("index", "redirect_dir", "metacopy", "xino", "nfs_export")
_OVERLAY_FLAGS = ("userxattr", "volatile")


def _overlay_dirs(m: Mount) -> tuple[str, str, list[str]]:
    """The upper, work and lower directories of an overlay mount, as the kernel reads them."""
    upper = work = ""
    lowers: list[str] = []
    for opt in m.options:
        if opt.startswith("upperdir="):
            upper = "".join(unescape_overlay(opt[len("upperdir=") :]))
        elif opt.startswith("workdir="):
            work = "".join(unescape_overlay(opt[len("workdir=") :]))
        elif opt.startswith("lowerdir="):
            lowers = unescape_overlay(opt[len("lowerdir=") :], ":")
    return upper, work, lowers


def _paths_of(m: Mount) -> list[str]:
    """Every host path a mount refers to, after checking its type and options."""
    if m.target:
        raise InvalidArgument(f"mount {m.type} {m.source}: a target is not allowed here")
    if any("\0" in s for s in (m.type, m.source, *m.options)):
        raise InvalidArgument(f"mount {m.type} {m.source!r}: a NUL character is not allowed")
    if m.type in ("bind", "rbind"):
        for opt in m.options:
            if opt not in MOUNT_FLAGS:
                raise InvalidArgument(f"mount bind {m.source}: option {opt!r} is not allowed")
        return [m.source]
    if m.type != "overlay":
        raise InvalidArgument(f"mount type {m.type!r}: only bind and overlay mounts are accepted")
    given: set[str] = set()
    for opt in m.options:
        if "," in opt:
            # the kernel would read what follows as options of their own
            raise InvalidArgument(f"mount overlay: option {opt!r}: ',' is not allowed")
        name, eq, _ = opt.partition("=")
        if name in _OVERLAY_PATHS:
            if name in given:
                raise InvalidArgument(f"mount overlay: {name} given more than once")
            given.add(name)
        if eq:
            known = name in _OVERLAY_PATHS or name in _OVERLAY_VALUES
        else:
            known = opt in MOUNT_FLAGS or opt in _OVERLAY_FLAGS
        if not known:
            raise InvalidArgument(f"mount overlay: option {opt!r} is not allowed")
    upper, work, lowers = _overlay_dirs(m)
    if not lowers:
        raise InvalidArgument("mount overlay: no lowerdir")
    return [p for p in (upper, work) if p] + lowers


class DiffService(diff_pb2_grpc.DiffServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.store = sup.namespaced_content
        self.mount_base = os.path.join(sup.config.state, "diff-mounts")

    # -- mounts ----------------------------------------------------------------

    def _validated(self, mounts: list[mount_pb2.Mount], what: str) -> list[Mount]:
        out = [mount_from_proto(m) for m in mounts]
        # below a snapshotter's snapshots directory: its root holds the records
        roots = [os.path.realpath(sn.snapshots_dir) for sn in self.sup.snapshotters.values()]
        for m in out:
            for path in _paths_of(m):
                if not os.path.isabs(path):
                    raise InvalidArgument(f"{what}: mount path {path!r} is not absolute")
                real = os.path.realpath(path)
                if not any(real != r and os.path.commonpath([real, r]) == r for r in roots):
                    raise InvalidArgument(
                        f"{what}: mount path {path} is not in a snapshot of this daemon"
                    )
                if not os.path.isdir(real):
                    raise InvalidArgument(f"{what}: mount path {path} is not a directory")
        return out

    @contextlib.contextmanager
    def _mounted(self, mounts: list[Mount], readonly: bool) -> Iterator[str]:
        """``mounts`` on a temporary directory, unmounted and removed on the way out."""
        os.makedirs(self.mount_base, mode=0o700, exist_ok=True)
        where = tempfile.mkdtemp(prefix="m-", dir=self.mount_base)
        try:
            if readonly:
                mounts = [Mount(m.type, m.source, [*m.options, "ro"], m.target) for m in mounts]
            try:
                mount_all(mounts, where)
            except OSError as e:
                raise SystemFailure(f"mount {mounts[0].type} on {where}: {e}") from e
            try:
                yield where
            finally:
                try:
                    unmount_all(where)
                except OSError:
                    unmount_all(where, libc.MNT_DETACH)
        finally:
            os.rmdir(where)

    # -- Apply -----------------------------------------------------------------

    @rpc
    def Apply(self, request: pb.ApplyRequest, context: grpc.ServicerContext) -> pb.ApplyResponse:
        ns = namespace(context)
        desc = descriptor_from_proto(request.diff)
        what = f"apply {desc.digest or 'layer'}"
        check_digest(desc.digest, f"{what}: digest")
        compression = layer_compression(desc.media_type) or "none"
        mounts = self._validated(list(request.mounts), what)
        if not mounts:
            raise InvalidArgument(f"{what}: no mounts to apply onto")
        with self.store.open(ns, desc.digest) as blob:
            upper, _, lowers = _overlay_dirs(mounts[0])
            if len(mounts) == 1 and mounts[0].type == "overlay" and upper:
                result = apply_layer(
                    upper, blob, whiteouts="overlay", compression=compression, parents=lowers
                )
            else:
                with self._mounted(mounts, readonly=False) as root:
                    result = apply_layer(root, blob, whiteouts="direct", compression=compression)
        applied = Descriptor(MediaType.OCI_LAYER, result.diff_id, result.size)
        return pb.ApplyResponse(applied=descriptor_to_proto(applied))

    # -- Diff ------------------------------------------------------------------

    @rpc
    def Diff(self, request: pb.DiffRequest, context: grpc.ServicerContext) -> pb.DiffResponse:
        ns = namespace(context)
        media_type = request.media_type or MediaType.OCI_LAYER_GZIP
        if media_type not in DIFF_TYPES:
            raise Unsupported(
                f"diff: media type {media_type!r} is not supported ({', '.join(DIFF_TYPES)})"
            )
        compression = DIFF_TYPES[media_type]
        lower = self._validated(list(request.left), "diff: lower")
        upper = self._validated(list(request.right), "diff: upper")
        if not upper:
            raise InvalidArgument("diff: no upper mounts")
        labels = dict(request.labels)
        ref = request.ref or f"diff-{time.time_ns()}-{os.urandom(3).hex()}"
        with contextlib.ExitStack() as stack:
            lower_dir = stack.enter_context(self._mounted(lower, readonly=True)) if lower else None
            upper_dir = stack.enter_context(self._mounted(upper, readonly=True))
            self.sup.metadata.ensure_namespace(ns)
            w = self.store.writer(ns, ref, lease=lease_of(context))
            committed = False
            try:
                if request.ref:
                    w.truncate(0)
                result = write_diff(
                    lower_dir, upper_dir, cast(BinaryIO, _Sink(w)), compression=compression
                )
                if compression != "none":
                    labels[UNCOMPRESSED_LABEL] = result.diff_id
                try:
                    digest = w.commit(0, result.digest, labels)
                except AlreadyExists:
                    digest = result.digest
                committed = True
            finally:
                w.close()
                if not committed and not request.ref:
                    with contextlib.suppress(DockyardError):
                        self.store.abort(ns, ref)
        info = self.store.info(ns, digest)
        if compression != "none" and UNCOMPRESSED_LABEL not in info.labels:
            info = self.store.update(
                ns, digest, {UNCOMPRESSED_LABEL: result.diff_id}, [f"labels.{UNCOMPRESSED_LABEL}"]
            )
        return pb.DiffResponse(diff=descriptor_to_proto(Descriptor(media_type, digest, info.size)))


class _Sink:
    """A namespaced ingest as the file ``write_diff`` writes to."""

    def __init__(self, w: NamespacedWriter) -> None:
        self.w = w

    def write(self, data: bytes) -> int:
        return self.w.write(bytes(data))

    def flush(self) -> None:
        pass


def register(server: grpc.Server, sup: Supervisor) -> None:
    diff_pb2_grpc.add_DiffServicer_to_server(DiffService(sup), server)
    sup.add_plugin("io.containerd.differ.v1", "walking")
    sup.add_plugin("io.containerd.grpc.v1", "diff")
