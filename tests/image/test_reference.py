"""Docker's image name rules: what ``docker pull NAME`` would ask for, and what it refuses."""

from __future__ import annotations

import pytest

from dockyard.errors import InvalidArgument
from dockyard.image.reference import Reference, parse

H = "a" * 64
D = f"sha256:{H}"

# input -> (normalised str, familiar form, registry host)
VALID: dict[str, tuple[str, str, str]] = {
    "busybox": ("docker.io/library/busybox:latest", "busybox:latest", "registry-1.docker.io"),
    "busybox:1.36": ("docker.io/library/busybox:1.36", "busybox:1.36", "registry-1.docker.io"),
    "library/busybox": (
        "docker.io/library/busybox:latest",
        "busybox:latest",
        "registry-1.docker.io",
    ),
    "docker.io/busybox": (
        "docker.io/library/busybox:latest",
        "busybox:latest",
        "registry-1.docker.io",
    ),
    "index.docker.io/busybox": (
        "docker.io/library/busybox:latest",
        "busybox:latest",
        "registry-1.docker.io",
    ),
    "user/app": ("docker.io/user/app:latest", "user/app:latest", "registry-1.docker.io"),
    "user/app/sub": (
        "docker.io/user/app/sub:latest",
        "user/app/sub:latest",
        "registry-1.docker.io",
    ),
    "library/a/b": ("docker.io/library/a/b:latest", "library/a/b:latest", "registry-1.docker.io"),
    f"busybox@{D}": (f"docker.io/library/busybox@{D}", f"busybox@{D}", "registry-1.docker.io"),
    f"busybox:1@{D}": (
        f"docker.io/library/busybox:1@{D}",
        f"busybox:1@{D}",
        "registry-1.docker.io",
    ),
    f"localhost:5000/a/b@{D}": (
        f"localhost:5000/a/b@{D}",
        f"localhost:5000/a/b@{D}",
        "localhost:5000",
    ),
    "localhost/app": ("localhost/app:latest", "localhost/app:latest", "localhost"),
    "localhost:5000/app:v1": ("localhost:5000/app:v1", "localhost:5000/app:v1", "localhost:5000"),
    # a single "localhost:5000" is the image "localhost" with tag "5000", as in Docker
    "localhost:5000": (
        "docker.io/library/localhost:5000",
        "localhost:5000",
        "registry-1.docker.io",
    ),
    "quay.io/coreos/etcd:v3.5": (
        "quay.io/coreos/etcd:v3.5",
        "quay.io/coreos/etcd:v3.5",
        "quay.io",
    ),
    "127.0.0.1:5000/x": ("127.0.0.1:5000/x:latest", "127.0.0.1:5000/x:latest", "127.0.0.1:5000"),
    "[::1]:5000/x:y": ("[::1]:5000/x:y", "[::1]:5000/x:y", "[::1]:5000"),
    "registry:5000/x": ("registry:5000/x:latest", "registry:5000/x:latest", "registry:5000"),
    # an uppercase first component can only be a domain
    "Example/app": ("Example/app:latest", "Example/app:latest", "Example"),
    "ex-ample.com/a_b/c__d/e-f/g--h/i.j": (
        "ex-ample.com/a_b/c__d/e-f/g--h/i.j:latest",
        "ex-ample.com/a_b/c__d/e-f/g--h/i.j:latest",
        "ex-ample.com",
    ),
    "a:Tag_1.0-rc": ("docker.io/library/a:Tag_1.0-rc", "a:Tag_1.0-rc", "registry-1.docker.io"),
    "a:_x": ("docker.io/library/a:_x", "a:_x", "registry-1.docker.io"),
    "0/1": ("docker.io/0/1:latest", "0/1:latest", "registry-1.docker.io"),
    f"a:{'t' * 128}": (
        f"docker.io/library/a:{'t' * 128}",
        f"a:{'t' * 128}",
        "registry-1.docker.io",
    ),
}


@pytest.mark.parametrize("ref", sorted(VALID))
def test_valid(ref: str) -> None:
    normalised, familiar, host = VALID[ref]
    r = parse(ref)
    assert str(r) == normalised
    assert r.familiar() == familiar
    assert r.registry_host == host
    assert parse(str(r)) == r, "the normalised form parses to itself"
    assert parse(r.familiar()) == r, "the familiar form parses to the same reference"


INVALID: dict[str, tuple[str, str]] = {
    "empty": ("", "empty reference"),
    "uppercase repo": ("Busybox", "must be lowercase"),
    "uppercase path": ("user/App", "must be lowercase"),
    "uppercase after domain": ("quay.io/Foo/bar", "must be lowercase"),
    "empty component": ("user//app", "empty path component"),
    "trailing slash": ("user/app/", "empty path component"),
    "leading slash": ("/app", "empty path component"),
    "only domain": ("quay.io/", "empty path component"),
    "tag only": (":latest", "has no repository name"),
    "empty tag": ("busybox:", "invalid tag ''"),
    "tag with dash first": ("busybox:-x", "invalid tag '-x'"),
    "tag with dot first": ("busybox:.x", "invalid tag '.x'"),
    "tag too long": (f"busybox:{'t' * 129}", "invalid tag"),
    "tag with slash-free junk": ("busybox:a$b", "invalid tag 'a$b'"),
    "tag non-ascii": ("busybox:é", "invalid tag"),
    "bad digest": ("busybox@sha256:abc", "wants 64 hex characters"),
    "digest unknown algorithm": (f"busybox@md5:{'a' * 32}", "unsupported digest algorithm"),
    "empty digest": ("busybox@", "invalid digest ''"),
    "two ats": (f"busybox@{D}@{D}", "not lowercase hex"),
    "separator first": ("-busybox", "invalid path component '-busybox'"),
    "separator last": ("busybox-", "invalid path component 'busybox-'"),
    "triple underscore": ("a___b", "invalid path component 'a___b'"),
    "dot dot": ("a..b", "invalid path component 'a..b'"),
    "dash dot": ("a-.b", "invalid path component"),
    "bad char": ("a+b", "invalid path component 'a+b'"),
    "domain starts with dash": ("-quay.io/a", "invalid domain '-quay.io'"),
    "domain bad port": ("quay.io:port/a", "invalid domain 'quay.io:port'"),
    "whitespace": ("busy box", "contains whitespace"),
    "identifier": (H, "cannot specify 64-byte hexadecimal strings"),
    "too long": ("a/" + "b" * 250, "must not be more than 255 characters"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid(case: str) -> None:
    ref, message = INVALID[case]
    with pytest.raises(InvalidArgument) as e:
        parse(ref)
    assert message in str(e.value)
    assert str(e.value) == str(e.value).strip()


def test_fields() -> None:
    r = parse(f"localhost:5000/a/b:v1@{D}")
    assert r == Reference("localhost:5000", "a/b", "v1", D)
    assert r.name == "localhost:5000/a/b"
    assert r.object == D, "a digest pins what is pulled, whatever the tag"
    assert parse("busybox").object == "latest"


def test_without_default_tag() -> None:
    assert parse("busybox", default_tag=False).tag is None
    assert parse("busybox:1", default_tag=False).tag == "1"


def test_with_tag_and_digest() -> None:
    r = parse(f"busybox@{D}")
    assert str(r.with_tag("1.36")) == "docker.io/library/busybox:1.36"
    assert str(parse("busybox").with_digest(D)) == f"docker.io/library/busybox:latest@{D}"
    with pytest.raises(InvalidArgument, match="invalid tag"):
        r.with_tag("-x")
    with pytest.raises(InvalidArgument, match="invalid digest"):
        r.with_digest("sha256:1")
