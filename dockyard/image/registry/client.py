"""A client of the OCI distribution spec (opencontainers/distribution-spec ``spec.md``).

``Registry`` talks to one registry host: pull (resolve, manifests, blobs with
redirects and Range resume, parallel downloads) and push (existence checks,
monolithic and chunked uploads, cross-repository mounts, manifests, tags).
Every byte that comes with a digest is checked against it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import IO, Protocol

from dockyard.errors import DockyardError, InvalidArgument
from dockyard.image.registry import auth
from dockyard.image.registry.errors import RegistryError, Unauthorized, from_response
from dockyard.image.registry.transport import CONNECTION_ERRORS, Origin, Response, Transport
from dockyard.spec.image import (
    MAX_MANIFEST_SIZE,
    Digester,
    MediaType,
    digest_of,
    parse_digest,
    validate_digest,
)

MANIFEST_MEDIA_TYPES = (
    MediaType.OCI_INDEX,
    MediaType.OCI_MANIFEST,
    MediaType.DOCKER_MANIFEST_LIST,
    MediaType.DOCKER_MANIFEST,
)
ACCEPT_MANIFESTS = ", ".join(MANIFEST_MEDIA_TYPES)

DEFAULT_PARALLEL = 3
_MAX_REDIRECTS = 5
_DOCKER_HUB_ENDPOINT = "registry-1.docker.io"

# distribution-spec "Pulling manifests": <name> and <reference> grammars.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")


class Sink(Protocol):
    """Where a blob's bytes go (a content store writer, a file)."""

    def write(self, data: bytes, /) -> object: ...


Progress = Callable[[int, int], None]
BlobProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Resolved:
    """What a tag or digest points at: the fields of a descriptor."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class BlobFetch:
    """One blob for ``fetch_blobs``: its digest and size, where it goes, from which offset."""

    digest: str
    size: int
    sink: Sink
    offset: int = 0


class _Cancelled(Exception):
    pass


def is_digest(ref: str) -> bool:
    return _DIGEST.fullmatch(ref) is not None


def digester_for(digest: str) -> Digester:
    return Digester(parse_digest(digest)[0])


def is_local(host: str) -> bool:
    """localhost and loopback addresses, which may be served over plain http."""
    if host.startswith("["):
        name = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        name = host.split(":", 1)[0]
    else:
        name = host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _base_media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


class Registry:
    """A client of one registry host (``host[:port]``; ``docker.io`` means Docker Hub).

    HTTPS is used unless the host is local or ``insecure``: then HTTPS is tried
    first (not verified when insecure) and plain HTTP is the fallback.
    ``credentials`` is ``(user, password)`` or ``auth.Credentials``; without
    it, logins are read from ``config_path`` (Docker's config.json) when asked.
    """

    def __init__(
        self,
        host: str,
        *,
        insecure: bool = False,
        ca_file: str | None = None,
        credentials: auth.Credentials | tuple[str, str] | None = None,
        config_path: str | None = "~/.docker/config.json",
        timeout: float = 60.0,
        parallel: int = DEFAULT_PARALLEL,
        retries: int = 5,
    ) -> None:
        if not host or "/" in host:
            raise InvalidArgument(f"invalid registry host {host!r}")
        self.host = host
        self.is_docker_hub = host in auth.DOCKER_HUB_HOSTS
        self.endpoint = _DOCKER_HUB_ENDPOINT if self.is_docker_hub else host
        self.insecure = insecure
        self.parallel = max(1, parallel)
        self.retries = retries
        if isinstance(credentials, tuple):
            credentials = auth.Credentials(*credentials)
        self._credentials = credentials
        self._credentials_loaded = credentials is not None
        self._config_path = config_path
        if insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=ca_file)
        self._transport = Transport(context, timeout=timeout)
        self._base: str | None = None
        self._lock = threading.Lock()
        self._challenge: auth.Challenge | None = None
        self._tokens = auth.TokenCache()

    # -- plumbing -----------------------------------------------------------------

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def repository(self, repo: str) -> str:
        """The repository path as the registry knows it (Docker Hub's ``library/``)."""
        if self.is_docker_hub and "/" not in repo:
            repo = "library/" + repo
        if not _NAME.fullmatch(repo):
            raise InvalidArgument(f"invalid repository name {repo!r}")
        return repo

    def _name(self, repo: str, ref: str = "") -> str:
        sep = "@" if is_digest(ref) else ":"
        return f"{self.host}/{repo}{sep + ref if ref else ''}"

    def credentials(self) -> auth.Credentials | None:
        if not self._credentials_loaded:
            self._credentials = auth.load_credentials(self.host, self._config_path)
            self._credentials_loaded = True
        return self._credentials

    @property
    def base_url(self) -> str:
        """``scheme://host`` of the registry, decided by the first ping."""
        if self._base is None:
            self.ping()
        assert self._base is not None
        return self._base

    def ping(self) -> None:
        """``GET /v2/``: choose the scheme and learn how the registry authenticates."""
        with self._lock:
            if self._base is not None:
                return
            schemes = ["https"]
            if self.insecure or is_local(self.endpoint):
                schemes.append("http")
            last: BaseException | None = None
            for scheme in schemes:
                base = f"{scheme}://{self.endpoint}"
                try:
                    resp = self._transport.request("GET", base + "/v2/")
                except ssl.SSLCertVerificationError as e:
                    raise RegistryError(
                        f"ping {self.host}: tls: certificate verify failed: {e.verify_message}"
                    )
                except CONNECTION_ERRORS as e:
                    last = e
                    continue
                body = resp.read(1 << 16)
                if resp.status == 401:
                    self._learn_challenge(resp)
                elif resp.status != 200:
                    raise from_response(f"ping {self.host}", resp.status, body)
                self._base = base
                return
            raise RegistryError(f"ping {self.host}: {last}")

    def _learn_challenge(self, resp: Response) -> auth.Challenge | None:
        challenges = auth.parse_challenges(resp.headers.get_all("WWW-Authenticate") or [])
        for scheme in ("bearer", "basic"):
            for challenge in challenges:
                if challenge.scheme == scheme:
                    self._challenge = challenge
                    return challenge
        return None

    def _authorization(
        self, scopes: Sequence[str], what: str, *, fresh: bool = False
    ) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials()
            if creds is None:
                raise Unauthorized(f"{what}: basic authentication required, no credentials")
            return creds.basic_header()
        if not fresh:
            token = self._tokens.get(scopes)
            if token is not None:
                return "Bearer " + token
        token, lifetime = self._fetch_token(challenge, scopes, what)
        self._tokens.put(scopes, token, lifetime)
        return "Bearer " + token

    def _fetch_token(
        self, challenge: auth.Challenge, scopes: Sequence[str], what: str
    ) -> tuple[str, float]:
        wanted = list(scopes)
        for scope in challenge.params.get("scope", "").split():
            if scope not in wanted:
                wanted.append(scope)
        creds = self.credentials()
        method, url, headers, body = auth.token_request(challenge, wanted, creds)
        what = f"{what}: get a token from {challenge.params.get('realm')}"
        try:
            resp = self._transport.request(method, url, headers, body)
            data = resp.read(1 << 20)
        except CONNECTION_ERRORS as e:
            raise RegistryError(f"{what}: {e}")
        except ValueError:
            raise RegistryError(f"{what}: answer too large")
        if resp.status in (401, 403):
            who = f"as {creds.username!r}" if creds and creds.username else "anonymously"
            raise Unauthorized(f"{what}: {who}: refused (http {resp.status})")
        if resp.status != 200:
            raise from_response(what, resp.status, data)
        return auth.parse_token_response(data)

    def _send(
        self,
        method: str,
        url: str,
        scopes: Sequence[str],
        what: str,
        headers: dict[str, str] | None = None,
        body: bytes | Iterator[bytes] | None = None,
    ) -> Response:
        """One request with the registry's authentication; a 401 fetches a new token
        (or sends Basic credentials) and retries once, when the body can be resent."""
        same_origin = Origin.of(url) == Origin.of(self.base_url)
        fresh = False
        for attempt in range(2):
            hdrs = dict(headers or {})
            if same_origin:
                authorization = self._authorization(scopes, what, fresh=fresh)
                if authorization:
                    hdrs["Authorization"] = authorization
            try:
                resp = self._transport.request(method, url, hdrs, body)
            except CONNECTION_ERRORS as e:
                raise RegistryError(f"{what}: {e}")
            if resp.status != 401 or not same_origin or attempt == 1:
                return resp
            had_auth = "Authorization" in hdrs
            challenge = self._learn_challenge(resp)
            data = resp.read(1 << 16) if method != "HEAD" else b""
            replayable = body is None or isinstance(body, bytes)
            if challenge is None or not replayable:
                raise from_response(what, 401, data)
            if had_auth and challenge.scheme == "basic":
                raise from_response(what, 401, data)
            # A token the registry refused (expired, other scope) is fetched anew.
            fresh = True
        raise AssertionError("unreachable")

    def _fail(self, resp: Response, what: str) -> DockyardError:
        try:
            body = resp.read(1 << 16) if resp.method != "HEAD" else b""
        except ValueError:
            body = b""
        except CONNECTION_ERRORS:
            body = b""
        return from_response(what, resp.status, body)

    def _url(self, repo: str, kind: str, ref: str = "") -> str:
        return f"{self.base_url}/v2/{repo}/{kind}/{ref}"

    @staticmethod
    def _scopes(repo: str, push: bool = False) -> list[str]:
        return [f"repository:{repo}:{'pull,push' if push else 'pull'}"]

    def _check_ref(self, ref: str) -> str:
        if not (is_digest(ref) or _TAG.fullmatch(ref)):
            raise InvalidArgument(f"invalid tag or digest {ref!r}")
        return ref

    def _follow(
        self, url: str, scopes: Sequence[str], what: str, headers: dict[str, str]
    ) -> Response:
        """GET following redirects; credentials go only to the registry itself."""
        registry = Origin.of(self.base_url)
        for _ in range(_MAX_REDIRECTS + 1):
            origin = Origin.of(url)
            if origin == registry:
                resp = self._send("GET", url, scopes, what, headers)
            else:
                try:
                    resp = self._transport.request("GET", url, headers)
                except CONNECTION_ERRORS as e:
                    raise RegistryError(f"{what}: {origin.netloc}: {e}")
            if resp.status not in (301, 302, 303, 307, 308):
                return resp
            location = resp.header("Location")
            resp.close()
            if not location:
                raise RegistryError(f"{what}: redirect without a location")
            target = urllib.parse.urljoin(url, location)
            new = Origin.of(target)
            if origin.scheme == "https" and new.scheme == "http" and not is_local(new.host):
                raise RegistryError(f"{what}: refused redirect from https to {target}")
            url = target
        raise RegistryError(f"{what}: too many redirects")

    # -- pull ---------------------------------------------------------------------

    def resolve(self, repo: str, ref: str) -> Resolved:
        """What ``ref`` (tag or digest) names: media type, digest and size (HEAD, else GET)."""
        repo = self.repository(repo)
        self._check_ref(ref)
        what = f"resolve {self._name(repo, ref)}"
        url = self._url(repo, "manifests", ref)
        headers = {"Accept": ACCEPT_MANIFESTS}
        resp = self._send("HEAD", url, self._scopes(repo), what, headers)
        if resp.status == 200:
            digest = resp.header("Docker-Content-Digest")
            media_type = _base_media_type(resp.header("Content-Type"))
            length = resp.header("Content-Length")
            if is_digest(ref):
                if digest and digest != ref:
                    raise InvalidArgument(f"{what}: registry answered with digest {digest}")
                digest = ref
            if is_digest(digest) and media_type in MANIFEST_MEDIA_TYPES and length.isdigit():
                return Resolved(media_type, digest, int(length))
        elif resp.status in (401, 403, 404, 429) or resp.status >= 500:
            raise self._fail(resp, what)
        # No usable HEAD answer: fetch the manifest and hash it.
        data, media_type = self.fetch_manifest(repo, ref)
        digest = ref if is_digest(ref) else digest_of(data)
        return Resolved(media_type, digest, len(data))

    def fetch_manifest(self, repo: str, ref: str) -> tuple[bytes, str]:
        """The manifest's bytes and media type (its ``mediaType``, else Content-Type).

        Fetched by digest, the bytes are verified against it.
        """
        repo = self.repository(repo)
        self._check_ref(ref)
        what = f"fetch manifest {self._name(repo, ref)}"
        url = self._url(repo, "manifests", ref)
        resp = self._send("GET", url, self._scopes(repo), what, {"Accept": ACCEPT_MANIFESTS})
        if resp.status != 200:
            raise self._fail(resp, what)
        length = resp.header("Content-Length")
        if length.isdigit() and int(length) > MAX_MANIFEST_SIZE:
            resp.close()
            raise InvalidArgument(f"{what}: manifest of {length} bytes, over the 4 MiB limit")
        try:
            data = resp.read(MAX_MANIFEST_SIZE)
        except ValueError:
            raise InvalidArgument(f"{what}: manifest over the 4 MiB limit")
        except CONNECTION_ERRORS as e:
            raise RegistryError(f"{what}: {e}")
        if is_digest(ref):
            _check_content(what, data, ref)
        header_digest = resp.header("Docker-Content-Digest")
        if is_digest(header_digest):
            _check_content(what, data, header_digest, f" (the registry said {header_digest})")
        return data, self._manifest_media_type(what, data, resp.header("Content-Type"))

    @staticmethod
    def _manifest_media_type(what: str, data: bytes, content_type: str) -> str:
        try:
            doc = json.loads(data)
        except ValueError:
            raise InvalidArgument(f"{what}: manifest is not valid json")
        if not isinstance(doc, dict):
            raise InvalidArgument(f"{what}: manifest is not a json object")
        media_type = doc.get("mediaType")
        if isinstance(media_type, str) and media_type:
            return media_type
        # image-spec leaves mediaType optional in older manifests; the registry's
        # Content-Type (what it was pushed with) decides.
        header = _base_media_type(content_type)
        if header:
            return header
        raise InvalidArgument(f"{what}: manifest has neither mediaType nor content type")

    def fetch_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        sink: Sink,
        *,
        offset: int = 0,
        progress: Progress | None = None,
        _cancel: threading.Event | None = None,
    ) -> None:
        """Stream blob ``digest`` of ``size`` bytes into ``sink``, from ``offset`` on.

        Redirects are followed; a connection that drops mid-blob is resumed with
        ``Range`` (``retries`` times). Started at offset 0, the digest is verified
        at the end (``InvalidArgument`` when it differs: the caller must not
        commit); resumed from an earlier offset, the sink's commit verifies it.
        """
        repo = self.repository(repo)
        validate_digest(digest)
        if size < 0 or not 0 <= offset <= size:
            raise InvalidArgument(f"fetch blob {digest}: invalid size {size} or offset {offset}")
        what = f"fetch blob {self._name(repo, digest)}"
        url = self._url(repo, "blobs", digest)
        hasher = digester_for(digest) if offset == 0 else None
        if offset and offset == size:
            return
        done = offset
        failures = 0
        while True:
            headers = {"Range": f"bytes={done}-"} if done else {}
            received = self._fetch_range(
                url, repo, what, headers, done, size, sink, hasher, progress, _cancel
            )
            if isinstance(received, int):
                if received > done:
                    failures = 0
                done = received
                if done >= size:
                    break
                error = "connection closed early"
            else:
                error = str(received) or type(received).__name__
            failures += 1
            if failures > self.retries:
                raise RegistryError(f"{what}: connection lost at byte {done} of {size}: {error}")
            time.sleep(min(0.05 * 2**failures, 2.0))
        if hasher is not None:
            actual = hasher.digest()
            if actual != digest:
                raise InvalidArgument(f"{what}: content has digest {actual}")

    def _fetch_range(
        self,
        url: str,
        repo: str,
        what: str,
        headers: dict[str, str],
        done: int,
        size: int,
        sink: Sink,
        hasher: Digester | None,
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> int | BaseException:
        """One GET from ``done`` on: the new offset, or the connection error that cut it."""
        try:
            resp = self._follow(url, self._scopes(repo), what, headers)
        except RegistryError as e:
            if isinstance(e.__context__, CONNECTION_ERRORS):
                return e
            raise
        skip = 0
        if resp.status == 206:
            content_range = resp.header("Content-Range")
            m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range.strip())
            if not m or int(m.group(1)) != done:
                resp.close()
                raise RegistryError(f"{what}: bad content-range {content_range!r} for {done}-")
        elif resp.status == 200:
            skip = done  # the server ignored Range: drop what we already have
        else:
            raise self._fail(resp, what)
        chunks = resp.stream()
        try:
            while True:
                try:
                    chunk = next(chunks, None)
                except CONNECTION_ERRORS as e:
                    return e
                if chunk is None:
                    return done
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                    if not chunk:
                        continue
                if done + len(chunk) > size:
                    raise InvalidArgument(f"{what}: more than the expected {size} bytes")
                if cancel is not None and cancel.is_set():
                    raise _Cancelled()
                sink.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, size)
        finally:
            chunks.close()

    def fetch_blobs(
        self,
        repo: str,
        blobs: Sequence[BlobFetch],
        *,
        parallel: int | None = None,
        progress: BlobProgress | None = None,
    ) -> None:
        """Fetch several blobs, ``parallel`` at a time (default: the client's, 3).

        ``progress(digest, done, total)`` is called from the worker threads. The
        first failure stops the other downloads and is raised.
        """
        if not blobs:
            return
        cancel = threading.Event()

        def one(blob: BlobFetch) -> None:
            def report(done: int, total: int) -> None:
                if progress is not None:
                    progress(blob.digest, done, total)

            self.fetch_blob(
                repo,
                blob.digest,
                blob.size,
                blob.sink,
                offset=blob.offset,
                progress=report,
                _cancel=cancel,
            )

        workers = max(1, min(parallel or self.parallel, len(blobs)))
        self.base_url  # noqa: B018 -- ping once, before the threads race to it
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blob") as pool:
            futures = [pool.submit(one, blob) for blob in blobs]
            wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.done() and f.exception() is not None for f in futures):
                cancel.set()
                for f in futures:
                    f.cancel()
        errors = [f.exception() for f in futures if not f.cancelled()]
        for error in errors:
            if error is not None and not isinstance(error, _Cancelled):
                raise error

    # -- push ---------------------------------------------------------------------

    def blob_exists(self, repo: str, digest: str) -> bool:
        repo = self.repository(repo)
        validate_digest(digest)
        what = f"check blob {self._name(repo, digest)}"
        resp = self._send("HEAD", self._url(repo, "blobs", digest), self._scopes(repo), what)
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise self._fail(resp, what)

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount of ``digest`` from ``from_repo``; False when the
        registry did not mount it (the upload it opened instead is cancelled)."""
        repo = self.repository(repo)
        from_repo = self.repository(from_repo)
        validate_digest(digest)
        what = f"mount blob {digest} from {from_repo} into {self._name(repo)}"
        query = urllib.parse.urlencode({"mount": digest, "from": from_repo})
        url = f"{self.base_url}/v2/{repo}/blobs/uploads/?{query}"
        scopes = [*self._scopes(repo, push=True), *self._scopes(from_repo)]
        resp = self._send("POST", url, scopes, what)
        if resp.status == 201:
            resp.read(1 << 16)
            got = resp.header("Docker-Content-Digest")
            if got and got != digest:
                raise InvalidArgument(f"{what}: registry mounted {got}")
            return True
        if resp.status == 202:
            resp.read(1 << 16)
            self._cancel_upload(repo, resp.header("Location"), scopes)
            return False
        raise self._fail(resp, what)

    def push_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        data: bytes | IO[bytes],
        *,
        chunk_size: int | None = None,
        mount_from: Sequence[str] = (),
    ) -> str:
        """Make blob ``digest`` present in ``repo``: ``"exists"``, ``"mounted"`` (from one
        of ``mount_from``) or ``"uploaded"``."""
        if self.blob_exists(repo, digest):
            return "exists"
        for source in mount_from:
            if self.mount_blob(repo, digest, source):
                return "mounted"
        self.upload_blob(repo, digest, size, data, chunk_size=chunk_size)
        return "uploaded"

    def upload_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        data: bytes | IO[bytes],
        *,
        chunk_size: int | None = None,
    ) -> None:
        """Upload a blob: monolithic (POST, then one PUT with the bytes) or, with
        ``chunk_size``, chunked (POST, PATCHes with Content-Range, PUT)."""
        repo = self.repository(repo)
        validate_digest(digest)
        what = f"upload blob {self._name(repo, digest)}"
        if isinstance(data, bytes):
            if len(data) != size:
                raise InvalidArgument(f"{what}: {len(data)} bytes given, size says {size}")
            _check_content(what, data, digest)
        scopes = self._scopes(repo, push=True)
        location = self._start_upload(repo, scopes, what)
        hasher = digester_for(digest)
        pieces = _pieces(data, size, chunk_size or (1 << 20), hasher, what)
        if chunk_size is None:
            url = _with_query(location, digest=digest)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            resp = self._send("PUT", url, scopes, what, headers, pieces)
        else:
            if chunk_size <= 0:
                raise InvalidArgument(f"{what}: invalid chunk size {chunk_size}")
            offset = 0
            for piece in pieces:
                location = self._patch(location, scopes, what, piece, offset)
                offset += len(piece)
            actual = hasher.digest()
            if actual != digest:
                self._cancel_upload(repo, location, scopes)
                raise InvalidArgument(f"{what}: content has digest {actual}")
            url = _with_query(location, digest=digest)
            resp = self._send("PUT", url, scopes, what)
        if resp.status != 201:
            raise self._fail(resp, what)
        resp.read(1 << 16)
        got = resp.header("Docker-Content-Digest")
        if got and got != digest:
            raise InvalidArgument(f"{what}: registry stored digest {got}")

    def _start_upload(self, repo: str, scopes: Sequence[str], what: str) -> str:
        resp = self._send("POST", f"{self.base_url}/v2/{repo}/blobs/uploads/", scopes, what)
        if resp.status != 202:
            raise self._fail(resp, what)
        resp.read(1 << 16)
        location = resp.header("Location")
        if not location:
            raise RegistryError(f"{what}: upload started without a location")
        return urllib.parse.urljoin(self.base_url + "/", location)

    def _patch(
        self, location: str, scopes: Sequence[str], what: str, piece: bytes, offset: int
    ) -> str:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(piece) - 1}",
        }
        resp = self._send("PATCH", location, scopes, what, headers, piece)
        if resp.status != 202:
            raise self._fail(resp, what)
        resp.read(1 << 16)
        end = offset + len(piece) - 1
        got = resp.header("Range")
        if got and got.removeprefix("bytes=") != f"0-{end}":
            raise RegistryError(f"{what}: registry has range {got}, expected 0-{end}")
        return urllib.parse.urljoin(location, resp.header("Location") or location)

    def _cancel_upload(self, repo: str, location: str, scopes: Sequence[str]) -> None:
        if not location:
            return
        url = urllib.parse.urljoin(self.base_url + "/", location)
        try:
            resp = self._send("DELETE", url, scopes, f"cancel upload to {self._name(repo)}")
            resp.read(1 << 16)
        except (DockyardError, ValueError):
            pass  # the registry expires abandoned uploads itself

    def push_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or its digest; returns its digest."""
        repo = self.repository(repo)
        self._check_ref(ref)
        what = f"push manifest {self._name(repo, ref)}"
        if len(data) > MAX_MANIFEST_SIZE:
            raise InvalidArgument(f"{what}: manifest over the 4 MiB limit")
        algorithm = ref.split(":")[0] if is_digest(ref) else "sha256"
        digest = _check_content(what, data, ref) if is_digest(ref) else digest_of(data, algorithm)
        url = self._url(repo, "manifests", ref)
        headers = {"Content-Type": media_type}
        resp = self._send("PUT", url, self._scopes(repo, push=True), what, headers, data)
        if resp.status != 201:
            raise self._fail(resp, what)
        resp.read(1 << 16)
        got = resp.header("Docker-Content-Digest")
        if got and got.split(":")[0] == algorithm and got != digest:
            raise InvalidArgument(f"{what}: registry stored digest {got}, we sent {digest}")
        return digest

    def tags(self, repo: str, *, page_size: int | None = None) -> list[str]:
        """All tags of ``repo``, following the ``Link`` header's pages."""
        repo = self.repository(repo)
        what = f"list tags of {self._name(repo)}"
        url = f"{self.base_url}/v2/{repo}/tags/list"
        if page_size:
            url += f"?n={page_size}"
        tags: list[str] = []
        seen: set[str] = set()
        while url and url not in seen:
            seen.add(url)
            resp = self._send("GET", url, self._scopes(repo), what)
            if resp.status != 200:
                raise self._fail(resp, what)
            try:
                doc = json.loads(resp.read(MAX_MANIFEST_SIZE))
            except ValueError:
                raise InvalidArgument(f"{what}: invalid json")
            page = doc.get("tags") if isinstance(doc, dict) else None
            tags.extend(t for t in page or [] if isinstance(t, str))
            url = _next_link(resp.header("Link"), url)
        return tags


def _next_link(header: str, current: str) -> str:
    """The ``rel="next"`` target of a Link header (RFC 8288), resolved against ``current``."""
    for part in header.split(","):
        m = re.match(r"\s*<([^>]*)>\s*;(.*)", part)
        if m and re.search(r'rel="?next"?', m.group(2)):
            return urllib.parse.urljoin(current, m.group(1))
    return ""


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = parts.query + ("&" if parts.query else "") + urllib.parse.urlencode(params)
    return urllib.parse.urlunsplit(parts._replace(query=query))


def _pieces(
    data: bytes | IO[bytes], size: int, piece: int, hasher: Digester, what: str
) -> Iterator[bytes]:
    """``size`` bytes of ``data`` in pieces, hashed on the way."""
    sent = 0
    while sent < size:
        n = min(piece, size - sent)
        chunk = data[sent : sent + n] if isinstance(data, bytes) else data.read(n)
        if not chunk:
            raise InvalidArgument(f"{what}: source ended at {sent} of {size} bytes")
        hasher.update(chunk)
        sent += len(chunk)
        yield chunk


def _check_content(what: str, data: bytes, digest: str, said: str = "") -> str:
    """``digest``, once ``data`` is seen to have it (hashed with its algorithm);
    InvalidArgument naming the digest the content has otherwise."""
    actual = digest_of(data, digest.split(":", 1)[0])
    if actual != digest:
        raise InvalidArgument(f"{what}: content has digest {actual}{said}")
    return digest
