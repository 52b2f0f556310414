"""The content store: containerd's semantics (docs/content-flow.md, content.proto).

Blobs appear under ``blobs/`` only whole and verified; ingests resume after
a writer closed or was killed; one writer per ref.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import threading
from pathlib import Path

import pytest

from dockyard.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from dockyard.filters import parse_filter
from dockyard.image.content import ContentStore, IngestLocked
from dockyard.spec.image import digest_of


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


def blob_files(store: ContentStore) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(os.path.join(store.root, "blobs")):
        out += [os.path.join(dirpath, f) for f in files]
    return sorted(out)


def put(store: ContentStore, data: bytes, labels: dict[str, str] | None = None) -> str:
    with store.writer(f"put-{digest_of(data)}") as w:
        w.write(data)
        return w.commit(len(data), digest_of(data), labels)


def test_write_commit_read(store: ContentStore) -> None:
    data = os.urandom(3 << 20)
    dgst = digest_of(data)
    with store.writer("layer-1", expected=dgst, total=len(data)) as w:
        assert w.offset == 0
        for i in range(0, len(data), 1 << 20):
            assert w.write(data[i : i + (1 << 20)]) == 1 << 20
        assert w.offset == len(data)
        assert w.digest() == dgst
        st = w.status()
        assert (st.ref, st.offset, st.total, st.expected) == ("layer-1", len(data), len(data), dgst)
        assert w.commit() == dgst

    path = store.path(dgst)
    assert path == os.path.join(store.root, "blobs", "sha256", dgst[7:])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    assert store.exists(dgst)
    info = store.info(dgst)
    assert (info.digest, info.size, dict(info.labels)) == (dgst, len(data), {})
    assert info.created_at <= info.updated_at
    with store.open(dgst) as r:
        assert r.size == len(data)
        assert r.read(10) == data[:10]
        r.seek(1000)
        assert r.read(5) == data[1000:1005]
        assert r.read_at(2 << 20, 4) == data[2 << 20 : (2 << 20) + 4]
        assert r.tell() == 1005, "read_at leaves the position alone"
    assert store.read_bytes(dgst) == data
    with pytest.raises(InvalidArgument, match="larger than the 10 byte limit"):
        store.read_bytes(dgst, max_size=10)
    assert store.statuses() == [], "the ingest is gone after commit"
    assert os.listdir(os.path.join(store.root, "ingest")) == []


def test_sha512(store: ContentStore) -> None:
    data = b"sha512 content"
    dgst = digest_of(data, "sha512")
    with store.writer("s512", expected=dgst) as w:
        w.write(data)
        assert w.digest() == dgst
        assert w.commit() == dgst
    assert store.path(dgst).endswith(f"blobs/sha512/{hashlib.sha512(data).hexdigest()}")
    assert store.info(dgst).size == len(data)
    # a sha256 writer may still commit to an expected sha512 digest
    other = b"other"
    with store.writer("s512-late") as w:
        w.write(other)
        assert w.commit(expected=digest_of(other, "sha512")) == digest_of(other, "sha512")


def test_commit_without_expected_names_by_content(store: ContentStore) -> None:
    with store.writer("anon") as w:
        w.write(b"abc")
        dgst = w.commit()
    assert dgst == digest_of(b"abc")
    assert store.read_bytes(dgst) == b"abc"


def test_digest_mismatch_commits_nothing(store: ContentStore) -> None:
    wrong = digest_of(b"something else")
    w = store.writer("bad")
    w.write(b"abc")
    with pytest.raises(InvalidArgument) as e:
        w.commit(3, wrong)
    assert f"expected {wrong}, got {digest_of(b'abc')}" in str(e.value)
    assert "commit 'bad'" in str(e.value)
    assert blob_files(store) == []
    assert store.statuses() == [], "a bad ingest is removed: resuming it could only fail again"
    with pytest.raises(FailedPrecondition, match="closed"):
        w.write(b"x")


def test_expected_from_writer_checked_at_commit(store: ContentStore) -> None:
    with store.writer("bad2", expected=digest_of(b"abc")) as w:
        w.write(b"abd")
        with pytest.raises(InvalidArgument, match="digest mismatch"):
            w.commit()
    assert blob_files(store) == []


def test_size_too_large_commits_nothing(store: ContentStore) -> None:
    with store.writer("long") as w:
        w.write(b"abcd")
        with pytest.raises(InvalidArgument, match="expected 3 bytes, got 4"):
            w.commit(3)
    assert blob_files(store) == []
    assert store.statuses() == []


def test_short_write_keeps_ingest_for_more(store: ContentStore) -> None:
    data = b"0123456789"
    with store.writer("short", total=len(data)) as w:
        w.write(data[:4])
        with pytest.raises(FailedPrecondition, match="incomplete: 4 of 10 bytes"):
            w.commit()
        assert blob_files(store) == []
        assert store.status("short").offset == 4
        w.write(data[4:])
        assert w.commit(expected=digest_of(data)) == digest_of(data)


def test_commit_of_existing_blob(store: ContentStore) -> None:
    dgst = put(store, b"twice", {"first": "1"})
    with pytest.raises(AlreadyExists, match=f"content {dgst}: already exists"):
        store.writer("again", expected=dgst)
    with store.writer("again") as w:
        w.write(b"twice")
        with pytest.raises(AlreadyExists, match="already exists"):
            w.commit(5, dgst, {"second": "2"})
    assert store.statuses() == [], "the ingest is removed"
    assert dict(store.info(dgst).labels) == {"first": "1"}, "labels of the first commit stay"


def test_close_then_resume(store: ContentStore) -> None:
    data = os.urandom(100_000)
    w = store.writer("resume", expected=digest_of(data), total=len(data))
    w.write(data[:30_000])
    w.close()
    st = store.status("resume")
    assert (st.offset, st.total, st.expected) == (30_000, len(data), digest_of(data))
    assert [s.ref for s in store.statuses()] == ["resume"]

    with store.writer("resume") as w:
        assert w.offset == 30_000
        assert w.digest() == digest_of(data[:30_000]), "the digest state is rebuilt"
        assert w.expected == digest_of(data)
        w.write(data[30_000:])
        assert w.commit() == digest_of(data)


def test_resume_with_conflicting_total_or_expected(store: ContentStore) -> None:
    store.writer("conflict", total=10, expected=digest_of(b"x")).close()
    with pytest.raises(InvalidArgument, match="total 11 differs from 10"):
        store.writer("conflict", total=11)
    with pytest.raises(InvalidArgument, match="differs from"):
        store.writer("conflict", expected=digest_of(b"y"))
    store.writer("conflict").close()  # the lock was let go after each refusal


def test_truncate(store: ContentStore) -> None:
    with store.writer("trunc") as w:
        w.write(b"garbage")
        w.truncate(0)
        assert w.offset == 0
        w.write(b"good")
        assert w.commit() == digest_of(b"good")
        with pytest.raises(FailedPrecondition):
            w.truncate(0)
    w = store.writer("trunc2")
    with pytest.raises(InvalidArgument, match="only 0 is supported"):
        w.truncate(3)
    w.close()


def test_one_writer_per_ref(store: ContentStore) -> None:
    w = store.writer("busy")
    with pytest.raises(IngestLocked, match="ref 'busy' locked"):
        store.writer("busy")
    with pytest.raises(IngestLocked, match="locked"):
        store.abort("busy")
    other = store.writer("free")  # other refs are not affected
    other.close()
    w.close()
    store.writer("busy").close()


def test_one_writer_per_ref_across_threads(store: ContentStore) -> None:
    n = 8
    results: list[str] = []
    barrier = threading.Barrier(n)
    all_tried = threading.Event()
    lock = threading.Lock()

    def grab() -> None:
        barrier.wait()
        try:
            w = store.writer("contended")
        except IngestLocked:
            outcome = "locked"
        else:
            outcome = "got"
        with lock:
            results.append(outcome)
            if len(results) == n:
                all_tried.set()
        if outcome == "got":
            all_tried.wait(10)  # hold the ref until every thread has tried
            w.close()

    threads = [threading.Thread(target=grab) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["got"] + ["locked"] * (n - 1)


def test_one_writer_per_ref_across_processes(store: ContentStore) -> None:
    w = store.writer("shared")
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 3
        try:
            store.writer("shared")
            code = 1
        except IngestLocked:
            code = 0
        finally:
            os._exit(code)
    os.close(r)
    os.close(wfd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child was refused the held ref"
    w.close()


def _child_writes_and_dies(store: ContentStore, ref: str, data: bytes, how: str) -> None:
    """In a child: write ``data`` to ``ref`` and die without closing (``os._exit``/SIGKILL)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            w = store.writer(ref, total=2 * len(data))
            w.write(data)
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    if how == "sigkill":
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    else:
        assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_resume_after_writer_dies(store: ContentStore, how: str) -> None:
    data = os.urandom(1 << 20)
    _child_writes_and_dies(store, "killed", data[: 1 << 19], how)
    assert blob_files(store) == [], "nothing committed by a dead writer"
    assert store.status("killed").offset == 1 << 19
    with store.writer("killed") as w:  # the dead child's lock went with it
        assert w.offset == 1 << 19
        w.write(data[1 << 19 :])
        assert w.commit(expected=digest_of(data)) == digest_of(data)
    assert store.read_bytes(digest_of(data)) == data


def test_sigkill_during_commit_leaves_no_partial_blob(store: ContentStore) -> None:
    """Kill a child at many points of a streamed write + commit; blobs are whole or absent."""
    data = os.urandom(256 << 10)
    dgst = digest_of(data)
    for step in range(0, 9):
        pid = os.fork()
        if pid == 0:  # pragma: no cover
            try:
                w = store.writer("crash", expected=dgst, total=len(data))
                chunk = 32 << 10
                pos = w.offset
                n = 0
                while pos < len(data):
                    if n == step:
                        os.kill(os.getpid(), signal.SIGKILL)
                    w.write(data[pos : pos + chunk])
                    pos += chunk
                    n += 1
                w.commit()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        for path in blob_files(store):
            with open(path, "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == os.path.basename(path)
    if not store.exists(dgst):
        with store.writer("crash") as w:
            w.write(data[w.offset :])
            w.commit()
    assert store.read_bytes(dgst) == data


def test_sigkill_right_after_the_rename(store: ContentStore) -> None:
    """Killed once the blob is in place but before labels and ingest cleanup."""
    import dockyard.image.content as content

    data = b"committed, then killed"
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        try:
            real = content.fsync_dir

            def fsync_then_die(path: str) -> None:
                real(path)
                if os.sep + "blobs" + os.sep in path + os.sep:
                    os.kill(os.getpid(), signal.SIGKILL)

            content.fsync_dir = fsync_then_die
            w = store.writer("late-kill")
            w.write(data)
            w.commit(labels={"a": "b"})
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert store.read_bytes(digest_of(data)) == data
    assert dict(store.info(digest_of(data)).labels) == {}, "labels are lost, never the blob"
    with store.writer("late-kill") as w:  # what is left of the ingest does not resume
        assert w.offset == 0
        w.write(data)
        with pytest.raises(AlreadyExists):
            w.commit()
    assert store.read_bytes(digest_of(data)) == data


def test_labels(store: ContentStore) -> None:
    dgst = put(store, b"labelled", {"a": "1", "b": "2"})
    assert dict(store.info(dgst).labels) == {"a": "1", "b": "2"}
    created = store.info(dgst).created_at
    info = store.update_labels(dgst, {"b": "", "c": "3"})
    assert dict(info.labels) == {"a": "1", "c": "3"}
    assert info.created_at == created
    assert info.updated_at >= created
    info = store.update_labels(dgst, {"z": "9"}, replace=True)
    assert dict(info.labels) == {"z": "9"}
    with pytest.raises(InvalidArgument, match="more than 4096"):
        store.update_labels(dgst, {"big": "x" * 5000})
    assert dict(store.info(dgst).labels) == {"z": "9"}, "a refused update changes nothing"
    with pytest.raises(NotFound):
        store.update_labels(digest_of(b"absent"), {"a": "b"})


def test_walk_filters(store: ContentStore) -> None:
    a = put(store, b"a", {"containerd.io/gc.root": "2024", "kind": "layer"})
    b = put(store, b"bb", {"kind": "config"})
    c = put(store, b"ccc")
    s512 = digest_of(b"d", "sha512")
    with store.writer("d") as w:
        w.write(b"d")
        w.commit(expected=s512)

    def walk(*filters: str) -> set[str]:
        return {i.digest for i in store.walk(*filters)}

    assert walk() == {a, b, c, s512}
    assert walk("labels.kind==layer") == {a}
    assert walk('labels."kind"==config') == {b}
    assert walk('labels."containerd.io/gc.root"') == {a}
    assert walk("labels.kind") == {a, b}
    assert walk("labels.kind!=layer") == {b, c, s512}
    assert walk(f"digest=={c}") == {c}
    assert walk("labels.kind~=^c") == {b}
    assert walk("size==2") == {b}
    assert walk("labels.kind==layer", "labels.kind==config") == {a, b}, "alternatives"
    assert walk("labels.kind,size==1") == {a}, "conjunction"
    assert walk('labels.kind=="config"') == {b}
    assert walk("digest~=^sha512:") == {s512}
    assert walk("") == {a, b, c, s512}, "the empty filter matches everything, as containerd's"
    for bad in (" ", "labels.kind==", "==x", "labels.kind~=(", "a,", 'labels."x'):
        with pytest.raises(InvalidArgument, match="filter"):
            list(store.walk(bad))


def test_parse_filter_paths() -> None:
    (cond,) = parse_filter('labels."a.b/c"==sha256:x.y')
    assert (cond.path, cond.op, cond.value) == (("labels", "a.b/c"), "==", "sha256:x.y")


def test_statuses_and_abort(store: ContentStore) -> None:
    store.writer("one", total=5).close()
    w = store.writer("two")
    w.write(b"12")
    assert sorted(s.ref for s in store.statuses()) == ["one", "two"]
    assert [s.ref for s in store.statuses("ref==two")] == ["two"]
    assert [s.ref for s in store.statuses("total==5")] == ["one"]
    assert store.status("two").offset == 2
    w.close()
    store.abort("one")
    with pytest.raises(NotFound, match="ingest 'one': not found"):
        store.status("one")
    with pytest.raises(NotFound, match="ingest 'one': not found"):
        store.abort("one")
    assert [s.ref for s in store.statuses()] == ["two"]


def test_delete(store: ContentStore) -> None:
    dgst = put(store, b"doomed", {"a": "b"})
    store.delete(dgst)
    assert not store.exists(dgst)
    for call in (store.info, store.path, store.open, store.delete):
        with pytest.raises(NotFound, match=f"content {dgst}: not found"):
            call(dgst)
    # committing it again starts without the old labels
    assert dict(store.info(put(store, b"doomed")).labels) == {}


def test_bad_arguments(store: ContentStore) -> None:
    with pytest.raises(InvalidArgument, match="ref must be a non-empty string"):
        store.writer("")
    with pytest.raises(InvalidArgument, match="expected: invalid digest"):
        store.writer("x", expected="sha256:nope")
    with pytest.raises(InvalidArgument, match="total must be a non-negative integer"):
        store.writer("x", total=-1)
    with pytest.raises(InvalidArgument, match="invalid digest"):
        store.info("sha256:../../etc/passwd")
    with pytest.raises(InvalidArgument, match="unsupported digest algorithm"):
        store.exists(f"md5:{'a' * 32}")


def test_store_reopened_sees_everything(store: ContentStore, tmp_path: Path) -> None:
    dgst = put(store, b"persist", {"k": "v"})
    store.writer("pending").close()
    again = ContentStore(store.root)
    assert dict(again.info(dgst).labels) == {"k": "v"}
    assert [s.ref for s in again.statuses()] == ["pending"]


def test_sizes_lists_what_walk_does_without_the_labels(store: ContentStore) -> None:
    a = put(store, b"a", {"kind": "layer"})
    b = put(store, b"bb")
    stray = Path(store.root) / "blobs" / "sha256" / "not-a-digest"
    stray.write_bytes(b"x")
    (Path(store.root) / "blobs" / "md5").mkdir()
    assert dict(store.sizes()) == {a: 1, b: 2}
    assert dict(store.sizes()) == {i.digest: i.size for i in store.walk()}
