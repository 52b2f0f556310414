"""The registry client against a real registry (Debian's docker-registry on 127.0.0.1).

Pull and push as the OCI distribution spec describes them, TLS with htpasswd,
Docker token authentication, resume after a dropped connection, digest
checks, and skopeo reading and writing the same registry.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockyard.errors import InvalidArgument, NotFound, Unsupported
from dockyard.image.registry import BlobFetch, Credentials, Registry, RegistryError, Unauthorized
from dockyard.image.registry.auth import load_credentials, parse_challenges
from dockyard.image.registry.client import _next_link, is_local
from tests.image.registry_fixture import (  # noqa: F401 -- fixtures
    PASSWORD,
    USER,
    FaultProxy,
    RegistryServer,
    TokenRegistry,
    fault_proxy,
    plain_registry,
    tls_registry,
    token_registry,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    layer: bytes
    config: bytes
    manifest: bytes

    @property
    def blobs(self) -> dict[str, bytes]:
        return {sha256(self.layer): self.layer, sha256(self.config): self.config}

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


def make_image(text: str = "hello", *, media_type: bool = True) -> Image:
    """A one-layer OCI image built by hand: a tar.gz layer, a config, a manifest."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(raw.getvalue())]},
        }
    ).encode()
    manifest: dict[str, object] = {"schemaVersion": 2}
    if media_type:
        manifest["mediaType"] = OCI_MANIFEST
    manifest["config"] = {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)}
    manifest["layers"] = [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}]
    return Image(layer, config, json.dumps(manifest).encode())


def push_image(reg: Registry, repo: str, tag: str, image: Image) -> str:
    for digest, data in image.blobs.items():
        reg.push_blob(repo, digest, len(data), data)
    return reg.push_manifest(repo, tag, image.manifest, OCI_MANIFEST)


def fetch(reg: Registry, repo: str, digest: str, size: int) -> bytes:
    sink = io.BytesIO()
    reg.fetch_blob(repo, digest, size, sink)
    return sink.getvalue()


@pytest.fixture
def plain(plain_registry: RegistryServer) -> Iterator[Registry]:  # noqa: F811
    with Registry(plain_registry.host, config_path=None) as reg:
        yield reg


# -- no registry needed ---------------------------------------------------------------


def test_parse_challenges() -> None:
    got = parse_challenges(
        [
            'Bearer realm="https://auth.example/token",service="reg",'
            'scope="repository:a/b:pull,push"',
            'Basic realm="x y"',
        ]
    )
    assert got[0].scheme == "bearer"
    assert got[0].params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
    }
    assert got[1].scheme == "basic" and got[1].params == {"realm": "x y"}


def test_docker_config_credentials(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    auth = base64.b64encode(b"me:pw:with:colons").decode()
    cfg.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": auth},
                    "reg.example:5000": {"auth": auth},
                    "http://other.example/v2/": {"username": "u", "password": "p"},
                },
                "credHelpers": {"helped.example": "pass"},
            }
        )
    )
    assert load_credentials("docker.io", str(cfg)) == Credentials("me", "pw:with:colons")
    assert load_credentials("reg.example:5000", str(cfg)) == Credentials("me", "pw:with:colons")
    assert load_credentials("other.example", str(cfg)) == Credentials("u", "p")
    assert load_credentials("nowhere.example", str(cfg)) is None
    with pytest.raises(Unsupported, match="docker-credential-pass"):
        load_credentials("helped.example", str(cfg))
    cfg.write_text(json.dumps({"auths": {}, "credsStore": "desktop"}))
    with pytest.raises(Unsupported, match="docker-credential-desktop"):
        load_credentials("reg.example:5000", str(cfg))
    assert load_credentials("x", str(tmp_path / "missing.json")) is None


def test_docker_hub_names() -> None:
    reg = Registry("docker.io", config_path=None)
    assert reg.endpoint == "registry-1.docker.io"
    assert reg.repository("busybox") == "library/busybox"
    assert reg.repository("user/app") == "user/app"
    with pytest.raises(InvalidArgument):
        reg.repository("Upper/Case")
    with pytest.raises(InvalidArgument):
        reg.repository("../escape")


def test_helpers() -> None:
    assert is_local("localhost:5000") and is_local("127.0.0.1") and is_local("[::1]:5000")
    assert not is_local("registry.example:5000")
    link = '</v2/a/tags/list?last=b&n=2>; rel="next"'
    assert (
        _next_link(link, "http://h:1/v2/a/tags/list?n=2") == "http://h:1/v2/a/tags/list?last=b&n=2"
    )
    assert _next_link("", "http://h") == ""


# -- plain HTTP registry ----------------------------------------------------------------


def test_push_and_pull_by_tag_and_digest(plain: Registry) -> None:
    image = make_image("pull me")
    digest = push_image(plain, "test/simple", "v1", image)
    assert digest == image.digest
    assert plain.base_url.startswith("http://")

    resolved = plain.resolve("test/simple", "v1")
    assert (resolved.media_type, resolved.digest, resolved.size) == (
        OCI_MANIFEST,
        image.digest,
        len(image.manifest),
    )
    assert plain.resolve("test/simple", image.digest) == resolved
    for ref in ("v1", image.digest):
        assert plain.fetch_manifest("test/simple", ref) == (image.manifest, OCI_MANIFEST)
    for blob_digest, data in image.blobs.items():
        assert fetch(plain, "test/simple", blob_digest, len(data)) == data
        assert plain.blob_exists("test/simple", blob_digest)
    assert not plain.blob_exists("test/simple", sha256(b"never pushed"))
    assert plain.push_blob("test/simple", sha256(image.layer), len(image.layer), b"") == "exists"


def test_chunked_upload(plain: Registry) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)
    digest = sha256(data)
    plain.upload_blob("test/chunked", digest, len(data), io.BytesIO(data), chunk_size=1 << 20)
    assert fetch(plain, "test/chunked", digest, len(data)) == data


def test_monolithic_upload_streams_a_file(plain: Registry, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    path = tmp_path / "blob"
    path.write_bytes(data)
    with open(path, "rb") as f:
        plain.upload_blob("test/stream", sha256(data), len(data), f)
    assert fetch(plain, "test/stream", sha256(data), len(data)) == data


def test_upload_of_wrong_digest_is_refused(plain: Registry) -> None:
    data = b"some bytes"
    with pytest.raises(InvalidArgument, match="digest"):
        plain.upload_blob("test/wrong", sha256(b"other"), len(data), data)
    # streamed: the registry checks it
    with pytest.raises(InvalidArgument, match="digest"):
        plain.upload_blob("test/wrong", sha256(b"other"), len(data), io.BytesIO(data))
    with pytest.raises(InvalidArgument, match="digest"):
        plain.upload_blob("test/wrong", sha256(b"other"), len(data), io.BytesIO(data), chunk_size=4)
    assert not plain.blob_exists("test/wrong", sha256(b"other"))


def test_cross_repository_mount(plain: Registry) -> None:
    data = os.urandom(4096)
    digest = sha256(data)
    plain.upload_blob("test/mount-src", digest, len(data), data)
    assert plain.mount_blob("test/mount-dst", digest, "test/mount-src")
    assert plain.blob_exists("test/mount-dst", digest)
    missing = sha256(b"not anywhere")
    assert not plain.mount_blob("test/mount-dst", missing, "test/mount-src")
    assert plain.push_blob(
        "test/mount-dst2", digest, len(data), b"", mount_from=["test/mount-src"]
    ) == ("mounted")


def test_tags_list_with_pagination(plain: Registry) -> None:
    image = make_image("tags")
    push_image(plain, "test/tags", "t0", image)
    for i in range(1, 5):
        plain.push_manifest("test/tags", f"t{i}", image.manifest, OCI_MANIFEST)
    assert sorted(plain.tags("test/tags")) == ["t0", "t1", "t2", "t3", "t4"]
    assert sorted(plain.tags("test/tags", page_size=2)) == ["t0", "t1", "t2", "t3", "t4"]


def test_manifest_without_media_type_goes_by_content_type(plain: Registry) -> None:
    image = make_image("no media type", media_type=False)
    assert b"mediaType" not in image.manifest.split(b'"config"')[0]
    push_image(plain, "test/nomediatype", "v1", image)
    data, media_type = plain.fetch_manifest("test/nomediatype", "v1")
    assert data == image.manifest
    assert media_type == OCI_MANIFEST
    assert plain.resolve("test/nomediatype", "v1").media_type == OCI_MANIFEST


def test_errors_name_registry_repo_and_ref(plain: Registry) -> None:
    with pytest.raises(NotFound, match=rf"{plain.host}/test/simple:nope: manifest unknown"):
        plain.fetch_manifest("test/simple", "nope")
    with pytest.raises(NotFound, match="test/nothing:latest"):
        plain.resolve("test/nothing", "latest")
    with pytest.raises(NotFound, match="blob unknown"):
        fetch(plain, "test/simple", sha256(b"missing"), 7)
    image = make_image("blobs never pushed")
    with pytest.raises(InvalidArgument, match=r"push manifest .*test/orphan:v1"):
        plain.push_manifest("test/orphan", "v1", image.manifest, OCI_MANIFEST)
    with pytest.raises(InvalidArgument, match="invalid tag or digest"):
        plain.fetch_manifest("test/simple", "../../etc")
    with pytest.raises(InvalidArgument, match="content has digest"):
        plain.push_manifest("test/simple", sha256(b"x"), image.manifest, OCI_MANIFEST)


def test_parallel_downloads_with_progress(plain: Registry) -> None:
    blobs = [os.urandom(300_000 + i) for i in range(6)]
    for data in blobs:
        plain.upload_blob("test/parallel", sha256(data), len(data), data)
    sinks = [io.BytesIO() for _ in blobs]
    final: dict[str, int] = {}
    threads: set[str] = set()
    lock = threading.Lock()

    def progress(digest: str, done: int, total: int) -> None:
        with lock:
            threads.add(threading.current_thread().name)
            if done == total:
                final[digest] = total

    items = [BlobFetch(sha256(d), len(d), s) for d, s in zip(blobs, sinks, strict=True)]
    plain.fetch_blobs("test/parallel", items, progress=progress)
    assert [s.getvalue() for s in sinks] == blobs
    assert final == {sha256(d): len(d) for d in blobs}
    assert 1 < len(threads) <= 3

    broken = [*items[:2], BlobFetch(sha256(b"missing"), 7, io.BytesIO())]
    with pytest.raises(NotFound):
        plain.fetch_blobs("test/parallel", broken, parallel=2)


# -- faults: dropped connections, corrupt blobs, redirects --------------------------------


def test_resume_with_range_after_a_dropped_connection(
    plain: Registry,
    fault_proxy: FaultProxy,  # noqa: F811
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = sha256(data)
    plain.upload_blob("test/resume", digest, len(data), data)
    fault_proxy.cut[digest] = 1024 * 1024 + 5
    with Registry(fault_proxy.host, config_path=None) as reg:
        assert fetch(reg, "test/resume", digest, len(data)) == data
    ranges = [r for (_, method, path, r, _) in fault_proxy.seen if digest in path]
    assert ranges == ["", f"bytes={1024 * 1024 + 5}-"]


def test_resume_from_an_offset(plain: Registry) -> None:
    data = os.urandom(100_000)
    digest = sha256(data)
    plain.upload_blob("test/offset", digest, len(data), data)
    sink = io.BytesIO()
    sink.write(data[:40_000])
    plain.fetch_blob("test/offset", digest, len(data), sink, offset=40_000)
    assert sink.getvalue() == data


def test_corrupt_blob_is_detected(plain: Registry, fault_proxy: FaultProxy) -> None:  # noqa: F811
    data = os.urandom(200_000)
    digest = sha256(data)
    plain.upload_blob("test/corrupt", digest, len(data), data)
    fault_proxy.corrupt.add(digest)
    with (
        Registry(fault_proxy.host, config_path=None) as reg,
        pytest.raises(InvalidArgument, match=f"test/corrupt@{digest}: content has digest"),
    ):
        fetch(reg, "test/corrupt", digest, len(data))


def test_corrupt_manifest_by_digest_is_detected(
    plain: Registry,
    fault_proxy: FaultProxy,  # noqa: F811
) -> None:
    image = make_image("corrupt manifest")
    push_image(plain, "test/corrupt-manifest", "v1", image)
    fault_proxy.corrupt.add(image.digest)
    with (
        Registry(fault_proxy.host, config_path=None) as reg,
        pytest.raises(InvalidArgument, match="content has digest"),
    ):
        reg.fetch_manifest("test/corrupt-manifest", image.digest)


def test_blob_size_larger_than_descriptor_is_refused(plain: Registry) -> None:
    data = os.urandom(1000)
    plain.upload_blob("test/size", sha256(data), len(data), data)
    with pytest.raises(InvalidArgument, match="more than the expected 999 bytes"):
        fetch(plain, "test/size", sha256(data), 999)


def test_redirect_to_another_host_gets_no_credentials(
    token_registry: TokenRegistry,  # noqa: F811
) -> None:
    proxy = FaultProxy(token_registry.registry.host)
    try:
        data = os.urandom(50_000)
        digest = sha256(data)
        with Registry(proxy.host, credentials=(USER, PASSWORD), config_path=None) as reg:
            reg.upload_blob("test/redirect", digest, len(data), data)
            proxy.redirect = True
            assert fetch(reg, "test/redirect", digest, len(data)) == data
        hits = [(host, auth) for (host, method, path, _, auth) in proxy.seen if digest in path]
        gets = hits[-2:]
        assert gets[0][0].startswith("127.0.0.1") and gets[0][1].startswith("Bearer ")
        assert gets[1][0].startswith("localhost") and gets[1][1] == ""
    finally:
        proxy.close()


# -- TLS + htpasswd ------------------------------------------------------------------------


def test_tls_with_basic_auth(tls_registry: RegistryServer) -> None:  # noqa: F811
    image = make_image("over tls")
    with Registry(
        tls_registry.host,
        ca_file=tls_registry.ca_file,
        credentials=(USER, PASSWORD),
        config_path=None,
    ) as reg:
        push_image(reg, "test/tls", "v1", image)
        assert reg.base_url.startswith("https://")
        assert reg.fetch_manifest("test/tls", "v1") == (image.manifest, OCI_MANIFEST)
        assert fetch(reg, "test/tls", sha256(image.layer), len(image.layer)) == image.layer


def test_tls_wrong_or_missing_credentials(tls_registry: RegistryServer) -> None:  # noqa: F811
    wrong = Registry(
        tls_registry.host,
        ca_file=tls_registry.ca_file,
        credentials=(USER, "wrong"),
        config_path=None,
    )
    with wrong, pytest.raises(Unauthorized, match=rf"{tls_registry.host}/test/tls:v1"):
        wrong.fetch_manifest("test/tls", "v1")
    anonymous = Registry(tls_registry.host, ca_file=tls_registry.ca_file, config_path=None)
    with anonymous, pytest.raises(Unauthorized, match="no credentials"):
        anonymous.tags("test/tls")


def test_tls_credentials_from_docker_config(
    tls_registry: RegistryServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "config.json"
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    cfg.write_text(json.dumps({"auths": {tls_registry.host: {"auth": auth}}}))
    image = make_image("config json")
    with Registry(tls_registry.host, ca_file=tls_registry.ca_file, config_path=str(cfg)) as reg:
        push_image(reg, "test/config-json", "v1", image)
        assert "v1" in reg.tags("test/config-json")


def test_tls_unknown_ca_is_refused(tls_registry: RegistryServer) -> None:  # noqa: F811
    with (
        Registry(tls_registry.host, config_path=None) as reg,
        pytest.raises(RegistryError, match="tls: certificate verify failed"),
    ):
        reg.ping()


def test_tls_insecure_skips_verification(tls_registry: RegistryServer) -> None:  # noqa: F811
    with Registry(
        tls_registry.host, insecure=True, credentials=(USER, PASSWORD), config_path=None
    ) as reg:
        reg.ping()
        assert reg.base_url.startswith("https://")


# -- token authentication -----------------------------------------------------------------


def test_token_auth_push_and_pull(token_registry: TokenRegistry) -> None:  # noqa: F811
    tokens = token_registry.tokens
    host = token_registry.registry.host
    image = make_image("token")
    issued = tokens.issued
    with Registry(host, credentials=(USER, PASSWORD), config_path=None) as reg:
        push_image(reg, "test/token", "v1", image)
        assert reg.fetch_manifest("test/token", "v1") == (image.manifest, OCI_MANIFEST)
    assert any(q.get("offline_token") == ["true"] and q.get("account") == [USER]
               for q in tokens.requests)  # fmt: skip
    # one token per scope, not one per request
    assert tokens.issued - issued <= 2

    with Registry(host, config_path=None) as anonymous:
        assert anonymous.fetch_manifest("test/token", "v1")[0] == image.manifest
        assert fetch(anonymous, "test/token", sha256(image.config), len(image.config)) == (
            image.config
        )
        with pytest.raises(Unauthorized, match="test/token2"):
            push_image(anonymous, "test/token2", "v1", image)


def test_token_auth_wrong_password(token_registry: TokenRegistry) -> None:  # noqa: F811
    host = token_registry.registry.host
    with (
        Registry(host, credentials=(USER, "wrong"), config_path=None) as reg,
        pytest.raises(Unauthorized, match=f"as '{USER}': refused"),
    ):
        reg.fetch_manifest("test/token", "v1")


# -- skopeo -------------------------------------------------------------------------------


def write_oci_layout(d: Path, image: Image, tag: str) -> None:
    blobs = d / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for data in (image.layer, image.config, image.manifest):
        (blobs / sha256(data).split(":")[1]).write_bytes(data)
    (d / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": image.digest,
                "size": len(image.manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (d / "index.json").write_text(json.dumps(index))


def test_skopeo_pushes_we_pull(plain: Registry, tmp_path: Path) -> None:
    skopeo = shutil.which("skopeo")
    if not skopeo:
        pytest.skip("skopeo is not installed")
    image = make_image("from skopeo")
    write_oci_layout(tmp_path / "layout", image, "v1")
    dest = f"docker://{plain.host}/test/skopeo:v1"
    subprocess.run(
        [skopeo, "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:v1", dest],
        check=True,
        capture_output=True,
    )
    data, media_type = plain.fetch_manifest("test/skopeo", "v1")
    assert media_type == OCI_MANIFEST
    manifest = json.loads(data)
    layer = manifest["layers"][0]
    assert layer["digest"] == sha256(image.layer)
    assert fetch(plain, "test/skopeo", layer["digest"], layer["size"]) == image.layer
    config = manifest["config"]
    assert fetch(plain, "test/skopeo", config["digest"], config["size"]) == image.config


def test_skopeo_reads_what_we_push(plain: Registry) -> None:
    skopeo = shutil.which("skopeo")
    if not skopeo:
        pytest.skip("skopeo is not installed")
    image = make_image("to skopeo")
    push_image(plain, "test/to-skopeo", "v1", image)
    out = subprocess.run(
        [
            skopeo,
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{plain.host}/test/to-skopeo:v1",
        ],
        check=True,
        capture_output=True,
    ).stdout
    assert out == image.manifest


# -- into the content store ------------------------------------------------------------


def test_into_the_content_store_resumes_and_never_commits_bad_bytes(
    plain: Registry,
    fault_proxy: FaultProxy,  # noqa: F811
    tmp_path: Path,
) -> None:
    from dockyard.image.content import ContentStore

    store = ContentStore(tmp_path / "content")
    data = os.urandom(2 * 1024 * 1024 + 3)
    digest = sha256(data)
    plain.upload_blob("test/store", digest, len(data), data)

    # the connection drops and the client gives up: the ingest keeps what came
    fault_proxy.cut[digest] = 700_000
    with Registry(fault_proxy.host, config_path=None, retries=0) as reg:
        with (
            store.writer(f"layer-{digest}", expected=digest, total=len(data)) as w,
            pytest.raises(RegistryError, match="connection lost at byte 700000"),
        ):
            reg.fetch_blob("test/store", digest, len(data), w)
        assert not store.exists(digest)
        # the next pull goes on from the ingest's offset, and the commit verifies
        with store.writer(f"layer-{digest}", expected=digest, total=len(data)) as w:
            assert w.offset == 700_000
            reg.fetch_blob("test/store", digest, len(data), w, offset=w.offset)
            w.commit(len(data), digest)
    assert store.read_bytes(digest) == data
    assert fault_proxy.seen[-1][3] == "bytes=700000-"

    # a corrupt blob is refused before any commit
    other = os.urandom(300_000)
    plain.upload_blob("test/store", sha256(other), len(other), other)
    fault_proxy.corrupt.add(sha256(other))
    with (
        Registry(fault_proxy.host, config_path=None) as reg,
        store.writer(f"layer-{sha256(other)}", expected=sha256(other)) as w,
        pytest.raises(InvalidArgument, match="content has digest"),
    ):
        reg.fetch_blob("test/store", sha256(other), len(other), w)
    assert not store.exists(sha256(other))


def test_resolve_falls_back_to_get_without_head(
    plain: Registry,
    fault_proxy: FaultProxy,  # noqa: F811
) -> None:
    image = make_image("no head")
    push_image(plain, "test/nohead", "v1", image)
    fault_proxy.no_head = True
    with Registry(fault_proxy.host, config_path=None) as reg:
        resolved = reg.resolve("test/nohead", "v1")
    assert (resolved.media_type, resolved.digest, resolved.size) == (
        OCI_MANIFEST,
        image.digest,
        len(image.manifest),
    )
    assert [m for (_, m, path, _, _) in fault_proxy.seen if "/manifests/" in path] == [
        "HEAD",
        "GET",
    ]


def test_token_refused_by_the_registry_is_fetched_again(
    token_registry: TokenRegistry,  # noqa: F811
) -> None:
    host = token_registry.registry.host
    image = make_image("refused token")
    with Registry(host, credentials=(USER, PASSWORD), config_path=None) as reg:
        push_image(reg, "test/refused", "v1", image)
        # a cached token the registry no longer accepts (expired, revoked)
        reg._tokens.put(["repository:test/refused:pull"], "not.a.token", 300)
        issued = token_registry.tokens.issued
        assert reg.tags("test/refused") == ["v1"]
        assert token_registry.tokens.issued == issued + 1
