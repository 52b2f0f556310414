"""Image references with Docker's name rules (distribution/reference, ``normalize.go``).

API summary::

    ref = parse("busybox")          # Reference(domain="docker.io", path="library/busybox",
                                    #           tag="latest", digest=None)
    str(ref)                        # "docker.io/library/busybox:latest"
    ref.familiar()                  # "busybox:latest"
    ref.name                        # "docker.io/library/busybox"
    ref.registry_host               # "registry-1.docker.io"
    parse("localhost:5000/a/b@sha256:<hex>")   # tag None: a digest pins the image
    ref.with_tag("1.36"), ref.with_digest("sha256:...")

The grammar, from distribution/reference's ``regexp.go``::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [domain "/"] path-component ("/" path-component)*
    domain     := host [":" port]       (host: DNS labels joined by ".", or [ipv6])
    path-component := [a-z0-9]+ (separator [a-z0-9]+)*   separator: "." "_" "__" "-"+
    tag        := [\\w][\\w.-]{0,127}

Normalisation (``ParseNormalizedNamed``): the first component is a domain
when it contains ``.`` or ``:``, is ``localhost``, or has an uppercase
letter; otherwise the domain is ``docker.io``, and a single-component path on
it gets ``library/``. ``index.docker.io`` becomes ``docker.io``. Without a
tag or digest, the tag is ``latest``; with both, both are kept (the digest
is what gets pulled). Bad names raise ``InvalidArgument`` saying why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from dockyard.errors import InvalidArgument
from dockyard.spec.image import parse_digest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
DEFAULT_REGISTRY_HOST = "registry-1.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z", re.ASCII)
_IDENTIFIER = re.compile(r"[a-f0-9]{64}\Z")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository's full name, ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def registry_host(self) -> str:
        """The host (and port) that serves the repository's distribution API."""
        return DEFAULT_REGISTRY_HOST if self.domain == DEFAULT_DOMAIN else self.domain

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()

    def familiar_name(self) -> str:
        """The repository name as Docker's UI shows it: ``busybox``, ``user/app``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        rest = self.path.removeprefix(OFFICIAL_REPO_PREFIX)
        return rest if "/" not in rest else self.path

    def familiar(self) -> str:
        """The short form: ``busybox:latest``, ``user/app@sha256:...``, ``quay.io/x/y:1``."""
        return self.familiar_name() + self._suffix()

    @property
    def object(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        _check_tag(tag, tag)
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        parse_digest(digest, f"invalid reference format: digest of {self.name}")
        return replace(self, digest=digest)


def _check_tag(tag: str, ref: str) -> None:
    if not _TAG.match(tag):
        raise InvalidArgument(
            f"invalid reference format: invalid tag {tag!r} in {ref!r}"
            " (want letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-')"
        )


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if not slash:
        return DEFAULT_DOMAIN, OFFICIAL_REPO_PREFIX + name
    if first == LEGACY_DEFAULT_DOMAIN:
        domain, path = DEFAULT_DOMAIN, rest
    elif first == "localhost" or "." in first or ":" in first or first.lower() != first:
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def parse(ref: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise ``ref`` as ``docker pull`` does.

    ``default_tag=False`` leaves ``tag`` None when the reference has neither
    a tag nor a digest (for commands that mean "all tags" or "the repository").
    """
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument("invalid reference format: empty reference")
    if _IDENTIFIER.match(ref):
        raise InvalidArgument(
            f"invalid repository name ({ref}), cannot specify 64-byte hexadecimal strings"
        )
    if any(c.isspace() for c in ref):
        raise InvalidArgument(f"invalid reference format: {ref!r} contains whitespace")

    rest, at, digest = ref.partition("@")
    if at:
        parse_digest(digest, f"invalid reference format: digest of {ref!r}")
    tag: str | None = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        _check_tag(tag, ref)
    if not rest:
        raise InvalidArgument(f"invalid reference format: {ref!r} has no repository name")

    domain, path = _split_domain(rest)
    if not _DOMAIN.match(domain):
        raise InvalidArgument(f"invalid reference format: invalid domain {domain!r} in {ref!r}")
    if path.lower() != path:
        raise InvalidArgument(
            f"invalid reference format: repository name ({path}) must be lowercase"
        )
    for component in path.split("/"):
        if not component:
            raise InvalidArgument(f"invalid reference format: empty path component in {ref!r}")
        if not _PATH_COMPONENT.match(component):
            raise InvalidArgument(
                f"invalid reference format: invalid path component {component!r} in {ref!r}"
                " (want [a-z0-9] separated by '.', '_', '__' or dashes)"
            )
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidArgument(
            f"invalid reference format: repository name must not be more than"
            f" {NAME_TOTAL_LENGTH_MAX} characters: {ref!r}"
        )
    if tag is None and not at and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest if at else None)
