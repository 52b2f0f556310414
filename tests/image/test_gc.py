"""Garbage collection and leases: what an image, a lease or a root label holds stays."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dockyard.errors import AlreadyExists, InvalidArgument, NotFound
from dockyard.image import cli
from dockyard.image.content import ContentStore
from dockyard.image.gc import GCLocked, Report, collect, gc_lock
from dockyard.image.images import Image, ImageStore
from dockyard.image.leases import EXPIRE_LABEL, LeaseStore, Resource, lease, parse_time
from dockyard.image.snapshots import Info as SnapshotInfo
from dockyard.image.snapshots import Snapshotter, new
from dockyard.image.unpack import chain_ids, unpack
from dockyard.spec.image import Descriptor, MediaType, parse_manifest

NS = "default"


def layer(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
        t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def put(store: ContentStore, data: bytes, labels: dict[str, str] | None = None) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if store.exists(digest):
        return digest
    with store.writer(f"test-{digest}", expected=digest, total=len(data)) as w:
        w.write(data)
        w.commit(len(data), digest, labels=labels)
    return digest


@dataclass
class Built:
    target: Descriptor
    manifest: bytes
    blobs: set[str]  # every blob of the image, target included
    chains: list[str]


def build(store: ContentStore, layers: list[bytes], *, index: bool = False) -> Built:
    """An image of uncompressed layers; wrapped in an index when ``index``."""
    descs = [
        {"mediaType": MediaType.OCI_LAYER, "digest": put(store, raw), "size": len(raw)}
        for raw in layers
    ]
    diff_ids = ["sha256:" + hashlib.sha256(raw).hexdigest() for raw in layers]
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MediaType.OCI_MANIFEST,
            "config": {
                "mediaType": MediaType.OCI_CONFIG,
                "digest": put(store, config),
                "size": len(config),
            },
            "layers": descs,
        }
    ).encode()
    mdigest = put(store, manifest)
    blobs = {mdigest, *(str(d["digest"]) for d in descs), "sha256:" + sha(config)}
    target = Descriptor(MediaType.OCI_MANIFEST, mdigest, len(manifest))
    if index:
        # the child's mediaType is left out on purpose: the walk goes by shape
        idx = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MediaType.OCI_INDEX,
                "manifests": [{"digest": mdigest, "size": len(manifest)}],
            }
        ).encode()
        target = Descriptor(MediaType.OCI_INDEX, put(store, idx), len(idx))
        blobs.add(target.digest)
    return Built(target, manifest, blobs, chain_ids(diff_ids))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store:
    """A store laid out as ``dockyard-image`` lays it out, with an overlay snapshotter."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.content = ContentStore(str(root / "content"))
        self.images = ImageStore(str(root / "metadata.db"))
        self.leases = LeaseStore(str(root / "metadata.db"))
        self.snapshotter: Snapshotter = new("overlayfs", str(root / "snapshots" / "overlayfs"))

    def gc(self, **kw: Any) -> Report:
        return collect(
            self.content, self.images, {"overlayfs": self.snapshotter}, self.leases, **kw
        )

    def add(self, name: str, built: Built, namespace: str = NS) -> None:
        self.images.put(namespace, Image(name, built.target))
        unpack(
            self.content,
            self.snapshotter,
            parse_manifest(built.manifest),
            key_prefix=f"{namespace}/",
        )

    def blobs(self) -> set[str]:
        return {i.digest for i in self.content.walk()}

    def snapshots(self) -> set[str]:
        return {i.name for i in self.snapshotter.walk()}

    def close(self) -> None:
        self.snapshotter.close()
        self.images.close()
        self.leases.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "root")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def two(store: Store) -> tuple[Built, Built]:
    """Two images sharing their base layer, both unpacked in namespace ``default``."""
    base = layer("base", b"shared base\n")
    a = build(store.content, [base, layer("a", b"image a\n")], index=True)
    b = build(store.content, [base, layer("b", b"image b\n")])
    store.add("example.com/a:1", a)
    store.add("example.com/b:1", b)
    return a, b


def test_nothing_referenced_is_removed(store: Store, two: tuple[Built, Built]) -> None:
    before_blobs, before_snaps = store.blobs(), store.snapshots()
    report = store.gc()
    assert report.blobs == [] and report.snapshots == [] and report.ingests == []
    assert store.blobs() == before_blobs and store.snapshots() == before_snaps


def test_deleting_an_image_removes_only_its_own(store: Store, two: tuple[Built, Built]) -> None:
    a, b = two
    store.images.delete(NS, "example.com/b:1")
    report = collect(store.content, store.images, {"overlayfs": store.snapshotter}, store.leases)
    assert set(report.blobs) == b.blobs - a.blobs and len(report.blobs) == 3
    assert report.bytes > 0
    assert report.snapshots == [("overlayfs", f"{NS}/{b.chains[1]}")]
    assert store.blobs() == a.blobs
    assert store.snapshots() == {f"{NS}/{c}" for c in a.chains}
    # the other image is whole: another gc finds nothing, and it still unpacks
    again = collect(store.content, store.images, {"overlayfs": store.snapshotter}, store.leases)
    assert again.blobs == [] and again.snapshots == []
    assert unpack(
        store.content, store.snapshotter, parse_manifest(a.manifest), key_prefix="default/"
    )


def test_images_of_every_namespace_are_roots(store: Store, two: tuple[Built, Built]) -> None:
    a, _ = two
    store.images.put("other", Image("example.com/a:1", a.target))
    store.images.delete(NS, "example.com/a:1")
    report = collect(store.content, store.images, {"overlayfs": store.snapshotter}, store.leases)
    assert not set(report.blobs) & a.blobs
    # the snapshots were unpacked in "default", which has no such image any more
    assert {k for _, k in report.snapshots} == {f"{NS}/{a.chains[1]}"}


def test_dry_run_changes_nothing(store: Store, two: tuple[Built, Built]) -> None:
    _, b = two
    store.images.delete(NS, "example.com/b:1")
    blobs, snaps = store.blobs(), store.snapshots()
    dry = collect(
        store.content, store.images, {"overlayfs": store.snapshotter}, store.leases, dry_run=True
    )
    assert dry.dry_run and set(dry.blobs) == b.blobs - two[0].blobs and len(dry.snapshots) == 1
    assert store.blobs() == blobs and store.snapshots() == snaps
    real = collect(store.content, store.images, {"overlayfs": store.snapshotter}, store.leases)
    assert (real.blobs, real.snapshots, real.bytes) == (dry.blobs, dry.snapshots, dry.bytes)


def test_a_blob_deleted_during_a_gc(store: Store, two: tuple[Built, Built]) -> None:
    """Deleted by someone else between the gc's walk and its sweep (here, while the
    roots are marked): a dry run reports what its walk found, a real run what it deleted."""
    a, b = two
    store.images.delete(NS, "example.com/b:1")
    doomed = b.blobs - a.blobs
    gone = sorted(doomed)[0]
    data = store.content.read_bytes(gone)

    dry = store.gc(dry_run=True, mark_roots=lambda _: store.content.delete(gone))
    assert set(dry.blobs) == doomed
    assert dry.bytes == sum(len(store.content.read_bytes(d)) for d in doomed - {gone}) + len(data)

    put(store.content, data)
    real = store.gc(mark_roots=lambda _: store.content.delete(gone))
    assert set(real.blobs) == doomed - {gone} and real.bytes == dry.bytes - len(data)
    assert store.blobs() == a.blobs


def test_a_lease_keeps_content_and_snapshots(store: Store, two: tuple[Built, Built]) -> None:
    _, b = two
    store.images.delete(NS, "example.com/b:1")
    loose = put(store.content, b"fetched, not yet referenced")
    top = f"{NS}/{b.chains[1]}"
    held = store.leases.create(NS)
    store.leases.add_resource(NS, held.id, Resource("content", loose))
    store.leases.add_resource(NS, held.id, Resource("content", b.target.digest))
    store.leases.add_resource(NS, held.id, Resource("snapshots/overlayfs", top))
    report = collect(store.content, store.images, {"overlayfs": store.snapshotter}, store.leases)
    # the leased manifest is kept, but a lease does not walk it: its config and layer go
    assert loose not in report.blobs and b.target.digest not in report.blobs
    assert len(report.blobs) == 2
    assert report.snapshots == [] and top in store.snapshots()
    store.leases.delete(NS, held.id)
    report = collect(store.content, store.images, {"overlayfs": store.snapshotter}, store.leases)
    assert set(report.blobs) == {loose, b.target.digest}
    assert report.snapshots == [("overlayfs", top)]


def test_an_expired_lease_keeps_nothing_and_goes(store: Store) -> None:
    blob = put(store.content, b"leased a while ago")
    held = store.leases.create(NS, "old", expire=datetime.now(UTC) - timedelta(seconds=1))
    store.leases.add_resource(NS, held.id, Resource("content", blob))
    fresh = store.leases.create(NS, "fresh", expire=timedelta(hours=1))
    assert store.leases.get(NS, "old").expired() and not fresh.expired()
    report = store.gc()
    assert report.blobs == [blob]
    assert report.leases == [(NS, "old")]
    assert [x.id for x in store.leases.list(NS)] == ["fresh"]


def test_lease_context_manager(store: Store) -> None:
    blob = put(store.content, b"pulled under a lease")
    with lease(store.leases, NS) as held:
        held.add_content(blob)
        held.add_ingest("some-ref")
        held.add_snapshot("overlayfs", "default/extract-1")
        got = store.leases.get(NS, held.id)
        expires = got.expires_at
        assert expires is not None and expires > datetime.now(UTC) + timedelta(hours=23)
        assert store.gc().blobs == []
        assert len(store.leases.resources(NS, held.id)) == 3
    with pytest.raises(NotFound):
        store.leases.get(NS, held.id)
    assert store.gc().blobs == [blob]


def test_lease_store_checks(store: Store) -> None:
    ls = store.leases
    ls.create("a", "x", labels={"k": "v"})
    ls.create("b", "x")
    with pytest.raises(AlreadyExists):
        ls.create("a", "x")
    with pytest.raises(InvalidArgument):
        ls.create("a", "bad id/with slash")
    with pytest.raises(InvalidArgument):
        ls.add_resource("a", "x", Resource("content", "not-a-digest"))
    with pytest.raises(InvalidArgument):
        ls.add_resource("a", "x", Resource("volumes", "v"))
    with pytest.raises(NotFound):
        ls.add_resource("a", "nope", Resource("ingests", "r"))
    res = Resource("ingests", "r")
    ls.add_resource("a", "x", res)
    ls.add_resource("a", "x", res)
    assert ls.resources("a", "x") == [res] and ls.resources("b", "x") == []
    ls.delete_resource("a", "x", res)
    assert ls.resources("a", "x") == []
    assert ls.get("a", "x").labels == {"k": "v"}
    assert sorted(ns for ns, _ in ls.walk_all()) == ["a", "b"]
    ls.delete("a", "x")
    with pytest.raises(NotFound):
        ls.delete("a", "x")
    assert [x.id for x in ls.list("b")] == ["x"]


def test_expire_label_in_go_format() -> None:
    t = parse_time("2024-05-01T10:00:00.123456789Z")
    assert t == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert parse_time("not a time") is None


def test_unparsable_expiry_never_expires(store: Store) -> None:
    blob = put(store.content, b"odd lease")
    held = store.leases.create(NS, labels={EXPIRE_LABEL: "someday"})
    store.leases.add_resource(NS, held.id, Resource("content", blob))
    assert store.gc().blobs == []


def test_root_and_ref_labels(store: Store, two: tuple[Built, Built]) -> None:
    a, b = two
    store.images.delete(NS, "example.com/b:1")
    top = f"{NS}/{b.chains[1]}"
    referenced = put(store.content, b"referenced by a root")
    holder = put(
        store.content,
        b"a root blob",
        labels={
            "containerd.io/gc.root": "2024-01-01T00:00:00Z",
            "containerd.io/gc.ref.content.x": referenced,
            # tried in no namespace, so the full key
            "containerd.io/gc.ref.snapshot.overlayfs/1": top,
        },
    )
    report = collect(store.content, store.images, {"overlayfs": store.snapshotter}, store.leases)
    assert holder not in report.blobs and referenced not in report.blobs
    assert report.snapshots == [] and top in store.snapshots()
    assert set(report.blobs) == b.blobs - a.blobs
    # a snapshot can be a root too, and refer to content (in its own namespace)
    store.content.update_labels(holder, {"containerd.io/gc.root": ""})
    labels = {"dockyard.io/gc.root": "1", "containerd.io/gc.ref.content": referenced}
    info = SnapshotInfo(kind=store.snapshotter.stat(top).kind, name=top, labels=labels)
    store.snapshotter.update(info, [f"labels.{k}" for k in labels])
    report = collect(store.content, store.images, {"overlayfs": store.snapshotter}, store.leases)
    assert report.blobs == [holder] and report.snapshots == []


def test_active_snapshots_go_unless_held(store: Store, two: tuple[Built, Built]) -> None:
    a, _ = two
    top = f"{NS}/{a.chains[1]}"
    store.snapshotter.prepare("default/stray", top)
    store.snapshotter.prepare("default/leased", top)
    store.snapshotter.prepare("default/container", top)
    store.snapshotter.prepare("default/on-container", "")
    held = store.leases.create(NS)
    store.leases.add_resource(NS, held.id, Resource("snapshots/overlayfs", "default/leased"))
    report = collect(
        store.content,
        store.images,
        {"overlayfs": store.snapshotter},
        store.leases,
        extra_roots=[Resource("snapshots/overlayfs", "default/container")],
    )
    assert sorted(k for _, k in report.snapshots) == ["default/on-container", "default/stray"]
    store.images.delete(NS, "example.com/a:1")
    store.leases.delete(NS, held.id)
    # the container's snapshot keeps a's layers (its parents), not a's blobs
    report = collect(
        store.content,
        store.images,
        {"overlayfs": store.snapshotter},
        store.leases,
        extra_roots=[Resource("snapshots/overlayfs", "default/container")],
    )
    assert [k for _, k in report.snapshots] == ["default/leased"]
    assert {f"{NS}/{c}" for c in a.chains} <= store.snapshots()


def test_children_are_removed_before_parents(store: Store, two: tuple[Built, Built]) -> None:
    a, _ = two
    store.images.delete(NS, "example.com/a:1")
    store.images.delete(NS, "example.com/b:1")
    report = store.gc()
    keys = [k for _, k in report.snapshots]
    assert keys.index(f"{NS}/{a.chains[0]}") == len(keys) - 1
    assert store.snapshots() == set() and store.blobs() == set()


def _stale(store: Store, ref: str, age: timedelta) -> None:
    path = os.path.join(store.content._ingest_dir(ref), "data")
    t = time.time() - age.total_seconds()
    os.utime(path, (t, t))


def test_stale_ingests_go_fresh_and_leased_stay(store: Store) -> None:
    for ref in ("stale", "fresh", "leased-stale"):
        with store.content.writer(ref) as w:
            w.write(b"partial")
    _stale(store, "stale", timedelta(hours=25))
    _stale(store, "leased-stale", timedelta(hours=25))
    held = store.leases.create(NS)
    store.leases.add_resource(NS, held.id, Resource("ingests", "leased-stale"))
    dry = store.gc(dry_run=True)
    assert dry.ingests == ["stale"]
    assert len(store.content.statuses()) == 3
    report = store.gc()
    assert report.ingests == ["stale"]
    assert sorted(s.ref for s in store.content.statuses()) == ["fresh", "leased-stale"]
    # a shorter threshold takes the fresh one; an ingest a writer holds is never taken
    with store.content.writer("fresh"):
        report = store.gc(ingest_age=timedelta(0))
    assert report.ingests == []
    assert store.gc(ingest_age=timedelta(0)).ingests == ["fresh"]


def test_ingest_expiry_given_by_the_caller(store: Store) -> None:
    """``ingest_expires`` overrides the age rule where it knows: due (leased
    once, its lease gone) goes though fresh; not due stays though stale; an
    ingest it does not know keeps the age rule; a lease keeps any of them."""
    for ref in ("due", "not-due", "unknown-stale", "due-but-leased"):
        with store.content.writer(ref) as w:
            w.write(b"partial")
    _stale(store, "not-due", timedelta(hours=25))
    _stale(store, "unknown-stale", timedelta(hours=25))
    held = store.leases.create(NS)
    store.leases.add_resource(NS, held.id, Resource("ingests", "due-but-leased"))
    now = datetime.now(UTC)
    expires = {
        "due": datetime(1970, 1, 1, tzinfo=UTC),
        "not-due": now + timedelta(hours=1),
        "due-but-leased": datetime(1970, 1, 1, tzinfo=UTC),
    }
    report = store.gc(ingest_expires=expires.get)
    assert sorted(report.ingests) == ["due", "unknown-stale"]
    assert sorted(s.ref for s in store.content.statuses()) == ["due-but-leased", "not-due"]


def test_gc_waits_for_a_shared_lock(store: Store) -> None:
    blob = put(store.content, b"garbage")
    done = threading.Event()
    errors: list[BaseException] = []

    def run_gc() -> None:
        try:
            s = Store(Path(store.root))  # its own connections, as another process would have
            try:
                s.gc()
            finally:
                s.close()
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    with gc_lock(store.root, shared=True), gc_lock(store.root, shared=True, timeout=1):
        # two pulls share it; a gc neither gets it in time nor runs
        with pytest.raises(GCLocked):
            store.gc(lock_timeout=0.2)
        t = threading.Thread(target=run_gc)
        t.start()
        assert not done.wait(0.5)
        assert store.content.exists(blob)
    assert done.wait(10), "gc did not run after the shared locks went"
    t.join(10)
    assert not errors and not store.content.exists(blob)
    # and a pull waits for a running gc
    with (
        gc_lock(store.root, shared=False),
        pytest.raises(GCLocked),
        gc_lock(store.root, shared=True, timeout=0.2),
    ):
        pass


def test_cli_gc(store: Store, two: tuple[Built, Built], capsys: pytest.CaptureFixture[str]) -> None:
    _, b = two
    store.images.delete(NS, "example.com/b:1")
    assert cli.main(["--root", store.root, "gc", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("would remove blob") == 3 and "would remove snapshot overlayfs" in out
    assert b.target.digest in out and store.content.exists(b.target.digest)
    assert cli.main(["--root", store.root, "gc"]) == 0
    out = capsys.readouterr().out
    assert out.count("removed blob") == 3 and not store.content.exists(b.target.digest)
    assert cli.main(["--root", store.root, "gc"]) == 0
    assert "removed 0 blobs" in capsys.readouterr().out
