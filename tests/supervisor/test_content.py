"""The content service, straight through gRPC and with ctr: containerd's
Write/Read/Info/Update/List/Delete/Status/Abort semantics, per namespace, and
bad requests answered with the right code while the daemon goes on serving."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import field_mask_pb2

from dockyard.api import typeurl
from dockyard.api.events import content_pb2 as events
from dockyard.api.services.content.v1 import content_pb2 as cpb
from dockyard.api.services.content.v1 import content_pb2_grpc
from dockyard.api.services.images.v1 import images_pb2 as ipb
from dockyard.api.services.images.v1 import images_pb2_grpc
from dockyard.api.types import descriptor_pb2
from dockyard.errors import InvalidArgument
from dockyard.filters import parse_filter
from tests.compat import host
from tests.supervisor.conftest import Supervisor
from tests.supervisor.imageside import (
    backend_blobs,
    backend_ingests,
    digest_of,
    empty_namespace,
    fails,
    md,
    open_namespace,
    write_blob,
)
from tests.supervisor.taskutil import EventLog

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def content(supervisor: Supervisor) -> Iterator[content_pb2_grpc.ContentStub]:
    with supervisor.channel() as ch:
        yield content_pb2_grpc.ContentStub(ch)


@pytest.fixture
def ns(supervisor: Supervisor) -> Iterator[str]:
    name = open_namespace(supervisor)
    yield name
    empty_namespace(supervisor, name)


def test_write_commit_info_read(content: content_pb2_grpc.ContentStub, ns: str) -> None:
    data = b"hello, content" * 1000
    dgst = digest_of(data)
    resps = write_blob(content, ns, data, labels={"containerd.io/gc.root": "x"})
    assert [r.action for r in resps] == [cpb.STAT, cpb.COMMIT]
    assert resps[0].offset == 0 and resps[0].total == len(data)
    assert resps[-1].offset == len(data) and resps[-1].digest == dgst

    info = content.Info(cpb.InfoRequest(digest=dgst), metadata=md(ns)).info
    assert (info.digest, info.size) == (dgst, len(data))
    assert dict(info.labels) == {"containerd.io/gc.root": "x"}
    assert info.created_at.seconds > 0

    whole = b"".join(
        r.data for r in content.Read(cpb.ReadContentRequest(digest=dgst), metadata=md(ns))
    )
    assert whole == data
    part = list(
        content.Read(cpb.ReadContentRequest(digest=dgst, offset=5, size=7), metadata=md(ns))
    )
    assert b"".join(r.data for r in part) == data[5:12] and part[0].offset == 5
    rest = content.Read(
        cpb.ReadContentRequest(digest=dgst, offset=10, size=1 << 30), metadata=md(ns)
    )
    assert b"".join(r.data for r in rest) == data[10:], "a size past the end reads to the end"
    with fails(Code.OUT_OF_RANGE, "past"):
        list(
            content.Read(cpb.ReadContentRequest(digest=dgst, offset=len(data) + 1), metadata=md(ns))
        )


def test_big_blob_is_read_in_chunks(content: content_pb2_grpc.ContentStub, ns: str) -> None:
    data = bytes(range(256)) * (5 << 12)  # 5 MiB
    write_blob(content, ns, data)
    chunks = list(content.Read(cpb.ReadContentRequest(digest=digest_of(data)), metadata=md(ns)))
    assert len(chunks) > 1
    assert [c.offset for c in chunks] == [
        sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))
    ]
    assert b"".join(c.data for c in chunks) == data


def test_update_labels_and_list_filters(content: content_pb2_grpc.ContentStub, ns: str) -> None:
    a, b = b"blob a", b"blob b"
    write_blob(content, ns, a, labels={"kind": "layer", "keep": "1"})
    write_blob(content, ns, b, labels={"kind": "config"})

    def listed(*filters: str) -> set[str]:
        req = cpb.ListContentRequest(filters=list(filters))
        return {i.digest for r in content.List(req, metadata=md(ns)) for i in r.info}

    assert listed() == {digest_of(a), digest_of(b)}
    assert listed("labels.kind==layer") == {digest_of(a)}
    assert listed("labels.kind==layer", "labels.kind==config") == {digest_of(a), digest_of(b)}
    assert listed(f"digest=={digest_of(b)}") == {digest_of(b)}
    assert listed("labels.keep,labels.kind~=^c") == set()

    def update(labels: dict[str, str], *paths: str) -> dict[str, str]:
        info = cpb.Info(digest=digest_of(a), labels=labels)
        req = cpb.UpdateRequest(info=info, update_mask=field_mask_pb2.FieldMask(paths=list(paths)))
        return dict(content.Update(req, metadata=md(ns)).info.labels)

    assert update({"kind": "blob"}, "labels.kind") == {"kind": "blob", "keep": "1"}
    assert update({}, "labels.keep") == {"kind": "blob"}, "an absent label is removed"
    assert update({"only": "this"}) == {"only": "this"}, "no field paths: all labels replaced"
    with fails(Code.INVALID_ARGUMENT, "size"):
        update({}, "size")
    with fails(Code.INVALID_ARGUMENT, "filter"):
        listed("labels.kind==")


def test_delete(supervisor: Supervisor, content: content_pb2_grpc.ContentStub, ns: str) -> None:
    data = b"to delete"
    write_blob(content, ns, data)
    log = EventLog(supervisor, f'namespace=={ns},topic=="/content/delete"').start()
    try:
        content.Delete(cpb.DeleteContentRequest(digest=digest_of(data)), metadata=md(ns))
        host.wait_for(lambda: "/content/delete" in log.topics(), 10, "the delete event")
        (env,) = [e for e in log.envelopes if e.topic == "/content/delete"]
        assert typeurl.unpack(env.event) == events.ContentDelete(digest=digest_of(data))
    finally:
        log.close()
    with fails(Code.NOT_FOUND, digest_of(data)):
        content.Info(cpb.InfoRequest(digest=digest_of(data)), metadata=md(ns))
    with fails(Code.NOT_FOUND):
        content.Delete(cpb.DeleteContentRequest(digest=digest_of(data)), metadata=md(ns))


def test_resumed_write(
    supervisor: Supervisor, content: content_pb2_grpc.ContentStub, ns: str
) -> None:
    data = b"0123456789" * 100
    ref = "resume-me"
    first = [
        cpb.WriteContentRequest(
            action=cpb.STAT, ref=ref, total=len(data), expected=digest_of(data)
        ),
        cpb.WriteContentRequest(action=cpb.WRITE, offset=0, data=data[:300]),
    ]
    resps = list(content.Write(iter(first), metadata=md(ns)))
    assert resps[-1].offset == 300
    st = content.Status(cpb.StatusRequest(ref=ref), metadata=md(ns)).status
    assert (st.ref, st.offset, st.total, st.expected) == (ref, 300, len(data), digest_of(data))
    statuses = content.ListStatuses(cpb.ListStatusesRequest(), metadata=md(ns)).statuses
    assert [s.ref for s in statuses] == [ref]
    assert ref in supervisor.ctr("content", "active", namespace=ns).stdout

    second = [
        cpb.WriteContentRequest(action=cpb.STAT, ref=ref),
        cpb.WriteContentRequest(action=cpb.WRITE, offset=300, data=data[300:700]),
        cpb.WriteContentRequest(action=cpb.COMMIT, offset=700, data=data[700:], total=len(data)),
    ]
    resps = list(content.Write(iter(second), metadata=md(ns)))
    assert resps[0].offset == 300, "STAT tells where to go on"
    assert resps[-1].digest == digest_of(data)
    assert content.ListStatuses(cpb.ListStatusesRequest(), metadata=md(ns)).statuses == []


def test_write_at_offset_zero_starts_over(content: content_pb2_grpc.ContentStub, ns: str) -> None:
    data = b"fresh bytes"
    reqs = [
        cpb.WriteContentRequest(action=cpb.WRITE, ref="over", data=b"garbage garbage"),
        cpb.WriteContentRequest(action=cpb.COMMIT, offset=0, data=data, expected=digest_of(data)),
    ]
    resps = list(content.Write(iter(reqs), metadata=md(ns)))
    assert resps[-1].digest == digest_of(data) and resps[-1].offset == len(data)


def test_wrong_offset_is_out_of_range(content: content_pb2_grpc.ContentStub, ns: str) -> None:
    reqs = [
        cpb.WriteContentRequest(action=cpb.WRITE, ref="gap", data=b"abc"),
        cpb.WriteContentRequest(action=cpb.WRITE, offset=10, data=b"def"),
    ]
    with fails(Code.OUT_OF_RANGE, "offset 10"):
        list(content.Write(iter(reqs), metadata=md(ns)))
    content.Abort(cpb.AbortRequest(ref="gap"), metadata=md(ns))
    with fails(Code.NOT_FOUND, "gap"):
        content.Status(cpb.StatusRequest(ref="gap"), metadata=md(ns))


def test_wrong_expected_digest_leaves_nothing(
    supervisor: Supervisor, content: content_pb2_grpc.ContentStub, ns: str
) -> None:
    data = b"the real bytes"
    before = backend_blobs(supervisor), backend_ingests(supervisor)
    with fails(Code.FAILED_PRECONDITION, "digest mismatch"):
        write_blob(content, ns, data, ref="bad-digest", expected=digest_of(b"other bytes"))
    with fails(Code.FAILED_PRECONDITION, "size"):
        reqs = [
            cpb.WriteContentRequest(action=cpb.COMMIT, ref="bad-size", total=3, data=data),
        ]
        list(content.Write(iter(reqs), metadata=md(ns)))
    assert (backend_blobs(supervisor), backend_ingests(supervisor)) == before
    assert content.ListStatuses(cpb.ListStatusesRequest(), metadata=md(ns)).statuses == []
    with fails(Code.NOT_FOUND):
        content.Info(cpb.InfoRequest(digest=digest_of(data)), metadata=md(ns))


def test_known_digest_already_exists(content: content_pb2_grpc.ContentStub, ns: str) -> None:
    data = b"once"
    write_blob(content, ns, data)
    with fails(Code.ALREADY_EXISTS, digest_of(data)):
        write_blob(content, ns, data)


def test_a_held_ref_is_unavailable(content: content_pb2_grpc.ContentStub, ns: str) -> None:
    """A second writer of a ref gets UNAVAILABLE (ctr retries), the first goes on."""
    data = b"locked"
    gate = threading.Event()
    done = threading.Event()

    def held() -> Iterator[cpb.WriteContentRequest]:
        yield cpb.WriteContentRequest(action=cpb.STAT, ref="held", total=len(data))
        gate.wait()
        yield cpb.WriteContentRequest(action=cpb.COMMIT, data=data, expected=digest_of(data))
        done.wait()

    first = content.Write(held(), metadata=md(ns))
    assert next(first).action == cpb.STAT
    with fails(Code.UNAVAILABLE, "held"):
        list(content.Write(iter([cpb.WriteContentRequest(ref="held")]), metadata=md(ns)))
    gate.set()
    assert next(first).digest == digest_of(data)
    done.set()
    first.cancel()


def test_bad_requests(content: content_pb2_grpc.ContentStub, ns: str) -> None:
    with fails(Code.INVALID_ARGUMENT, "digest"):
        content.Info(cpb.InfoRequest(digest="sha256:nothex"), metadata=md(ns))
    with fails(Code.INVALID_ARGUMENT, "digest"):
        content.Info(cpb.InfoRequest(digest=""), metadata=md(ns))
    with fails(Code.NOT_FOUND, "not found"):
        content.Info(cpb.InfoRequest(digest=digest_of(b"never written")), metadata=md(ns))
    with fails(Code.INVALID_ARGUMENT, "ref"):
        list(content.Write(iter([cpb.WriteContentRequest(action=cpb.STAT)]), metadata=md(ns)))
    with fails(Code.INVALID_ARGUMENT, "expected"):
        write_blob(content, ns, b"x", expected="md5:abc")
    with fails(Code.FAILED_PRECONDITION, "namespace"):
        content.Info(cpb.InfoRequest(digest=digest_of(b"x")))
    with fails(Code.NOT_FOUND, "lease"):
        write_blob(content, ns, b"under a missing lease", lease="no-such-lease")
    # still serving
    write_blob(content, ns, b"after the bad ones")


def test_namespaces_see_their_own_and_share_storage(
    supervisor: Supervisor, content: content_pb2_grpc.ContentStub, ns: str
) -> None:
    other = open_namespace(supervisor)
    try:
        data = b"shared between namespaces" * 50
        dgst = digest_of(data)
        write_blob(content, ns, data, labels={"who": "first"})
        with fails(Code.NOT_FOUND):
            content.Info(cpb.InfoRequest(digest=dgst), metadata=md(other))
        with fails(Code.NOT_FOUND):
            list(content.Read(cpb.ReadContentRequest(digest=dgst), metadata=md(other)))
        stored = backend_blobs(supervisor)

        # the backend has it: the other namespace's writer needs no bytes
        reqs = [
            cpb.WriteContentRequest(action=cpb.STAT, ref="shared", total=len(data), expected=dgst),
            cpb.WriteContentRequest(action=cpb.COMMIT, offset=len(data), total=len(data),
                                    expected=dgst, labels={"who": "second"}),
        ]  # fmt: skip
        resps = list(content.Write(iter(reqs), metadata=md(other)))
        assert resps[0].offset == len(data), "already complete"
        assert resps[-1].digest == dgst
        assert set(backend_blobs(supervisor)) <= set(stored), "nothing more stored"
        assert dict(content.Info(cpb.InfoRequest(digest=dgst), metadata=md(other)).info.labels) == {
            "who": "second"
        }, "labels are per namespace"
        assert dict(content.Info(cpb.InfoRequest(digest=dgst), metadata=md(ns)).info.labels) == {
            "who": "first"
        }
        assert (
            b"".join(
                r.data
                for r in content.Read(cpb.ReadContentRequest(digest=dgst), metadata=md(other))
            )
            == data
        )

        # a writer that claims another size is not handed the stored blob
        third = open_namespace(supervisor)
        wrong = [
            cpb.WriteContentRequest(
                action=cpb.STAT, ref="liar", total=len(data) + 1, expected=dgst
            ),
            cpb.WriteContentRequest(action=cpb.COMMIT, data=data, total=len(data) + 1),
        ]
        try:
            resps = content.Write(iter(wrong), metadata=md(third))
            assert next(resps).offset == 0
            with fails(Code.FAILED_PRECONDITION, "incomplete"):
                next(resps)
            with fails(Code.NOT_FOUND):
                content.Info(cpb.InfoRequest(digest=dgst), metadata=md(third))
            assert set(backend_blobs(supervisor)) <= set(stored)
        finally:
            empty_namespace(supervisor, third)
    finally:
        empty_namespace(supervisor, other)


def test_ctr_content_commands(supervisor: Supervisor, ns: str) -> None:
    data = b"written by ctr content ingest"
    dgst = digest_of(data)
    # an image names it first: ctr's lease ends with the ingest, the image keeps the blob
    with supervisor.channel() as ch:
        target = descriptor_pb2.Descriptor(media_type="text/plain", digest=dgst, size=len(data))
        image = ipb.Image(name="example.com/holds:it", target=target)
        images_pb2_grpc.ImagesStub(ch).Create(ipb.CreateImageRequest(image=image), metadata=md(ns))
    supervisor.ctr("content", "ingest", "--expected-digest", dgst, "--expected-size",
                   str(len(data)), "ctr-ref", namespace=ns, input=data.decode())  # fmt: skip
    assert dgst in supervisor.ctr("content", "ls", namespace=ns).stdout
    assert supervisor.ctr("content", "get", dgst, namespace=ns).stdout == data.decode()
    supervisor.ctr("content", "label", dgst, "a=b", namespace=ns)
    assert "a=b" in supervisor.ctr("content", "ls", namespace=ns).stdout
    supervisor.ctr("content", "rm", dgst, namespace=ns)
    assert supervisor.ctr("content", "ls", "-q", namespace=ns).stdout.split() == []


def test_filter_syntax() -> None:
    (c,) = parse_filter('labels."containerd.io/gc.root"')
    assert (c.path, c.op) == (("labels", "containerd.io/gc.root"), "")
    conds = parse_filter("name==docker.io/library/busybox:latest,labels.env!=prod")
    assert [(c.path, c.op, c.value) for c in conds] == [
        (("name",), "==", "docker.io/library/busybox:latest"),
        (("labels", "env"), "!=", "prod"),
    ]
    (c,) = parse_filter(r"name~=/^a\d+\/x$/")
    assert c.regex is not None and c.regex.search("a12/x")
    (c,) = parse_filter('a=="x\\ty"')
    assert c.value == "x\ty"
    assert parse_filter("") == [], "the empty filter matches everything"
    for bad in (" ", "a==", "==x", "a~=(", "a,", 'a."x', "a b", "a=b"):
        with pytest.raises(InvalidArgument, match="filter"):
            parse_filter(bad)
