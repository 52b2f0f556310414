"""Image spec types: digests, descriptors, manifest/index/config validation, media types, platforms.

Written from opencontainers/image-spec (descriptor.md, manifest.md,
image-index.md, config.md) and containerd's platform matching.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from dockyard.errors import InvalidArgument, NotFound
from dockyard.spec.image import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    Digester,
    Index,
    MediaType,
    Platform,
    compatible_platforms,
    digest_of,
    host_platform,
    layer_compression,
    media_type_of,
    normalize_platform,
    parse_digest,
    parse_image_config,
    parse_index,
    parse_manifest,
    parse_platform,
    platform_matches,
    select_manifest,
)

H64 = "a" * 64
H128 = "b" * 128
EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# ---------------------------------------------------------------------------
# digests

GOOD_DIGESTS = {
    f"sha256:{H64}": ("sha256", H64),
    f"sha512:{H128}": ("sha512", H128),
    EMPTY_SHA256: ("sha256", EMPTY_SHA256[7:]),
}

BAD_DIGESTS = {
    "empty": ("", "want <algorithm>:<hex>"),
    "no colon": (H64, "want <algorithm>:<hex>"),
    "no hex": ("sha256:", "want <algorithm>:<hex>"),
    "no algorithm": (f":{H64}", "want <algorithm>:<hex>"),
    "short": ("sha256:abc", "wants 64 hex characters, got 3"),
    "long": (f"sha256:{H64}0", "wants 64 hex characters, got 65"),
    "sha512 short": (f"sha512:{H64}", "wants 128 hex characters, got 64"),
    "uppercase hex": (f"sha256:{'A' * 64}", "not lowercase hex"),
    "non-hex": (f"sha256:{'g' * 64}", "not lowercase hex"),
    "unknown algorithm": (f"md5:{'a' * 32}", "unsupported digest algorithm 'md5'"),
    "uppercase algorithm": (f"SHA256:{H64}", "bad algorithm"),
    "bad separator": (f"sha256+:{H64}", "bad algorithm"),
    "space": (f"sha256: {H64[1:]}", "not lowercase hex"),
}


@pytest.mark.parametrize("digest", sorted(GOOD_DIGESTS))
def test_parse_digest_good(digest: str) -> None:
    assert parse_digest(digest) == GOOD_DIGESTS[digest]


@pytest.mark.parametrize("case", sorted(BAD_DIGESTS))
def test_parse_digest_bad(case: str) -> None:
    digest, message = BAD_DIGESTS[case]
    with pytest.raises(InvalidArgument, match=r"layers\.digest: ") as e:
        parse_digest(digest, "layers.digest")
    assert message in str(e.value)


def test_parse_digest_not_a_string() -> None:
    with pytest.raises(InvalidArgument, match="must be a string"):
        parse_digest(42)


def test_digester_and_digest_of() -> None:
    assert digest_of(b"") == EMPTY_SHA256
    d = Digester("sha512")
    d.update(b"hel")
    clone = d.copy()
    d.update(b"lo")
    assert d.digest() == digest_of(b"hello", "sha512")
    assert clone.digest() == digest_of(b"hel", "sha512")
    with pytest.raises(InvalidArgument, match="unsupported digest algorithm 'md5'"):
        Digester("md5")


# ---------------------------------------------------------------------------
# descriptors


def test_descriptor_round_trip() -> None:
    obj = {
        "mediaType": MediaType.OCI_MANIFEST,
        "digest": f"sha256:{H64}",
        "size": 7682,
        "urls": ["https://example.com/blob"],
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
        "platform": {
            "architecture": "arm64",
            "os": "linux",
            "variant": "v8",
            "os.features": ["f"],
            "os.version": "1",
        },
        "artifactType": "application/x-thing",
    }
    d = Descriptor.from_json(obj)
    assert d.platform == Platform("linux", "arm64", "v8", "1", ("f",))
    assert d.to_json() == obj
    assert Descriptor.from_json(d.to_json()) == d
    hash(d)  # frozen and usable as a key


def test_descriptor_embedded_data() -> None:
    d = Descriptor.from_json(
        {"mediaType": MediaType.OCI_EMPTY, "digest": digest_of(b"{}"), "size": 2, "data": "e30="}
    )
    assert d.data == b"{}"
    with pytest.raises(InvalidArgument, match=r"descriptor\.data: does not match digest"):
        Descriptor.from_json(
            {"mediaType": MediaType.OCI_EMPTY, "digest": EMPTY_SHA256, "size": 2, "data": "e30="}
        )


BAD_DESCRIPTORS: dict[str, tuple[Any, str]] = {
    "not an object": ([], "descriptor: want an object, got array"),
    "no mediaType": ({"digest": EMPTY_SHA256, "size": 0}, "descriptor.mediaType: required"),
    "mediaType number": (
        {"mediaType": 1, "digest": EMPTY_SHA256, "size": 0},
        "descriptor.mediaType: want a string, got int",
    ),
    "no digest": ({"mediaType": "x", "size": 0}, "descriptor.digest: must be a string"),
    "bad digest": (
        {"mediaType": "x", "digest": "sha256:zz", "size": 0},
        "descriptor.digest: invalid digest",
    ),
    "no size": ({"mediaType": "x", "digest": EMPTY_SHA256}, "descriptor.size: required"),
    "negative size": (
        {"mediaType": "x", "digest": EMPTY_SHA256, "size": -1},
        "descriptor.size: want a non-negative integer",
    ),
    "size string": (
        {"mediaType": "x", "digest": EMPTY_SHA256, "size": "1"},
        "descriptor.size: want a non-negative integer",
    ),
    "urls not strings": (
        {"mediaType": "x", "digest": EMPTY_SHA256, "size": 0, "urls": [1]},
        "descriptor.urls[0]: want a string",
    ),
    "annotation value": (
        {"mediaType": "x", "digest": EMPTY_SHA256, "size": 0, "annotations": {"a": 1}},
        "descriptor.annotations.a: want a string",
    ),
    "platform without os": (
        {"mediaType": "x", "digest": EMPTY_SHA256, "size": 0, "platform": {"architecture": "a"}},
        "descriptor.platform.os: required",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_DESCRIPTORS))
def test_descriptor_bad(case: str) -> None:
    obj, message = BAD_DESCRIPTORS[case]
    with pytest.raises(InvalidArgument) as e:
        Descriptor.from_json(obj)
    assert message in str(e.value)


# ---------------------------------------------------------------------------
# manifests, indexes, configs

CONFIG = {"mediaType": MediaType.OCI_CONFIG, "digest": f"sha256:{'c' * 64}", "size": 100}
LAYER = {"mediaType": MediaType.OCI_LAYER_GZIP, "digest": f"sha256:{'d' * 64}", "size": 2000}


def manifest(**over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST,
        "config": CONFIG,
        "layers": [LAYER],
    }
    m.update(over)
    return {k: v for k, v in m.items() if v is not None}


def test_manifest_good() -> None:
    m = parse_manifest(json.dumps(manifest()).encode())
    assert m.media_type == MediaType.OCI_MANIFEST
    assert m.config.digest == CONFIG["digest"]
    assert [layer.size for layer in m.layers] == [2000]
    # no mediaType field: the caller's media type, else OCI
    assert parse_manifest(manifest(mediaType=None)).media_type == MediaType.OCI_MANIFEST
    docker = manifest(
        mediaType=None, config=dict(CONFIG, mediaType=MediaType.DOCKER_CONFIG), layers=[]
    )
    assert parse_manifest(docker, MediaType.DOCKER_MANIFEST).media_type == MediaType.DOCKER_MANIFEST


BAD_MANIFESTS: dict[str, tuple[Any, str]] = {
    "not json": (b"{", "manifest: not valid JSON"),
    "array": (b"[]", "manifest: want a JSON object, got array"),
    "no schemaVersion": (manifest(schemaVersion=None), "manifest: schemaVersion: required"),
    "schema 1": (manifest(schemaVersion=1), "schema 1 manifests are not supported"),
    "schema 3": (manifest(schemaVersion=3), "manifest: schemaVersion: want 2, got 3"),
    "wrong mediaType": (
        manifest(mediaType=MediaType.OCI_INDEX),
        "manifest: mediaType: 'application/vnd.oci.image.index.v1+json' is not one of",
    ),
    "no config": (manifest(config=None), "manifest: config: required"),
    "config not object": (manifest(config="x"), "manifest: config: want an object, got string"),
    "config bad digest": (
        manifest(config=dict(CONFIG, digest="sha256:1")),
        "manifest: config.digest: invalid digest",
    ),
    "no layers": (manifest(layers=None), "manifest: layers: required"),
    "layers object": (manifest(layers={}), "manifest: layers: want an array, got object"),
    "layer without size": (
        manifest(layers=[LAYER, {k: v for k, v in LAYER.items() if k != "size"}]),
        "manifest: layers[1].size: required",
    ),
    "an index": ({"schemaVersion": 2, "manifests": []}, "this is an index, not a manifest"),
    "annotations": (
        manifest(annotations={"a": ["b"]}),
        "manifest: annotations.a: want a string, got array",
    ),
    "oversized config": (
        manifest(config=dict(CONFIG, size=5 << 20)),
        "is larger than the 4194304 byte limit",
    ),
    "docker with oci config": (
        manifest(mediaType=MediaType.DOCKER_MANIFEST),
        "manifest: config.mediaType: want 'application/vnd.docker.container.image.v1+json'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_manifest_bad(case: str) -> None:
    doc, message = BAD_MANIFESTS[case]
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(InvalidArgument) as e:
        parse_manifest(data)
    assert message in str(e.value)


def test_manifest_media_type_disagrees_with_descriptor() -> None:
    with pytest.raises(InvalidArgument, match="does not match the descriptor's"):
        parse_manifest(manifest(), MediaType.DOCKER_MANIFEST)


def test_oversized_manifest_refused_before_parsing() -> None:
    data = b" " * (MAX_MANIFEST_SIZE + 1)
    with pytest.raises(InvalidArgument, match="larger than the 4194304 byte limit"):
        parse_manifest(data)
    with pytest.raises(InvalidArgument, match="larger than the 4194304 byte limit"):
        parse_index(data)
    with pytest.raises(InvalidArgument, match="larger than the 4194304 byte limit"):
        parse_image_config(data)


def entry(arch: str, variant: str = "", os: str = "linux", n: str = "1") -> dict[str, Any]:
    p = {"os": os, "architecture": arch}
    if variant:
        p["variant"] = variant
    return {
        "mediaType": MediaType.OCI_MANIFEST,
        "digest": f"sha256:{n * 64}",
        "size": 500,
        "platform": p,
    }


def test_index_good() -> None:
    idx = parse_index({"schemaVersion": 2, "manifests": [entry("amd64"), entry("arm64", "v8")]})
    assert idx.media_type == MediaType.OCI_INDEX
    assert [str(m.platform) for m in idx.manifests] == ["linux/amd64", "linux/arm64/v8"]


BAD_INDEXES: dict[str, tuple[Any, str]] = {
    "no manifests": ({"schemaVersion": 2}, "index: manifests: required"),
    "a manifest": (manifest(mediaType=None), "this is a manifest, not an index"),
    "wrong mediaType": (
        {"schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST, "manifests": []},
        "index: mediaType:",
    ),
    "bad entry": (
        {"schemaVersion": 2, "manifests": [entry("amd64"), {"mediaType": "x"}]},
        "index: manifests[1].digest",
    ),
    "bad platform": (
        {"schemaVersion": 2, "manifests": [dict(entry("amd64"), platform={"os": "linux"})]},
        "index: manifests[0].platform.architecture: required",
    ),
    "docker list without platform": (
        {
            "schemaVersion": 2,
            "mediaType": MediaType.DOCKER_MANIFEST_LIST,
            "manifests": [{k: v for k, v in entry("amd64").items() if k != "platform"}],
        },
        "index: manifests[0].platform: required in a docker manifest list",
    ),
    "oversized child": (
        {"schemaVersion": 2, "manifests": [dict(entry("amd64"), size=8 << 20)]},
        "manifest sha256:1111",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INDEXES))
def test_index_bad(case: str) -> None:
    doc, message = BAD_INDEXES[case]
    with pytest.raises(InvalidArgument) as e:
        parse_index(json.dumps(doc).encode())
    assert message in str(e.value)


def image_config(**over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Labels": {"a": "b"}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{H64}"]},
        "history": [{"created_by": "x", "empty_layer": True}],
    }
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def test_image_config_good() -> None:
    c = parse_image_config(json.dumps(image_config(variant="v2")).encode())
    assert c.rootfs.diff_ids == (f"sha256:{H64}",)
    assert c.config["Cmd"] == ["sh"]
    assert c.platform == Platform("linux", "amd64", "v2")


BAD_CONFIGS: dict[str, tuple[Any, str]] = {
    "no architecture": (image_config(architecture=None), "config: architecture: required"),
    "no os": (image_config(os=None), "config: os: required"),
    "os number": (image_config(os=3), "config: os: want a string, got int"),
    "no rootfs": (image_config(rootfs=None), "config: rootfs: required"),
    "rootfs type": (
        image_config(rootfs={"type": "tar", "diff_ids": []}),
        "config: rootfs.type: want 'layers', got 'tar'",
    ),
    "no diff_ids": (image_config(rootfs={"type": "layers"}), "config: rootfs.diff_ids: required"),
    "bad diff_id": (
        image_config(rootfs={"type": "layers", "diff_ids": [f"sha256:{H64}", "x"]}),
        "config: rootfs.diff_ids[1]: invalid digest",
    ),
    "env not list": (image_config(config={"Env": "A=b"}), "config: config.Env: want an array"),
    "cmd item": (image_config(config={"Cmd": ["sh", 1]}), "config: config.Cmd[1]: want a string"),
    "user number": (image_config(config={"User": 0}), "config: config.User: want a string"),
    "labels value": (
        image_config(config={"Labels": {"a": 1}}),
        "config: config.Labels.a: want a string",
    ),
    "history item": (image_config(history=[1]), "config: history[0]: want an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_image_config_bad(case: str) -> None:
    doc, message = BAD_CONFIGS[case]
    with pytest.raises(InvalidArgument) as e:
        parse_image_config(json.dumps(doc).encode())
    assert message in str(e.value)


def test_layer_compression() -> None:
    assert layer_compression(MediaType.OCI_LAYER) == ""
    assert layer_compression(MediaType.OCI_LAYER_GZIP) == "gzip"
    assert layer_compression(MediaType.DOCKER_LAYER_GZIP) == "gzip"
    assert layer_compression(MediaType.OCI_LAYER_ZSTD) == "zstd"
    assert layer_compression(MediaType.DOCKER_FOREIGN_LAYER) == "gzip"
    with pytest.raises(InvalidArgument, match="unknown layer media type 'application/x-tar'"):
        layer_compression("application/x-tar")


# ---------------------------------------------------------------------------
# media type of a fetched manifest

MANIFEST_BODY = {"schemaVersion": 2, "config": CONFIG, "layers": [LAYER]}
INDEX_BODY = {"schemaVersion": 2, "manifests": []}

MEDIA_TYPE_CASES: dict[str, tuple[dict[str, Any], str | None, str]] = {
    "field wins over header": (
        dict(MANIFEST_BODY, mediaType=MediaType.DOCKER_MANIFEST),
        MediaType.OCI_MANIFEST,
        MediaType.DOCKER_MANIFEST,
    ),
    "header docker manifest": (MANIFEST_BODY, MediaType.DOCKER_MANIFEST, MediaType.DOCKER_MANIFEST),
    "header with parameters": (
        MANIFEST_BODY,
        f"{MediaType.DOCKER_MANIFEST}; charset=utf-8",
        MediaType.DOCKER_MANIFEST,
    ),
    "header docker list": (
        INDEX_BODY,
        MediaType.DOCKER_MANIFEST_LIST,
        MediaType.DOCKER_MANIFEST_LIST,
    ),
    "header oci index": (INDEX_BODY, MediaType.OCI_INDEX, MediaType.OCI_INDEX),
    "generic header, manifest shape": (MANIFEST_BODY, "application/json", MediaType.OCI_MANIFEST),
    "no header, index shape": (INDEX_BODY, None, MediaType.OCI_INDEX),
    "octet-stream, manifest shape": (
        MANIFEST_BODY,
        "application/octet-stream",
        MediaType.OCI_MANIFEST,
    ),
}


@pytest.mark.parametrize("case", sorted(MEDIA_TYPE_CASES))
def test_media_type_of(case: str) -> None:
    body, header, want = MEDIA_TYPE_CASES[case]
    assert media_type_of(json.dumps(body).encode(), header) == want


def test_media_type_of_unknown_and_schema1() -> None:
    with pytest.raises(InvalidArgument, match="cannot tell its media type"):
        media_type_of(b'{"schemaVersion": 2}', "application/json")
    with pytest.raises(InvalidArgument, match="schema 1"):
        media_type_of(b'{"schemaVersion": 1, "fsLayers": []}', None)
    with pytest.raises(InvalidArgument, match="schema 1"):
        media_type_of(b"{}", MediaType.DOCKER_SCHEMA1_SIGNED)


# ---------------------------------------------------------------------------
# platforms


def test_normalize_platform() -> None:
    def norm(arch: str, variant: str = "") -> str:
        return str(normalize_platform(Platform("Linux", arch, variant)))

    assert norm("x86_64") == "linux/amd64"
    assert norm("amd64", "v1") == "linux/amd64"
    assert norm("aarch64") == "linux/arm64"
    assert norm("arm64", "v8") == "linux/arm64"
    assert norm("arm64", "8") == "linux/arm64"
    assert norm("arm") == "linux/arm/v7"
    assert norm("armhf") == "linux/arm/v7"
    assert norm("armel") == "linux/arm/v6"
    assert norm("arm", "6") == "linux/arm/v6"
    assert norm("i386") == "linux/386"


def test_host_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    import dockyard.spec.image as spec

    class Uname:
        sysname = "Linux"

        def __init__(self, machine: str) -> None:
            self.machine = machine

    for machine, want in [
        ("x86_64", Platform("linux", "amd64")),
        ("aarch64", Platform("linux", "arm64", "v8")),
        ("armv7l", Platform("linux", "arm", "v7")),
        ("armv6l", Platform("linux", "arm", "v6")),
        ("i686", Platform("linux", "386")),
        ("s390x", Platform("linux", "s390x")),
    ]:
        monkeypatch.setattr(spec.os, "uname", lambda m=machine: Uname(m))
        assert host_platform() == want, machine


def test_parse_platform() -> None:
    assert parse_platform("linux/arm64/v8") == Platform("linux", "arm64", "")
    assert parse_platform("linux/amd64") == Platform("linux", "amd64")
    assert parse_platform("linux/arm") == Platform("linux", "arm", "v7")
    for bad in ("", "linux//v7", "a/b/c/d"):
        with pytest.raises(InvalidArgument, match="invalid platform"):
            parse_platform(bad)


def P(s: str) -> Platform:
    parts = s.split("/")
    return Platform(parts[0], parts[1], parts[2] if len(parts) > 2 else "")


MATCHES = [
    # want, have, strict match, compatible match
    ("linux/amd64", "linux/amd64", True, True),
    ("linux/amd64", "linux/386", False, True),
    ("linux/amd64", "linux/arm64", False, False),
    ("linux/amd64", "windows/amd64", False, False),
    ("linux/amd64/v3", "linux/amd64/v2", False, True),
    ("linux/amd64/v3", "linux/amd64", False, True),
    ("linux/amd64", "linux/amd64/v2", False, False),
    ("linux/arm64/v8", "linux/arm64", True, True),
    ("linux/arm64", "linux/arm64/v8", True, True),
    ("linux/arm64", "linux/arm/v7", False, True),
    ("linux/arm64/v8.2", "linux/arm64/v8.1", False, True),
    ("linux/arm64/v8.1", "linux/arm64/v8.2", False, False),
    ("linux/arm64/v9", "linux/arm64/v8.5", False, True),
    ("linux/arm/v7", "linux/arm/v6", False, True),
    ("linux/arm/v7", "linux/arm", True, True),
    ("linux/arm/v6", "linux/arm/v7", False, False),
    ("linux/arm/v7", "linux/arm64", False, False),
]


@pytest.mark.parametrize(("want", "have", "strict", "compatible"), MATCHES)
def test_platform_matches(want: str, have: str, strict: bool, compatible: bool) -> None:
    assert platform_matches(P(want), P(have), strict=True) is strict
    assert platform_matches(P(want), P(have)) is compatible


def test_compatible_platforms_order() -> None:
    assert [str(p) for p in compatible_platforms(P("linux/amd64/v3"))] == [
        "linux/amd64/v3",
        "linux/amd64/v2",
        "linux/amd64",
        "linux/386",
    ]
    assert [str(p) for p in compatible_platforms(P("linux/arm64"))] == [
        "linux/arm64",
        "linux/arm/v8",
        "linux/arm/v7",
        "linux/arm/v6",
        "linux/arm/v5",
    ]


def index_of(*entries: dict[str, Any]) -> Index:
    return parse_index({"schemaVersion": 2, "manifests": list(entries)})


def test_select_manifest() -> None:
    idx = index_of(
        entry("arm", "v6", n="1"),
        entry("arm", "v7", n="2"),
        entry("386", n="3"),
        entry("amd64", n="4"),
        entry("arm64", n="5"),
        entry("unknown", os="unknown", n="6"),  # an attestation manifest
    )

    def pick(platform: str) -> str:
        return select_manifest(idx, P(platform)).digest[7]

    assert pick("linux/amd64") == "4"  # exact beats 386 listed earlier
    assert pick("linux/arm/v7") == "2"  # exact variant beats v6 listed earlier
    assert pick("linux/arm/v6") == "1"
    assert pick("linux/arm64/v8") == "5"  # arm64/v8 is the empty variant
    assert pick("linux/arm64/v9") == "5"

    arm32_only = index_of(entry("arm", "v6", n="1"), entry("arm", "v7", n="2"))
    assert select_manifest(arm32_only, P("linux/arm64")).digest[7] == "2"

    with pytest.raises(NotFound, match=r"no manifest for platform linux/s390x .*linux/amd64"):
        select_manifest(idx, P("linux/s390x"))


def test_select_manifest_without_platforms_comes_last() -> None:
    no_platform = {k: v for k, v in entry("amd64", n="7").items() if k != "platform"}
    idx = index_of(no_platform, entry("amd64", n="8"))
    assert select_manifest(idx, P("linux/amd64")).digest[7] == "8"
    assert select_manifest(idx, P("linux/arm64")).digest[7] == "7"


def test_select_manifest_skips_non_manifests() -> None:
    blob = dict(entry("amd64", n="9"), mediaType=MediaType.OCI_LAYER_GZIP)
    idx = index_of(blob, entry("amd64", n="4"))
    assert select_manifest(idx, P("linux/amd64")).digest[7] == "4"
