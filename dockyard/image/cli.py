"""``dockyard-image``: a daemonless tool over the image library (as skopeo is).

All state lives under ``--root`` (default /var/lib/dockyard): ``content/``
(blobs and ingests), ``metadata.db`` (image records), ``snapshots/<name>/``.
With ``unpack REF DIR`` and ``dockyard-runtime run``, any image runs with no
daemon at all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Any, TextIO

from dockyard.errors import DockyardError, InvalidArgument
from dockyard.image import reference
from dockyard.image.content import ContentStore
from dockyard.image.images import Image, ImageStore
from dockyard.spec.image import (
    INDEX_TYPES,
    MAX_MANIFEST_SIZE,
    Manifest,
    parse_index,
    parse_manifest,
    select_manifest,
)

DEFAULT_ROOT = "/var/lib/dockyard"


class Stores:
    def __init__(self, root: str, namespace: str) -> None:
        self.root = root
        self.namespace = namespace
        self.content = ContentStore(os.path.join(root, "content"))
        self.images = ImageStore(os.path.join(root, "metadata.db"))

    def snapshotter(self, kind: str) -> Any:
        from dockyard.image.snapshots import new

        return new(kind, os.path.join(self.root, "snapshots", kind))

    def manifest(self, image: Image) -> Manifest:
        """The image's manifest for this host (the target, or chosen from its index)."""
        desc = image.target
        data = self.content.read_bytes(desc.digest, max_size=MAX_MANIFEST_SIZE)
        if desc.media_type in INDEX_TYPES:
            chosen = select_manifest(parse_index(data, desc.media_type))
            data = self.content.read_bytes(chosen.digest, max_size=MAX_MANIFEST_SIZE)
            return parse_manifest(data, chosen.media_type)
        return parse_manifest(data, desc.media_type)

    def image(self, name: str) -> Image:
        return self.images.get(self.namespace, str(reference.parse(name)))


class Progress:
    """Per-layer progress: bars redrawn in place on a terminal, one line per layer else.

    Called from the download threads; one lock keeps the redraws whole.
    """

    WIDTH = 30

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.rows: dict[str, tuple[int, int]] = {}
        self.drawn = 0
        self.finished: set[str] = set()
        self.lock = threading.Lock()

    def line(self, digest: str, done: int, total: int) -> str:
        short = digest.split(":", 1)[-1][:12]
        filled = self.WIDTH * done // total if total else self.WIDTH
        bar = "=" * filled + " " * (self.WIDTH - filled)
        state = "done" if total and done >= total else f"{done >> 20}/{total >> 20} MiB"
        return f"{short} [{bar}] {state}"

    def __call__(self, digest: str, done: int, total: int) -> None:
        with self.lock:
            if not self.tty:
                if total and done >= total and digest not in self.finished:
                    self.finished.add(digest)
                    self.stream.write(f"{digest}: fetched {total} bytes\n")
                    self.stream.flush()
                return
            self.rows[digest] = (done, total)
            out = [f"\x1b[{self.drawn}F"] if self.drawn else []
            for d, (n, t) in self.rows.items():
                out.append("\x1b[2K" + self.line(d, n, t) + "\n")
            self.drawn = len(self.rows)
            self.stream.write("".join(out))
            self.stream.flush()


def cmd_pull(s: Stores, a: argparse.Namespace) -> int:
    from dockyard.image.gc import gc_lock
    from dockyard.image.pull import pull

    snaps = s.snapshotter(a.snapshotter) if not a.no_unpack else None
    try:
        # shared with other pulls, exclusive of a gc: what a pull fetched is
        # not referenced by an image record until its end
        with gc_lock(s.root, shared=True):
            res = pull(
                a.ref,
                content=s.content,
                images=s.images,
                namespace=s.namespace,
                snapshotter=snaps,
                insecure=a.insecure,
                ca_file=a.ca_file,
                progress=Progress(sys.stderr),
                parallel=a.parallel,
            )
    finally:
        if snaps is not None:
            snaps.close()
    print(f"{res.image.name} {res.image.target.digest}")
    return 0


def cmd_ls(s: Stores, a: argparse.Namespace) -> int:
    imgs = s.images.list(s.namespace)
    if a.format == "json":
        print(
            json.dumps(
                [
                    {
                        "name": i.name,
                        "target": i.target.to_json(),
                        "labels": i.labels,
                        "created": i.created_at.isoformat() if i.created_at else None,
                    }
                    for i in imgs
                ],
                indent=2,
            )
        )
        return 0
    print(f"{'REF':<60} {'TYPE':<50} DIGEST")
    for i in imgs:
        print(f"{i.name:<60} {i.target.media_type:<50} {i.target.digest}")
    return 0


def cmd_inspect(s: Stores, a: argparse.Namespace) -> int:
    img = s.image(a.ref)
    m = s.manifest(img)
    config = json.loads(s.content.read_bytes(m.config.digest))
    print(
        json.dumps(
            {
                "name": img.name,
                "target": img.target.to_json(),
                "manifest": {
                    "config": m.config.to_json(),
                    "layers": [d.to_json() for d in m.layers],
                },
                "config": config,
            },
            indent=2,
        )
    )
    return 0


def cmd_rm(s: Stores, a: argparse.Namespace) -> int:
    for ref in a.refs:
        s.images.delete(s.namespace, str(reference.parse(ref)))
    return 0


def cmd_tag(s: Stores, a: argparse.Namespace) -> int:
    img = s.image(a.source)
    s.images.put(s.namespace, Image(str(reference.parse(a.target)), img.target, img.labels))
    return 0


def cmd_unpack(s: Stores, a: argparse.Namespace) -> int:
    from dockyard.image.unpack import unpack_to_dir

    img = s.image(a.ref)
    m = s.manifest(img)
    for d in [m.config, *m.layers]:
        if not s.content.exists(d.digest):
            raise InvalidArgument(f"unpack {a.ref}: blob {d.digest} is missing: pull it again")
    if os.path.exists(a.dir) and os.listdir(a.dir):
        raise InvalidArgument(f"unpack {a.ref}: {a.dir} exists and is not empty")
    os.makedirs(a.dir, exist_ok=True)
    unpack_to_dir(s.content, m, a.dir)
    return 0


def cmd_import(s: Stores, a: argparse.Namespace) -> int:
    from dockyard.image.gc import gc_lock
    from dockyard.image.transfer import import_archive

    with gc_lock(s.root, shared=True):
        imported = import_archive(s.content, s.images, s.namespace, a.src, a.name)
    for img in imported:
        print(f"{img.name} {img.target.digest}")
    return 0


def cmd_export(s: Stores, a: argparse.Namespace) -> int:
    from dockyard.image.transfer import export_docker_archive, export_oci

    export = export_oci if a.format == "oci" else export_docker_archive
    export(s.content, s.images, s.namespace, a.refs, a.out)
    return 0


def cmd_push(s: Stores, a: argparse.Namespace) -> int:
    from dockyard.image.push import push

    def report(digest: str, state: str) -> None:
        sys.stderr.write(f"{digest.split(':', 1)[-1][:12]}: {state}\n")

    res = push(
        a.ref,
        s.content,
        s.images,
        s.namespace,
        insecure=a.insecure,
        ca_file=a.ca_file,
        progress=report,
    )
    print(f"{res.name} {res.digest}")
    return 0


def cmd_gc(s: Stores, a: argparse.Namespace) -> int:
    from dockyard.image.gc import collect
    from dockyard.image.leases import LeaseStore

    kinds = [
        k for k in ("overlayfs", "native") if os.path.isdir(os.path.join(s.root, "snapshots", k))
    ]
    snaps = {k: s.snapshotter(k) for k in kinds}
    leases = LeaseStore(os.path.join(s.root, "metadata.db"))
    try:
        r = collect(s.content, s.images, snaps, leases, dry_run=a.dry_run, root=s.root)
    finally:
        leases.close()
        for snap in snaps.values():
            snap.close()
    verb = "would remove" if a.dry_run else "removed"
    for digest in r.blobs:
        print(f"{verb} blob {digest}")
    for kind, key in r.snapshots:
        print(f"{verb} snapshot {kind} {key}")
    for ref in r.ingests:
        print(f"{verb} ingest {ref}")
    for ns, lease_id in r.leases:
        print(f"{verb} expired lease {ns}/{lease_id}")
    print(
        f"{verb} {len(r.blobs)} blobs ({r.bytes} bytes), {len(r.snapshots)} snapshots,"
        f" {len(r.ingests)} ingests"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dockyard-image", description=__doc__.splitlines()[0])
    p.add_argument("--root", default=DEFAULT_ROOT, help="state directory (%(default)s)")
    p.add_argument("--namespace", "-n", default="default", help="namespace (%(default)s)")
    sub = p.add_subparsers(dest="command", required=True)

    pl = sub.add_parser("pull", help="fetch an image from its registry and unpack it")
    pl.add_argument("ref")
    pl.add_argument("--snapshotter", default="overlayfs", choices=["overlayfs", "native"])
    pl.add_argument("--no-unpack", action="store_true", help="fetch only")
    pl.add_argument("--insecure", action="store_true", help="allow plain http / any certificate")
    pl.add_argument("--ca-file", help="a CA bundle for the registry's certificate")
    pl.add_argument(
        "--parallel", type=int, default=3, help="layers downloaded at once (%(default)s)"
    )
    pl.set_defaults(fn=cmd_pull)

    ls = sub.add_parser("ls", help="list images")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.set_defaults(fn=cmd_ls)

    ins = sub.add_parser("inspect", help="an image's target, manifest and config")
    ins.add_argument("ref")
    ins.set_defaults(fn=cmd_inspect)

    rm = sub.add_parser("rm", help="remove image records (blobs go with gc)")
    rm.add_argument("refs", nargs="+")
    rm.set_defaults(fn=cmd_rm)

    tag = sub.add_parser("tag", help="give an image another name")
    tag.add_argument("source")
    tag.add_argument("target")
    tag.set_defaults(fn=cmd_tag)

    up = sub.add_parser("unpack", help="unpack an image into a plain rootfs directory")
    up.add_argument("ref")
    up.add_argument("dir")
    up.set_defaults(fn=cmd_unpack)

    im = sub.add_parser("import", help="import an OCI layout or docker-archive (dir or tar)")
    im.add_argument("src", metavar="FILE|DIR")
    im.add_argument("--name", help="name the image (else the archive's names are used)")
    im.set_defaults(fn=cmd_import)

    ex = sub.add_parser("export", help="write images as an OCI layout or docker-archive")
    ex.add_argument("--format", choices=["oci", "docker-archive"], default="oci")
    ex.add_argument("out", help="a new directory, or a tar file (ending in .tar)")
    ex.add_argument("refs", nargs="+", metavar="REF")
    ex.set_defaults(fn=cmd_export)

    ps = sub.add_parser("push", help="push an image to the registry its name says")
    ps.add_argument("ref")
    ps.add_argument("--insecure", action="store_true", help="allow plain http / any certificate")
    ps.add_argument("--ca-file", help="a CA bundle for the registry's certificate")
    ps.set_defaults(fn=cmd_push)

    gc = sub.add_parser("gc", help="remove blobs and snapshots no image or lease refers to")
    gc.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    gc.set_defaults(fn=cmd_gc)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        s = Stores(a.root, a.namespace)
        try:
            return int(a.fn(s, a))
        finally:
            s.images.close()
    except DockyardError as e:
        sys.stderr.write(f"dockyard-image: {e}\n")
        return e.exit_code
    except OSError as e:
        sys.stderr.write(f"dockyard-image: {e.strerror or e}: {e.filename or ''}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
