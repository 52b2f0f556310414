"""Image records: names to targets, one namespace never seeing another's."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.errors import AlreadyExists, InvalidArgument, NotFound
from dockyard.image.images import Image, ImageStore
from dockyard.spec.image import Descriptor, MediaType

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def target(digest: str = DIGEST) -> Descriptor:
    return Descriptor(media_type=MediaType.OCI_MANIFEST, digest=digest, size=123)


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    s = ImageStore(str(tmp_path / "metadata.db"))
    return s


def test_create_get_list_delete(store: ImageStore) -> None:
    name = "docker.io/library/busybox:latest"
    img = store.create("default", Image(name, target(), {"a": "b"}))
    assert img.target.digest == DIGEST and img.labels == {"a": "b"}
    assert img.created_at is not None
    assert [i.name for i in store.list("default")] == [name]
    with pytest.raises(AlreadyExists):
        store.create("default", Image(name, target()))
    store.delete("default", name)
    with pytest.raises(NotFound, match="busybox"):
        store.get("default", name)
    with pytest.raises(NotFound):
        store.delete("default", name)


def test_namespaces_are_separate(store: ImageStore) -> None:
    store.create("a", Image("x:1", target()))
    store.create("b", Image("x:1", target(OTHER)))
    assert store.get("a", "x:1").target.digest == DIGEST
    assert store.get("b", "x:1").target.digest == OTHER
    assert store.list("c") == []
    store.delete("a", "x:1")
    assert store.get("b", "x:1").target.digest == OTHER


def test_put_moves_a_name_and_update_labels(store: ImageStore) -> None:
    store.put("ns", Image("x:1", target(), {"keep": "1", "drop": "2"}))
    img = store.put("ns", Image("x:1", target(OTHER), {"keep": "1", "drop": "2"}))
    assert img.target.digest == OTHER
    img = store.update("ns", Image("x:1", target(), {"new": "3"}), ["labels.new", "labels.drop"])
    assert img.labels == {"keep": "1", "new": "3"}
    assert img.target.digest == OTHER


def test_update_refuses_an_unknown_field(store: ImageStore) -> None:
    store.put("ns", Image("x:1", target(), {"a": "1"}))
    with pytest.raises(InvalidArgument, match="'name'"):
        store.update("ns", Image("x:1", target(OTHER)), ["name"])
    img = store.get("ns", "x:1")
    assert (img.target.digest, img.labels) == (DIGEST, {"a": "1"})


def test_update_annotations_and_empty_values(store: ImageStore) -> None:
    """The target's annotations by path, as containerd's images service takes
    them; an empty label or annotation is removed; a bad label refused whole."""
    annotated = Descriptor(MediaType.OCI_MANIFEST, DIGEST, 123, annotations={"a": "1", "b": "2"})
    store.put("ns", Image("x:1", annotated, {"keep": "1", "gone": "2"}))
    only = Descriptor("", "", 0, annotations={"b": "", "c": "3"})
    img = store.update(
        "ns", Image("x:1", only, {"gone": ""}), ["annotations.b", "annotations.c", "labels.gone"]
    )
    assert dict(img.target.annotations) == {"a": "1", "c": "3"}
    assert img.target.digest == DIGEST and img.target.size == 123
    assert img.labels == {"keep": "1"}
    assert store.get("ns", "x:1") == img
    with pytest.raises(InvalidArgument, match="label"):
        store.update("ns", Image("x:1", target(), {"k" * 5000: "v"}), ["labels"])
    assert store.get("ns", "x:1").labels == {"keep": "1"}


def test_walk_all_spans_namespaces(store: ImageStore) -> None:
    store.create("a", Image("x:1", target(), {"k": "v"}))
    store.create("b", Image("y:2", target(OTHER)))
    found = {(ns, i.name, i.target.digest, tuple(i.labels.items())) for ns, i in store.walk_all()}
    assert found == {("a", "x:1", DIGEST, (("k", "v"),)), ("b", "y:2", OTHER, ())}


def test_two_stores_share_one_database(tmp_path: Path) -> None:
    a = ImageStore(str(tmp_path / "m.db"))
    b = ImageStore(str(tmp_path / "m.db"))
    a.create("ns", Image("x:1", target()))
    assert b.get("ns", "x:1").target.digest == DIGEST
