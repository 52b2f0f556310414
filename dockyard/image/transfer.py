"""Import and export: OCI image layouts and docker-archives, as directories or tars.

Formats:

- OCI image layout (image-spec ``image-layout.md``): ``oci-layout``,
  ``index.json`` and ``blobs/<alg>/<hex>``. Each image exported is one entry
  of ``index.json``, annotated with ``org.opencontainers.image.ref.name``
  (the tag, as skopeo and umoci write it) and ``io.containerd.image.name``
  (the full name, as containerd writes it).
- docker-archive (what ``docker save`` writes): ``manifest.json``, a list of
  ``{Config, RepoTags, Layers}`` whose paths name files of the archive.
  Exported with each layer as an uncompressed tar named by its diff ID and
  the config as ``<hex>.json``; imported by storing config and layers and
  writing a Docker schema 2 manifest for them. An archive that holds both
  (Docker 25 and later write an OCI layout beside ``manifest.json``) is read
  as an OCI layout, which keeps the original digests.

API summary::

    export_oci(content, images, namespace, names, dest)            # dir, or tar if .tar
    export_docker_archive(content, images, namespace, names, dest)  # tar (or a dir)
    import_archive(content, images, namespace, src, name=None) -> list[Image]

Imports are all or nothing: every blob is written into an ingest of the
content store and checked against its digest (the file name in ``blobs/``,
the descriptors that point at it, the config's ``diff_ids``) and size before
any is committed; an error aborts every ingest, so nothing unverified, and
nothing of a refused archive, reaches the store. Tars are read as a stream:
members go straight into content writers; only JSON documents under the
manifest size limit are kept in memory. Member names that are absolute or
climb out with ``..``, and links that point outside the archive, are refused.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from dockyard.errors import AlreadyExists, InvalidArgument, NotFound
from dockyard.image import reference
from dockyard.image.archive import fold_dots
from dockyard.image.archive.compression import NONE, decompressed
from dockyard.image.content import ContentStore, Writer
from dockyard.image.images import Image, ImageStore
from dockyard.spec.image import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    Descriptor,
    Digester,
    MediaType,
    Platform,
    check_size,
    parse_digest,
    parse_image_config,
    parse_index,
    parse_manifest,
    select_manifest,
)

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
LAYOUT_VERSION = "1.0.0"
CHUNK = 1 << 20
MAX_DOC_SIZE = MAX_MANIFEST_SIZE
"""index.json, manifest.json and every manifest or config are refused past this size."""


# ---------------------------------------------------------------------------
# export


def _blob_name(digest: str) -> str:
    algorithm, encoded = parse_digest(digest)
    return f"blobs/{algorithm}/{encoded}"


class _Out:
    """Where an export goes: a new directory, or a tar written beside and renamed."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self.is_tar = dest.endswith(".tar")
        self._names: set[str] = set()
        self._tar: tarfile.TarFile | None = None
        self._tmp = ""
        self._made_dir = False
        if self.is_tar:
            parent = os.path.dirname(os.path.abspath(dest))
            fd, self._tmp = tempfile.mkstemp(prefix=".export-", dir=parent)
            os.close(fd)
            self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (closed by its owner)
        else:
            if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
                raise InvalidArgument(f"export to {dest}: exists and is not an empty directory")
            self._made_dir = not os.path.exists(dest)
            os.makedirs(dest, exist_ok=True)

    def _dirs(self, name: str) -> None:
        parent = posixpath.dirname(name)
        if not parent or parent in self._names:
            return
        self._dirs(parent)
        self._names.add(parent)
        if self._tar is not None:
            info = tarfile.TarInfo(parent)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            self._tar.addfile(info)
        else:
            os.makedirs(os.path.join(self.dest, parent), exist_ok=True)

    def add(self, name: str, size: int, stream: IO[bytes]) -> None:
        if name in self._names:
            return
        self._dirs(name)
        self._names.add(name)
        if self._tar is not None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = size, 0o644
            self._tar.addfile(info, stream)
            return
        with open(os.path.join(self.dest, name), "xb") as f:
            copied = 0
            while chunk := stream.read(CHUNK):
                f.write(chunk)
                copied += len(chunk)
        if copied != size:
            raise InvalidArgument(f"export {name}: {copied} bytes, expected {size}")

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add(name, len(data), io.BytesIO(data))

    def add_blob(self, content: ContentStore, digest: str) -> None:
        with content.open(digest) as r:
            self.add(_blob_name(digest), r.size, r)

    def finish(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            os.chmod(self._tmp, 0o644)
            os.rename(self._tmp, self.dest)

    def fail(self) -> None:
        if self._tar is not None:
            with contextlib.suppress(OSError):
                self._tar.close()
            self._tar = None
        if self._tmp:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
        elif self._made_dir:  # a half-written layout is no layout
            shutil.rmtree(self.dest, ignore_errors=True)


@contextlib.contextmanager
def _output(dest: str) -> Iterator[_Out]:
    out = _Out(dest)
    try:
        yield out
    except BaseException:
        out.fail()
        raise
    out.finish()


def _resolve_images(images: ImageStore, namespace: str, names: Iterable[str]) -> list[Image]:
    found = [images.get(namespace, str(reference.parse(n))) for n in names]
    if not found:
        raise InvalidArgument("export: no image given")
    return found


def _read_doc(content: ContentStore, desc: Descriptor) -> bytes:
    check_size(desc)
    if not content.exists(desc.digest):
        raise NotFound(f"blob {desc.digest} ({desc.media_type}) is not in the content store")
    return content.read_bytes(desc.digest, max_size=MAX_DOC_SIZE)


def walk_image(content: ContentStore, target: Descriptor) -> list[tuple[Descriptor, bytes | None]]:
    """Every blob an image needs, children first: manifests' configs and layers, then
    manifests, then indexes; each with the document read to find its children (a
    manifest's or an index's bytes), or None for a blob only checked to be there.

    Manifests an index names that are not in the store are left out (a pull fetches one
    platform); a missing config or layer is ``NotFound``. The whole graph is walked before
    this returns, so a caller acting on the list (push uploads it) acts only on a whole
    image; the bytes save it reading each document again."""
    out: list[tuple[Descriptor, bytes | None]] = []
    seen: set[str] = set()

    def visit(desc: Descriptor, optional: bool) -> None:
        if desc.digest in seen:
            return
        data = None
        if desc.media_type in INDEX_TYPES:
            if optional and not content.exists(desc.digest):
                return
            data = _read_doc(content, desc)
            for child in parse_index(data, desc.media_type).manifests:
                visit(child, True)
        elif desc.media_type in MANIFEST_TYPES:
            if optional and not content.exists(desc.digest):
                return
            data = _read_doc(content, desc)
            manifest = parse_manifest(data, desc.media_type)
            for blob in (manifest.config, *manifest.layers):
                if blob.digest not in seen:
                    if not content.exists(blob.digest):
                        raise NotFound(
                            f"blob {blob.digest} of manifest {desc.digest} is not in the"
                            " content store: pull the image again"
                        )
                    seen.add(blob.digest)
                    out.append((blob, None))
        elif not content.exists(desc.digest):
            if optional:
                return
            raise NotFound(f"blob {desc.digest} is not in the content store")
        seen.add(desc.digest)
        out.append((desc, data))

    visit(target, False)
    return out


def _manifest_platform(
    content: ContentStore, desc: Descriptor, data: bytes | None
) -> Platform | None:
    """An export entry's platform: the descriptor's, else a manifest's config's
    (``data`` is the manifest, as ``walk_image`` read it)."""
    if desc.platform is not None or desc.media_type not in MANIFEST_TYPES or data is None:
        return desc.platform
    manifest = parse_manifest(data, desc.media_type)
    with contextlib.suppress(InvalidArgument, NotFound):
        return parse_image_config(_read_doc(content, manifest.config)).platform
    return None


def export_oci(
    content: ContentStore,
    images: ImageStore,
    namespace: str,
    names: Iterable[str],
    dest: str,
) -> list[Descriptor]:
    """Write the images ``names`` as an OCI image layout to ``dest`` (a new directory,
    or a tar when it ends in ``.tar``); returns the entries of its ``index.json``."""
    entries: list[Descriptor] = []
    with _output(dest) as out:
        out.add_bytes("oci-layout", _json({"imageLayoutVersion": LAYOUT_VERSION}))
        for img in _resolve_images(images, namespace, names):
            walked = walk_image(content, img.target)
            for desc, data in walked:
                if data is None:  # a config or a layer: streamed
                    out.add_blob(content, desc.digest)
                else:  # a manifest or an index: the walk already read it
                    out.add_bytes(_blob_name(desc.digest), data)
            target_doc = walked[-1][1]  # children first: the target is last
            ref = reference.parse(img.name)
            annotations = dict(img.target.annotations)
            annotations[ANNOTATION_IMAGE_NAME] = str(ref)
            if ref.tag:
                annotations[ANNOTATION_REF_NAME] = ref.tag
            entries.append(
                Descriptor(
                    media_type=img.target.media_type,
                    digest=img.target.digest,
                    size=img.target.size,
                    annotations=annotations,
                    platform=_manifest_platform(content, img.target, target_doc),
                )
            )
        index = {
            "schemaVersion": 2,
            "mediaType": MediaType.OCI_INDEX,
            "manifests": [d.to_json() for d in entries],
        }
        out.add_bytes("index.json", _json(index))
    return entries


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _host_manifest(content: ContentStore, target: Descriptor) -> Descriptor:
    desc = target
    while desc.media_type in INDEX_TYPES:
        desc = select_manifest(parse_index(_read_doc(content, desc), desc.media_type))
    if desc.media_type not in MANIFEST_TYPES:
        raise InvalidArgument(f"image target {desc.digest}: unsupported media type")
    return desc


def _layer_file(content: ContentStore, layer: Descriptor, diff_id: str) -> IO[bytes]:
    """The layer uncompressed: the blob itself, or a temp file it is decompressed into,
    checked against the diff ID either way."""
    blob = content.open(layer.digest)
    try:
        reader, compression = decompressed(blob, None)
        if compression == NONE:
            if layer.digest != diff_id:
                raise InvalidArgument(
                    f"layer {layer.digest}: uncompressed, but the config's diff ID is {diff_id}"
                )
            blob.seek(0)
            return blob
        spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed by its owner)
        digester = Digester(parse_digest(diff_id)[0])
        while chunk := reader.read(CHUNK):
            digester.update(chunk)
            spool.write(chunk)
        blob.close()
    except BaseException:
        blob.close()
        raise
    if digester.digest() != diff_id:
        spool.close()
        raise InvalidArgument(
            f"layer {layer.digest}: uncompressed digest {digester.digest()}, diff ID {diff_id}"
        )
    spool.seek(0)
    return spool


def export_docker_archive(
    content: ContentStore,
    images: ImageStore,
    namespace: str,
    names: Iterable[str],
    dest: str,
) -> list[dict[str, Any]]:
    """Write the images as a docker-archive (``docker save``'s format): for each, this
    host's manifest; layers uncompressed as ``<diff-id hex>.tar``, configs as
    ``<hex>.json``. Returns the ``manifest.json`` written."""
    entries: list[dict[str, Any]] = []
    by_config: dict[str, dict[str, Any]] = {}
    with _output(dest) as out:
        for img in _resolve_images(images, namespace, names):
            mdesc = _host_manifest(content, img.target)
            manifest = parse_manifest(_read_doc(content, mdesc), mdesc.media_type)
            config_data = _read_doc(content, manifest.config)
            config = parse_image_config(config_data)
            ref = reference.parse(img.name)
            tag = [ref.familiar()] if ref.tag and not ref.digest else []
            if manifest.config.digest in by_config:
                by_config[manifest.config.digest]["RepoTags"].extend(tag)
                continue
            if len(config.rootfs.diff_ids) != len(manifest.layers):
                raise InvalidArgument(
                    f"export {img.name}: {len(manifest.layers)} layers but"
                    f" {len(config.rootfs.diff_ids)} diff IDs"
                )
            config_name = parse_digest(manifest.config.digest)[1] + ".json"
            out.add_bytes(config_name, config_data)
            layer_names = []
            for layer, diff_id in zip(manifest.layers, config.rootfs.diff_ids, strict=True):
                name = parse_digest(diff_id)[1] + ".tar"
                layer_names.append(name)
                with _layer_file(content, layer, diff_id) as f:
                    size = os.fstat(f.fileno()).st_size
                    out.add(name, size, f)
            entry = {"Config": config_name, "RepoTags": list(tag), "Layers": layer_names}
            by_config[manifest.config.digest] = entry
            entries.append(entry)
        out.add_bytes("manifest.json", _json(entries))
    return entries


# ---------------------------------------------------------------------------
# import: staging


def _clean_name(name: str, what: str) -> str:
    """A member name relative to the archive's root; refuses escapes."""
    if name.startswith("/") or "\\" in name or "\0" in name:
        raise InvalidArgument(f"{what}: refused member {name!r}: absolute or odd path")
    rel = fold_dots(name)
    if rel is None:
        raise InvalidArgument(f"{what}: refused member {name!r}: path leaves the archive")
    return rel


@dataclass
class _Staged:
    """A blob in an ingest, digest checked, not committed."""

    name: str
    ref: str
    writer: Writer
    digest: str
    size: int
    data: bytes | None  # kept when it looks like a JSON document under the limit
    diff_id: str = ""  # the uncompressed digest (docker-archive layers)


@dataclass
class _Staging:
    """Blobs written and verified, to be committed together or not at all."""

    content: ContentStore
    what: str
    blobs: dict[str, _Staged] = field(default_factory=dict)  # by member name
    links: dict[str, str] = field(default_factory=dict)  # member name -> target name

    def add(
        self,
        name: str,
        stream: IO[bytes],
        size: int,
        *,
        algorithm: str = "sha256",
        uncompressed: bool = False,
    ) -> _Staged:
        ref = f"import-{uuid.uuid4().hex}"
        writer = self.content.writer(ref, total=size)
        staged = _Staged(name, ref, writer, "", 0, None)
        self.blobs[name] = staged
        # the writer hashes in sha256 already (no expected digest is given)
        digester = Digester(algorithm) if algorithm != "sha256" else None
        keep: list[bytes] | None = [] if size <= MAX_DOC_SIZE else None
        unpacker: _DiffID | None = None
        written = 0
        while written < size:
            chunk = stream.read(min(CHUNK, size - written))
            if not chunk:
                break
            if written == 0:
                head = chunk[:16].lstrip()
                if keep is not None and not head.startswith((b"{", b"[")):
                    keep = None
                if uncompressed:
                    unpacker = _DiffID(chunk)
            writer.write(chunk)
            if digester is not None:
                digester.update(chunk)
            if keep is not None:
                keep.append(chunk)
            if unpacker is not None:
                unpacker.update(chunk)
            written += len(chunk)
        if written != size:
            raise InvalidArgument(f"{self.what}: {name}: truncated at {written} of {size} bytes")
        staged.digest = digester.digest() if digester is not None else writer.digest()
        staged.size = written
        staged.data = b"".join(keep) if keep is not None else None
        if unpacker is not None:
            staged.diff_id = unpacker.finish(staged.digest, f"{self.what}: {name}")
        return staged

    def get(self, name: str) -> _Staged | None:
        for _ in range(8):  # links to links, within reason
            if name in self.blobs:
                return self.blobs[name]
            if name not in self.links:
                return None
            name = self.links[name]
        raise InvalidArgument(f"{self.what}: {name}: too many levels of links")

    def commit(self, wanted: Iterable[str]) -> None:
        """Commit the staged blobs named ``wanted`` (member names); abort the rest."""
        keep = {id(s) for s in (self.get(n) for n in wanted) if s is not None}
        for staged in self.blobs.values():
            if id(staged) in keep:
                try:
                    staged.writer.commit(staged.size, staged.digest)
                except AlreadyExists:
                    pass
        self.abort()

    def abort(self) -> None:
        for staged in self.blobs.values():
            staged.writer.close()
            with contextlib.suppress(NotFound):
                self.content.abort(staged.ref)
        self.blobs.clear()


class _DiffID:
    """The uncompressed digest of a layer as it streams past (gzip or plain)."""

    def __init__(self, head: bytes) -> None:
        self.gzip = head.startswith(b"\x1f\x8b")
        self.zstd = head.startswith(b"\x28\xb5\x2f\xfd")
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.gzip else None
        self._digester = Digester("sha256")

    def update(self, chunk: bytes) -> None:
        data = chunk
        while self._z is not None and data:
            if self._z.eof:  # gzip members may be concatenated, then zero padding
                if not data.strip(b"\0"):
                    return
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                out = self._z.decompress(data, 4 * CHUNK)
            except zlib.error as e:
                raise InvalidArgument(f"layer gzip stream is corrupt: {e}") from None
            self._digester.update(out)
            data = self._z.unused_data if self._z.eof else self._z.unconsumed_tail

    def finish(self, digest: str, what: str) -> str:
        if self.zstd:
            raise InvalidArgument(f"{what}: zstd layers in a docker-archive are not supported")
        if self._z is None:
            return digest
        if not self._z.eof:
            raise InvalidArgument(f"{what}: gzip stream is truncated")
        return self._digester.digest()


def _blob_member(name: str) -> tuple[str, str] | None:
    """``blobs/<alg>/<hex>`` -> (algorithm, digest), else None."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "blobs":
        return None
    digest = f"{parts[1]}:{parts[2]}"
    parse_digest(digest, f"blob {name}")
    return parts[1], digest


_SMALL_FILES = ("oci-layout", "index.json", "manifest.json", "repositories")


def _stage_tar(staging: _Staging, path: str, docker: bool) -> dict[str, bytes]:
    """Stage every file of the tar at ``path`` (streamed); returns its small top files."""
    what = staging.what
    small: dict[str, bytes] = {}
    try:
        tar = tarfile.open(path, "r|*")  # noqa: SIM115 (closed by its owner)
    except tarfile.TarError as e:
        raise InvalidArgument(f"{what}: not a tar archive: {e}") from None
    with tar:
        try:
            for member in tar:
                name = _clean_name(member.name, what)
                if member.isdir() or not name:
                    continue
                if member.issym() or member.islnk():
                    base = posixpath.dirname(name) if member.issym() else ""
                    target = member.linkname
                    if member.issym() and target.startswith("/"):
                        raise InvalidArgument(f"{what}: refused link {name!r} -> {target!r}")
                    staging.links[name] = _clean_name(posixpath.join(base, target), what)
                    continue
                if not member.isfile():
                    raise InvalidArgument(f"{what}: refused member {name!r}: not a regular file")
                stream = tar.extractfile(member)
                assert stream is not None
                if name in _SMALL_FILES:
                    if member.size > MAX_DOC_SIZE:
                        raise InvalidArgument(f"{what}: {name}: {member.size} bytes is too large")
                    small[name] = stream.read()
                    continue
                blob = _blob_member(name)
                algorithm = blob[0] if blob else "sha256"
                staged = staging.add(
                    name, stream, member.size, algorithm=algorithm, uncompressed=docker
                )
                if blob and staged.digest != blob[1]:
                    raise InvalidArgument(
                        f"{what}: blob {name}: digest mismatch: content has {staged.digest}"
                    )
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise InvalidArgument(f"{what}: bad tar archive: {e}") from None
    return small


# ---------------------------------------------------------------------------
# import: sources (a directory read lazily, or a tar staged first)


class _Source:
    """An archive to import: its small files, its blobs by member name."""

    def __init__(self, staging: _Staging, path: str, docker: bool = False) -> None:
        self.staging = staging
        self.path = path
        self.is_dir = os.path.isdir(path)
        self.small: dict[str, bytes] = {}
        if not self.is_dir:
            self.small = _stage_tar(staging, path, docker)
        self.docker = docker

    def small_file(self, name: str) -> bytes | None:
        if not self.is_dir:
            return self.small.get(name)
        p = os.path.join(self.path, name)
        if not os.path.isfile(p):
            return None
        with open(p, "rb") as f:
            data = f.read(MAX_DOC_SIZE + 1)
        if len(data) > MAX_DOC_SIZE:
            raise InvalidArgument(f"{self.staging.what}: {name} is too large")
        return data

    def _dir_file(self, name: str) -> str:
        name = _clean_name(name, self.staging.what)
        root = os.path.realpath(self.path)
        real = os.path.realpath(os.path.join(root, name))
        if not real.startswith(root + os.sep):
            raise InvalidArgument(f"{self.staging.what}: refused {name!r}: leaves the directory")
        return real

    def stage(self, name: str) -> _Staged | None:
        """The blob at member ``name``, staged (from a directory: now), hashed as
        its name says (``blobs/<alg>/<hex>``; sha256 otherwise), as a tar's are."""
        staged = self.staging.get(name)
        if staged is not None or not self.is_dir:
            return staged
        blob = _blob_member(name)
        algorithm = blob[0] if blob else "sha256"
        p = self._dir_file(name)
        try:
            f = open(p, "rb")  # noqa: SIM115 (closed by its owner)
        except FileNotFoundError:
            return None
        with f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArgument(f"{self.staging.what}: {name}: not a regular file")
            return self.staging.add(
                name, f, st.st_size, algorithm=algorithm, uncompressed=self.docker
            )


def _verified(source: _Source, desc: Descriptor, where: str) -> _Staged:
    """The staged blob for ``desc``: present, of its size and digest."""
    what = source.staging.what
    name = _blob_name(desc.digest)
    staged = source.stage(name)
    if staged is None:
        raise InvalidArgument(f"{what}: {where} names blob {desc.digest}, which is missing")
    if staged.digest != desc.digest:
        raise InvalidArgument(f"{what}: blob {name}: digest mismatch: content has {staged.digest}")
    if staged.size != desc.size:
        raise InvalidArgument(
            f"{what}: blob {desc.digest}: {staged.size} bytes, {where} says {desc.size}"
        )
    return staged


def _doc(source: _Source, desc: Descriptor, where: str) -> bytes:
    check_size(desc)
    staged = _verified(source, desc, where)
    if staged.data is None:
        raise InvalidArgument(f"{source.staging.what}: blob {desc.digest} is not a JSON document")
    return staged.data


def _walk_oci(source: _Source, desc: Descriptor, where: str, needed: set[str]) -> None:
    """Stage and check ``desc`` and everything below it; collect member names."""
    needed.add(_blob_name(desc.digest))
    if desc.media_type in INDEX_TYPES:
        index = parse_index(_doc(source, desc, where), desc.media_type)
        for i, child in enumerate(index.manifests):
            # an index may name platforms that were not copied (skopeo, a pull)
            if source.stage(_blob_name(child.digest)) is None:
                continue
            _walk_oci(source, child, f"index {desc.digest} manifests[{i}]", needed)
    elif desc.media_type in MANIFEST_TYPES:
        manifest = parse_manifest(_doc(source, desc, where), desc.media_type)
        _doc(source, manifest.config, f"manifest {desc.digest} config")
        needed.add(_blob_name(manifest.config.digest))
        for i, layer in enumerate(manifest.layers):
            _verified(source, layer, f"manifest {desc.digest} layers[{i}]")
            needed.add(_blob_name(layer.digest))
    else:
        _verified(source, desc, where)


def _name_for(desc: Descriptor, name: str | None, count: int, where: str, what: str) -> str:
    tag = desc.annotations.get(ANNOTATION_REF_NAME, "")
    if name:
        ref = reference.parse(name, default_tag=False)
        if count == 1 or ref.tag or ref.digest:
            return str(reference.parse(name))
        if not tag:
            raise InvalidArgument(f"{what}: {where} has no {ANNOTATION_REF_NAME} to tag {name}")
        return str(ref.with_tag(tag))
    full = desc.annotations.get(ANNOTATION_IMAGE_NAME, "")
    if full:
        return str(reference.parse(full))
    if "/" in tag:  # a full reference as ref.name (older containerd, buildkit)
        return str(reference.parse(tag))
    raise InvalidArgument(
        f"{what}: {where} has no image name (only tag {tag!r}): give a name"
        if tag
        else f"{what}: {where} has no image name: give a name"
    )


def _oci_body(source: _Source, name: str | None) -> tuple[list[Image], set[str]]:
    what = source.staging.what
    layout = source.small_file("oci-layout")
    if layout is None:
        raise InvalidArgument(f"{what}: not an OCI image layout: no oci-layout file")
    try:
        version = json.loads(layout).get("imageLayoutVersion")
    except (ValueError, AttributeError):
        raise InvalidArgument(f"{what}: oci-layout: not a JSON object") from None
    if not isinstance(version, str) or not version.startswith("1."):
        raise InvalidArgument(f"{what}: oci-layout: unsupported imageLayoutVersion {version!r}")
    data = source.small_file("index.json")
    if data is None:
        raise InvalidArgument(f"{what}: no index.json")
    try:
        index = parse_index(data)
    except InvalidArgument as e:
        raise InvalidArgument(f"{what}: index.json: {e}") from None
    needed: set[str] = set()
    records: list[Image] = []
    for i, desc in enumerate(index.manifests):
        where = f"index.json manifests[{i}]"
        _walk_oci(source, desc, where, needed)
        target = Descriptor(desc.media_type, desc.digest, desc.size, platform=desc.platform)
        records.append(Image(_name_for(desc, name, len(index.manifests), where, what), target))
    return records, needed


def _docker_body(source: _Source, name: str | None) -> tuple[list[Image], set[str]]:
    what = source.staging.what
    data = source.small_file("manifest.json")
    if data is None:
        raise InvalidArgument(f"{what}: not a docker-archive: no manifest.json")
    try:
        entries = json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"{what}: manifest.json: not valid JSON: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise InvalidArgument(f"{what}: manifest.json: want a non-empty array")
    needed: set[str] = set()
    records: list[Image] = []
    for i, entry in enumerate(entries):
        where = f"manifest.json[{i}]"
        if not isinstance(entry, dict):
            raise InvalidArgument(f"{what}: {where}: want an object")
        config_name, layers, tags = entry.get("Config"), entry.get("Layers"), entry.get("RepoTags")
        if not isinstance(config_name, str) or not isinstance(layers, list):
            raise InvalidArgument(f"{what}: {where}: Config and Layers are required")
        if tags is None:
            tags = []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidArgument(f"{what}: {where}: RepoTags: want an array of strings")
        config_member = _clean_name(config_name, what)
        config_blob = source.stage(config_member)
        if config_blob is None or config_blob.data is None:
            raise InvalidArgument(f"{what}: {where}: config {config_name!r} is missing")
        config = parse_image_config(config_blob.data)
        if len(config.rootfs.diff_ids) != len(layers):
            raise InvalidArgument(
                f"{what}: {where}: {len(layers)} layers but {len(config.rootfs.diff_ids)} diff IDs"
            )
        needed.add(config_member)
        layer_descs = []
        for j, (layer_name, diff_id) in enumerate(zip(layers, config.rootfs.diff_ids, strict=True)):
            if not isinstance(layer_name, str):
                raise InvalidArgument(f"{what}: {where}: Layers[{j}]: want a string")
            member = _clean_name(layer_name, what)
            staged = source.stage(member)
            if staged is None:
                raise InvalidArgument(f"{what}: {where}: layer {layer_name!r} is missing")
            if staged.diff_id != diff_id:
                raise InvalidArgument(
                    f"{what}: {where}: layer {layer_name!r} has diff ID {staged.diff_id},"
                    f" the config says {diff_id}"
                )
            needed.add(member)
            compressed = staged.diff_id != staged.digest
            media_type = MediaType.DOCKER_LAYER_GZIP if compressed else MediaType.DOCKER_LAYER
            layer_descs.append(Descriptor(media_type, staged.digest, staged.size).to_json())
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MediaType.DOCKER_MANIFEST,
                "config": Descriptor(
                    MediaType.DOCKER_CONFIG, config_blob.digest, config_blob.size
                ).to_json(),
                "layers": layer_descs,
            },
            indent=3,
        ).encode()
        mname = f"manifest-{i}.json (written on import)"
        staged_manifest = source.staging.add(mname, io.BytesIO(manifest), len(manifest))
        needed.add(mname)
        target = Descriptor(
            MediaType.DOCKER_MANIFEST,
            staged_manifest.digest,
            staged_manifest.size,
            platform=config.platform,
        )
        names = [name] if name else tags
        if not names:
            raise InvalidArgument(f"{what}: {where} has no RepoTags: give a name")
        for n in names:
            records.append(Image(str(reference.parse(n)), target))
    return records, needed


def detect_format(src: str) -> str:
    """``"oci"`` or ``"docker-archive"``: what the directory or tar at ``src`` holds.

    A tar is read once for this (its names only): an archive with both an
    ``index.json`` and a ``manifest.json`` is an OCI layout.
    """
    if os.path.isdir(src):
        names = set(os.listdir(src))
    else:
        names = set()
        try:
            with tarfile.open(src, "r:*") as tar:
                for member in tar:
                    top = member.name.lstrip("./")
                    if top in _SMALL_FILES:
                        names.add(top)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise InvalidArgument(f"import {src}: not a tar archive or directory: {e}") from None
    if "index.json" in names or "oci-layout" in names:
        return "oci"
    if "manifest.json" in names:
        return "docker-archive"
    raise InvalidArgument(
        f"import {src}: neither an OCI image layout (index.json) nor a docker-archive"
        " (manifest.json)"
    )


def import_archive(
    content: ContentStore,
    images: ImageStore,
    namespace: str,
    src: str,
    name: str | None = None,
) -> list[Image]:
    """Import an OCI layout or a docker-archive, whichever ``src`` is; returns the
    image records.

    An OCI layout's names come from ``index.json``'s annotations, or ``name``:
    with one entry it names it; with several, each is ``name`` tagged with its
    ref.name. A docker-archive's images each get a Docker schema 2 manifest
    written here, and are named by their RepoTags (or ``name``).
    """
    what = f"import {src}"
    if not os.path.exists(src):
        raise NotFound(f"{what}: no such file or directory")
    docker = detect_format(src) == "docker-archive"
    body = _docker_body if docker else _oci_body
    staging = _Staging(content, what)
    try:
        records, needed = body(_Source(staging, src, docker), name)
        staging.commit(needed)
    finally:
        staging.abort()
    return [images.put(namespace, r) for r in records]
