"""Refusals of the diff service, and the snapshots service's Cleanup, through gRPC.

Diff (``containerd.services.diff.v1.Diff``): Apply and Diff take only bind
and overlay mounts of this daemon's snapshot directories, with every path
checked as the kernel will read it, and refuse a request with nothing to
apply onto or no upper side. Each refusal comes back with its status code
and a message naming what was wrong, leaves nothing behind (no blob, no
ingest, no line in the daemon's mount table, no temporary mount directory),
and the daemon answers a good request after it.

Cleanup (``containerd.services.snapshots.v1.Snapshots/Cleanup``): answers on
an idle snapshotter, refuses a snapshotter that is not loaded as containerd's
service does (INVALID_ARGUMENT, naming it), and removes what a crash leaves
under a snapshotter's root (directories with no record, records with no
directory, and the records' descendants) while real snapshots stay as they were.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from dockyard.api.services.content.v1 import content_pb2 as cpb
from dockyard.api.services.diff.v1 import diff_pb2 as dpb
from dockyard.api.services.snapshots.v1 import snapshots_pb2 as spb
from dockyard.api.types import descriptor_pb2, mount_pb2
from dockyard.spec.image import MediaType
from tests.supervisor.conftest import Supervisor
from tests.supervisor.imageside import (
    Stubs,
    backend_blobs,
    backend_ingests,
    digest_of,
    empty_namespace,
    fails,
    layer,
    md,
    open_namespace,
    write_blob,
)

Code = grpc.StatusCode


@pytest.fixture
def ns(supervisor: Supervisor) -> Iterator[str]:
    """A new namespace with the lease the requests run under, emptied after the test."""
    name = open_namespace(supervisor)
    yield name
    empty_namespace(supervisor, name)


# -- what a request may leave behind -------------------------------------------


def daemon_mounts(sup: Supervisor) -> set[str]:
    """The lines of the daemon's own mount table that name one of its directories."""
    assert sup.proc is not None
    with open(f"/proc/{sup.proc.pid}/mountinfo") as f:
        return {line.strip() for line in f if str(sup.base) in line}


@dataclass(frozen=True)
class Traces:
    mounts: frozenset[str]
    blobs: frozenset[str]
    ingests: frozenset[str]
    mount_dirs: frozenset[str]

    def added_since(self, before: Traces) -> dict[str, set[str]]:
        out = {
            "mounts": set(self.mounts - before.mounts),
            "blobs": set(self.blobs - before.blobs),
            "ingests": set(self.ingests - before.ingests),
            "temporary mount directories": set(self.mount_dirs - before.mount_dirs),
        }
        return {k: v for k, v in out.items() if v}


def traces(sup: Supervisor) -> Traces:
    mount_base = sup.state / "diff-mounts"
    return Traces(
        mounts=frozenset(daemon_mounts(sup)),
        blobs=frozenset(backend_blobs(sup)),
        ingests=frozenset(backend_ingests(sup)),
        mount_dirs=frozenset(os.listdir(mount_base) if mount_base.is_dir() else []),
    )


@contextlib.contextmanager
def refused(sup: Supervisor, code: grpc.StatusCode, match: str) -> Iterator[None]:
    """The block fails with ``code`` and a message matching ``match``, leaving nothing."""
    before = traces(sup)
    with fails(code, match):
        yield
    left = traces(sup).added_since(before)
    assert not left, f"a refused request left {left}"


# -- snapshots to point mounts at ----------------------------------------------


def prepare(
    stubs: Stubs, ns: str, key: str, parent: str = "", sn: str = "overlayfs"
) -> list[mount_pb2.Mount]:
    req = spb.PrepareSnapshotRequest(snapshotter=sn, key=key, parent=parent)
    return list(stubs.snapshots.Prepare(req, metadata=md(ns)).mounts)


def commit(stubs: Stubs, ns: str, name: str, key: str, sn: str = "overlayfs") -> None:
    req = spb.CommitSnapshotRequest(snapshotter=sn, name=name, key=key)
    stubs.snapshots.Commit(req, metadata=md(ns))


def exists(stubs: Stubs, ns: str, key: str, sn: str = "overlayfs") -> bool:
    try:
        stubs.snapshots.Stat(spb.StatSnapshotRequest(snapshotter=sn, key=key), metadata=md(ns))
    except grpc.RpcError as e:
        assert e.code() == Code.NOT_FOUND, e.details()
        return False
    return True


def option(m: mount_pb2.Mount, name: str) -> str:
    for opt in m.options:
        if opt.startswith(name + "="):
            return opt[len(name) + 1 :]
    raise AssertionError(f"no {name} in {list(m.options)}")


def own_dir(mounts: list[mount_pb2.Mount]) -> str:
    """The directory an active snapshot's changes go to (bind source or overlay upper)."""
    (m,) = mounts
    return m.source if m.type == "bind" else option(m, "upperdir")


def bind(source: str, *options: str, target: str = "") -> mount_pb2.Mount:
    return mount_pb2.Mount(
        type="bind", source=source, target=target, options=list(options) or ["rbind", "rw"]
    )


def overlay(*options: str) -> mount_pb2.Mount:
    return mount_pb2.Mount(type="overlay", source="overlay", options=list(options))


@dataclass
class Snaps:
    """A committed snapshot BASE and an active one on it ("top"), as directories."""

    base: str  # BASE's own directory
    upper: str  # top's upper directory
    work: str  # top's overlay work directory
    top: list[mount_pb2.Mount]  # top's mounts, as the snapshots service gave them


@pytest.fixture
def snaps(stubs: Stubs, ns: str) -> Snaps:
    base_mounts = prepare(stubs, ns, "base")
    base = own_dir(base_mounts)
    Path(base, "in-base").write_text("from the base layer")
    commit(stubs, ns, "BASE", "base")
    top = prepare(stubs, ns, "top", "BASE")
    assert [m.type for m in top] == ["overlay"]
    return Snaps(base, option(top[0], "upperdir"), option(top[0], "workdir"), top)


def apply(
    stubs: Stubs,
    ns: str,
    digest: str,
    mounts: list[mount_pb2.Mount],
    *,
    media_type: str = MediaType.OCI_LAYER,
    size: int = 0,
    metadata: list[tuple[str, str]] | None = None,
) -> descriptor_pb2.Descriptor:
    desc = descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=size)
    req = dpb.ApplyRequest(diff=desc, mounts=mounts)
    return stubs.diff.Apply(req, metadata=md(ns) if metadata is None else metadata).applied


def diff(
    stubs: Stubs,
    ns: str,
    right: list[mount_pb2.Mount],
    left: list[mount_pb2.Mount] | None = None,
    *,
    media_type: str = "",
    ref: str = "",
) -> descriptor_pb2.Descriptor:
    req = dpb.DiffRequest(left=left or [], right=right, media_type=media_type, ref=ref)
    return stubs.diff.Diff(req, metadata=md(ns)).diff


def read_blob(stubs: Stubs, ns: str, digest: str) -> bytes:
    req = cpb.ReadContentRequest(digest=digest)
    return b"".join(r.data for r in stubs.content.Read(req, metadata=md(ns)))


# -- Apply ---------------------------------------------------------------------


def test_apply_refusals(
    supervisor: Supervisor, stubs: Stubs, ns: str, snaps: Snaps, tmp_path: Path
) -> None:
    data = layer({"hello": b"applied"})
    write_blob(stubs.content, ns, data)
    dgst = digest_of(data)
    a_file = Path(snaps.upper, "a-file")
    a_file.write_text("not a directory")

    def no(code: grpc.StatusCode, match: str, mounts: list[mount_pb2.Mount]) -> None:
        with refused(supervisor, code, match):
            apply(stubs, ns, dgst, mounts)

    no(Code.INVALID_ARGUMENT, "no mounts to apply onto", [])
    no(Code.INVALID_ARGUMENT, "a target is not allowed", [bind(snaps.upper, target="sub")])
    target_overlay = mount_pb2.Mount(
        type="overlay", source="overlay", target="sub", options=list(snaps.top[0].options)
    )
    no(Code.INVALID_ARGUMENT, "a target is not allowed", [target_overlay])
    upper_work = (f"upperdir={snaps.upper}", f"workdir={snaps.work}")
    no(Code.INVALID_ARGUMENT, "no lowerdir", [overlay(*upper_work)])
    no(Code.INVALID_ARGUMENT, "no lowerdir", [overlay(*upper_work, "lowerdir=")])
    no(Code.INVALID_ARGUMENT, "no lowerdir", [overlay(*upper_work, "lowerdir=::")])
    relative = os.path.relpath(snaps.upper, supervisor.base)
    no(Code.INVALID_ARGUMENT, f"{relative!r} is not absolute", [bind(relative)])
    no(
        Code.INVALID_ARGUMENT,
        f"{relative!r} is not absolute",
        [overlay(*upper_work, f"lowerdir={relative}")],
    )
    no(
        Code.INVALID_ARGUMENT,
        "'work' is not absolute",
        [overlay(f"upperdir={snaps.upper}", "workdir=work", f"lowerdir={snaps.base}")],
    )
    no(Code.INVALID_ARGUMENT, f"{a_file} is not a directory", [bind(str(a_file))])
    missing = os.path.join(snaps.upper, "missing")
    no(Code.INVALID_ARGUMENT, f"{missing} is not a directory", [bind(missing)])
    no(
        Code.INVALID_ARGUMENT,
        "is not a directory",
        [overlay(*upper_work, f"lowerdir={snaps.base}:{a_file}")],
    )
    no(Code.INVALID_ARGUMENT, f"{tmp_path} is not in a snapshot", [bind(str(tmp_path))])
    no(
        Code.INVALID_ARGUMENT,
        "option 'upper=x' is not allowed",
        [overlay(*upper_work, f"lowerdir={snaps.base}", "upper=x")],
    )
    no(Code.INVALID_ARGUMENT, "option 'shared' is not allowed", [bind(snaps.upper, "shared")])
    no(Code.INVALID_ARGUMENT, "'proc'", [mount_pb2.Mount(type="proc", source="proc")])
    # one bad mount among good ones: nothing of the good ones is mounted either
    no(Code.INVALID_ARGUMENT, "a target is not allowed", [*snaps.top, bind(snaps.base, target="x")])

    # the blob: a malformed digest, one that is not stored, one of another namespace
    with refused(supervisor, Code.INVALID_ARGUMENT, "digest"):
        apply(stubs, ns, "sha256:not-hex", snaps.top)
    with refused(supervisor, Code.INVALID_ARGUMENT, "digest"):
        apply(stubs, ns, "", snaps.top)
    absent = digest_of(b"never written")
    with refused(supervisor, Code.NOT_FOUND, absent):
        apply(stubs, ns, absent, snaps.top)
    other = open_namespace(supervisor)
    try:
        elsewhere = layer({"elsewhere": b"x"})
        write_blob(stubs.content, other, elsewhere)
        with refused(supervisor, Code.NOT_FOUND, digest_of(elsewhere)):
            apply(stubs, ns, digest_of(elsewhere), snaps.top)
    finally:
        empty_namespace(supervisor, other)
    with refused(supervisor, Code.INVALID_ARGUMENT, "media type"):
        apply(stubs, ns, dgst, snaps.top, media_type="application/octet-stream")
    with refused(supervisor, Code.FAILED_PRECONDITION, "namespace is required"):
        apply(stubs, ns, dgst, snaps.top, metadata=[])

    assert not Path(snaps.upper, "hello").exists(), "a refused apply wrote into the snapshot"
    # still serving: the same layer applies onto the same snapshot
    applied = apply(stubs, ns, dgst, snaps.top, size=len(data))
    assert (applied.digest, applied.media_type) == (dgst, MediaType.OCI_LAYER)
    assert Path(snaps.upper, "hello").read_bytes() == b"applied"


def test_apply_through_a_failing_mount_leaves_nothing_mounted(
    supervisor: Supervisor, stubs: Stubs, ns: str, snaps: Snaps
) -> None:
    """Two mounts (no fast path): the first is mounted, the second fails in the kernel."""
    data = layer({"never": b"written"})
    write_blob(stubs.content, ns, data)
    # an overlay with an upper directory and no work directory: the kernel refuses it
    broken = overlay(f"upperdir={snaps.upper}", f"lowerdir={snaps.base}")
    with refused(supervisor, Code.INTERNAL, "mount overlay on .*Invalid argument"):
        apply(stubs, ns, digest_of(data), [bind(snaps.upper), broken])
    assert not Path(snaps.upper, "never").exists()
    applied = apply(stubs, ns, digest_of(data), [bind(snaps.upper)])
    assert applied.digest == digest_of(data), "still serving"


# -- Diff ----------------------------------------------------------------------


def test_diff_refusals(supervisor: Supervisor, stubs: Stubs, ns: str, snaps: Snaps) -> None:
    Path(snaps.upper, "changed").write_text("in top")
    a_file = Path(snaps.upper, "a-file")
    a_file.write_text("not a directory")
    base_view = [bind(snaps.base, "ro", "rbind")]

    def no(
        code: grpc.StatusCode,
        match: str,
        right: list[mount_pb2.Mount],
        left: list[mount_pb2.Mount] | None = None,
        media_type: str = "",
        ref: str = "",
    ) -> None:
        with refused(supervisor, code, match):
            diff(stubs, ns, right, left, media_type=media_type, ref=ref)

    no(Code.INVALID_ARGUMENT, "no upper mounts", [])
    no(Code.INVALID_ARGUMENT, "no upper mounts", [], left=base_view)
    no(Code.INVALID_ARGUMENT, "no upper mounts", [], ref="named-ref")
    no(Code.INVALID_ARGUMENT, "a target is not allowed", [bind(snaps.upper, target="t")])
    no(
        Code.INVALID_ARGUMENT,
        "a target is not allowed",
        snaps.top,
        left=[bind(snaps.base, target="t")],
    )
    upper_work = (f"upperdir={snaps.upper}", f"workdir={snaps.work}")
    no(Code.INVALID_ARGUMENT, "no lowerdir", [overlay(*upper_work)])
    no(Code.INVALID_ARGUMENT, "no lowerdir", snaps.top, left=[overlay("ro")])
    relative = os.path.relpath(snaps.upper, "/")
    no(
        Code.INVALID_ARGUMENT,
        f"diff: upper: mount path {relative!r} is not absolute",
        [bind(relative)],
    )
    no(
        Code.INVALID_ARGUMENT,
        f"diff: lower: mount path {relative!r} is not absolute",
        snaps.top,
        left=[bind(relative)],
    )
    no(
        Code.INVALID_ARGUMENT,
        f"diff: upper: mount path {a_file} is not a directory",
        [bind(str(a_file))],
    )
    no(
        Code.INVALID_ARGUMENT,
        f"diff: lower: mount path {a_file} is not a directory",
        snaps.top,
        left=[bind(str(a_file))],
    )
    no(
        Code.UNIMPLEMENTED,
        "media type",
        snaps.top,
        media_type="application/vnd.oci.image.layer.v1.tar+bz2",
    )
    # mounted, then refused by the kernel: the lower side (mounted first) is undone
    broken = overlay(f"upperdir={snaps.upper}", f"lowerdir={snaps.base}")
    no(Code.INTERNAL, "mount overlay on .*Invalid argument", [broken], left=base_view)
    no(
        Code.INTERNAL,
        "mount overlay on .*Invalid argument",
        [broken],
        left=base_view,
        ref="kept-ref",
    )

    # still serving: the change in top, as a layer
    desc = diff(stubs, ns, snaps.top, left=base_view, media_type=MediaType.OCI_LAYER)
    with tarfile.open(fileobj=io.BytesIO(read_blob(stubs, ns, desc.digest))) as tf:
        names = tf.getnames()
    assert "changed" in names and "in-base" not in names, names


# -- paths as the kernel reads them ----------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Two directories (a read-only overlay wants two lowers) no request may reach."""
    for name in ("one", "two"):
        (tmp_path / "outside" / name).mkdir(parents=True)
        (tmp_path / "outside" / name / f"secret-{name}").write_text("not the daemon's to read")
    return tmp_path / "outside"


def test_overlay_paths_are_checked_as_the_kernel_reads_them(
    supervisor: Supervisor, stubs: Stubs, ns: str, snaps: Snaps, outside: Path
) -> None:
    """overlayfs reads a backslash as keeping the next character, a comma as the end of
    an option, and a second lowerdir= (dockyard's long-overlay mount: every one of
    them); a path the check would read differently must be refused, not mounted."""
    up = Path(snaps.upper)
    # As written, "esc\\/one" is a directory in the snapshot; overlayfs drops the
    # backslash and follows the link "esc", out of the snapshot.
    (up / "esc\\" / "one").mkdir(parents=True)
    (up / "esc").symlink_to(outside)
    escaped = f"{up}/esc\\/one"
    snapshot_lowers = f"lowerdir={snaps.upper}:{snaps.base}"
    outside_lowers = f"lowerdir={outside}/one:{outside}/two"
    # enough lower directories for the options to pass a page (the long-overlay mount)
    many = [up / f"a-lower-directory-with-a-long-name-{i:03}" for i in range(60)]
    for d in many:
        d.mkdir()
    many_lowers = "lowerdir=" + ":".join(map(str, many))
    assert len(many_lowers) > 4096

    cases: list[tuple[str, mount_pb2.Mount]] = [
        ("not in a snapshot", overlay(f"lowerdir={escaped}:{snaps.base}")),
        (
            "not in a snapshot",
            overlay(f"upperdir={escaped}", f"workdir={snaps.work}", f"lowerdir={snaps.base}"),
        ),
        ("','", overlay(snapshot_lowers, f"index=off,{outside_lowers}")),
        ("','", overlay(f"lowerdir={snaps.base},{outside_lowers}")),
        ("lowerdir.*more than once", overlay(outside_lowers, snapshot_lowers)),
        ("lowerdir.*more than once", overlay(outside_lowers, many_lowers)),
    ]
    for match, m in cases:
        before = traces(supervisor)
        try:
            desc = diff(stubs, ns, [m], media_type=MediaType.OCI_LAYER)
        except grpc.RpcError as e:
            assert e.code() == Code.INVALID_ARGUMENT, f"{list(m.options)}: {e.details()}"
            assert re.search(match, e.details() or ""), f"{list(m.options)}: {e.details()}"
        else:
            with tarfile.open(fileobj=io.BytesIO(read_blob(stubs, ns, desc.digest))) as tf:
                names = tf.getnames()
            raise AssertionError(f"{list(m.options)} was mounted; the layer holds {names}")
        assert not traces(supervisor).added_since(before)


def test_only_snapshot_directories(
    supervisor: Supervisor, stubs: Stubs, ns: str, snaps: Snaps
) -> None:
    """A snapshotter's own directories (its database, the directory of all snapshots)
    are no snapshot: a layer applied there would write over the daemon's records."""
    data = layer({"metadata.db": b"overwritten", "planted": b"by a layer"})
    write_blob(stubs.content, ns, data)
    roots = [supervisor.root / "snapshots" / sn for sn in ("overlayfs", "native")]
    for root in roots:
        for path in (root, root / "snapshots"):
            with refused(supervisor, Code.INVALID_ARGUMENT, f"{path} is not in a snapshot"):
                apply(stubs, ns, digest_of(data), [bind(str(path))])
            assert not (path / "planted").exists()
        with refused(supervisor, Code.INVALID_ARGUMENT, "not in a snapshot"):
            diff(stubs, ns, [bind(str(root))])
    assert (roots[0] / "metadata.db").read_bytes() != b"overwritten"
    for nul in (bind(snaps.upper + "\0/x"), overlay(f"lowerdir={snaps.upper}:{snaps.base}\0")):
        with refused(supervisor, Code.INVALID_ARGUMENT, "a NUL character is not allowed"):
            apply(stubs, ns, digest_of(data), [nul])
    # a snapshot's directories are taken
    assert apply(stubs, ns, digest_of(data), [bind(snaps.upper)]).digest == digest_of(data)


# -- Cleanup -------------------------------------------------------------------

SNAPSHOTTERS = ["overlayfs", "native"]


def cleanup(stubs: Stubs, ns: str, sn: str) -> None:
    stubs.snapshots.Cleanup(spb.CleanupRequest(snapshotter=sn), metadata=md(ns))


def snapshots_dir(sup: Supervisor, sn: str) -> Path:
    return sup.root / "snapshots" / sn / "snapshots"


def snapshot_dir(sup: Supervisor, sn: str, path: str) -> Path:
    """The directory of the snapshot (``snapshots/<id>``) a mount path is in."""
    top = snapshots_dir(sup, sn)
    return top / Path(path).relative_to(top).parts[0]


@dataclass
class Real:
    """A committed snapshot REAL with a file, an active child on it with one, a view."""

    committed: Path
    child: Path


def real_snapshots(sup: Supervisor, stubs: Stubs, ns: str, sn: str) -> Real:
    own = own_dir(prepare(stubs, ns, "real", sn=sn))
    Path(own, "kept").write_text("a real snapshot's file")
    commit(stubs, ns, "REAL", "real", sn=sn)
    child = own_dir(prepare(stubs, ns, "child", "REAL", sn=sn))
    Path(child, "also-kept").write_text("the active child's file")
    view = spb.ViewSnapshotRequest(snapshotter=sn, key="view", parent="REAL")
    stubs.snapshots.View(view, metadata=md(ns))
    return Real(snapshot_dir(sup, sn, own), snapshot_dir(sup, sn, child))


def assert_intact(stubs: Stubs, ns: str, sn: str, real: Real) -> None:
    for key in ("REAL", "child", "view"):
        assert exists(stubs, ns, key, sn), f"{sn}: Cleanup removed the real snapshot {key!r}"
    assert [p.read_text() for p in real.committed.rglob("kept")] == ["a real snapshot's file"]
    assert [p.read_text() for p in real.child.rglob("also-kept")] == ["the active child's file"]


@pytest.mark.parametrize("sn", SNAPSHOTTERS)
def test_cleanup_on_an_idle_snapshotter(
    supervisor: Supervisor, stubs: Stubs, ns: str, sn: str
) -> None:
    real = real_snapshots(supervisor, stubs, ns, sn)
    cleanup(stubs, ns, sn)
    cleanup(stubs, ns, sn)  # nothing to do, twice
    assert_intact(stubs, ns, sn, real)
    req = spb.ListSnapshotsRequest(snapshotter=sn)
    listed = {i.name for r in stubs.snapshots.List(req, metadata=md(ns)) for i in r.info}
    assert listed == {"REAL", "child", "view"}


def test_cleanup_of_a_snapshotter_not_loaded(stubs: Stubs, ns: str) -> None:
    # containerd's service: INVALID_ARGUMENT, "snapshotter not loaded: <name>"
    with fails(Code.INVALID_ARGUMENT, "snapshotter 'zfs': not loaded"):
        cleanup(stubs, ns, "zfs")
    with fails(Code.INVALID_ARGUMENT, "snapshotter argument missing"):
        cleanup(stubs, ns, "")
    cleanup(stubs, ns, "overlayfs")  # still serving


@pytest.mark.parametrize("sn", SNAPSHOTTERS)
def test_cleanup_removes_directories_with_no_record(
    supervisor: Supervisor, stubs: Stubs, ns: str, sn: str
) -> None:
    real = real_snapshots(supervisor, stubs, ns, sn)
    top = snapshots_dir(supervisor, sn)
    # what a crash leaves: a directory under an id whose record was never committed,
    # one a removal renamed away, one a create was filling; and two to be kept: a
    # create under way (its directory locked) and a name no snapshot directory has
    gone = ["987654321", "rm-987654321-crashed", "new-crashed"]
    kept = ["new-under-way", "not-a-snapshot"]
    for name in gone + kept:
        (top / name / "fs" / "deep").mkdir(parents=True)
        (top / name / "fs" / "deep" / "file").write_text(name)
    lock = os.open(top / "new-under-way", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cleanup(stubs, ns, sn)
        left = set(os.listdir(top))
        assert not left & set(gone), f"{sn}: Cleanup left {sorted(left & set(gone))}"
        assert set(kept) <= left, f"{sn}: Cleanup removed {sorted(set(kept) - left)}"
        assert {real.committed.name, real.child.name} <= left
        assert_intact(stubs, ns, sn, real)
    finally:
        os.close(lock)
        for name in kept + gone:
            shutil.rmtree(top / name, ignore_errors=True)
    # once the create is over (its lock gone), its directory is a crash's leftover
    (top / "new-over").mkdir()
    cleanup(stubs, ns, sn)
    assert not (top / "new-over").exists()


def test_cleanup_drops_records_whose_directory_is_gone(
    supervisor: Supervisor, stubs: Stubs, ns: str
) -> None:
    sn = "overlayfs"
    parent = snapshot_dir(supervisor, sn, own_dir(prepare(stubs, ns, "p")))
    commit(stubs, ns, "P", "p")
    child = snapshot_dir(supervisor, sn, own_dir(prepare(stubs, ns, "c", "P")))
    real = real_snapshots(supervisor, stubs, ns, sn)
    shutil.rmtree(parent)  # the directory of P goes behind the daemon's back
    cleanup(stubs, ns, sn)
    assert not exists(stubs, ns, "P"), "a record whose directory is gone"
    assert not exists(stubs, ns, "c"), "a child of it: its content was on top of P's"
    assert not child.exists(), "the child's directory goes with its record"
    assert_intact(stubs, ns, sn, real)
