"""dockyard-image against real parts: skopeo pushes, we pull, unpack and run.

The unpacked rootfs must equal what ``skopeo copy`` + ``umoci unpack``
produce from the same registry (same paths, types, modes, owners, link
targets and content), and ``dockyard-runtime run`` must run it with no
daemon at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import base_config, new_id, runtime_command
from tests.image.registry_fixture import RegistryServer, plain_registry  # noqa: F401
from tests.images import build_image_archive

IMAGE_TOOL = [sys.executable, "-m", "dockyard.image.cli"]


def tool(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [*IMAGE_TOOL, "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, f"dockyard-image {' '.join(args)}: {p.stderr}"
    return p


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below root: type, mode, owner, and link target or content hash."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                extra: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            else:
                extra = None
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                extra,
            )
    return out


@pytest.fixture
def pushed(plain_registry: RegistryServer, tmp_path: Path) -> str:  # noqa: F811
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    archive = build_image_archive(tmp_path / "image")
    ref = f"{plain_registry.host}/dockyard/busybox:e2e"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            f"oci-archive:{archive.path}",
            f"docker://{ref}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return ref


def test_pull_unpack_equals_umoci_and_runs(pushed: str, tmp_path: Path) -> None:
    root = tmp_path / "store"
    out = tool(root, "pull", "--no-unpack", "--parallel", "2", pushed).stdout
    assert out.startswith(pushed)
    listed = json.loads(tool(root, "ls", "--format", "json").stdout)
    assert [i["name"] for i in listed] == [pushed]
    info = json.loads(tool(root, "inspect", pushed).stdout)
    assert info["config"]["os"] == "linux"

    bundle = tmp_path / "bundle"
    tool(root, "unpack", pushed, str(bundle / "rootfs"))

    if shutil.which("umoci"):
        layout = tmp_path / "layout"
        subprocess.run(
            ["skopeo", "copy", "--src-tls-verify=false", f"docker://{pushed}", f"oci:{layout}:e2e"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        ref_bundle = tmp_path / "umoci-bundle"
        subprocess.run(
            ["umoci", "unpack", "--image", f"{layout}:e2e", str(ref_bundle)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert tree(bundle / "rootfs") == tree(ref_bundle / "rootfs")

    # no daemon: the unpacked image runs with the runtime alone
    cfg = base_config(new_id())
    cfg["process"]["args"] = ["sh", "-c", "echo ran from $(ls /bin/busybox)"]
    (bundle / "config.json").write_text(json.dumps(cfg))
    state = tmp_path / "state"
    cid = new_id()
    p = subprocess.run(
        [*runtime_command(), "--root", str(state), "run", "--bundle", str(bundle), cid],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert p.returncode == 0, p.stderr
        assert p.stdout == "ran from /bin/busybox\n"
    finally:
        subprocess.run(
            [*runtime_command(), "--root", str(state), "delete", "--force", cid],
            capture_output=True,
            timeout=60,
        )


def test_tag_rm_and_bad_names(pushed: str, tmp_path: Path) -> None:
    root = tmp_path / "store"
    tool(root, "pull", "--no-unpack", pushed)
    tool(root, "tag", pushed, "example.com/other:1")
    names = sorted(i["name"] for i in json.loads(tool(root, "ls", "--format", "json").stdout))
    assert names == sorted([pushed, "example.com/other:1"])
    tool(root, "rm", "example.com/other:1")
    p = subprocess.run(
        [*IMAGE_TOOL, "--root", str(root), "inspect", "UPPER/case"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0 and "dockyard-image:" in p.stderr


def _skopeo_push_layout(layout: Path, tag: str, ref: str) -> None:
    subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{ref}"],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture
def pushed_layers(plain_registry: RegistryServer, tmp_path: Path) -> str:  # noqa: F811
    """The two-layer image with a deleted file and an opaque directory, pushed by skopeo."""
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    from dockyard.image.content import ContentStore
    from dockyard.image.images import Image, ImageStore
    from dockyard.image.transfer import export_oci
    from dockyard.spec.image import Descriptor, MediaType, digest_of
    from tests.image.test_unpack import build_image

    content = ContentStore(str(tmp_path / "build"))
    manifest = build_image(content)
    images = ImageStore(str(tmp_path / "build.db"))
    target = Descriptor(MediaType.OCI_MANIFEST, digest_of(manifest), len(manifest))
    images.put("default", Image("example.com/layers:v1", target))
    layout = tmp_path / "layout"
    export_oci(content, images, "default", ["example.com/layers:v1"], str(layout))
    images.close()
    ref = f"{plain_registry.host}/dockyard/layers:e2e"
    _skopeo_push_layout(layout, "v1", ref)
    return ref


def test_multi_layer_whiteouts_equal_umoci(pushed_layers: str, tmp_path: Path) -> None:
    """Deletions and an opaque directory across layers: our rootfs equals umoci's."""
    if not shutil.which("umoci"):
        pytest.skip("umoci is not installed")
    root = tmp_path / "store"
    tool(root, "pull", "--no-unpack", pushed_layers)
    ours = tmp_path / "ours"
    tool(root, "unpack", pushed_layers, str(ours))
    layout = tmp_path / "ref-layout"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            f"docker://{pushed_layers}",
            f"oci:{layout}:x",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    ref_bundle = tmp_path / "umoci-bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:x", str(ref_bundle)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert tree(ours) == tree(ref_bundle / "rootfs")
    assert not (ours / "etc" / "gone").exists()
    assert sorted(os.listdir(ours / "data")) == ["new"]


def _fetching(root: Path) -> bool:
    """Has the pull begun writing content (an ingest or a committed blob)?"""
    for d in (root / "content" / "ingest", root / "content" / "blobs" / "sha256"):
        try:
            if any(d.iterdir()):
                return True
        except FileNotFoundError:
            pass
    return False


def test_pull_killed_at_any_point_then_completes(pushed: str, tmp_path: Path) -> None:
    """SIGKILL a pull at moments after it began fetching: no corrupt blob is ever
    committed, and the next pull into the same store completes."""
    import signal
    import time

    midway = 0  # kills that left content behind but no image record
    for i, offset in enumerate((0.0, 0.001, 0.003, 0.01, 0.03, 0.1)):
        root = tmp_path / f"store{i}"
        p = subprocess.Popen(
            [*IMAGE_TOOL, "--root", str(root), "pull", pushed],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not _fetching(root) and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.0005)
            time.sleep(offset)
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(30)
        blobs = root / "content" / "blobs" / "sha256"
        for blob in blobs.iterdir() if blobs.exists() else []:
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob
        if _fetching(root) and not json.loads(tool(root, "ls", "--format", "json").stdout):
            midway += 1
        tool(root, "pull", pushed)
        rootfs = tmp_path / f"rootfs{i}"
        tool(root, "unpack", pushed, str(rootfs))
        assert (rootfs / "bin" / "busybox").exists()
    assert midway, "no kill landed in the middle of a pull: the test proved nothing"
    tool(tmp_path / "store0", "gc")
