"""Import and export against the reference tools: skopeo and umoci.

What we export, skopeo copies into a registry and inspects; what skopeo and
umoci write (OCI layouts as directories and tars, docker-archives), we
import. Bad archives are refused with nothing committed: no blob, no ingest,
no image record.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockyard.errors import DockyardError, InvalidArgument
from dockyard.image.content import ContentStore
from dockyard.image.images import ImageStore
from dockyard.image.transfer import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    export_docker_archive,
    export_oci,
    import_archive,
)
from dockyard.image.unpack import unpack_to_dir
from dockyard.spec.image import MediaType, parse_manifest
from tests.image.registry_fixture import RegistryServer, plain_registry  # noqa: F401
from tests.images import ImageArchive, build_image_archive

NS = "default"


class Store:
    def __init__(self, root: Path) -> None:
        self.content = ContentStore(root / "content")
        self.images = ImageStore(str(root / "metadata.db"))

    def import_(self, src: Path, name: str | None = None) -> list[str]:
        return [i.name for i in import_archive(self.content, self.images, NS, str(src), name)]

    def empty(self) -> bool:
        return (
            not list(self.content.walk())
            and not self.content.statuses()
            and not self.images.list(NS)
        )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store")
    yield s
    s.images.close()


@pytest.fixture
def other(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "other")
    yield s
    s.images.close()


@pytest.fixture
def busybox(tmp_path: Path) -> ImageArchive:
    return build_image_archive(tmp_path / "busybox.tar")


def skopeo(*args: str) -> str:
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    p = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"skopeo {' '.join(args)}: {p.stderr}"
    return p.stdout


def check_runnable(store: Store, name: str, dest: Path) -> None:
    """The imported image unpacks into a rootfs with busybox in it."""
    img = store.images.get(NS, name)
    manifest = parse_manifest(store.content.read_bytes(img.target.digest), img.target.media_type)
    dest.mkdir()
    unpack_to_dir(store.content, manifest, str(dest))
    assert (dest / "bin" / "busybox").is_file()


# -- OCI layout ----------------------------------------------------------------------


@pytest.mark.parametrize("as_tar", [True, False], ids=["tar", "dir"])
def test_oci_round_trip(
    store: Store, other: Store, busybox: ImageArchive, tmp_path: Path, as_tar: bool
) -> None:
    assert store.import_(busybox.path) == [busybox.ref]
    out = tmp_path / ("out.tar" if as_tar else "out")
    export_oci(store.content, store.images, NS, [busybox.ref], str(out))
    if as_tar:
        with tarfile.open(out) as tar:
            index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
            names = set(tar.getnames())
    else:
        index = json.loads((out / "index.json").read_text())
        names = {str(p.relative_to(out)) for p in out.rglob("*")}
    (entry,) = index["manifests"]
    assert entry["digest"] == busybox.manifest_digest
    assert entry["annotations"] == {
        ANNOTATION_REF_NAME: "test",
        ANNOTATION_IMAGE_NAME: busybox.ref,
    }
    for d in (busybox.manifest_digest, busybox.config_digest, busybox.layer_digest):
        assert "blobs/sha256/" + d.split(":")[1] in names
    assert "oci-layout" in names

    assert other.import_(out) == [busybox.ref]
    assert other.images.get(NS, busybox.ref).target.digest == busybox.manifest_digest
    assert not other.content.statuses()
    check_runnable(other, busybox.ref, tmp_path / "rootfs")


def test_skopeo_copies_our_export_into_a_registry(
    store: Store,
    busybox: ImageArchive,
    plain_registry: RegistryServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    store.import_(busybox.path)
    layout, archive = tmp_path / "layout", tmp_path / "layout.tar"
    export_oci(store.content, store.images, NS, [busybox.ref], str(layout))
    export_oci(store.content, store.images, NS, [busybox.ref], str(archive))
    for src, tag in ((f"oci:{layout}:test", "dir"), (f"oci-archive:{archive}:test", "tar")):
        dest = f"docker://{plain_registry.host}/exported/busybox:{tag}"
        skopeo("copy", "--preserve-digests", "--dest-tls-verify=false", src, dest)
        info = json.loads(skopeo("inspect", "--tls-verify=false", dest))
        assert info["Digest"] == busybox.manifest_digest
        assert info["Layers"] == [busybox.layer_digest]


@pytest.fixture
def in_registry(busybox: ImageArchive, plain_registry: RegistryServer) -> str:  # noqa: F811
    ref = f"{plain_registry.host}/skopeo/busybox:1"
    skopeo(
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        f"oci-archive:{busybox.path}",
        f"docker://{ref}",
    )
    return ref


def test_import_what_skopeo_writes(
    store: Store, busybox: ImageArchive, in_registry: str, tmp_path: Path
) -> None:
    layout, archive = tmp_path / "skopeo-layout", tmp_path / "skopeo.tar"
    src = f"docker://{in_registry}"
    skopeo("copy", "--preserve-digests", "--src-tls-verify=false", src, f"oci:{layout}:v1")
    # without --preserve-digests skopeo compresses the layer: other digests, same config
    skopeo("copy", "--src-tls-verify=false", src, f"oci-archive:{archive}:v2")
    # skopeo annotates only the tag: the name must be given
    with pytest.raises(InvalidArgument, match="give a name"):
        store.import_(layout)
    assert store.empty()
    assert store.import_(layout, "example.com/from/layout:v1") == ["example.com/from/layout:v1"]
    assert store.import_(archive, "example.com/from/archive") == ["example.com/from/archive:latest"]
    layout_img = store.images.get(NS, "example.com/from/layout:v1")
    assert layout_img.target.digest == busybox.manifest_digest
    archive_img = store.images.get(NS, "example.com/from/archive:latest")
    manifest = parse_manifest(
        store.content.read_bytes(archive_img.target.digest), archive_img.target.media_type
    )
    assert manifest.config.digest == busybox.config_digest
    assert manifest.layers[0].media_type.endswith("gzip")
    check_runnable(store, "example.com/from/archive:latest", tmp_path / "rootfs2")
    check_runnable(store, "example.com/from/layout:v1", tmp_path / "rootfs")


def test_import_what_umoci_writes(store: Store, tmp_path: Path) -> None:
    if not shutil.which("umoci"):
        pytest.skip("umoci is not installed")
    layout = tmp_path / "umoci"
    payload = tmp_path / "hello.txt"
    payload.write_text("hello from umoci\n")

    def umoci(*args: str) -> None:
        p = subprocess.run(["umoci", *args], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"umoci {' '.join(args)}: {p.stderr}"

    # umoci 0.4.7's ``insert`` writes a truncated layer tar: build it by repacking
    bundle = tmp_path / "bundle"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", f"{layout}:empty")
    umoci("unpack", "--image", f"{layout}:empty", str(bundle))
    (bundle / "rootfs" / "etc").mkdir(exist_ok=True)
    shutil.copy(payload, bundle / "rootfs" / "etc" / "hello.txt")
    umoci("repack", "--image", f"{layout}:base", str(bundle))
    umoci("tag", "--image", f"{layout}:base", "second")
    umoci("rm", "--image", f"{layout}:empty")
    names = store.import_(layout, "example.com/umoci/img")
    assert sorted(names) == ["example.com/umoci/img:base", "example.com/umoci/img:second"]
    img = store.images.get(NS, "example.com/umoci/img:base")
    manifest = parse_manifest(store.content.read_bytes(img.target.digest), img.target.media_type)
    assert len(manifest.layers) == 1
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    unpack_to_dir(store.content, manifest, str(rootfs))
    assert (rootfs / "etc" / "hello.txt").read_text() == "hello from umoci\n"


# -- docker-archive ------------------------------------------------------------------


def test_docker_archive_round_trip(
    store: Store, other: Store, busybox: ImageArchive, tmp_path: Path
) -> None:
    store.import_(busybox.path)
    out = tmp_path / "saved.tar"
    export_docker_archive(store.content, store.images, NS, [busybox.ref], str(out))
    with tarfile.open(out) as tar:
        saved = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert "index.json" not in tar.getnames()
    hex_ = busybox.layer_digest.split(":")[1]
    assert saved == [
        {
            "Config": busybox.config_digest.split(":")[1] + ".json",
            "RepoTags": [busybox.docker_ref],
            "Layers": [hex_ + ".tar"],
        }
    ]
    # skopeo reads it too
    info = json.loads(skopeo("inspect", f"docker-archive:{out}"))
    assert info["Layers"] == [busybox.layer_digest]

    assert other.import_(out) == [busybox.ref]
    img = other.images.get(NS, busybox.ref)
    assert img.target.media_type == MediaType.DOCKER_MANIFEST
    manifest = parse_manifest(other.content.read_bytes(img.target.digest), img.target.media_type)
    assert manifest.config.digest == busybox.config_digest
    assert [d.digest for d in manifest.layers] == [busybox.layer_digest]
    check_runnable(other, busybox.ref, tmp_path / "rootfs")


def test_import_a_docker_archive_made_by_skopeo(
    store: Store, busybox: ImageArchive, in_registry: str, tmp_path: Path
) -> None:
    out = tmp_path / "skopeo-saved.tar"
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{in_registry}",
        f"docker-archive:{out}:example.com/saved/busybox:7",
    )
    assert store.import_(out) == ["example.com/saved/busybox:7"]
    img = store.images.get(NS, "example.com/saved/busybox:7")
    manifest = parse_manifest(store.content.read_bytes(img.target.digest), img.target.media_type)
    assert manifest.config.digest == busybox.config_digest
    check_runnable(store, "example.com/saved/busybox:7", tmp_path / "rootfs")


def test_docker_archive_with_gzip_layers(
    store: Store, busybox: ImageArchive, tmp_path: Path
) -> None:
    """Some tools write compressed layer tars: the diff ID is checked uncompressed."""
    import gzip

    with tarfile.open(busybox.path) as tar:
        layer = tar.extractfile("blobs/sha256/" + busybox.layer_digest.split(":")[1])
        config = tar.extractfile("blobs/sha256/" + busybox.config_digest.split(":")[1])
        assert layer and config
        layer_gz, config_data = gzip.compress(layer.read()), config.read()
    files = {
        "manifest.json": json.dumps(
            [{"Config": "c.json", "RepoTags": ["gz:1"], "Layers": ["l/layer.tar"]}]
        ).encode(),
        "c.json": config_data,
        "l/layer.tar": layer_gz,
    }
    out = tmp_path / "gz.tar"
    write_tar(out, files)
    assert store.import_(out) == ["docker.io/library/gz:1"]
    img = store.images.get(NS, "docker.io/library/gz:1")
    manifest = parse_manifest(store.content.read_bytes(img.target.digest), img.target.media_type)
    assert manifest.layers[0].media_type == MediaType.DOCKER_LAYER_GZIP
    assert manifest.layers[0].digest == "sha256:" + hashlib.sha256(layer_gz).hexdigest()


# -- bad input -------------------------------------------------------------------------


def write_tar(dest: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> None:
    with tarfile.open(dest, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)


def archive_files(busybox: ImageArchive) -> dict[str, bytes]:
    with tarfile.open(busybox.path) as tar:
        out = {}
        for m in tar.getmembers():
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


def _blob(d: str) -> str:
    return "blobs/sha256/" + d.split(":")[1]


Breakage = Callable[[dict[str, bytes], ImageArchive], None]


def _bad_digest(files: dict[str, bytes], b: ImageArchive) -> None:
    layer = _blob(b.layer_digest)
    files[layer] = files[layer][:-1] + b"x"


def _missing_blob(files: dict[str, bytes], b: ImageArchive) -> None:
    del files[_blob(b.layer_digest)]


def _missing_manifest(files: dict[str, bytes], b: ImageArchive) -> None:
    del files[_blob(b.manifest_digest)]


def _index_not_json(files: dict[str, bytes], b: ImageArchive) -> None:
    files["index.json"] = b"{not json"


def _index_bad_schema(files: dict[str, bytes], b: ImageArchive) -> None:
    index = json.loads(files["index.json"])
    index["schemaVersion"] = 1
    files["index.json"] = json.dumps(index).encode()


def _index_wrong_size(files: dict[str, bytes], b: ImageArchive) -> None:
    index = json.loads(files["index.json"])
    index["manifests"][0]["size"] += 1
    files["index.json"] = json.dumps(index).encode()


def _no_layout_file(files: dict[str, bytes], b: ImageArchive) -> None:
    del files["oci-layout"]


def _traversal(files: dict[str, bytes], b: ImageArchive) -> None:
    files["../escaped"] = b"out"


def _absolute(files: dict[str, bytes], b: ImageArchive) -> None:
    files["/tmp/absolute"] = b"out"


def _traversal_blob(files: dict[str, bytes], b: ImageArchive) -> None:
    files["blobs/sha256/../../../escaped"] = b"out"


BAD = [
    (_bad_digest, "digest mismatch"),
    (_missing_blob, "missing"),
    (_missing_manifest, "missing"),
    (_index_not_json, "not valid JSON"),
    (_index_bad_schema, "schemaVersion"),
    (_index_wrong_size, "bytes"),
    (_no_layout_file, "neither an OCI image layout|oci-layout"),
    (_traversal, "leaves the archive"),
    (_absolute, "absolute"),
    (_traversal_blob, "leaves the archive"),
]


@pytest.mark.parametrize("breakage,message", BAD, ids=[b.__name__.strip("_") for b, _ in BAD])
@pytest.mark.parametrize("as_dir", [False, True], ids=["tar", "dir"])
def test_bad_oci_input_is_refused_and_nothing_committed(
    store: Store,
    busybox: ImageArchive,
    tmp_path: Path,
    breakage: Breakage,
    message: str,
    as_dir: bool,
) -> None:
    files = archive_files(busybox)
    del files["manifest.json"]  # the OCI layout alone
    breakage(files, busybox)
    if as_dir:
        if any(n.startswith("/") or ".." in n.split("/") for n in files):
            pytest.skip("a directory cannot hold such names")
        src = tmp_path / "bad"
        for name, data in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
    else:
        src = tmp_path / "bad.tar"
        write_tar(src, files)
    with pytest.raises(DockyardError, match=message) as e:
        store.import_(src)
    if breakage in (_missing_blob, _missing_manifest):
        assert "sha256:" in str(e.value)  # names the blob
    assert store.empty()
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("as_dir", [False, True], ids=["tar", "dir"])
def test_import_a_layout_with_a_sha512_layer(
    store: Store, busybox: ImageArchive, tmp_path: Path, as_dir: bool
) -> None:
    """A blob named ``blobs/sha512/<hex>`` is checked and stored under its sha512 digest."""
    files = archive_files(busybox)
    del files["manifest.json"]  # the OCI layout alone
    layer = files.pop(_blob(busybox.layer_digest))
    layer_digest = "sha512:" + hashlib.sha512(layer).hexdigest()
    files["blobs/sha512/" + layer_digest.split(":")[1]] = layer
    manifest = json.loads(files.pop(_blob(busybox.manifest_digest)))
    (entry,) = [d for d in manifest["layers"] if d["digest"] == busybox.layer_digest]
    entry["digest"] = layer_digest
    data = json.dumps(manifest).encode()
    manifest_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    files[_blob(manifest_digest)] = data
    index = json.loads(files["index.json"])
    index["manifests"][0].update(digest=manifest_digest, size=len(data))
    files["index.json"] = json.dumps(index).encode()
    src = tmp_path / "sha512.tar"
    if as_dir:
        src = tmp_path / "sha512"
        for name, content in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(content)
    else:
        write_tar(src, files)
    assert store.import_(src) == [busybox.ref]
    assert store.content.read_bytes(layer_digest) == layer
    assert store.images.get(NS, busybox.ref).target.digest == manifest_digest
    assert not store.content.statuses()


def test_links_out_of_the_archive_are_refused(
    store: Store, busybox: ImageArchive, tmp_path: Path
) -> None:
    files = archive_files(busybox)
    del files["manifest.json"]
    layer = _blob(busybox.layer_digest)
    del files[layer]
    src = tmp_path / "link.tar"
    write_tar(src, files, links={layer: "../../../../etc/passwd"})
    with pytest.raises(InvalidArgument, match="leaves the archive"):
        store.import_(src)
    assert store.empty()


def test_bad_docker_archive_is_refused(store: Store, busybox: ImageArchive, tmp_path: Path) -> None:
    files = archive_files(busybox)
    for name in ("index.json", "oci-layout"):
        del files[name]
    # a layer that is not what the config's diff ID says
    layer = _blob(busybox.layer_digest)
    files["layer.tar"] = files.pop(layer)[:-1] + b"x"
    saved = json.loads(files["manifest.json"])
    saved[0]["Layers"] = ["layer.tar"]
    files["manifest.json"] = json.dumps(saved).encode()
    src = tmp_path / "bad-docker.tar"
    write_tar(src, files)
    with pytest.raises(InvalidArgument, match="diff ID"):
        store.import_(src)
    assert store.empty()


@pytest.mark.parametrize("out_name", ["out.tar", "out"])
def test_export_of_an_incomplete_image_fails_and_leaves_nothing(
    store: Store, busybox: ImageArchive, tmp_path: Path, out_name: str
) -> None:
    store.import_(busybox.path)
    store.content.delete(busybox.layer_digest)
    out = tmp_path / out_name
    with pytest.raises(DockyardError, match=busybox.layer_digest):
        export_oci(store.content, store.images, NS, [busybox.ref], str(out))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]
