"""The snapshots and diff services, through gRPC and ctr: namespaced keys
(the prefix never shows), containerd's error codes, events, and layers
applied onto and computed from snapshot mounts, with nothing left mounted."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from dockyard.api import typeurl
from dockyard.api.events import snapshot_pb2 as events
from dockyard.api.services.content.v1 import content_pb2 as cpb
from dockyard.api.services.diff.v1 import diff_pb2 as dpb
from dockyard.api.services.diff.v1 import diff_pb2_grpc
from dockyard.api.services.events.v1 import events_pb2 as epb
from dockyard.api.services.events.v1 import events_pb2_grpc
from dockyard.api.services.snapshots.v1 import snapshots_pb2 as spb
from dockyard.api.services.snapshots.v1 import snapshots_pb2_grpc
from dockyard.api.types import descriptor_pb2, mount_pb2
from dockyard.spec.image import MediaType
from dockyard.spec.mount import Mount, mount_all, unmount_all
from tests.supervisor.conftest import Supervisor
from tests.supervisor.imageside import (
    Stubs,
    digest_of,
    empty_namespace,
    fails,
    layer,
    md,
    mounts_of,
    open_namespace,
    write_blob,
)

Code = grpc.StatusCode


@pytest.fixture
def snaps(stubs: Stubs) -> snapshots_pb2_grpc.SnapshotsStub:
    return stubs.snapshots


@pytest.fixture
def ns(supervisor: Supervisor) -> Iterator[str]:
    name = open_namespace(supervisor)
    yield name
    assert mounts_of(supervisor) == [], "a request left something mounted"
    empty_namespace(supervisor, name)


def prepare(
    snaps: snapshots_pb2_grpc.SnapshotsStub,
    ns: str,
    key: str,
    parent: str = "",
    sn: str = "overlayfs",
) -> list[mount_pb2.Mount]:
    req = spb.PrepareSnapshotRequest(snapshotter=sn, key=key, parent=parent)
    return list(snaps.Prepare(req, metadata=md(ns)).mounts)


def commit(
    snaps: snapshots_pb2_grpc.SnapshotsStub, ns: str, name: str, key: str, sn: str = "overlayfs"
) -> None:
    snaps.Commit(spb.CommitSnapshotRequest(snapshotter=sn, name=name, key=key), metadata=md(ns))


def stat(
    snaps: snapshots_pb2_grpc.SnapshotsStub, ns: str, key: str, sn: str = "overlayfs"
) -> spb.Info:
    return snaps.Stat(spb.StatSnapshotRequest(snapshotter=sn, key=key), metadata=md(ns)).info


@contextlib.contextmanager
def mounted(mounts: list[mount_pb2.Mount], where: Path) -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    mount_all([Mount(m.type, m.source, list(m.options)) for m in mounts], str(where))
    try:
        yield where
    finally:
        unmount_all(str(where))


def test_lifecycle_names_have_no_prefix(
    snaps: snapshots_pb2_grpc.SnapshotsStub, ns: str, tmp_path: Path
) -> None:
    mounts = prepare(snaps, ns, "a")
    assert [m.type for m in mounts] == ["bind"]
    with mounted(mounts, tmp_path / "m") as root:
        (root / "hello").write_text("hi")
    commit(snaps, ns, "A", "a")
    info = stat(snaps, ns, "A")
    assert (info.name, info.parent, info.kind) == ("A", "", spb.COMMITTED)
    with fails(Code.NOT_FOUND, '"a"'):
        stat(snaps, ns, "a")

    mounts = prepare(snaps, ns, "b", "A")
    assert [m.type for m in mounts] == ["overlay"]
    assert (stat(snaps, ns, "b").parent, stat(snaps, ns, "b").kind) == ("A", spb.ACTIVE)
    view = snaps.View(
        spb.ViewSnapshotRequest(snapshotter="overlayfs", key="v", parent="A"), metadata=md(ns)
    )
    with mounted(list(view.mounts), tmp_path / "v") as root:
        assert (root / "hello").read_text() == "hi"
    again = snaps.Mounts(spb.MountsRequest(snapshotter="overlayfs", key="b"), metadata=md(ns))
    assert [m.type for m in again.mounts] == ["overlay"]

    def listed(*filters: str) -> dict[str, str]:
        req = spb.ListSnapshotsRequest(snapshotter="overlayfs", filters=list(filters))
        return {i.name: i.parent for r in snaps.List(req, metadata=md(ns)) for i in r.info}

    assert listed() == {"A": "", "b": "A", "v": "A"}
    assert listed("kind==committed") == {"A": ""}
    assert listed("parent==A,kind==view") == {"v": "A"}

    update = spb.UpdateSnapshotRequest(
        snapshotter="overlayfs",
        info=spb.Info(name="A", labels={"team": "blue"}),
        update_mask=field_mask_pb2.FieldMask(paths=["labels.team"]),
    )
    assert dict(snaps.Update(update, metadata=md(ns)).info.labels) == {"team": "blue"}
    assert listed("labels.team==blue") == {"A": ""}
    usage = snaps.Usage(spb.UsageRequest(snapshotter="overlayfs", key="A"), metadata=md(ns))
    assert usage.inodes >= 2 and usage.size > 0

    with fails(Code.FAILED_PRECONDITION):
        snaps.Remove(spb.RemoveSnapshotRequest(snapshotter="overlayfs", key="A"), metadata=md(ns))
    for key in ("b", "v", "A"):
        snaps.Remove(spb.RemoveSnapshotRequest(snapshotter="overlayfs", key=key), metadata=md(ns))
    assert listed() == {}


def test_bad_requests(snaps: snapshots_pb2_grpc.SnapshotsStub, ns: str) -> None:
    prepare(snaps, ns, "k")
    with fails(Code.INVALID_ARGUMENT, "snapshotter 'zfs'"):
        prepare(snaps, ns, "x", sn="zfs")
    with fails(Code.INVALID_ARGUMENT, "snapshotter"):
        prepare(snaps, ns, "x", sn="")
    with fails(Code.ALREADY_EXISTS, "'k'"):
        prepare(snaps, ns, "k")
    with fails(Code.NOT_FOUND, "'missing'"):
        prepare(snaps, ns, "x", parent="missing")
    with fails(Code.FAILED_PRECONDITION, "not committed"):
        prepare(snaps, ns, "x", parent="k")
    with fails(Code.NOT_FOUND, "'nokey'"):
        commit(snaps, ns, "N", "nokey")
    with fails(Code.INVALID_ARGUMENT, "empty"):
        prepare(snaps, ns, "")
    target = spb.PrepareSnapshotRequest(
        snapshotter="overlayfs", key="y", labels={"containerd.io/snapshot.ref": "k"}
    )
    with fails(Code.ALREADY_EXISTS, "target"):
        snaps.Prepare(target, metadata=md(ns))
    with fails(Code.FAILED_PRECONDITION, "namespace"):
        snaps.Stat(spb.StatSnapshotRequest(snapshotter="overlayfs", key="k"))
    commit(snaps, ns, "K", "k")
    prepare(snaps, ns, "k2", "K")
    with fails(Code.ALREADY_EXISTS, "'K'"):
        commit(snaps, ns, "K", "k2")
    with fails(Code.FAILED_PRECONDITION) as _:
        snaps.Mounts(spb.MountsRequest(snapshotter="overlayfs", key="K"), metadata=md(ns))
    # no message shows the namespace the keys live under
    for call in (
        lambda: snaps.Remove(
            spb.RemoveSnapshotRequest(snapshotter="overlayfs", key="K"), metadata=md(ns)
        ),
        lambda: snaps.Mounts(spb.MountsRequest(snapshotter="overlayfs", key="K"), metadata=md(ns)),
        lambda: stat(snaps, ns, "gone"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert f"{ns}/" not in (err.value.details() or "")
    assert stat(snaps, ns, "K").name == "K", "still serving"


def test_namespaces_have_their_own_keys(
    supervisor: Supervisor, snaps: snapshots_pb2_grpc.SnapshotsStub, ns: str
) -> None:
    other = open_namespace(supervisor)
    try:
        prepare(snaps, ns, "same")
        with fails(Code.NOT_FOUND):
            stat(snaps, other, "same")
        prepare(snaps, other, "same")
        assert stat(snaps, other, "same").name == "same"
        refused = supervisor.ctr("namespaces", "rm", other, check=False)
        assert refused.returncode != 0 and "snapshots/overlayfs" in refused.stderr
    finally:
        empty_namespace(supervisor, other)


def test_ctr_snapshot_commands(supervisor: Supervisor, ns: str) -> None:
    for sn in ("overlayfs", "native"):

        def ctr(*args: str, sn: str = sn) -> str:
            return supervisor.ctr("snapshots", "--snapshotter", sn, *args, namespace=ns).stdout

        ctr("prepare", "base-work")
        ctr("commit", "base", "base-work")
        ctr("prepare", "top", "base")
        assert "mount -t" in ctr("mounts", str(supervisor.base / "m"), "top")
        listed = ctr("ls")
        assert "base" in listed and "top" in listed and f"{ns}/" not in listed
        assert '"Parent": "base"' in ctr("info", "top")
        assert "base" in ctr("tree")
        ctr("label", "base", "x=y")
        assert '"x": "y"' in ctr("info", "base")
        ctr("rm", "top")
        ctr("rm", "base")
        assert ctr("ls").splitlines()[1:] == []


def test_events(supervisor: Supervisor, snaps: snapshots_pb2_grpc.SnapshotsStub, ns: str) -> None:
    with supervisor.channel() as ch:
        sub = events_pb2_grpc.EventsStub(ch).Subscribe(
            epb.SubscribeRequest(filters=[f'namespace=={ns},topic~="^/snapshot/"']), timeout=60
        )
        prepare(snaps, ns, "ev")
        commit(snaps, ns, "EV", "ev")
        snaps.Remove(spb.RemoveSnapshotRequest(snapshotter="overlayfs", key="EV"), metadata=md(ns))
        got = [next(sub) for _ in range(3)]
        sub.cancel()
    assert [e.topic for e in got] == ["/snapshot/prepare", "/snapshot/commit", "/snapshot/remove"]
    assert typeurl.unpack(got[0].event) == events.SnapshotPrepare(key="ev")
    assert typeurl.unpack(got[1].event) == events.SnapshotCommit(key="ev", name="EV")
    assert typeurl.unpack(got[2].event) == events.SnapshotRemove(key="EV")


# -- diff ---------------------------------------------------------------------


def apply(
    diff: diff_pb2_grpc.DiffStub,
    ns: str,
    digest: str,
    size: int,
    media: str,
    mounts: list[mount_pb2.Mount],
) -> descriptor_pb2.Descriptor:
    desc = descriptor_pb2.Descriptor(media_type=media, digest=digest, size=size)
    return diff.Apply(dpb.ApplyRequest(diff=desc, mounts=mounts), metadata=md(ns)).applied


def test_apply_and_diff(
    supervisor: Supervisor,
    stubs: Stubs,
    ns: str,
    tmp_path: Path,
) -> None:
    snaps, diff, content = stubs.snapshots, stubs.diff, stubs.content
    base = layer({"etc/base": b"base file", "etc/gone": b"to be deleted"})
    write_blob(content, ns, base)
    applied = apply(
        diff, ns, digest_of(base), len(base), MediaType.OCI_LAYER, prepare(snaps, ns, "l0")
    )
    assert (applied.digest, applied.size, applied.media_type) == (
        digest_of(base),
        len(base),
        MediaType.OCI_LAYER,
    )
    commit(snaps, ns, "L0", "l0")

    # a gzip layer onto an overlay (applied straight into the upper directory)
    top = layer({"etc/top": b"top file", "etc/.wh.gone": b""})
    top_gz = gzip.compress(top)
    write_blob(content, ns, top_gz)
    applied = apply(
        diff,
        ns,
        digest_of(top_gz),
        len(top_gz),
        MediaType.OCI_LAYER_GZIP,
        prepare(snaps, ns, "l1", "L0"),
    )
    assert applied.digest == digest_of(top), "the uncompressed digest: the diff ID"
    commit(snaps, ns, "L1", "l1")
    view = snaps.View(
        spb.ViewSnapshotRequest(snapshotter="overlayfs", key="see", parent="L1"), metadata=md(ns)
    )
    with mounted(list(view.mounts), tmp_path / "see") as root:
        assert sorted(os.listdir(root / "etc")) == ["base", "top"]

    # a change made in an active snapshot, as a layer
    work = prepare(snaps, ns, "work", "L1")
    with mounted(work, tmp_path / "w") as root:
        (root / "etc" / "new").write_bytes(b"made in the container")
        os.unlink(root / "etc" / "base")
    lower = snaps.View(
        spb.ViewSnapshotRequest(snapshotter="overlayfs", key="lower", parent="L1"), metadata=md(ns)
    )
    req = dpb.DiffRequest(left=lower.mounts, right=work, ref="my-diff", labels={"made": "here"})
    desc = diff.Diff(req, metadata=md(ns)).diff
    assert desc.media_type == MediaType.OCI_LAYER_GZIP
    blob = b"".join(
        r.data for r in content.Read(cpb.ReadContentRequest(digest=desc.digest), metadata=md(ns))
    )
    assert digest_of(blob) == desc.digest and len(blob) == desc.size
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
        names = tf.getnames()
    assert "etc/new" in names and "etc/.wh.base" in names and "etc/top" not in names
    labels = content.Info(cpb.InfoRequest(digest=desc.digest), metadata=md(ns)).info.labels
    assert labels["made"] == "here"
    assert labels["containerd.io/uncompressed"] == digest_of(gzip.decompress(blob))

    # and it applies like any layer
    applied = apply(
        diff, ns, desc.digest, desc.size, MediaType.OCI_LAYER_GZIP, prepare(snaps, ns, "re", "L1")
    )
    assert applied.digest == labels["containerd.io/uncompressed"]


def test_bad_applies_leave_nothing_mounted(
    supervisor: Supervisor,
    stubs: Stubs,
    ns: str,
    tmp_path: Path,
) -> None:
    snaps, diff, content = stubs.snapshots, stubs.diff, stubs.content
    junk = b"this is not a tar archive" * 100
    write_blob(content, ns, junk)
    mounts = prepare(snaps, ns, "target")  # a bind mount: applied through a temporary mount
    with fails(Code.INVALID_ARGUMENT, "tar"):
        apply(diff, ns, digest_of(junk), len(junk), MediaType.OCI_LAYER, mounts)
    with fails(Code.INVALID_ARGUMENT, "gzip"):
        apply(diff, ns, digest_of(junk), len(junk), MediaType.OCI_LAYER_GZIP, mounts)
    assert mounts_of(supervisor) == []

    with fails(Code.INVALID_ARGUMENT, "media type"):
        apply(diff, ns, digest_of(junk), len(junk), "application/json", mounts)
    with fails(Code.NOT_FOUND):
        apply(diff, ns, digest_of(b"absent"), 6, MediaType.OCI_LAYER, mounts)
    outside = [mount_pb2.Mount(type="bind", source=str(tmp_path), options=["rbind", "rw"])]
    with fails(Code.INVALID_ARGUMENT, "not in a snapshot"):
        apply(diff, ns, digest_of(junk), len(junk), MediaType.OCI_LAYER, outside)
    escape = [
        mount_pb2.Mount(type="bind", source=mounts[0].source + "/../../../../..", options=["rbind"])
    ]
    with fails(Code.INVALID_ARGUMENT, "not in a snapshot"):
        apply(diff, ns, digest_of(junk), len(junk), MediaType.OCI_LAYER, escape)
    with fails(Code.INVALID_ARGUMENT, "tmpfs"):
        apply(
            diff,
            ns,
            digest_of(junk),
            len(junk),
            MediaType.OCI_LAYER,
            [mount_pb2.Mount(type="tmpfs", source="tmpfs")],
        )
    odd = [mount_pb2.Mount(type="bind", source=mounts[0].source, options=["rbind", "x-evil=1"])]
    with fails(Code.INVALID_ARGUMENT, "x-evil"):
        apply(diff, ns, digest_of(junk), len(junk), MediaType.OCI_LAYER, odd)
    with fails(Code.UNIMPLEMENTED, "media type"):
        diff.Diff(dpb.DiffRequest(right=mounts, media_type="application/x-rar"), metadata=md(ns))
    assert mounts_of(supervisor) == []
    assert os.listdir(supervisor.state / "diff-mounts") == []
    # still serving: a good layer applies onto the same snapshot
    good = layer({"ok": b"ok"})
    write_blob(content, ns, good)
    assert apply(
        diff, ns, digest_of(good), len(good), MediaType.OCI_LAYER, mounts
    ).digest == digest_of(good)
