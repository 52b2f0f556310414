"""The leases service, with ctr and through gRPC: leases, their resources,
what a request made under a lease adds to it, and what a lease keeps from
garbage collection until it goes (or expires)."""

from __future__ import annotations

import time
import uuid

import grpc

from dockyard.api.services.content.v1 import content_pb2 as cpb
from dockyard.api.services.leases.v1 import leases_pb2 as lpb
from dockyard.api.services.snapshots.v1 import snapshots_pb2 as spb
from tests.supervisor.conftest import Supervisor
from tests.supervisor.imageside import (
    Stubs,
    backend_blobs,
    digest_of,
    fails,
    md,
    write_blob,
)

Code = grpc.StatusCode


def create(stubs: Stubs, ns: str, lease_id: str = "", **labels: str) -> lpb.Lease:
    req = lpb.CreateRequest(id=lease_id, labels=labels)
    return stubs.leases.Create(req, metadata=md(ns, None)).lease


def resources(stubs: Stubs, ns: str, lease_id: str) -> set[tuple[str, str]]:
    listed = stubs.leases.ListResources(
        lpb.ListResourcesRequest(id=lease_id), metadata=md(ns, None)
    )
    return {(r.type, r.id) for r in listed.resources}


def collect(stubs: Stubs, ns: str) -> None:
    """A garbage collection, now: a throwaway lease deleted with ``sync``."""
    lease = create(stubs, ns, "gc-" + uuid.uuid4().hex[:8])
    stubs.leases.Delete(lpb.DeleteRequest(id=lease.id, sync=True), metadata=md(ns, None))


def has_blob(stubs: Stubs, ns: str, digest: str) -> bool:
    try:
        stubs.content.Info(cpb.InfoRequest(digest=digest), metadata=md(ns, None))
    except grpc.RpcError as e:
        assert e.code() == Code.NOT_FOUND
        return False
    return True


def test_ctr_leases(supervisor: Supervisor, ns: str) -> None:
    supervisor.ctr("leases", "create", "--id", "mine", "team=blue", namespace=ns)
    listed = supervisor.ctr("leases", "ls", namespace=ns).stdout
    assert "mine" in listed and "team=blue" in listed and "containerd.io/gc.expire=" in listed
    made = supervisor.ctr("leases", "create", namespace=ns).stdout.strip()
    assert made, "a lease with an id of the client's making"
    assert sorted(supervisor.ctr("leases", "ls", "-q", namespace=ns).stdout.split()) == sorted(
        ["mine", made]
    )
    supervisor.ctr("leases", "rm", "mine", made, namespace=ns)
    assert supervisor.ctr("leases", "ls", "-q", namespace=ns).stdout.split() == []


def test_create_list_resources(stubs: Stubs, ns: str) -> None:
    lease = create(stubs, ns, "l1", team="red")
    assert lease.id == "l1" and dict(lease.labels) == {"team": "red"}
    assert lease.created_at.seconds > 0
    create(stubs, ns, "l2")
    with fails(Code.ALREADY_EXISTS, "l1"):
        create(stubs, ns, "l1")

    def ids(*filters: str) -> list[str]:
        req = lpb.ListRequest(filters=list(filters))
        return sorted(le.id for le in stubs.leases.List(req, metadata=md(ns, None)).leases)

    assert ids() == ["l1", "l2"]
    assert ids("id==l2") == ["l2"]
    assert ids("labels.team==red") == ["l1"]
    assert ids("labels.team") == ["l1"]

    dgst = digest_of(b"anything")
    for typ, rid in (("content", dgst), ("snapshots/overlayfs", "key"), ("ingests", "ref")):
        req = lpb.AddResourceRequest(id="l1", resource=lpb.Resource(id=rid, type=typ))
        stubs.leases.AddResource(req, metadata=md(ns, None))
    assert resources(stubs, ns, "l1") == {
        ("content", dgst),
        ("snapshots/overlayfs", "key"),
        ("ingests", "ref"),
    }
    gone = lpb.DeleteResourceRequest(
        id="l1", resource=lpb.Resource(id="key", type="snapshots/overlayfs")
    )
    stubs.leases.DeleteResource(gone, metadata=md(ns, None))
    assert ("snapshots/overlayfs", "key") not in resources(stubs, ns, "l1")

    with fails(Code.INVALID_ARGUMENT, "type 'volumes'"):
        req = lpb.AddResourceRequest(id="l1", resource=lpb.Resource(id="v", type="volumes"))
        stubs.leases.AddResource(req, metadata=md(ns, None))
    with fails(Code.INVALID_ARGUMENT, "content"):
        req = lpb.AddResourceRequest(id="l1", resource=lpb.Resource(id="sha256:x", type="content"))
        stubs.leases.AddResource(req, metadata=md(ns, None))
    with fails(Code.NOT_FOUND, "nope"):
        req = lpb.AddResourceRequest(id="nope", resource=lpb.Resource(id=dgst, type="content"))
        stubs.leases.AddResource(req, metadata=md(ns, None))
    with fails(Code.NOT_FOUND, "nope"):
        stubs.leases.ListResources(lpb.ListResourcesRequest(id="nope"), metadata=md(ns, None))

    for lease_id in ("l1", "l2"):
        stubs.leases.Delete(lpb.DeleteRequest(id=lease_id), metadata=md(ns, None))
    assert ids() == []
    with fails(Code.NOT_FOUND, "l1"):
        stubs.leases.Delete(lpb.DeleteRequest(id="l1"), metadata=md(ns, None))


def test_what_a_lease_holds_survives_gc_until_it_goes(
    supervisor: Supervisor, stubs: Stubs, ns: str
) -> None:
    create(stubs, ns, "pull")
    data = b"fetched under a lease"
    dgst = digest_of(data)

    # while writing, the ingest is the lease's; at commit, the blob is
    reqs = iter([cpb.WriteContentRequest(action=cpb.STAT, ref="fetch", total=len(data))])
    list(stubs.content.Write(reqs, metadata=md(ns, "pull")))
    assert resources(stubs, ns, "pull") == {("ingests", "fetch")}
    write_blob(stubs.content, ns, data, ref="fetch", lease="pull")
    assert resources(stubs, ns, "pull") == {("content", dgst)}

    prepare = spb.PrepareSnapshotRequest(snapshotter="overlayfs", key="extract")
    stubs.snapshots.Prepare(prepare, metadata=md(ns, "pull"))
    commit = spb.CommitSnapshotRequest(snapshotter="overlayfs", name="layer", key="extract")
    stubs.snapshots.Commit(commit, metadata=md(ns, "pull"))
    assert resources(stubs, ns, "pull") == {("content", dgst), ("snapshots/overlayfs", "layer")}

    collect(stubs, ns)
    assert has_blob(stubs, ns, dgst)
    stat = spb.StatSnapshotRequest(snapshotter="overlayfs", key="layer")
    assert stubs.snapshots.Stat(stat, metadata=md(ns, None)).info.name == "layer"

    stubs.leases.Delete(lpb.DeleteRequest(id="pull", sync=True), metadata=md(ns, None))
    assert not has_blob(stubs, ns, dgst)
    assert dgst not in backend_blobs(supervisor)
    with fails(Code.NOT_FOUND):
        stubs.snapshots.Stat(stat, metadata=md(ns, None))


def active(stubs: Stubs, ns: str) -> set[str]:
    """The namespace's ingests (``ctr content active``)."""
    listed = stubs.content.ListStatuses(cpb.ListStatusesRequest(), metadata=md(ns, None))
    return {st.ref for st in listed.statuses}


def open_ingest(stubs: Stubs, ns: str, ref: str, lease: str | None) -> None:
    """An ingest with a few bytes, its stream ended without a commit."""
    reqs = iter([cpb.WriteContentRequest(action=cpb.WRITE, ref=ref, total=100, data=b"partial")])
    list(stubs.content.Write(reqs, metadata=md(ns, lease)))


def test_an_ingest_goes_with_its_lease_and_one_without_a_lease_stays(
    supervisor: Supervisor, stubs: Stubs, ns: str
) -> None:
    """containerd's rule: an ingest opened under a lease is collected once no
    lease holds it; one opened without stays for 24 hours (expireat)."""
    create(stubs, ns, "fetching")
    open_ingest(stubs, ns, "leased", "fetching")
    open_ingest(stubs, ns, "unleased", None)
    collect(stubs, ns)
    assert active(stubs, ns) == {"leased", "unleased"}

    stubs.leases.Delete(lpb.DeleteRequest(id="fetching", sync=True), metadata=md(ns, None))
    assert active(stubs, ns) == {"unleased"}
    collect(stubs, ns)
    assert active(stubs, ns) == {"unleased"}
    stubs.content.Abort(cpb.AbortRequest(ref="unleased"), metadata=md(ns, None))
    assert active(stubs, ns) == set()


def test_an_expired_lease_keeps_nothing(supervisor: Supervisor, stubs: Stubs, ns: str) -> None:
    # The lease must still hold when the blob is written: any collection
    # (another test's delete starts one) removes a lease already expired.
    expires = int(time.time()) + 2
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
    create(stubs, ns, "old", **{"containerd.io/gc.expire": stamp})
    data = b"held by an expired lease"
    write_blob(stubs.content, ns, data, lease="old")
    time.sleep(max(0.0, expires + 0.05 - time.time()))
    collect(stubs, ns)
    assert not has_blob(stubs, ns, digest_of(data))
    listed = stubs.leases.List(lpb.ListRequest(), metadata=md(ns, None)).leases
    assert [le.id for le in listed] == [], "the gc deleted the expired lease"


def test_a_lease_keeps_what_its_content_refers_to(stubs: Stubs, ns: str) -> None:
    child = b"a child blob"
    create(stubs, ns, "parent")
    create(stubs, ns, "tmp")
    write_blob(stubs.content, ns, child, lease="tmp")
    write_blob(
        stubs.content,
        ns,
        b"a parent blob",
        lease="parent",
        labels={"containerd.io/gc.ref.content.0": digest_of(child)},
    )
    stubs.leases.Delete(lpb.DeleteRequest(id="tmp", sync=True), metadata=md(ns, None))
    assert has_blob(stubs, ns, digest_of(child)), "kept through the parent's gc.ref label"
    create(stubs, ns, "flat", **{"containerd.io/gc.flat": "x"})
    add = lpb.AddResourceRequest(
        id="flat", resource=lpb.Resource(id=digest_of(b"a parent blob"), type="content")
    )
    stubs.leases.AddResource(add, metadata=md(ns, None))
    stubs.leases.Delete(lpb.DeleteRequest(id="parent", sync=True), metadata=md(ns, None))
    assert has_blob(stubs, ns, digest_of(b"a parent blob"))
    assert not has_blob(stubs, ns, digest_of(child)), "a flat lease does not follow labels"
