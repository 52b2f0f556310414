"""Helpers of the image-side supervisor tests: gRPC stubs on the socket, blob
writes through the content service, a registry with the busybox image, and
looks at what the supervisor keeps on disk."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from dockyard.api.services.content.v1 import content_pb2 as cpb
from dockyard.api.services.content.v1 import content_pb2_grpc
from dockyard.api.services.diff.v1 import diff_pb2_grpc
from dockyard.api.services.images.v1 import images_pb2_grpc
from dockyard.api.services.leases.v1 import leases_pb2_grpc
from dockyard.api.services.snapshots.v1 import snapshots_pb2_grpc
from tests.compat import host
from tests.image.registry_fixture import RegistryServer
from tests.images import ImageArchive
from tests.supervisor.conftest import Supervisor


class Stubs:
    """The image-side services on one channel."""

    def __init__(self, ch: grpc.Channel) -> None:
        self.content = content_pb2_grpc.ContentStub(ch)
        self.images = images_pb2_grpc.ImagesStub(ch)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(ch)
        self.diff = diff_pb2_grpc.DiffStub(ch)
        self.leases = leases_pb2_grpc.LeasesStub(ch)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# The lease the tests' gRPC requests run under (``open_namespace`` makes it):
# what they create is kept from garbage collection until the test ends, as
# containerd's clients keep what they work on.
KEEP = "keep"


def md(ns: str, lease: str | None = KEEP) -> list[tuple[str, str]]:
    out = [("containerd-namespace", ns)]
    if lease:
        out.append(("containerd-lease", lease))
    return out


@contextlib.contextmanager
def fails(code: grpc.StatusCode, match: str = "") -> Iterator[None]:
    """The block must fail with ``code`` and a message matching ``match``."""
    with pytest.raises(grpc.RpcError) as err:
        yield
    call: Any = err.value
    assert call.code() == code, f"{call.code()}: {call.details()}"
    assert re.search(match, call.details() or ""), call.details()


def write_blob(
    content: content_pb2_grpc.ContentStub,
    ns: str,
    data: bytes,
    *,
    ref: str | None = None,
    expected: str | None = None,
    labels: dict[str, str] | None = None,
    lease: str | None = KEEP,
) -> list[cpb.WriteContentResponse]:
    """One Write stream: STAT with the total and expected digest, then COMMIT with the data."""
    reqs = [
        cpb.WriteContentRequest(
            action=cpb.STAT,
            ref=ref or "test-" + uuid.uuid4().hex,
            total=len(data),
            expected=digest_of(data) if expected is None else expected,
        ),
        cpb.WriteContentRequest(
            action=cpb.COMMIT,
            total=len(data),
            expected=digest_of(data) if expected is None else expected,
            data=data,
            labels=labels or {},
        ),
    ]
    return list(content.Write(iter(reqs), metadata=md(ns, lease)))


def new_namespace() -> str:
    return "t-" + uuid.uuid4().hex[:10]


def open_namespace(sup: Supervisor) -> str:
    """A new namespace with the lease ``KEEP`` in it."""
    ns = new_namespace()
    sup.ctr("leases", "create", "--id", KEEP, namespace=ns)
    return ns


def empty_namespace(sup: Supervisor, ns: str) -> None:
    """Remove what a test left in ``ns``, then the namespace (teardown)."""
    names = sup.ctr("images", "ls", "-q", namespace=ns, check=False).stdout.split()
    for name in names:
        sup.ctr("images", "rm", name, namespace=ns, check=False)
    for line in sup.ctr("leases", "ls", "-q", namespace=ns, check=False).stdout.split():
        sup.ctr("leases", "rm", line, namespace=ns, check=False)
    for d in sup.ctr("content", "ls", "-q", namespace=ns, check=False).stdout.split():
        sup.ctr("content", "rm", d, namespace=ns, check=False)
    # children before parents: the listing's parents come after their children
    for _ in range(10):
        keys = snapshot_keys(sup, ns)
        if not keys:
            break
        for key in keys:
            sup.ctr("snapshots", "rm", key, namespace=ns, check=False)
    for ref in sup.ctr("content", "active", namespace=ns, check=False).stdout.splitlines()[1:]:
        if ref.split():
            sup.ctr("content", "rm", ref.split()[0], namespace=ns, check=False)
    sup.ctr("namespaces", "rm", ns, check=False)


def snapshot_keys(sup: Supervisor, ns: str, snapshotter: str = "overlayfs") -> list[str]:
    out = sup.ctr("snapshots", "--snapshotter", snapshotter, "ls", namespace=ns).stdout
    return [line.split()[0] for line in out.splitlines()[1:] if line.split()]


def content_digests(sup: Supervisor, ns: str) -> list[str]:
    return sorted(sup.ctr("content", "ls", "-q", namespace=ns).stdout.split())


def backend_blobs(sup: Supervisor) -> list[str]:
    """Every blob the supervisor stores, whatever namespace has it."""
    d = sup.root / "content" / "blobs" / "sha256"
    return sorted("sha256:" + n for n in os.listdir(d)) if d.is_dir() else []


def backend_ingests(sup: Supervisor) -> list[str]:
    d = sup.root / "content" / "ingest"
    return sorted(os.listdir(d)) if d.is_dir() else []


def backend_snapshot_dirs(sup: Supervisor) -> list[str]:
    """The snapshot directories of every snapshotter."""
    out = []
    for name in ("overlayfs", "native"):
        d = sup.root / "snapshots" / name / "snapshots"
        if d.is_dir():
            out += [f"{name}/{n}" for n in os.listdir(d)]
    return sorted(out)


def mounts_of(sup: Supervisor) -> list[str]:
    """Mounts under the supervisor's directories (none may be left by a request)."""
    return host.mounts_under(sup.base)


def push_image(registry: RegistryServer, archive: ImageArchive, repo: str) -> str:
    """Push the busybox archive into ``registry`` with skopeo; the reference pushed."""
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    ref = f"{registry.host}/{repo}"
    subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", f"oci-archive:{archive.path}",
         f"docker://{ref}"],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    return ref


def gc_settled(sup: Supervisor, ns: str) -> None:
    """Wait for the background collection after a deletion: nothing left in ``ns``."""
    host.wait_for(
        lambda: not content_digests(sup, ns) and not snapshot_keys(sup, ns),
        30,
        f"garbage collection of namespace {ns}",
    )


def layer(files: dict[str, bytes]) -> bytes:
    """An uncompressed layer tar of regular files (name -> content), mode 0644."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()
