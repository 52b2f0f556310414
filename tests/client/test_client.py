"""The client library against the reference and against ours.

Every test runs twice: against a private containerd 1.6 and against
dockyard-supervisor (``clientfixtures.daemon``), each test in a namespace of
its own. Passing against containerd proves the library speaks the v1 API as
the reference answers it; passing against the supervisor proves ours answers
the same way. Tasks run with containerd's runc shim, and with dockyard's
shim under the supervisor.
"""

from __future__ import annotations

import hashlib
import io
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.api.events import container_pb2 as container_events
from dockyard.api.events import task_pb2 as task_events
from dockyard.client import cio
from dockyard.client.client import Client
from dockyard.client.container import Container
from dockyard.client.containers import ContainerRecord
from dockyard.client.image import SNAPSHOT_GC_LABEL, UNCOMPRESSED_LABEL
from dockyard.client.leases import Resource
from dockyard.client.snapshots import Kind
from dockyard.client.tasks import Process, TaskStatus
from dockyard.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from dockyard.image.images import Image
from dockyard.spec.image import MediaType
from tests.client import clientfixtures
from tests.client.clientfixtures import Daemon, Shim, spec_for
from tests.compat import host
from tests.conftest import new_id

# The fixtures of clientfixtures, by name: a daemon of each kind, a clean
# namespace on it, the shims to run tasks with, and the image imported.
daemon = clientfixtures.daemon
ns = clientfixtures.ns
shim = clientfixtures.shim
image = clientfixtures.image


# A bound on every wait for a process, so that a regression fails the test
# instead of hanging the run; never an assertion about speed.
WAIT = host.COMMAND_TIMEOUT


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def box(ns: Client, image: Image, shim: Shim) -> Iterator[Container]:
    """A busybox container that sleeps, not started; removed after."""
    cid = new_id()
    with ns.container(
        cid,
        image,
        remove_timeout=WAIT,
        spec=spec_for(ns, image, cid, ["sleep", "1000"]),
        runtime=shim.name,
        runtime_options=shim.options,
    ) as container:
        yield container


# ---------------------------------------------------------------------------
# The connection


def test_version_and_identity(ns: Client, daemon: Daemon) -> None:
    version = ns.version()
    assert version.version
    if daemon.kind == "containerd":
        assert version.version.startswith(("1.6", "v1.6")), version
    uuid = ns.server_uuid()
    assert len(uuid) == 36 and uuid.count("-") == 4
    assert ns.server_uuid() == uuid
    plugins = ns.introspection.plugins()
    ids = {(p.type, p.id) for p in plugins}
    assert ("io.containerd.snapshotter.v1", "overlayfs") in ids
    [overlay] = ns.introspection.plugins('type=="io.containerd.snapshotter.v1",id==overlayfs')
    assert overlay.ok, overlay.init_error


def test_a_client_to_nowhere_fails_to_connect(tmp_path: Path) -> None:
    from dockyard.errors import SystemFailure

    with pytest.raises(SystemFailure, match=r"connect to .*no answer"):
        Client(str(tmp_path / "no.sock"), connect_timeout=0.5)


def test_errors_are_mapped_from_status_codes(ns: Client) -> None:
    with pytest.raises(NotFound):
        ns.containers.get("nothing-here")
    with pytest.raises(NotFound):
        ns.images.get("docker.io/library/nothing:here")
    with pytest.raises(NotFound):
        ns.content.info(digest(b"nothing"))
    with pytest.raises(NotFound):
        ns.content.read_bytes(digest(b"nothing"))  # a stream's error, mapped too
    with pytest.raises(InvalidArgument):
        ns.content.info("sha256:not-a-digest")
    with pytest.raises(InvalidArgument):
        ns.namespaces.create("bad/name")


# ---------------------------------------------------------------------------
# Namespaces


def test_namespaces_create_list_label_delete(ns: Client) -> None:
    name = ns.namespace + "-other"
    made = ns.namespaces.create(name, {"a": "1", "b": "2"})
    try:
        assert made.name == name and made.labels == {"a": "1", "b": "2"}
        assert name in {n.name for n in ns.namespaces.list()}
        assert ns.namespaces.get(name).labels == {"a": "1", "b": "2"}
        with pytest.raises(AlreadyExists):
            ns.namespaces.create(name)
        assert ns.namespaces.set_labels(name, {"a": "", "c": "3"}) == {"b": "2", "c": "3"}
        assert ns.namespaces.labels(name) == {"b": "2", "c": "3"}
        # a namespace with something in it is not deleted
        other = ns.with_namespace(name)
        other.containers.create(ContainerRecord("held", spec={}))
        with pytest.raises(FailedPrecondition):
            ns.namespaces.delete(name)
        other.containers.delete("held")
    finally:
        ns.namespaces.delete(name)
    # (containerd's Get answers any name, with no labels: the list tells)
    assert name not in {n.name for n in ns.namespaces.list()}


def test_each_namespace_sees_only_its_own(ns: Client, image: Image) -> None:
    other = ns.with_namespace(ns.namespace + "-b")
    try:
        assert other.namespace != ns.namespace
        assert [i.name for i in ns.images.list()] == [image.name]
        assert other.images.list() == []
        with pytest.raises(NotFound):
            other.images.get(image.name)
    finally:
        # the view shares the connection: closing the view leaves ours open
        other.close()
        assert ns.images.get(image.name).name == image.name
        try:
            ns.namespaces.delete(other.namespace)
        except NotFound:
            pass


# ---------------------------------------------------------------------------
# Images and content


def test_import_archive_and_inspect_images(ns: Client, daemon: Daemon) -> None:
    archive = daemon.image
    with ns.lease() as lease_id:
        made = ns.import_image(str(archive.path))
        # the import's own lease is inside ours: ours is used, not a new one
        assert [lease.id for lease in ns.leases.list()] == [lease_id]
    assert [i.name for i in made] == [archive.ref]
    got = ns.images.get(archive.ref)
    assert got.target.digest == archive.manifest_digest
    assert got.target.media_type == MediaType.OCI_MANIFEST
    assert got.created_at is not None
    assert [i.name for i in ns.images.list(f"name=={archive.ref}")] == [archive.ref]
    assert ns.images.list("name==docker.io/other:tag") == []
    # the records keep their trees: the manifest refers to its config and layer
    labels = ns.content.info(archive.manifest_digest).labels
    assert labels["containerd.io/gc.ref.content.config"] == archive.config_digest
    assert labels["containerd.io/gc.ref.content.l.0"] == archive.layer_digest
    config = ns.image_config(got)
    assert config.rootfs.diff_ids == (archive.layer_digest,)
    # the import's lease is gone; what it wrote is kept by the record alone
    assert ns.leases.list() == []
    assert {i.digest for i in ns.content.list()} >= {
        archive.manifest_digest,
        archive.config_digest,
        archive.layer_digest,
    }
    # importing again points the record at the same target
    again = ns.import_image(str(archive.path), name="docker.io/library/again:1")
    assert [i.name for i in again] == ["docker.io/library/again:1"]
    assert again[0].target.digest == archive.manifest_digest
    # images: update the labels, delete
    updated = ns.images.update(Image(got.name, got.target, labels={"x": "y"}), ["labels"])
    assert updated.labels == {"x": "y"}
    ns.images.delete("docker.io/library/again:1")
    with pytest.raises(NotFound):
        ns.images.get("docker.io/library/again:1")


def test_a_refused_archive_leaves_nothing(ns: Client, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive")
    with pytest.raises(InvalidArgument):
        ns.import_image(str(bad))
    assert ns.images.list() == []
    assert ns.content.list_statuses() == []
    assert ns.leases.list() == []


def test_content_round_trip(ns: Client, tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # more than one chunk
    want = digest(data)
    with ns.lease():
        assert ns.content.write_blob(data, want, labels={"k": "v"}) == want
        # writing it again is not an error: it is there
        assert ns.content.write_blob(data, want) == want
        info = ns.content.info(want)
        assert (info.digest, info.size, info.labels) == (want, len(data), {"k": "v"})
        assert ns.content.read_bytes(want) == data
        assert b"".join(ns.content.read(want, offset=10, size=20)) == data[10:30]
        out = tmp_path / "blob"
        with out.open("wb") as f:
            assert ns.content.read_into(want, f) == len(data)
        assert out.read_bytes() == data
        assert ns.content.read_bytes(want, max_size=len(data)) == data
        with pytest.raises(InvalidArgument, match="byte limit"):
            ns.content.read_bytes(want, max_size=len(data) - 1)
        with pytest.raises(InvalidArgument):
            ns.content.read_bytes(want, max_size=100)
        # from a file too
        src = tmp_path / "src"
        src.write_bytes(b"from a file\n")
        with src.open("rb") as f:
            assert ns.content.write_blob(f, digest(b"from a file\n")) == digest(b"from a file\n")
        assert ns.content.read_bytes(digest(b"from a file\n")) == b"from a file\n"
        # labels and list filters
        assert ns.content.set_labels(want, {"k": "", "other": "1"}) == {"other": "1"}
        assert [i.digest for i in ns.content.list('labels."other"==1')] == [want]
        ns.content.delete(want)
        with pytest.raises(NotFound):
            ns.content.info(want)


def test_content_write_resumes_after_a_partial_write(ns: Client, tmp_path: Path) -> None:
    data = b"0123456789" * 300_000  # 3 MB
    want = digest(data)
    ref = "resume-" + want[-12:]
    with ns.lease():
        writer = ns.content.writer(ref, total=len(data), expected=want)
        writer.write(data[:1_000_000])
        writer.close()  # cut short: the ingest stays
        status = ns.content.status(ref)
        assert (status.ref, status.offset, status.total) == (ref, 1_000_000, len(data))
        assert status.expected == want or status.expected == ""
        assert ref in {s.ref for s in ns.content.list_statuses()}
        # opening the ref again starts where it was left
        writer = ns.content.writer(ref, total=len(data), expected=want)
        assert writer.offset == 1_000_000
        writer.write(data[1_000_000:2_000_000])
        writer.close()
        # write_blob resumes the same ref from a file: only the rest is sent
        src = tmp_path / "data"
        src.write_bytes(data)
        with src.open("rb") as f:
            assert ns.content.write_blob(f, want, ref=ref) == want
        assert ns.content.read_bytes(want) == data
        with pytest.raises(NotFound):
            ns.content.status(ref)
        ns.content.delete(want)
        # a truncated ingest starts again from nothing
        writer = ns.content.writer("truncated", total=len(data))
        writer.write(b"not this")
        writer.truncate()
        assert writer.offset == 0
        writer.close()
        assert ns.content.status("truncated").offset == 0
        ns.content.abort("truncated")


def test_content_with_a_wrong_digest_is_refused_and_nothing_is_left(ns: Client) -> None:
    data = b"some content\n"
    wrong = digest(b"other content\n")
    with ns.lease():
        # through write_blob: refused before any commit, the ingest aborted
        with pytest.raises(InvalidArgument, match="digest"):
            ns.content.write_blob(data, wrong, ref="wrong-1")
        with pytest.raises(NotFound):
            ns.content.status("wrong-1")
        # through the daemon's own check at commit
        writer = ns.content.writer("wrong-2", total=len(data))
        writer.write(data)
        with pytest.raises((InvalidArgument, FailedPrecondition)):
            writer.commit(len(data), wrong)
        try:
            ns.content.abort("wrong-2")
        except NotFound:
            pass  # ours drops an ingest whose content is wrong at once
        with pytest.raises(NotFound):
            ns.content.status("wrong-2")
        for d in (wrong, digest(data)):
            with pytest.raises(NotFound):
                ns.content.info(d)
        assert ns.content.list_statuses() == []
        assert ns.content.list() == []


# ---------------------------------------------------------------------------
# Snapshots and diff


def test_unpack_into_snapshots(ns: Client, image: Image, daemon: Daemon) -> None:
    assert not ns.is_unpacked(image)
    chain_id = ns.unpack(image)
    # one uncompressed layer: its chain ID is its diff ID is its digest
    assert chain_id == daemon.image.layer_digest
    assert ns.is_unpacked(image)
    sn = ns.snapshots()
    info = sn.stat(chain_id)
    assert (info.name, info.kind, info.parent) == (chain_id, Kind.COMMITTED, "")
    assert [i.name for i in sn.list()] == [chain_id]
    assert sn.usage(chain_id).size > 0
    config_labels = ns.content.info(daemon.image.config_digest).labels
    assert config_labels[SNAPSHOT_GC_LABEL + "overlayfs"] == chain_id
    layer_labels = ns.content.info(daemon.image.layer_digest).labels
    assert layer_labels[UNCOMPRESSED_LABEL] == daemon.image.layer_digest
    # again: nothing to do, the same answer
    assert ns.unpack(image.name) == chain_id
    assert [i.name for i in sn.list()] == [chain_id]
    assert ns.leases.list() == []
    # the image record keeps the snapshot; without it, it is collected
    ns.images.delete(image.name, sync=True)
    assert sn.list() == []
    assert ns.content.list() == []


def test_snapshots_prepare_view_commit_remove(ns: Client) -> None:
    sn = ns.snapshots()
    with ns.lease():
        mounts = sn.prepare("active-1", labels={"a": "b"})
        assert mounts and mounts[0].type in ("bind", "overlay")
        assert sn.mounts("active-1") == mounts
        info = sn.stat("active-1")
        assert (info.kind, info.labels) == (Kind.ACTIVE, {"a": "b"})
        with pytest.raises(AlreadyExists):
            sn.prepare("active-1")
        sn.commit("base", "active-1")
        with pytest.raises(NotFound):
            sn.stat("active-1")
        assert sn.stat("base").kind == Kind.COMMITTED
        view = sn.view("view-1", "base")
        assert view and all("ro" in m.options for m in view if m.type == "bind")
        assert sn.stat("view-1").kind == Kind.VIEW
        sn.prepare("child", "base")
        assert sn.stat("child").parent == "base"
        assert {i.name for i in sn.list()} == {"base", "view-1", "child"}
        assert [i.name for i in sn.list("parent==base,kind==active")] == ["child"]
        assert sn.set_labels("child", {"x": "1"}) == {"x": "1"}
        # a parent goes only after its children
        with pytest.raises(FailedPrecondition):
            sn.remove("base")
        for key in ("view-1", "child", "base"):
            sn.remove(key)
        assert sn.list() == []
        with pytest.raises(NotFound):
            sn.remove("base")


def test_diff_makes_a_layer_that_applies(ns: Client, image: Image, tmp_path: Path) -> None:
    from dockyard.spec.mount import mount_all, unmount_all

    chain_id = ns.unpack(image)
    sn = ns.snapshots()
    with ns.lease():
        lower = sn.view("lower", chain_id)
        upper = sn.prepare("upper", chain_id)
        target = tmp_path / "mnt"
        target.mkdir()
        mount_all(upper, str(target))
        try:
            (target / "added.txt").write_text("added\n")
        finally:
            unmount_all(str(target))
        layer = ns.diff.diff(lower, upper, labels={"made": "here"})
        assert layer.media_type.startswith("application/vnd.oci.image.layer.v1.tar")
        assert ns.content.info(layer.digest).labels.get("made") == "here"
        # applied onto the image's rootfs, the layer adds the file
        fresh = sn.prepare("fresh", chain_id)
        applied = ns.diff.apply(layer, fresh)
        assert applied.digest.startswith("sha256:")
        mount_all(fresh, str(target))
        try:
            assert (target / "added.txt").read_text() == "added\n"
            assert (target / "bin" / "busybox").exists()
        finally:
            unmount_all(str(target))
        for key in ("lower", "upper", "fresh"):
            sn.remove(key)


# ---------------------------------------------------------------------------
# Containers and tasks


def run(
    container: Container, daemon: Daemon, stdin: bytes | None = None
) -> tuple[int, bytes, bytes]:
    """Start the container's task with stdout/stderr captured; (exit code, out, err)."""
    out, err = io.BytesIO(), io.BytesIO()
    task = container.new_task(
        cio.streams(stdin=stdin, stdout=out, stderr=err, fifo_root=daemon.fifo_root)
    )
    try:
        exited = task.wait_async()
        task.start()
        status = exited.result(WAIT)
    finally:
        task.delete(force=True, timeout=WAIT)
    return status.code, out.getvalue(), err.getvalue()


def test_run_echo_hello(ns: Client, image: Image, shim: Shim, daemon: Daemon) -> None:
    cid = new_id()
    spec = spec_for(ns, image, cid, ["echo", "hello"])
    container = ns.new_container(
        cid, image, spec=spec, runtime=shim.name, runtime_options=shim.options, labels={"l": "1"}
    )
    try:
        record = container.info()
        assert record.image == image.name
        assert (record.snapshotter, record.snapshot_key) == ("overlayfs", cid)
        assert record.runtime.name == shim.name
        assert record.labels == {"l": "1"}
        assert container.set_labels({"l": "", "m": "2"}) == {"m": "2"}
        assert ns.containers.list("labels.m==2")[0].id == cid
        assert container.spec() == spec
        assert ns.snapshots().stat(cid).kind == Kind.ACTIVE
        assert [c.id for c in ns.list_containers()] == [cid]
        code, out, err = run(container, daemon)
        assert (code, out, err) == (0, b"hello\n", b""), daemon.log_tail()
    finally:
        container.delete()
    with pytest.raises(NotFound):
        ns.containers.get(cid)
    with pytest.raises(NotFound):
        ns.snapshots().stat(cid)


def test_exit_code_and_stderr(ns: Client, image: Image, shim: Shim, daemon: Daemon) -> None:
    cid = new_id()
    spec = spec_for(ns, image, cid, ["sh", "-c", "echo oops >&2; exit 3"])
    with ns.container(
        cid, image, remove_timeout=WAIT, spec=spec, runtime=shim.name, runtime_options=shim.options
    ) as c:
        code, out, err = run(c, daemon)
    assert (code, out, err) == (3, b"", b"oops\n")


def test_stdin_goes_in(ns: Client, image: Image, shim: Shim, daemon: Daemon) -> None:
    cid = new_id()
    spec = spec_for(ns, image, cid, ["sh", "-c", "tr a-z A-Z; echo done"])
    with ns.container(
        cid, image, remove_timeout=WAIT, spec=spec, runtime=shim.name, runtime_options=shim.options
    ) as c:
        code, out, _ = run(c, daemon, stdin=b"shout\n")
    assert (code, out) == (0, b"SHOUT\ndone\n")


def finish(process: Process) -> int:
    """Start the process and wait for its exit code."""
    exited = process.wait_async()
    process.start()
    return exited.result(WAIT).code


def test_task_exec_pids_pause_kill(ns: Client, box: Container, shim: Shim, daemon: Daemon) -> None:
    out = io.BytesIO()
    task = box.new_task(cio.streams(stdout=out, fifo_root=daemon.fifo_root))
    try:
        assert task.pid > 0
        assert task.status().status == TaskStatus.CREATED
        task.start()
        assert task.status().status == TaskStatus.RUNNING
        assert task.pid in {p.pid for p in task.pids()}

        # exec with output, an exit code, and stdin
        hi = io.BytesIO()
        p = task.exec(
            "hi",
            box.process_spec(["echo", "hi"]),
            cio.streams(stdout=hi, fifo_root=daemon.fifo_root),
        )
        assert finish(p) == 0
        assert p.delete().code == 0
        assert hi.getvalue() == b"hi\n"
        p = task.exec("four", box.process_spec(["sh", "-c", "exit 4"]))
        assert finish(p) == 4
        p.delete()
        cat = io.BytesIO()
        p = task.exec(
            "cat",
            box.process_spec(["cat"]),
            cio.streams(stdin=b"through cat\n", stdout=cat, fifo_root=daemon.fifo_root),
        )
        assert finish(p) == 0
        p.delete()
        assert cat.getvalue() == b"through cat\n"
        with pytest.raises(NotFound):
            task.load_process("cat")

        task.pause()
        assert task.status().status == TaskStatus.PAUSED
        task.resume()
        assert task.status().status == TaskStatus.RUNNING
        metric = task.metrics()
        assert metric.id == box.id and metric.data is not None
        # resources of the running task, as the runtime sets them in its cgroup
        task.update({"cpu": {"shares": 512}})
        shares = {
            (d / "cpu.shares").read_text().strip()
            for d in host.cgroup_dirs(f"{ns.namespace}/{box.id}")
            if (d / "cpu.shares").exists()
        }
        if Path("/sys/fs/cgroup/cpu").is_dir():  # cgroup v1 (v2 calls it cpu.weight)
            assert shares == {"512"}

        # a running task is not deleted, nor its container
        with pytest.raises(FailedPrecondition):
            task.delete()
        with pytest.raises(FailedPrecondition):
            box.delete()
        exited = task.wait_async()
        task.kill(signal.SIGKILL)
        status = exited.result(WAIT)
        assert status.code == 128 + signal.SIGKILL
        assert status.exited_at is not None
        assert task.status().status == TaskStatus.STOPPED
        assert task.delete().code == 128 + signal.SIGKILL
    finally:
        try:
            task.delete(force=True, timeout=WAIT)
        except NotFound:
            pass
    with pytest.raises(NotFound):
        box.task()
    assert out.getvalue() == b""


def test_task_events(ns: Client, image: Image, shim: Shim, daemon: Daemon) -> None:
    cid = new_id()
    filters = (f'namespace=={ns.namespace},topic~="^/(tasks|containers)/"',)
    with ns.events.subscribe(*filters, sync=True) as events:
        spec = spec_for(ns, image, cid, ["true"])
        with ns.container(
            cid, image, spec=spec, runtime=shim.name, runtime_options=shim.options
        ) as c:
            code, _, _ = run(c, daemon)
            assert code == 0
        seen: list[tuple[str, object]] = []
        while not seen or seen[-1][0] != "/containers/delete":
            env = events.get(timeout=30)
            assert env is not None
            assert env.namespace == ns.namespace
            seen.append((env.topic, env.event))
    topics = [t for t, _ in seen]
    assert topics[0] == "/containers/create"
    tasks = [t for t in topics if t.startswith("/tasks/")]
    assert tasks == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], topics
    by_topic = dict(seen)
    create = by_topic["/containers/create"]
    assert isinstance(create, container_events.ContainerCreate) and create.id == cid
    exit_event = by_topic["/tasks/exit"]
    assert isinstance(exit_event, task_events.TaskExit)
    assert (exit_event.container_id, exit_event.exit_status) == (cid, 0)


def test_publish_and_subscribe(ns: Client) -> None:
    with ns.events.subscribe('topic=="/dockyard-test/hello"', sync=True) as events:
        ns.events.publish("/dockyard-test/hello", task_events.TaskOOM(container_id="x"))
        env = events.get(timeout=30)
    assert env is not None
    assert (env.topic, env.namespace) == ("/dockyard-test/hello", ns.namespace)
    assert isinstance(env.event, task_events.TaskOOM) and env.event.container_id == "x"
    assert events.get(timeout=1) is None  # closed


# ---------------------------------------------------------------------------
# Leases, and nothing left


def test_leases(ns: Client) -> None:
    assert ns.current_lease is None
    with ns.lease(labels={"who": "test"}) as lease_id:
        assert ns.current_lease == lease_id
        [lease] = ns.leases.list()
        assert lease.id == lease_id and lease.labels["who"] == "test"
        assert "containerd.io/gc.expire" in lease.labels
        data = b"leased\n"
        ns.content.write_blob(data, digest(data))
        resources = ns.leases.list_resources(lease_id)
        assert any(r.type == "content" and r.id == digest(data) for r in resources), resources
    assert ns.current_lease is None
    assert ns.leases.list() == []
    made = ns.leases.create("mine", expire=None)
    assert made.labels == {}
    # what is written under an existing lease is held by it
    data = b"by hand\n"
    with ns.use_lease("mine"):
        ns.content.write_blob(data, digest(data))
    held = Resource(type="content", id=digest(data))
    assert held in ns.leases.list_resources("mine")
    # a resource is let go, and added by hand (not there before the add)
    ns.leases.delete_resource("mine", held)
    assert held not in ns.leases.list_resources("mine")
    ns.leases.add_resource("mine", held)
    assert held in ns.leases.list_resources("mine")
    ns.leases.delete("mine", sync=True)
    # nothing kept the blobs once their leases went
    for gone in (b"leased\n", data):
        with pytest.raises(NotFound):
            ns.content.info(digest(gone))


def test_delete_everything_and_nothing_remains(
    ns: Client, image: Image, shim: Shim, daemon: Daemon
) -> None:
    cid = new_id()
    container = ns.new_container(
        cid,
        image,
        spec=spec_for(ns, image, cid, ["sleep", "1000"]),
        runtime=shim.name,
        runtime_options=shim.options,
    )
    task = container.new_task(cio.streams(stdout=io.BytesIO(), fifo_root=daemon.fifo_root))
    task.start()
    task.delete(force=True, timeout=WAIT)
    container.delete()
    ns.images.delete(image.name, sync=True)
    assert ns.containers.list() == []
    assert ns.tasks.list() == []
    assert ns.snapshots().list() == []
    assert ns.leases.list() == []
    assert ns.content.list() == []
    assert ns.content.list_statuses() == []
    ns.namespaces.delete(ns.namespace)
    # no FIFO directory is left, nor any process of the container
    assert list(Path(daemon.fifo_root).iterdir()) == []
    assert host.pids_mentioning(f"-id {cid} ") == []
