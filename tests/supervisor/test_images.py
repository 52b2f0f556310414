"""Images with the real ctr against our supervisor: import, pull from a real
registry (ctr fetches, writes content, creates the image and unpacks through
the snapshots and diff services), ls and rm; namespaces kept apart; and the
images service's own rules straight through gRPC."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import field_mask_pb2

from dockyard.api import typeurl
from dockyard.api.events import image_pb2 as events
from dockyard.api.services.images.v1 import images_pb2 as ipb
from dockyard.api.services.images.v1 import images_pb2_grpc
from dockyard.api.types import descriptor_pb2
from dockyard.image.unpack import chain_ids
from tests.compat import host
from tests.image.registry_fixture import RegistryServer, plain_registry  # noqa: F401
from tests.images import ImageArchive
from tests.supervisor.conftest import Supervisor
from tests.supervisor.imageside import (
    backend_blobs,
    content_digests,
    empty_namespace,
    fails,
    gc_settled,
    md,
    new_namespace,
    push_image,
    snapshot_keys,
)
from tests.supervisor.taskutil import EventLog

Code = grpc.StatusCode
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def images(supervisor: Supervisor) -> Iterator[images_pb2_grpc.ImagesStub]:
    with supervisor.channel() as ch:
        yield images_pb2_grpc.ImagesStub(ch)


@pytest.fixture(scope="module")
def pushed(plain_registry: RegistryServer, busybox_archive: ImageArchive) -> str:  # noqa: F811
    return push_image(plain_registry, busybox_archive, "dockyard/busybox:pull")


def image_names(sup: Supervisor, ns: str) -> list[str]:
    return sup.ctr("images", "ls", "-q", namespace=ns).stdout.split()


def test_import_ls_rm(supervisor: Supervisor, busybox_archive: ImageArchive, ns: str) -> None:
    a = busybox_archive
    supervisor.ctr("images", "import", str(a.path), namespace=ns)
    assert image_names(supervisor, ns) == [a.ref]
    listed = supervisor.ctr("images", "ls", namespace=ns).stdout
    assert a.manifest_digest in listed and "linux/" in listed
    assert {a.manifest_digest, a.config_digest, a.layer_digest} <= set(
        content_digests(supervisor, ns)
    )
    (chain,) = chain_ids([a.layer_digest])
    assert snapshot_keys(supervisor, ns) == [chain], "unpacked by import"
    supervisor.ctr("images", "check", namespace=ns)

    supervisor.ctr("images", "rm", "--sync", a.ref, namespace=ns)
    assert image_names(supervisor, ns) == []
    assert content_digests(supervisor, ns) == [] and snapshot_keys(supervisor, ns) == []


def test_pull_from_a_registry(supervisor: Supervisor, pushed: str, ns: str) -> None:
    out = supervisor.ctr("images", "pull", "--plain-http", pushed, namespace=ns).stdout
    assert "unpacking" in out
    assert image_names(supervisor, ns) == [pushed]
    digests = content_digests(supervisor, ns)
    assert len(digests) == 3, "manifest, config and layer"
    (chain,) = snapshot_keys(supervisor, ns)
    config_labels = supervisor.ctr("content", "ls", namespace=ns).stdout
    assert f"containerd.io/gc.ref.snapshot.overlayfs={chain}" in config_labels
    # the lease of the pull is gone, what it protected is held by the image now
    assert supervisor.ctr("leases", "ls", "-q", namespace=ns).stdout.split() == []
    assert supervisor.ctr("content", "active", namespace=ns).stdout.splitlines()[1:] == []

    supervisor.ctr("images", "rm", pushed, namespace=ns)
    gc_settled(supervisor, ns)


def test_two_pulls_at_once_store_each_blob_once(
    supervisor: Supervisor, pushed: str, ns: str
) -> None:
    before = set(backend_blobs(supervisor))
    results: list[int] = []

    def pull() -> None:
        p = supervisor.ctr("images", "pull", "--plain-http", pushed, namespace=ns, check=False)
        results.append(p.returncode)

    threads = [threading.Thread(target=pull) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0, 0]
    digests = content_digests(supervisor, ns)
    assert len(digests) == 3
    assert set(backend_blobs(supervisor)) - before <= set(digests)
    assert len(snapshot_keys(supervisor, ns)) == 1

    # the same image in a second namespace: nothing more is stored
    other = new_namespace()
    try:
        stored = set(backend_blobs(supervisor))
        supervisor.ctr("images", "pull", "--plain-http", pushed, namespace=other)
        assert content_digests(supervisor, other) == digests
        assert set(backend_blobs(supervisor)) <= stored
        # removing it from one namespace keeps it for the other
        supervisor.ctr("images", "rm", "--sync", pushed, namespace=other)
        assert set(digests) <= set(backend_blobs(supervisor))
        assert content_digests(supervisor, ns) == digests
    finally:
        empty_namespace(supervisor, other)


def test_namespaces_are_apart(
    supervisor: Supervisor, busybox_archive: ImageArchive, ns: str
) -> None:
    other = new_namespace()
    supervisor.ctr("namespaces", "create", other)
    try:
        supervisor.ctr("images", "import", str(busybox_archive.path), namespace=ns)
        assert image_names(supervisor, other) == []
        assert content_digests(supervisor, other) == []
        assert snapshot_keys(supervisor, other) == []
        refused = supervisor.ctr("namespaces", "rm", ns, check=False)
        assert refused.returncode != 0
        assert "images" in refused.stderr and "content" in refused.stderr
        assert "snapshots/overlayfs" in refused.stderr
        supervisor.ctr("namespaces", "rm", other)  # empty: fine

        supervisor.ctr("images", "rm", "--sync", busybox_archive.ref, namespace=ns)
        supervisor.ctr("namespaces", "rm", ns)
        assert ns not in supervisor.ctr("namespaces", "ls", "-q").stdout.split()
    finally:
        empty_namespace(supervisor, other)


def _target(digest: str = "sha256:" + "a" * 64) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(media_type=MANIFEST, digest=digest, size=10)


def test_create_get_update_list_delete(images: images_pb2_grpc.ImagesStub, ns: str) -> None:
    img = ipb.Image(name="example.com/a:1", labels={"x": "1"}, target=_target())
    created = images.Create(ipb.CreateImageRequest(image=img), metadata=md(ns)).image
    assert created.name == img.name and created.created_at.seconds > 0
    with fails(Code.ALREADY_EXISTS, "example.com/a:1"):
        images.Create(ipb.CreateImageRequest(image=img), metadata=md(ns))
    got = images.Get(ipb.GetImageRequest(name=img.name), metadata=md(ns)).image
    assert got.target.digest == img.target.digest and dict(got.labels) == {"x": "1"}

    def update(image: ipb.Image, *paths: str) -> ipb.Image:
        mask = field_mask_pb2.FieldMask(paths=list(paths))
        req = ipb.UpdateImageRequest(image=image, update_mask=mask)
        return images.Update(req, metadata=md(ns)).image

    changed = update(ipb.Image(name=img.name, labels={"y": "2"}), "labels.y")
    assert dict(changed.labels) == {"x": "1", "y": "2"}
    assert changed.target.digest == img.target.digest, "only the named field changes"
    annotated = ipb.Image(name=img.name, target=_target())
    annotated.target.annotations["k"] = "v"
    assert dict(update(annotated, "annotations.k").target.annotations) == {"k": "v"}
    new_target = _target("sha256:" + "b" * 64)
    replaced = update(ipb.Image(name=img.name, target=new_target))
    assert replaced.target.digest == new_target.digest and dict(replaced.labels) == {}
    with fails(Code.INVALID_ARGUMENT, "created"):
        update(ipb.Image(name=img.name), "created")
    with fails(Code.NOT_FOUND):
        update(ipb.Image(name="example.com/none:1", target=_target()))

    images.Create(
        ipb.CreateImageRequest(
            image=ipb.Image(name="example.com/b:2", target=annotated.target, labels={"x": "1"})
        ),
        metadata=md(ns),
    )

    def names(*filters: str) -> list[str]:
        req = ipb.ListImagesRequest(filters=list(filters))
        return [i.name for i in images.List(req, metadata=md(ns)).images]

    assert names() == ["example.com/a:1", "example.com/b:2"]
    assert names("name==example.com/b:2") == ["example.com/b:2"]
    assert names(f"target.digest=={new_target.digest}") == ["example.com/a:1"]
    assert names("labels.x==1") == ["example.com/b:2"]
    assert names("name~=^example.com/a", "labels.x") == ["example.com/a:1", "example.com/b:2"]
    assert names("annotations.k==v") == ["example.com/b:2"], "a replaced target lost its own"

    images.Delete(ipb.DeleteImageRequest(name="example.com/a:1", sync=True), metadata=md(ns))
    images.Delete(ipb.DeleteImageRequest(name="example.com/b:2"), metadata=md(ns))
    assert names() == []
    with fails(Code.NOT_FOUND):
        images.Delete(ipb.DeleteImageRequest(name="example.com/b:2"), metadata=md(ns))


def test_bad_images_are_refused(images: images_pb2_grpc.ImagesStub, ns: str) -> None:
    def create(image: ipb.Image) -> None:
        images.Create(ipb.CreateImageRequest(image=image), metadata=md(ns))

    with fails(Code.INVALID_ARGUMENT, "name"):
        create(ipb.Image(target=_target()))
    with fails(Code.INVALID_ARGUMENT, "digest"):
        create(ipb.Image(name="x", target=_target("sha256:short")))
    with fails(Code.INVALID_ARGUMENT, "size"):
        create(
            ipb.Image(
                name="x",
                target=descriptor_pb2.Descriptor(media_type=MANIFEST, digest="sha256:" + "a" * 64),
            )
        )
    with fails(Code.INVALID_ARGUMENT, "media type"):
        create(
            ipb.Image(
                name="x", target=descriptor_pb2.Descriptor(digest="sha256:" + "a" * 64, size=1)
            )
        )
    with fails(Code.INVALID_ARGUMENT, "label"):
        create(ipb.Image(name="x", target=_target(), labels={"k": "v" * 5000}))
    with fails(Code.NOT_FOUND, "x"):
        images.Get(ipb.GetImageRequest(name="x"), metadata=md(ns))
    with fails(Code.FAILED_PRECONDITION, "namespace"):
        images.List(ipb.ListImagesRequest())
    assert images.List(ipb.ListImagesRequest(), metadata=md(ns)).images == []


def test_images_publish_their_events(
    supervisor: Supervisor, images: images_pb2_grpc.ImagesStub, ns: str
) -> None:
    log = EventLog(supervisor, f"namespace=={ns}").start()
    try:
        name = "example.com/events:1"
        img = ipb.Image(name=name, labels={"a": "1"}, target=_target())
        images.Create(ipb.CreateImageRequest(image=img), metadata=md(ns))
        mask = field_mask_pb2.FieldMask(paths=["labels.b"])
        update = ipb.Image(name=name, labels={"b": "2"})
        images.Update(ipb.UpdateImageRequest(image=update, update_mask=mask), metadata=md(ns))
        images.Delete(ipb.DeleteImageRequest(name=name), metadata=md(ns))
        want = [
            ("/images/create", events.ImageCreate(name=name, labels={"a": "1"})),
            ("/images/update", events.ImageUpdate(name=name, labels={"a": "1", "b": "2"})),
            ("/images/delete", events.ImageDelete(name=name)),
        ]

        def ours() -> list[tuple[str, object]]:
            envelopes = [e for e in list(log.envelopes) if e.topic.startswith("/images/")]
            return [(e.topic, typeurl.unpack(e.event)) for e in envelopes]

        host.wait_for(lambda: len(ours()) >= len(want), 10, "the image events")
        assert ours() == want
    finally:
        log.close()
