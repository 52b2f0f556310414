"""Snapshotters (overlayfs and native): containerd's model, really mounted.

Every test that mounts unmounts in ``finally``; the session leak check
fails the run if a mount is left.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dockyard.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from dockyard.image import snapshots
from dockyard.image.snapshots import Kind, Snapshotter
from dockyard.image.snapshots.native import NativeSnapshotter
from dockyard.image.snapshots.overlay import OverlaySnapshotter
from dockyard.spec import mount as mountmod
from dockyard.spec.mount import Mount, mount_all, unmount_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="snapshotters mount: needs root")

KINDS = ["overlayfs", "native"]


@pytest.fixture(params=KINDS)
def snap(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Snapshotter]:
    s = snapshots.new(request.param, str(tmp_path / "root"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[OverlaySnapshotter]:
    s = OverlaySnapshotter(str(tmp_path / "root"))
    try:
        yield s
    finally:
        s.close()


@contextmanager
def mounted(mounts: list[Mount], target: Path) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    mount_all(mounts, str(target))
    try:
        yield target
    finally:
        unmount_all(str(target))


def writable_dir(mounts: list[Mount]) -> str:
    """Where a test may write a layer's content without mounting."""
    m = mounts[0]
    if m.type == "bind":
        return m.source
    return next(o.split("=", 1)[1] for o in m.options if o.startswith("upperdir="))


def test_prepare_commit_view_chain(snap: Snapshotter, tmp_path: Path) -> None:
    with mounted(snap.prepare("a"), tmp_path / "m1") as m:
        (m / "a1").write_text("a1")
        (m / "d").mkdir()
        (m / "d" / "x").write_text("old")
    snap.commit("A", "a")
    with pytest.raises(NotFound):
        snap.stat("a")
    assert snap.stat("A").kind == Kind.COMMITTED

    with mounted(snap.prepare("b", "A"), tmp_path / "m2") as m:
        assert (m / "a1").read_text() == "a1"
        (m / "b1").write_text("b1")
        (m / "a1").unlink()
        (m / "d" / "x").write_text("new")
    snap.commit("B", "b")
    info = snap.stat("B")
    assert (info.kind, info.parent) == (Kind.COMMITTED, "A")

    if isinstance(snap, OverlaySnapshotter):
        # the deletion is a whiteout in B's own directory: a 0/0 character device
        st = os.lstat(os.path.join(snap.snapshots_dir, str(snap._meta.get("B").id), "fs", "a1"))
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0

    mounts = snap.view("v", "B")
    assert snap.stat("v").kind == Kind.VIEW
    with mounted(mounts, tmp_path / "m3") as m:
        assert sorted(os.listdir(m)) == ["b1", "d"]
        assert (m / "d" / "x").read_text() == "new"
        with pytest.raises(OSError) as e:
            (m / "new").write_text("x")
        assert e.value.errno == errno.EROFS
    # a committed layer stays as it was
    with mounted(snap.view("va", "A"), tmp_path / "m4") as m:
        assert sorted(os.listdir(m)) == ["a1", "d"]
        assert (m / "d" / "x").read_text() == "old"
    # many children of one parent
    with (
        mounted(snap.prepare("c1", "A"), tmp_path / "m5") as m1,
        mounted(snap.prepare("c2", "A"), tmp_path / "m6") as m2,
    ):
        (m1 / "only1").write_text("1")
        assert not (m2 / "only1").exists()
        assert (m2 / "a1").exists()


def test_overlay_mount_shapes(overlay: OverlaySnapshotter) -> None:
    [m] = overlay.prepare("a")
    assert (m.type, m.options) == ("bind", ["rw", "rbind"])
    overlay.commit("A", "a")
    [v] = overlay.view("v1", "A")
    assert v.type == "bind" and "ro" in v.options and v.source.endswith("/fs")
    [p] = overlay.prepare("b", "A")
    assert p.type == "overlay"
    keys = {o.partition("=")[0] for o in p.options}
    assert {"index", "upperdir", "workdir", "lowerdir"} <= keys
    overlay.commit("B", "b")
    [v2] = overlay.view("v2", "B")
    assert v2.type == "overlay"
    lowers = next(o for o in v2.options if o.startswith("lowerdir=")).split("=", 1)[1].split(":")
    assert len(lowers) == 2 and not any(o.startswith("upperdir=") for o in v2.options)
    # nearest parent first
    assert lowers[0].endswith(f"/{overlay._meta.get('B').id}/fs")
    assert lowers[1].endswith(f"/{overlay._meta.get('A').id}/fs")
    assert overlay.mounts("v2") == [v2]
    with pytest.raises(FailedPrecondition, match='"B"'):
        overlay.mounts("B")


def _layers(s: Snapshotter, n: int) -> str:
    """n committed layers, each with its own file; the bottom one has ``bottom``."""
    parent = ""
    for i in range(n):
        d = writable_dir(s.prepare(f"k{i}", parent))
        Path(d, f"layer-{i}").write_text(str(i))
        if i == 0:
            Path(d, "bottom").write_text("deep")
        s.commit(f"L{i}", f"k{i}")
        parent = f"L{i}"
    return parent


@pytest.mark.parametrize("method", ["auto", "relative"])
def test_overlay_150_layers(
    overlay: OverlaySnapshotter, tmp_path: Path, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if method == "relative":
        monkeypatch.setattr(mountmod, "lowerdir_plus_supported", lambda: False)
    top = _layers(overlay, 150)
    mounts = overlay.prepare("top", top)
    lowerdir = next(o for o in mounts[0].options if o.startswith("lowerdir="))
    assert len(lowerdir) > 4096
    with mounted(mounts, tmp_path / "m") as m:
        assert (m / "bottom").read_text() == "deep"
        assert (m / "layer-149").read_text() == "149"
        assert len([n for n in os.listdir(m) if n.startswith("layer-")]) == 150
        (m / "bottom").write_text("changed")
    with mounted(overlay.view("v", top), tmp_path / "v") as m:
        assert (m / "bottom").read_text() == "deep"


def test_overlay_layer_limit(overlay: OverlaySnapshotter, monkeypatch: pytest.MonkeyPatch) -> None:
    from dockyard.errors import Unsupported
    from dockyard.image.snapshots import overlay as ovmod

    monkeypatch.setattr(ovmod, "MAX_LAYERS", 3)
    top = _layers(overlay, 3)
    with pytest.raises(Unsupported, match="at most 3"):
        overlay.prepare("x", top)
    assert overlay.view("v", top)  # a view has no upper: three lowers fit


def test_overlay_unsupported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dockyard.errors import Unsupported
    from dockyard.image.snapshots import overlay as ovmod

    def refuse(*a: object, **k: object) -> None:
        raise OSError(errno.ENODEV, "no such device")

    monkeypatch.setattr(ovmod.libc, "mount", refuse)
    with pytest.raises(Unsupported, match="overlay"):
        OverlaySnapshotter(str(tmp_path / "root"))
    assert os.listdir(tmp_path / "root") != [] and not [
        n for n in os.listdir(tmp_path / "root") if n.startswith("overlay-check")
    ]


def test_errors_name_the_key(snap: Snapshotter) -> None:
    snap.prepare("a")
    with pytest.raises(AlreadyExists, match='"a"'):
        snap.prepare("a")
    with pytest.raises(NotFound, match='"nope"'):
        snap.prepare("b", "nope")
    with pytest.raises(FailedPrecondition, match='"a"'):
        snap.prepare("b", "a")  # parent not committed
    snap.commit("A", "a")
    snap.view("v", "A")
    with pytest.raises(FailedPrecondition, match='"v"'):
        snap.commit("V", "v")  # views cannot be committed
    snap.prepare("c", "A")
    with pytest.raises(AlreadyExists, match='"A"'):
        snap.commit("A", "c")
    with pytest.raises(NotFound, match='"gone"'):
        snap.stat("gone")
    with pytest.raises(NotFound, match='"gone"'):
        snap.remove("gone")
    with pytest.raises(InvalidArgument):
        snap.prepare("")
    # nothing half-made was left by the refusals
    entries = os.listdir(snap.snapshots_dir)
    assert len(entries) == 3 and all(e.isdigit() for e in entries)


def test_remove_refused_with_children(snap: Snapshotter) -> None:
    snap.prepare("a")
    snap.commit("A", "a")
    snap.prepare("b", "A")
    with pytest.raises(FailedPrecondition, match='remove snapshot "A": has children'):
        snap.remove("A")
    snap.remove("b")
    snap.remove("A")
    assert list(snap.walk()) == []
    assert os.listdir(snap.snapshots_dir) == []


def test_cleanup_removes_directories_without_record(snap: Snapshotter) -> None:
    snap.prepare("a")
    sd = Path(snap.snapshots_dir)
    for name in ("999", "new-crashed", "rm-12-x"):
        (sd / name / "sub").mkdir(parents=True)
        (sd / name / "sub" / "f").write_text("x")
    snap.cleanup()
    assert sorted(os.listdir(sd)) == [str(snap._meta.get("a").id)]


def test_cleanup_keeps_a_create_in_progress(snap: Snapshotter) -> None:
    import fcntl

    sd = Path(snap.snapshots_dir)
    busy = sd / "new-busy"
    busy.mkdir()
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        snap.cleanup()
        assert busy.exists()
    finally:
        os.close(fd)
    snap.cleanup()
    assert not busy.exists()


def test_cleanup_drops_records_without_directory(snap: Snapshotter) -> None:
    import shutil

    snap.prepare("a")
    snap.commit("A", "a")
    snap.prepare("b", "A")
    snap.prepare("other")
    shutil.rmtree(os.path.join(snap.snapshots_dir, str(snap._meta.get("A").id)))
    snap.cleanup()
    assert [i.name for i in snap.walk()] == ["other"]
    assert os.listdir(snap.snapshots_dir) == [str(snap._meta.get("other").id)]


def _crash_in_child(root: str, kind: str, where: str) -> None:
    """Fork; the child dies (os._exit) at ``where`` in a prepare."""
    pid = os.fork()
    if pid == 0:
        try:
            s = snapshots.new(kind, root)
            if where == "populate":
                s._populate = lambda *a: os._exit(3)  # type: ignore[method-assign]
            else:  # after the rename, before the transaction commits
                import dockyard.image.snapshots as sm

                def die(path: str) -> None:
                    os._exit(3)

                sm.fsync_dir = die
            s.prepare("crash", "A")
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3


@pytest.mark.parametrize("where", ["populate", "rename"])
def test_crash_during_create(snap: Snapshotter, where: str) -> None:
    snap.prepare("a")
    snap.commit("A", "a")
    kind = snap.name
    _crash_in_child(snap.root, kind, where)
    with pytest.raises(NotFound):
        snap.stat("crash")
    leftovers = set(os.listdir(snap.snapshots_dir)) - {str(snap._meta.get("A").id)}
    assert len(leftovers) == 1
    # the id a rolled-back insert had is given again: its stale directory goes first
    snap.prepare("next", "A")
    assert snap.stat("next").parent == "A"
    snap.cleanup()
    ids = {str(snap._meta.get(k).id) for k in ("A", "next")}
    assert set(os.listdir(snap.snapshots_dir)) == ids


def test_walk_filters(snap: Snapshotter) -> None:
    snap.prepare("a", labels={"containerd.io/gc.root": "x", "team": "blue"})
    snap.commit("A", "a")
    snap.prepare("b", "A", labels={"team": "red"})
    snap.view("v", "A")

    def names(*filters: str) -> list[str]:
        return sorted(i.name for i in snap.walk(list(filters)))

    assert names() == ["A", "b", "v"]
    assert names("kind==committed") == ["A"]
    assert names("kind!=committed") == ["b", "v"]
    assert names('labels."containerd.io/gc.root"') == ["A"]
    assert names("labels.team==red") == ["b"]
    assert names("labels.team~=^(red|blue)$") == ["A", "b"]
    assert names("parent==A,kind==view") == ["v"]
    assert names("name==A", "name==v") == ["A", "v"]  # a list is OR
    assert names('labels.team=="blue"') == ["A"]
    with pytest.raises(InvalidArgument):
        names("==x")


def test_usage(snap: Snapshotter, tmp_path: Path) -> None:
    with mounted(snap.prepare("a"), tmp_path / "m") as m:
        (m / "base").write_bytes(b"b" * 100_000)
    snap.commit("A", "a")
    with mounted(snap.prepare("b", "A"), tmp_path / "m") as m:
        (m / "big").write_bytes(os.urandom(1 << 20))
        os.link(m / "big", m / "big-link")
        (m / "dir").mkdir()
        (m / "dir" / "small").write_text("s")
    u = snap.usage("b")
    if isinstance(snap, OverlaySnapshotter):
        # its own upper only: root, big (once), dir, small
        assert u.inodes == 4
        assert (1 << 20) <= u.size < (1 << 20) + 64 * 1024
    else:
        assert u.inodes == 5  # the copy of base too
        assert u.size >= (1 << 20) + 100_000
    snap.commit("B", "b")
    assert snap.usage("B") == u
    assert snap.usage("A").inodes == 2


def test_update_labels(snap: Snapshotter) -> None:
    snap.prepare("a", labels={"x": "1", "y": "2"})
    before = snap.stat("a")
    info = snap.stat("a")
    info.labels = {"x": "10", "z": "3"}
    after = snap.update(info, ["labels.x", "labels.y"])
    assert after.labels == {"x": "10"}  # y absent from info: deleted; z not named
    assert after.updated >= before.updated and after.created == before.created
    assert snap.update(info).labels == {"x": "10", "z": "3"}
    info.labels = {"only": "1"}
    assert snap.update(info, ["labels"]).labels == {"only": "1"}
    assert snap.stat("a").labels == {"only": "1"}
    with pytest.raises(InvalidArgument):
        snap.update(info, ["parent"])
    with pytest.raises(NotFound):
        snap.update(snapshots.Info(kind=Kind.ACTIVE, name="nope"))
    # commit keeps labels unless new ones are given
    snap.commit("A", "a")
    assert snap.stat("A").labels == {"only": "1"}
    snap.prepare("b", "A", labels={"k": "v"})
    snap.commit("B", "b", labels={"n": "m"})
    assert snap.stat("B").labels == {"n": "m"}


@pytest.mark.parametrize("kind", KINDS)
def test_two_instances_on_one_root(kind: str, tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    s1, s2 = snapshots.new(kind, root), snapshots.new(kind, root)
    errors: list[BaseException] = []

    def work(s: Snapshotter, tag: str) -> None:
        try:
            parent = ""
            for i in range(25):
                Path(writable_dir(s.prepare(f"{tag}-a{i}", parent)), tag).write_text(str(i))
                s.commit(f"{tag}-{i}", f"{tag}-a{i}")
                parent = f"{tag}-{i}"
                s.view(f"{tag}-v{i}", parent)
                if i % 5 == 4:
                    s.cleanup()
        except BaseException as e:
            errors.append(e)

    try:
        threads = [threading.Thread(target=work, args=(s, t)) for s, t in ((s1, "x"), (s2, "y"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        infos = list(s1.walk())
        assert len(infos) == 100
        assert s2.stat("x-24").parent == "x-23" and s1.stat("y-24").parent == "y-23"
        ids = sorted(int(n) for n in os.listdir(s1.snapshots_dir))
        assert ids == sorted(s1._meta.get(i.name).id for i in infos)
    finally:
        s1.close()
        s2.close()


def test_native_copies_everything(tmp_path: Path) -> None:
    s = NativeSnapshotter(str(tmp_path / "root"))
    try:
        d = Path(writable_dir(s.prepare("a")))
        os.chmod(d, 0o751)
        (d / "f").write_text("f")
        os.chown(d / "f", 1234, 5678)
        os.chmod(d / "f", 0o4710)
        os.link(d / "f", d / "hard")
        os.symlink("f", d / "sym")
        os.mknod(d / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.mkfifo(d / "fifo")
        os.setxattr(d / "f", "user.k", b"v")
        os.setxattr(d / "f", "trusted.k", b"t")
        os.utime(d / "f", ns=(1_000_000_000, 2_000_000_123))
        s.commit("A", "a")
        c = Path(writable_dir(s.prepare("b", "A")))
        st = os.lstat(c / "f")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4710)
        assert st.st_mtime_ns == 2_000_000_123
        assert os.lstat(c / "hard").st_ino == st.st_ino
        assert os.readlink(c / "sym") == "f"
        n = os.lstat(c / "null")
        assert stat.S_ISCHR(n.st_mode) and n.st_rdev == os.makedev(1, 3)
        assert stat.S_ISFIFO(os.lstat(c / "fifo").st_mode)
        assert os.getxattr(c / "f", "user.k") == b"v"
        assert os.getxattr(c / "f", "trusted.k") == b"t"
        assert stat.S_IMODE(os.stat(c).st_mode) == 0o751
        assert st.st_ino != os.lstat(d / "f").st_ino  # a copy, not the same file
    finally:
        s.close()


def test_mount_all_undoes_on_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "sub").mkdir()
    target = tmp_path / "t"
    target.mkdir()
    bad = [
        Mount("bind", str(src), ["rbind", "ro"]),
        Mount("bind", str(tmp_path / "missing"), ["rbind"], target="sub"),
    ]
    with pytest.raises(OSError):
        mount_all(bad, str(target))
    assert not os.path.ismount(target)
    unmount_all(str(target))  # nothing mounted: not an error


def test_mount_all_read_only_bind(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with mounted([Mount("bind", str(src), ["ro", "rbind"])], tmp_path / "t") as t:
        with pytest.raises(OSError) as e:
            (t / "x").write_text("x")
        assert e.value.errno == errno.EROFS


def test_two_processes_on_one_root(tmp_path: Path) -> None:
    """A forked process and this one create snapshots on one root at the same time."""
    root = str(tmp_path / "root")
    snapshots.new("overlayfs", root).close()  # the database exists before both start

    def work(tag: str) -> None:
        with snapshots.new("overlayfs", root) as s:
            parent = ""
            for i in range(30):
                s.prepare(f"{tag}-a{i}", parent)
                s.commit(f"{tag}-{i}", f"{tag}-a{i}")
                parent = f"{tag}-{i}"

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work("child")
            code = 0
        finally:
            os._exit(code)
    try:
        work("parent")
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with snapshots.new("overlayfs", root) as s:
        assert len(list(s.walk())) == 60
        assert s.stat("child-29").parent == "child-28"
        assert len(os.listdir(s.snapshots_dir)) == 60


def test_lowerdir_plus_on_this_kernel() -> None:
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    assert mountmod.lowerdir_plus_supported() == ((major, minor) >= (6, 8))


@pytest.mark.parametrize("method", ["auto", "relative"])
def test_long_overlay_with_a_missing_layer_fails_cleanly(
    tmp_path: Path, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if method == "relative":
        monkeypatch.setattr(mountmod, "lowerdir_plus_supported", lambda: False)
    base = tmp_path / ("x" * 50)
    lowers = []
    for i in range(120):
        (base / f"layer-{i:03d}").mkdir(parents=True)
        lowers.append(str(base / f"layer-{i:03d}"))
    lowers[60] += "-missing"
    target = tmp_path / "t"
    target.mkdir()
    m = Mount("overlay", "overlay", ["lowerdir=" + ":".join(lowers)])
    with pytest.raises(OSError) as e:
        mount_all([m], str(target))
    assert e.value.errno == errno.ENOENT
    assert "overlay" in str(e.value)
    assert not os.path.ismount(target)


def test_an_empty_label_value_is_no_label(snap: Snapshotter) -> None:
    """containerd's rule (its label writer skips empty values): at prepare,
    commit and update; and update checks labels as prepare does."""
    snap.prepare("a", labels={"keep": "1", "empty": ""})
    assert snap.stat("a").labels == {"keep": "1"}
    info = snap.stat("a")
    info.labels = {"keep": "", "new": "2"}
    assert snap.update(info, ["labels.keep", "labels.new"]).labels == {"new": "2"}
    info.labels = {"x": "", "y": "3"}
    assert snap.update(info).labels == {"y": "3"}
    info.labels = {"k": "v" * 5000}
    with pytest.raises(InvalidArgument, match="label"):
        snap.update(info, ["labels.k"])
    assert snap.stat("a").labels == {"y": "3"}, "a refused update changes nothing"
    snap.commit("A", "a", labels={"c": "", "d": "4"})
    assert snap.stat("A").labels == {"d": "4"}
