"""OCI image spec and Docker schema 2: media types, digests, descriptors, manifests, platforms.

The one place where the image vocabulary lives; the content store, the
registry client, the diff service and the engine import it. Written from
opencontainers/image-spec v1.1 (``descriptor.md``, ``manifest.md``,
``image-index.md``, ``config.md``, ``media-types.md``) and Docker's "Image
Manifest V2, Schema 2" (distribution/distribution ``docs/spec/manifest-v2-2.md``),
with containerd's platform matching (``containerd/platforms``).

API summary::

    MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST_LIST, ...  # constants
    MANIFEST_TYPES, INDEX_TYPES, LAYER_TYPES, CONFIG_TYPES       # frozensets
    parse_digest("sha256:<hex>") -> ("sha256", "<hex>")          # InvalidArgument if bad
    Digester("sha256"); d.update(b); d.digest() -> "sha256:<hex>"
    digest_of(b"...", algorithm="sha256") -> "sha256:<hex>"
    Descriptor(media_type, digest, size, urls=(), annotations={}, platform=None,
               data=None, artifact_type=None); .to_json() / Descriptor.from_json(obj)
    Platform(os, architecture, variant="", os_version="", os_features=())
    parse_platform("linux/arm64/v8"), host_platform(), normalize_platform(p)
    platform_matches(want, have), select_manifest(index, platform=None)
    parse_manifest(data, media_type=None) -> Manifest    # OCI manifest or Docker schema 2
    parse_index(data, media_type=None) -> Index          # OCI index or Docker manifest list
    parse_image_config(data) -> ImageConfig
    media_type_of(content, content_type_header) -> media type of a manifest or index

Every validation error is an ``InvalidArgument`` whose message names the
document and the field, e.g. ``manifest: layers[2].digest: ...``. Unknown
fields are ignored (image-spec "Extensibility"); manifests and configs larger
than 4 MiB are refused before parsing, as containerd does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dockyard.errors import InvalidArgument, NotFound


class MediaType:
    """Media types of image-spec ``media-types.md`` and Docker's schema 2."""

    OCI_DESCRIPTOR = "application/vnd.oci.descriptor.v1+json"
    OCI_LAYOUT = "application/vnd.oci.layout.header.v1+json"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_EMPTY = "application/vnd.oci.empty.v1+json"
    OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    # Deprecated by image-spec v1.1 but still found in the wild; pulled like the others.
    OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
    OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

    DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
    DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    # Schema 1 is long deprecated: recognised only to be refused by name.
    DOCKER_SCHEMA1_MANIFEST = "application/vnd.docker.distribution.manifest.v1+json"
    DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


MANIFEST_TYPES = frozenset({MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST})
INDEX_TYPES = frozenset({MediaType.OCI_INDEX, MediaType.DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({MediaType.OCI_CONFIG, MediaType.DOCKER_CONFIG})
SCHEMA1_TYPES = frozenset({MediaType.DOCKER_SCHEMA1_MANIFEST, MediaType.DOCKER_SCHEMA1_SIGNED})
LAYER_TYPES = frozenset(
    {
        MediaType.OCI_LAYER,
        MediaType.OCI_LAYER_GZIP,
        MediaType.OCI_LAYER_ZSTD,
        MediaType.OCI_LAYER_NONDIST,
        MediaType.OCI_LAYER_NONDIST_GZIP,
        MediaType.OCI_LAYER_NONDIST_ZSTD,
        MediaType.DOCKER_LAYER,
        MediaType.DOCKER_LAYER_GZIP,
        MediaType.DOCKER_LAYER_ZSTD,
        MediaType.DOCKER_FOREIGN_LAYER,
    }
)


def layer_compression(media_type: str) -> str:
    """``"gzip"``, ``"zstd"`` or ``""`` (plain tar) for a layer media type.

    Unknown media types are an ``InvalidArgument`` (issue 3, "Bad input").
    """
    if media_type not in LAYER_TYPES:
        raise InvalidArgument(f"unknown layer media type {media_type!r}")
    if media_type.endswith("gzip"):
        return "gzip"
    if media_type.endswith("zstd"):
        return "zstd"
    return ""


MAX_MANIFEST_SIZE = 4 << 20
"""Largest manifest or index accepted (containerd's limit), in bytes."""
MAX_CONFIG_SIZE = 4 << 20
"""Largest image config accepted, in bytes."""

# ---------------------------------------------------------------------------
# digests (image-spec descriptor.md "Digests")

DIGEST_ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
"""Registered algorithms this implementation verifies, with their hex length."""

_ALGORITHM_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*\Z")
_HEX_RE = re.compile(r"[a-f0-9]+\Z")


def parse_digest(digest: object, what: str = "digest") -> tuple[str, str]:
    """Split ``"<algorithm>:<hex>"`` into its parts, validating both.

    Only sha256 and sha512 are accepted (the registered algorithms); the hex
    part must be lowercase and of the algorithm's length. ``what`` names the
    field in the error message.
    """
    if not isinstance(digest, str):
        raise InvalidArgument(f"{what}: must be a string, got {type(digest).__name__}")
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not algorithm or not encoded:
        raise InvalidArgument(f"{what}: invalid digest {digest!r}: want <algorithm>:<hex>")
    if not _ALGORITHM_RE.match(algorithm):
        raise InvalidArgument(f"{what}: invalid digest {digest!r}: bad algorithm {algorithm!r}")
    length = DIGEST_ALGORITHMS.get(algorithm)
    if length is None:
        raise InvalidArgument(
            f"{what}: unsupported digest algorithm {algorithm!r} in {digest!r}"
            " (want sha256 or sha512)"
        )
    if not _HEX_RE.match(encoded):
        raise InvalidArgument(f"{what}: invalid digest {digest!r}: not lowercase hex")
    if len(encoded) != length:
        raise InvalidArgument(
            f"{what}: invalid digest {digest!r}: {algorithm} wants {length} hex characters,"
            f" got {len(encoded)}"
        )
    return algorithm, encoded


def validate_digest(digest: object, what: str = "digest") -> str:
    """``digest`` itself when valid (see ``parse_digest``)."""
    parse_digest(digest, what)
    assert isinstance(digest, str)
    return digest


class Digester:
    """An incremental hash that names its result as a digest string."""

    __slots__ = ("_hash", "algorithm")

    def __init__(self, algorithm: str = "sha256") -> None:
        if algorithm not in DIGEST_ALGORITHMS:
            raise InvalidArgument(
                f"unsupported digest algorithm {algorithm!r} (want sha256 or sha512)"
            )
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    def digest(self) -> str:
        return f"{self.algorithm}:{self._hash.hexdigest()}"

    def copy(self) -> Digester:
        clone = Digester.__new__(Digester)
        clone.algorithm = self.algorithm
        clone._hash = self._hash.copy()
        return clone


def digest_of(data: bytes | bytearray | memoryview, algorithm: str = "sha256") -> str:
    """The digest of ``data`` with ``algorithm``."""
    d = Digester(algorithm)
    d.update(data)
    return d.digest()


# ---------------------------------------------------------------------------
# field checks: every error names the document and the field


def _fail(where: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{where}: {message}")


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise _fail(_join(where, key), "required")
        return ""
    if not isinstance(value, str):
        raise _fail(_join(where, key), f"want a string, got {_type_name(value)}")
    return value


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"want an object, got {_type_name(value)}")
    return value


def _array(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"want an array, got {_type_name(value)}")
    return value


def _string_map(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    obj = _object(value, where)
    for k, v in obj.items():
        if not isinstance(v, str):
            raise _fail(f"{where}.{k}", f"want a string, got {_type_name(v)}")
    return dict(obj)


def _string_list(value: object, where: str) -> list[str]:
    if value is None:
        return []
    items = _array(value, where)
    for i, v in enumerate(items):
        if not isinstance(v, str):
            raise _fail(f"{where}[{i}]", f"want a string, got {_type_name(v)}")
    return list(items)


def _join(where: str, key: str) -> str:
    """`config` + `size` -> `config.size`; `manifest:` + `layers` -> `manifest: layers`."""
    if not where:
        return key
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


# ---------------------------------------------------------------------------
# platforms (image-index.md "platform"; containerd/platforms)


@dataclass(frozen=True)
class Platform:
    """The platform an image runs on; fields as image-index.md names them."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_json(cls, obj: object, where: str = "platform") -> Platform:
        o = _object(obj, where)
        return cls(
            os=_str(o, "os", where, required=True),
            architecture=_str(o, "architecture", where, required=True),
            variant=_str(o, "variant", where),
            os_version=_str(o, "os.version", where),
            os_features=tuple(_string_list(o.get("os.features"), _join(where, "os.features"))),
        )


_UNAME_MACHINES: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "armv5tejl": ("arm", "v5"),
    "ppc64le": ("ppc64le", ""),
    "ppc64": ("ppc64", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "mips64": ("mips64", ""),
    "loongarch64": ("loong64", ""),
}


def host_platform() -> Platform:
    """This host's platform in Go's names (GOOS/GOARCH), from uname(2).

    arm64 hosts report variant ``v8`` as containerd's ``DefaultSpec`` does;
    matching treats it as equal to an empty variant.
    """
    u = os.uname()
    arch, variant = _UNAME_MACHINES.get(u.machine.lower(), (u.machine.lower(), ""))
    return Platform(os=u.sysname.lower(), architecture=arch, variant=variant)


def parse_platform(spec: str) -> Platform:
    """``"linux/arm64/v8"``, ``"linux/amd64"`` or ``"linux"`` (this host's architecture)."""
    parts = spec.strip().split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise InvalidArgument(f"invalid platform {spec!r}: want os[/arch[/variant]]")
    if len(parts) == 1:
        host = host_platform()
        if parts[0].lower() != host.os:
            raise InvalidArgument(f"invalid platform {spec!r}: no architecture given")
        return normalize_platform(Platform(parts[0], host.architecture, host.variant))
    variant = parts[2] if len(parts) == 3 else ""
    return normalize_platform(Platform(parts[0], parts[1], variant))


def normalize_platform(p: Platform) -> Platform:
    """containerd's normalisation: Go names, lowercase, canonical variants.

    ``arm64`` drops variant ``v8`` (the baseline); ``arm`` without a variant
    means ``v7``; ``amd64`` drops ``v1``.
    """
    os_name = p.os.lower()
    if os_name == "macos":
        os_name = "darwin"
    arch, variant = p.architecture.lower(), p.variant.lower()
    if arch in ("i386",):
        arch, variant = "386", ""
    elif arch in ("x86_64", "x86-64", "amd64"):
        arch = "amd64"
        if variant == "v1":
            variant = ""
    elif arch in ("aarch64", "arm64"):
        arch = "arm64"
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
    elif arch == "armhf":
        arch, variant = "arm", "v7"
    elif arch == "armel":
        arch, variant = "arm", "v6"
    elif arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return Platform(os_name, arch, variant, p.os_version, p.os_features)


def _variant_number(variant: str) -> int | None:
    v = variant[1:] if variant.startswith("v") else variant
    return int(v) if v.isdigit() else None


def compatible_platforms(want: Platform) -> list[Platform]:
    """The platforms ``want`` can run, best first (containerd's ``platforms.Only``).

    amd64/vN also runs amd64/v(N-1)..v1 and 386; arm/vN runs arm/v(N-1)..v5;
    arm64 runs arm64 (any v8.x below its own) and arm v8..v5.
    """
    p = normalize_platform(want)
    out = [p]

    def add(arch: str, variant: str) -> None:
        out.append(normalize_platform(Platform(p.os, arch, variant, p.os_version, p.os_features)))

    if p.architecture == "amd64":
        n = _variant_number(p.variant)
        if n is not None:
            for k in range(n - 1, 0, -1):
                add("amd64", f"v{k}")
        add("386", "")
    elif p.architecture == "arm":
        n = _variant_number(p.variant)
        if n is not None:
            for k in range(n - 1, 4, -1):
                add("arm", f"v{k}")
    elif p.architecture == "arm64":
        variant = p.variant or "v8"
        major_s, _, minor_s = (
            variant[1:].partition(".") if variant.startswith("v") else ("", "", "")
        )
        if major_s.isdigit() and int(major_s) >= 8:
            major, minor = int(major_s), int(minor_s) if minor_s.isdigit() else 0
            if major == 9:
                for k in range(minor - 1, -1, -1):
                    add("arm64", f"v9.{k}" if k else "v9")
                # v9.x diverged from v8.(x+5)
                major, minor = 8, minor + 5
                add("arm64", f"v8.{minor}")
            for k in range(minor - 1, -1, -1):
                add("arm64", f"v{major}.{k}" if k else f"v{major}")
        for k in range(8, 4, -1):
            add("arm", f"v{k}")
    # one entry per platform, first occurrence wins
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for q in out:
        key = (q.os, q.architecture, q.variant)
        if key not in seen:
            seen.add(key)
            unique.append(q)
    return unique


def _same(a: Platform, b: Platform) -> bool:
    na, nb = normalize_platform(a), normalize_platform(b)
    return (na.os, na.architecture, na.variant) == (nb.os, nb.architecture, nb.variant)


def platform_rank(want: Platform, have: Platform) -> int | None:
    """Position of ``have`` in ``want``'s preference order, or None if it cannot run."""
    for i, candidate in enumerate(compatible_platforms(want)):
        if _same(candidate, have):
            return i
    return None


def platform_matches(want: Platform, have: Platform, *, strict: bool = False) -> bool:
    """Whether an image for ``have`` runs on ``want``.

    ``strict`` asks for the same platform (after normalisation: arm64/v8 is
    arm64); otherwise compatible ones match too, as with containerd's
    ``platforms.Only`` (an amd64 host runs 386, arm/v7 runs arm/v6).
    """
    if strict:
        return _same(want, have)
    return platform_rank(want, have) is not None


# ---------------------------------------------------------------------------
# descriptors (descriptor.md)


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a blob is, its digest and size."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    platform: Platform | None = None
    data: bytes | None = None
    artifact_type: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.data is not None:
            out["data"] = base64.b64encode(self.data).decode()
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_json(cls, obj: object, where: str = "descriptor") -> Descriptor:
        o = _object(obj, where)
        media_type = _str(o, "mediaType", where, required=True)
        digest = validate_digest(o.get("digest"), _join(where, "digest"))
        size = o.get("size")
        if size is None:
            raise _fail(_join(where, "size"), "required")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _fail(_join(where, "size"), f"want a non-negative integer, got {size!r}")
        data = None
        if o.get("data") is not None:
            raw = _str(o, "data", where)
            try:
                data = base64.b64decode(raw, validate=True)
            except ValueError:
                raise _fail(_join(where, "data"), "not valid base64") from None
            if len(data) != size:
                raise _fail(_join(where, "data"), f"{len(data)} bytes, size says {size}")
            if digest_of(data, digest.partition(":")[0]) != digest:
                raise _fail(_join(where, "data"), f"does not match digest {digest}")
        platform = None
        if o.get("platform") is not None:
            platform = Platform.from_json(o["platform"], _join(where, "platform"))
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            urls=tuple(_string_list(o.get("urls"), _join(where, "urls"))),
            annotations=_string_map(o.get("annotations"), _join(where, "annotations")),
            platform=platform,
            data=data,
            artifact_type=_str(o, "artifactType", where),
        )


# ---------------------------------------------------------------------------
# manifests, indexes and configs


@dataclass(frozen=True)
class Manifest:
    """An OCI image manifest or a Docker schema 2 manifest."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    subject: Descriptor | None = None
    artifact_type: str = ""
    schema_version: int = 2


@dataclass(frozen=True)
class Index:
    """An OCI image index or a Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    subject: Descriptor | None = None
    artifact_type: str = ""
    schema_version: int = 2


def _load(data: bytes | str | Mapping[str, Any], what: str, limit: int) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    if len(data) > limit:
        raise InvalidArgument(f"{what}: {len(data)} bytes is larger than the {limit} byte limit")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{what}: not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{what}: want a JSON object, got {_type_name(obj)}")
    return obj


def check_size(desc: Descriptor) -> None:
    """Refuse a manifest, index or config descriptor over the limit before fetching it."""
    if desc.media_type in CONFIG_TYPES:
        limit, what = MAX_CONFIG_SIZE, "config"
    elif desc.media_type in MANIFEST_TYPES | INDEX_TYPES:
        limit, what = MAX_MANIFEST_SIZE, "manifest"
    else:
        return
    if desc.size > limit:
        raise InvalidArgument(
            f"{what} {desc.digest}: {desc.size} bytes is larger than the {limit} byte limit"
        )


def _schema_version(obj: Mapping[str, Any], what: str) -> int:
    version = obj.get("schemaVersion")
    if version is None:
        raise _fail(f"{what}: schemaVersion", "required")
    if version != 2 or isinstance(version, bool):
        if version == 1:
            raise _fail(f"{what}: schemaVersion", "docker schema 1 manifests are not supported")
        raise _fail(f"{what}: schemaVersion", f"want 2, got {version!r}")
    return 2


def _media_type_field(
    obj: Mapping[str, Any], what: str, allowed: frozenset[str], given: str | None, default: str
) -> str:
    declared = _str(obj, "mediaType", f"{what}:")
    if declared and declared not in allowed:
        raise _fail(f"{what}: mediaType", f"{declared!r} is not one of {sorted(allowed)}")
    if given and given not in allowed:
        raise InvalidArgument(f"{what}: media type {given!r} is not one of {sorted(allowed)}")
    if declared and given and declared != given:
        raise _fail(f"{what}: mediaType", f"{declared!r} does not match the descriptor's {given!r}")
    return declared or given or default


def _subject(obj: Mapping[str, Any], what: str) -> Descriptor | None:
    if obj.get("subject") is None:
        return None
    return Descriptor.from_json(obj["subject"], f"{what}: subject")


def parse_manifest(
    data: bytes | str | Mapping[str, Any], media_type: str | None = None
) -> Manifest:
    """Parse and validate an image manifest (OCI or Docker schema 2).

    ``media_type`` is what the descriptor or the registry said; when given,
    the document's own ``mediaType`` must agree with it.
    """
    what = "manifest"
    obj = _load(data, what, MAX_MANIFEST_SIZE)
    _schema_version(obj, what)
    mt = _media_type_field(obj, what, MANIFEST_TYPES, media_type, MediaType.OCI_MANIFEST)
    if "manifests" in obj and "config" not in obj:
        raise _fail(what, "has manifests: this is an index, not a manifest")
    if obj.get("config") is None:
        raise _fail(f"{what}: config", "required")
    config = Descriptor.from_json(obj["config"], f"{what}: config")
    check_size(config)
    if obj.get("layers") is None:
        raise _fail(f"{what}: layers", "required")
    layers = tuple(
        Descriptor.from_json(d, f"{what}: layers[{i}]")
        for i, d in enumerate(_array(obj["layers"], f"{what}: layers"))
    )
    if mt == MediaType.DOCKER_MANIFEST and config.media_type != MediaType.DOCKER_CONFIG:
        raise _fail(
            f"{what}: config.mediaType",
            f"want {MediaType.DOCKER_CONFIG!r} in a docker manifest, got {config.media_type!r}",
        )
    return Manifest(
        media_type=mt,
        config=config,
        layers=layers,
        annotations=_string_map(obj.get("annotations"), f"{what}: annotations"),
        subject=_subject(obj, what),
        artifact_type=_str(obj, "artifactType", f"{what}:"),
    )


def parse_index(data: bytes | str | Mapping[str, Any], media_type: str | None = None) -> Index:
    """Parse and validate an image index (OCI) or manifest list (Docker)."""
    what = "index"
    obj = _load(data, what, MAX_MANIFEST_SIZE)
    _schema_version(obj, what)
    mt = _media_type_field(obj, what, INDEX_TYPES, media_type, MediaType.OCI_INDEX)
    if obj.get("manifests") is None:
        if "config" in obj:
            raise _fail(what, "has config and no manifests: this is a manifest, not an index")
        raise _fail(f"{what}: manifests", "required")
    manifests = tuple(
        Descriptor.from_json(d, f"{what}: manifests[{i}]")
        for i, d in enumerate(_array(obj["manifests"], f"{what}: manifests"))
    )
    for i, d in enumerate(manifests):
        check_size(d)
        if mt == MediaType.DOCKER_MANIFEST_LIST and d.platform is None:
            raise _fail(f"{what}: manifests[{i}].platform", "required in a docker manifest list")
    return Index(
        media_type=mt,
        manifests=manifests,
        annotations=_string_map(obj.get("annotations"), f"{what}: annotations"),
        subject=_subject(obj, what),
        artifact_type=_str(obj, "artifactType", f"{what}:"),
    )


def media_type_of(content: bytes | str | Mapping[str, Any], content_type_header: str | None) -> str:
    """The media type of a manifest or index as fetched from a registry.

    The document's ``mediaType`` wins; without one (umoci writes such
    manifests) the registry's Content-Type decides when it names a manifest
    or index type; failing that, the shape: ``manifests`` makes an index,
    ``config`` with ``layers`` a manifest. Schema 1 and unknown shapes are an
    ``InvalidArgument``.
    """
    obj = _load(content, "manifest", MAX_MANIFEST_SIZE)
    declared = obj.get("mediaType")
    if isinstance(declared, str) and declared:
        if declared in SCHEMA1_TYPES:
            raise InvalidArgument(f"manifest: docker schema 1 ({declared}) is not supported")
        return declared
    header = (content_type_header or "").split(";", 1)[0].strip().lower()
    if header in SCHEMA1_TYPES or obj.get("schemaVersion") == 1:
        raise InvalidArgument("manifest: docker schema 1 manifests are not supported")
    if header in MANIFEST_TYPES | INDEX_TYPES:
        return header
    if isinstance(obj.get("manifests"), list):
        return MediaType.OCI_INDEX
    if isinstance(obj.get("config"), dict) and isinstance(obj.get("layers"), list):
        return MediaType.OCI_MANIFEST
    raise InvalidArgument(
        f"manifest: cannot tell its media type: no mediaType field, content type"
        f" {content_type_header or 'missing'!r}, and neither manifests nor config and layers"
    )


def select_manifest(index: Index, platform: Platform | None = None) -> Descriptor:
    """The best manifest (or nested index) of ``index`` for ``platform``.

    containerd's ordering: the exact platform first (after normalisation, so
    arm64/v8 and arm64 are equal), then compatible ones in ``platforms.Only``
    order; entries without a platform match anything but come last; among
    equals, the index's order. Defaults to this host's platform.
    """
    want = platform or host_platform()
    best: tuple[int, int] | None = None
    chosen: Descriptor | None = None
    worst = len(compatible_platforms(want))
    for position, desc in enumerate(index.manifests):
        if desc.media_type not in MANIFEST_TYPES | INDEX_TYPES:
            continue
        if desc.platform is None:
            rank: int | None = worst
        else:
            rank = platform_rank(want, desc.platform)
        if rank is None:
            continue
        if best is None or (rank, position) < best:
            best, chosen = (rank, position), desc
    if chosen is None:
        available = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
        raise NotFound(f"no manifest for platform {want} in index (available: {available})")
    return chosen


@dataclass(frozen=True)
class RootFS:
    type: str
    diff_ids: tuple[str, ...]


@dataclass(frozen=True)
class ImageConfig:
    """An image config (config.md); ``config`` is the container config as parsed."""

    architecture: str
    os: str
    rootfs: RootFS
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()
    created: str = ""
    author: str = ""
    config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    history: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant, self.os_version, self.os_features)


# config.md "Properties" of the container config: name -> kind
_CONTAINER_CONFIG_FIELDS = {
    "User": "string",
    "WorkingDir": "string",
    "StopSignal": "string",
    "Env": "strings",
    "Entrypoint": "strings",
    "Cmd": "strings",
    "ExposedPorts": "object",
    "Volumes": "object",
    "Labels": "string-map",
    "ArgsEscaped": "boolean",
}


def parse_image_config(data: bytes | str | Mapping[str, Any]) -> ImageConfig:
    """Parse and validate an image config (OCI or Docker; same format)."""
    what = "config"
    obj = _load(data, what, MAX_CONFIG_SIZE)
    rootfs_obj = obj.get("rootfs")
    if rootfs_obj is None:
        raise _fail(f"{what}: rootfs", "required")
    rootfs_obj = _object(rootfs_obj, f"{what}: rootfs")
    rootfs_type = _str(rootfs_obj, "type", f"{what}: rootfs", required=True)
    if rootfs_type != "layers":
        raise _fail(f"{what}: rootfs.type", f"want 'layers', got {rootfs_type!r}")
    if rootfs_obj.get("diff_ids") is None:
        raise _fail(f"{what}: rootfs.diff_ids", "required")
    diff_ids = tuple(
        validate_digest(d, f"{what}: rootfs.diff_ids[{i}]")
        for i, d in enumerate(_array(rootfs_obj["diff_ids"], f"{what}: rootfs.diff_ids"))
    )
    container: dict[str, Any] = {}
    if obj.get("config") is not None:
        container = _object(obj["config"], f"{what}: config")
        for key, kind in _CONTAINER_CONFIG_FIELDS.items():
            value = container.get(key)
            if value is None:
                continue
            where = f"{what}: config.{key}"
            if kind == "string" and not isinstance(value, str):
                raise _fail(where, f"want a string, got {_type_name(value)}")
            if kind == "strings":
                _string_list(value, where)
            if kind == "object":
                _object(value, where)
            if kind == "string-map":
                _string_map(value, where)
            if kind == "boolean" and not isinstance(value, bool):
                raise _fail(where, f"want a boolean, got {_type_name(value)}")
    history: list[Any] = []
    if obj.get("history") is not None:
        history = _array(obj["history"], f"{what}: history")
        for i, h in enumerate(history):
            entry = _object(h, f"{what}: history[{i}]")
            empty = entry.get("empty_layer")
            if empty is not None and not isinstance(empty, bool):
                raise _fail(f"{what}: history[{i}].empty_layer", "want a boolean")
    return ImageConfig(
        architecture=_str(obj, "architecture", f"{what}:", required=True),
        os=_str(obj, "os", f"{what}:", required=True),
        rootfs=RootFS(rootfs_type, diff_ids),
        variant=_str(obj, "variant", f"{what}:"),
        os_version=_str(obj, "os.version", f"{what}:"),
        os_features=tuple(_string_list(obj.get("os.features"), f"{what}: os.features")),
        created=_str(obj, "created", f"{what}:"),
        author=_str(obj, "author", f"{what}:"),
        config=container,
        history=tuple(history),
    )
