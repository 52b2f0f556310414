"""Garbage collection in the supervisor: once nothing refers to them, blobs,
snapshots and namespace records go, in the background after a deletion or at
once when a request asks for ``sync``; a blob leaves the disk only when no
namespace has it. Roots: images, containers, leases, gc.root labels.

Each test leaves the daemon empty, so the module can check that nothing at
all is left on disk."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from dockyard.api.services.containers.v1 import containers_pb2 as ctpb
from dockyard.api.services.containers.v1 import containers_pb2_grpc
from dockyard.api.services.content.v1 import content_pb2 as cpb
from dockyard.api.services.content.v1 import content_pb2_grpc
from dockyard.api.services.leases.v1 import leases_pb2 as lpb
from dockyard.api.services.leases.v1 import leases_pb2_grpc
from dockyard.image.unpack import chain_ids
from tests.image.registry_fixture import RegistryServer, plain_registry  # noqa: F401
from tests.images import ImageArchive
from tests.supervisor.conftest import Supervisor
from tests.supervisor.imageside import (
    backend_blobs,
    backend_ingests,
    backend_snapshot_dirs,
    content_digests,
    digest_of,
    empty_namespace,
    gc_settled,
    md,
    new_namespace,
    push_image,
    snapshot_keys,
    write_blob,
)


@pytest.fixture
def ns(supervisor: Supervisor) -> Iterator[str]:
    name = new_namespace()
    yield name
    empty_namespace(supervisor, name)
    # once a collection (any one under way included) is over, nothing of any
    # namespace may be left behind on disk
    sync_gc(supervisor, name)
    supervisor.ctr("namespaces", "rm", name)
    assert backend_blobs(supervisor) == []
    assert backend_snapshot_dirs(supervisor) == []
    assert backend_ingests(supervisor) == []


def sync_gc(sup: Supervisor, ns: str) -> None:
    with sup.channel() as ch:
        leases = leases_pb2_grpc.LeasesStub(ch)
        leases.Create(lpb.CreateRequest(id="gc-now"), metadata=md(ns, None))
        leases.Delete(lpb.DeleteRequest(id="gc-now", sync=True), metadata=md(ns, None))


def test_last_image_removed_leaves_nothing(
    supervisor: Supervisor, busybox_archive: ImageArchive, ns: str
) -> None:
    supervisor.ctr("images", "import", str(busybox_archive.path), namespace=ns)
    sync_gc(supervisor, ns)  # the import's index blob, which no image names, goes
    assert len(content_digests(supervisor, ns)) == 3 and len(snapshot_keys(supervisor, ns)) == 1
    assert backend_blobs(supervisor) and backend_snapshot_dirs(supervisor)
    supervisor.ctr("images", "rm", busybox_archive.ref, namespace=ns)  # gc in the background
    gc_settled(supervisor, ns)
    assert backend_blobs(supervisor) == [] and backend_snapshot_dirs(supervisor) == []


def test_pulled_and_tagged_image_goes_with_its_last_name(
    supervisor: Supervisor,
    plain_registry: RegistryServer,  # noqa: F811
    busybox_archive: ImageArchive,
    ns: str,
) -> None:
    ref = push_image(plain_registry, busybox_archive, "dockyard/busybox:gc")
    supervisor.ctr("images", "pull", "--plain-http", ref, namespace=ns)
    supervisor.ctr("images", "tag", ref, "example.com/another:name", namespace=ns)
    supervisor.ctr("images", "rm", "--sync", ref, namespace=ns)
    assert len(content_digests(supervisor, ns)) == 3, "the other name keeps it all"
    assert len(snapshot_keys(supervisor, ns)) == 1
    supervisor.ctr("images", "rm", "--sync", "example.com/another:name", namespace=ns)
    assert content_digests(supervisor, ns) == [] and snapshot_keys(supervisor, ns) == []


def test_a_blob_leaves_the_disk_with_its_last_namespace(
    supervisor: Supervisor, busybox_archive: ImageArchive, ns: str
) -> None:
    other = new_namespace()
    try:
        for n in (ns, other):
            supervisor.ctr("images", "import", str(busybox_archive.path), namespace=n)
        sync_gc(supervisor, ns)  # the imports' index blob, which no image names, goes
        stored = backend_blobs(supervisor)
        assert len(stored) == 3, "the same blobs once, for both namespaces"
        supervisor.ctr("images", "rm", "--sync", busybox_archive.ref, namespace=ns)
        assert content_digests(supervisor, ns) == [] and snapshot_keys(supervisor, ns) == []
        assert backend_blobs(supervisor) == stored
        assert len(content_digests(supervisor, other)) == 3
        supervisor.ctr("images", "rm", "--sync", busybox_archive.ref, namespace=other)
        assert backend_blobs(supervisor) == []
    finally:
        empty_namespace(supervisor, other)


def test_a_container_keeps_its_snapshot(
    supervisor: Supervisor, busybox_archive: ImageArchive, ns: str
) -> None:
    supervisor.ctr("images", "import", str(busybox_archive.path), namespace=ns)
    supervisor.ctr("containers", "create", busybox_archive.ref, "keeper", namespace=ns)
    (chain,) = chain_ids([busybox_archive.layer_digest])
    supervisor.ctr("images", "rm", "--sync", busybox_archive.ref, namespace=ns)
    assert content_digests(supervisor, ns) == [], "the image's blobs went"
    assert sorted(snapshot_keys(supervisor, ns)) == sorted(["keeper", chain]), (
        "the container's snapshot and its parent stay"
    )
    # the record alone goes (ctr would remove the snapshot itself): gc takes the rest
    with supervisor.channel() as ch:
        containers = containers_pb2_grpc.ContainersStub(ch)
        containers.Delete(ctpb.DeleteContainerRequest(id="keeper"), metadata=md(ns, None))
    gc_settled(supervisor, ns)


def test_roots_and_references(supervisor: Supervisor, ns: str) -> None:
    child, root, loose = b"referred to", b"a root", b"nobody's"
    root_labels = {"containerd.io/gc.root": "x", "containerd.io/gc.ref.content.x": digest_of(child)}
    other = new_namespace()
    try:
        with supervisor.channel() as ch:
            content = content_pb2_grpc.ContentStub(ch)
            write_blob(content, ns, child, lease=None)
            write_blob(content, ns, root, lease=None, labels=root_labels)
            write_blob(content, ns, loose, lease=None)
            sync_gc(supervisor, ns)
            assert content_digests(supervisor, ns) == sorted([digest_of(child), digest_of(root)])
            assert digest_of(loose) not in backend_blobs(supervisor)

            # references stay within a namespace: the other's root does not keep ours
            write_blob(content, other, root, lease=None, labels=root_labels)
            content.Update(
                cpb.UpdateRequest(info=cpb.Info(digest=digest_of(root))), metadata=md(ns)
            )
            sync_gc(supervisor, ns)
            assert content_digests(supervisor, ns) == []
            assert content_digests(supervisor, other) == [digest_of(root)]
            assert backend_blobs(supervisor) == [digest_of(root)]
    finally:
        empty_namespace(supervisor, other)


def test_bad_requests_keep_the_daemon_serving(supervisor: Supervisor, ns: str) -> None:
    with supervisor.channel() as ch:
        leases = leases_pb2_grpc.LeasesStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            leases.Delete(lpb.DeleteRequest(id="never", sync=True), metadata=md(ns, None))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    sync_gc(supervisor, ns)
