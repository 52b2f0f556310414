#!/usr/bin/env python3
"""Cold pull + unpack of one image: ``dockyard-image pull`` next to containerd's ``ctr``.

Builds a synthetic multi-layer image (about 150 MB of gzip layers; see
``build_image``), pushes it to a private Debian ``docker-registry`` on
127.0.0.1, and times, N times with the two sides alternating:

  ours   ``dockyard-image --root <fresh dir> pull --insecure REF``
         (fetch into the content store and unpack into overlayfs snapshots)
  ctr    ``ctr images pull --plain-http REF`` against a containerd started
         with a fresh root for that iteration (fetch + unpack, overlayfs)

and, in a separate pass, ours in two phases: ``pull --no-unpack`` into a
fresh root (fetch only), then ``pull`` again into that root (the content is
there: resolve + unpack only). Reports medians in seconds, MB/s (compressed
bytes, 10^6) and the ratio ours/ctr.

Usage (as root): ``python3 bench/bench_pull.py [-n 3] [--keep-going]``.
Every process it starts is ended by pid, every mount under its temp dir is
unmounted and the dir removed, also on failure and Ctrl-C. Always exits 0
when it completes: a side that fails is reported as such in the table.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the daemon helpers are shared with tests/compat

from dockyard.spec.image import MediaType  # noqa: E402
from tests.compat.host import (  # noqa: E402
    CONTAINERD_CONFIG,
    pids_mentioning,
    stop_process,
    tail,
    unmount_under,
)

REGISTRY_BIN = "/usr/bin/docker-registry"
IMAGE_REPO, IMAGE_TAG = "bench/pull", "1"
MTIME = 1_700_000_000  # fixed, so the layers do not change from run to run
SEED = 20240601
FS_SIZE = 8 << 30  # the scratch filesystem (sparse); both sides' stores, one at a time
FS_NOTE = {
    "ext4": "a fresh journaled ext4 (loop-mounted sparse file), roots removed after each pull",
    "tmpfs": "a tmpfs (no disk: fsync is free)",
    "host": "the temp dir's filesystem as it is",
}


class StepFailed(Exception):
    pass


# -- host helpers ------------------------------------------------------------------------


def remove_tree(path: Path) -> None:
    """Remove ``path`` unless something is still mounted below it."""
    if not path.exists():
        return
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise StepFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def run_timed(argv: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run a command to completion; its wall time in seconds, or StepFailed."""
    with log.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env
        )
        elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = tail(log).strip().splitlines()
        raise StepFailed(
            f"{Path(argv[0]).name} exited {proc.returncode}: {lines[-1] if lines else ''}"
        )
    return elapsed


# -- the image -------------------------------------------------------------------------


@dataclass
class Layer:
    what: str
    digest: str
    diff_id: str
    size: int  # compressed
    raw_size: int  # uncompressed tar


@dataclass
class BuiltImage:
    layout: Path
    layers: list[Layer]
    config_size: int
    manifest_size: int

    @property
    def compressed(self) -> int:
        return sum(x.size for x in self.layers) + self.config_size + self.manifest_size


class LayerWriter:
    """A tar layer written to a file; every entry owned by root, with a fixed mtime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # closed by close(), once the layer's last entry is written
        self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def dir(self, name: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, MTIME
        self.tar.addfile(info)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, MTIME
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, name: str, target: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, MTIME
        self.tar.addfile(info)

    def whiteout(self, path: str) -> None:
        """OCI image-spec layer.md: ``.wh.<name>`` deletes <name> of a lower layer."""
        parent, _, base = path.rpartition("/")
        self.file(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"")

    def opaque(self, directory: str) -> None:
        """``.wh..wh..opq``: hide everything a lower layer had in ``directory``."""
        self.file(f"{directory}/.wh..wh..opq", b"")

    def host_tree(self, top: str, dest: str, budget: int) -> int:
        """Copy up to ``budget`` bytes of regular files from ``top`` (sorted walk)."""
        used = 0

        def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info

        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            rel = os.path.relpath(dirpath, top)
            arcdir = dest if rel == "." else f"{dest}/{rel}"
            self.tar.add(dirpath, arcname=arcdir, recursive=False, filter=as_root)
            for fname in sorted(filenames):
                src = os.path.join(dirpath, fname)
                try:
                    st = os.lstat(src)
                    if not (os.path.isfile(src) or os.path.islink(src)):
                        continue
                    self.tar.add(src, arcname=f"{arcdir}/{fname}", recursive=False, filter=as_root)
                except OSError:
                    continue
                used += st.st_size if not os.path.islink(src) else 0
                if used >= budget:
                    return used
        return used

    def close(self) -> None:
        self.tar.close()


def text_pool(rng: random.Random, size: int) -> bytes:
    """Word-like text (compresses about 3x with gzip, like source and docs)."""
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    weights = [26 - i for i in range(len(letters))]
    vocab = ["".join(rng.choices(letters, weights, k=rng.randint(2, 10))) for _ in range(1000)]
    out: list[str] = []
    n = 0
    while n < size:
        line = " ".join(rng.choices(vocab, k=rng.randint(4, 14))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def compress_into_layout(raw: Path, blobs: Path, what: str) -> Layer:
    """gzip a tar (pigz when present) into the layout's blobs; the tar is removed."""
    diff_id = sha256_file(raw)
    gz = raw.with_suffix(".gz")
    pigz = shutil.which("pigz")
    if pigz:
        with gz.open("wb") as out:
            subprocess.run([pigz, "-6", "-n", "-c", str(raw)], stdout=out, check=True)
    else:
        with raw.open("rb") as src, gzip.GzipFile(gz, "wb", 6, mtime=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    digest = sha256_file(gz)
    layer = Layer(what, digest, diff_id, gz.stat().st_size, raw.stat().st_size)
    gz.rename(blobs / digest.split(":", 1)[1])
    raw.unlink()
    return layer


def build_image(work: Path) -> BuiltImage:
    """Five gzip layers, about 150 MB compressed; see bench/README.md."""
    rng = random.Random(SEED)
    layout = work / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers: list[Layer] = []
    pool = text_pool(rng, 4 << 20)

    def new(n: int) -> LayerWriter:
        return LayerWriter(work / f"layer{n}.tar")

    def finish(w: LayerWriter, what: str) -> None:
        w.close()
        layers.append(compress_into_layout(w.path, blobs, what))

    # 1: a base of real files: the host's /usr/share (docs, locales, man pages
    # that are gzip already, icons...), a slice of it; plus a shell-like skeleton.
    w = new(1)
    for top in ("bin", "etc", "tmp", "var", "usr", "root"):
        w.dir(top)
    w.file("etc/os-release", b'NAME="dockyard bench"\nID=bench\n')
    w.symlink("bin/sh", "busybox")
    w.host_tree("/usr/share", "usr/share", 70 << 20)
    finish(w, "70 MiB of files from /usr/share (text, gzip man pages, locales...)")

    # 2: incompressible: random bytes in a few large files (like compressed assets).
    w = new(2)
    w.dir("opt")
    w.dir("opt/blobs")
    for i in range(5):
        w.file(f"opt/blobs/data{i}.bin", rng.randbytes(12 << 20))
    finish(w, "random bytes, 5 files x 12 MiB (incompressible)")

    # 3: many small text files (per-file cost: create, write, chmod, chown, utimes).
    w = new(3)
    w.dir("srv")
    for d in range(100):
        w.dir(f"srv/pkg{d:03d}")
        for f in range(200):
            size = rng.randint(100, 4000)
            start = rng.randrange(len(pool) - size)
            body = f"# pkg{d:03d}/mod{f:03d}\n".encode() + pool[start : start + size]
            w.file(f"srv/pkg{d:03d}/mod{f:03d}.txt", body)
    finish(w, "20,000 small text files in 100 dirs (compressible)")

    # 4: mixed: generated text in a few large files, and more random bytes.
    w = new(4)
    w.dir("var/lib")
    w.dir("var/lib/app")
    for i in range(2):
        start = rng.randrange(len(pool) // 2)
        w.file(f"var/lib/app/log{i}.txt", (pool[start:] + pool[:start]) * 4)
    w.file("var/lib/app/cache.bin", rng.randbytes(8 << 20))
    finish(w, "32 MiB of text in 2 files + 8 MiB random")

    # 5: changes on top: whiteouts of files and whole dirs from layers 1-3, an
    # opaque dir, and a rewritten large file.
    w = new(5)
    w.dir("opt")
    w.dir("opt/blobs")
    w.whiteout("opt/blobs/data0.bin")
    w.file("opt/blobs/data1.bin", rng.randbytes(10 << 20))
    w.dir("srv")
    for d in range(0, 100, 10):
        w.whiteout(f"srv/pkg{d:03d}")
    w.dir("srv/pkg005")
    w.opaque("srv/pkg005")
    w.file("srv/pkg005/only.txt", b"the rest of this dir is gone\n")
    w.dir("usr")
    w.dir("usr/share")
    w.whiteout("usr/share/doc")
    finish(w, "whiteouts (files, 10 dirs, /usr/share/doc), an opaque dir, 10 MiB rewritten")

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
            "history": [{"created_by": x.what} for x in layers],
        }
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    (blobs / config_digest.split(":")[1]).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MediaType.OCI_MANIFEST,
            "config": {
                "mediaType": MediaType.OCI_CONFIG,
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {"mediaType": MediaType.OCI_LAYER_GZIP, "digest": x.digest, "size": x.size}
                for x in layers
            ],
        }
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    (blobs / manifest_digest.split(":")[1]).write_bytes(manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MediaType.OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": IMAGE_TAG},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return BuiltImage(layout, layers, len(config), len(manifest))


# -- the registry and containerd ----------------------------------------------------------


@contextlib.contextmanager
def registry(base: Path) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1 with private storage; yields host:port."""
    base.mkdir()
    port = free_port()
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {base / 'storage'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}', secret: {uuid.uuid4().hex}}}\n"
    )
    log = base / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop it in order
        )
    try:

        def listening() -> bool:
            if proc.poll() is not None:
                raise StepFailed(f"docker-registry exited: {tail(log)}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return True
            except OSError:
                return False

        wait_until(listening, 15, "docker-registry to listen")
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)


def push(layout: Path, ref: str, log: Path) -> None:
    run_timed(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{layout}:{IMAGE_TAG}",
            f"docker://{ref}",
        ],
        log,
    )


class Containerd:
    """A private containerd whose every path is under ``base``; stopped by pid."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.log = base / "containerd.log"
        self.address = str(base / "containerd.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def ctr_argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", self.address, "--namespace", "bench", *args]

    def start(self) -> None:
        self.base.mkdir()
        config = self.base / "config.toml"
        config.write_text(CONTAINERD_CONFIG.format(base=self.base))
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise StepFailed(f"containerd exited early: {tail(self.log)}")
            if not os.path.exists(self.address):
                return False
            r = subprocess.run(self.ctr_argv("version"), capture_output=True, check=False)
            return r.returncode == 0

        wait_until(ready, 30, "containerd to serve")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        for pid in pids_mentioning(f"{self.base}/"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        remove_tree(self.base)


# -- the measurements ------------------------------------------------------------------


@dataclass
class Side:
    label: str
    failed: str = ""
    times: dict[str, list[float]] = field(default_factory=dict)

    def record(self, step: str, seconds: float) -> None:
        self.times.setdefault(step, []).append(seconds)


def timed_sync() -> float:
    t0 = time.perf_counter()
    os.sync()
    return time.perf_counter() - t0


def scratch_fs(kind: str, base: Path) -> Path:
    """The filesystem both sides pull into: ``base/fs``, mounted per ``kind``.

    ext4: a fresh journaled ext4 in a sparse file, loop-mounted, inode tables
    written up front (no lazy init thread writing during the runs). tmpfs: no
    disk at all. host: the temp dir's own filesystem as it is.
    """
    fs = base / "fs"
    fs.mkdir()
    if kind == "ext4":
        img = base / "fs.img"
        with img.open("wb") as f:
            f.truncate(FS_SIZE)
        mkfs = ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]
        subprocess.run([*mkfs, str(img)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["mount", "-o", "loop", str(img), str(fs)], check=True)
    elif kind == "tmpfs":
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(fs)], check=True
        )
    return fs


class Bench:
    def __init__(self, base: Path, work: Path, ref: str, ours: str) -> None:
        self.base = base  # logs
        self.work = work  # the stores: ours' roots and containerd's
        self.ref = ref
        self.ours = ours
        self.count = 0

    def fresh(self, what: str) -> Path:
        self.count += 1
        return self.work / f"{what}{self.count}"

    def pull_ours(self, side: Side) -> None:
        root = self.fresh("ours")
        try:
            os.sync()  # start with no dirty pages of an earlier step
            argv = [self.ours, "--root", str(root), "pull", "--insecure", self.ref]
            side.record("pull + unpack", run_timed(argv, self.base / "ours.log"))
            side.record("sync after", timed_sync())
        finally:
            remove_tree(root)

    def phases_ours(self, side: Side) -> None:
        root = self.fresh("ours")
        try:
            os.sync()
            log = self.base / "ours.log"
            base = [self.ours, "--root", str(root), "pull", "--insecure"]
            fetch = run_timed([*base, "--no-unpack", self.ref], log)
            os.sync()
            unpack = run_timed([*base, self.ref], log)
            side.record("fetch (--no-unpack)", fetch)
            side.record("unpack (2nd pull)", unpack)
        finally:
            remove_tree(root)

    def pull_ctr(self, side: Side) -> None:
        daemon = Containerd(self.fresh("ctrd"))
        try:
            daemon.start()
            os.sync()
            argv = daemon.ctr_argv("images", "pull", "--plain-http", self.ref)
            side.record("pull + unpack", run_timed(argv, self.base / "ctr.log"))
            side.record("sync after", timed_sync())
            # really unpacked: one committed snapshot per layer
            out = subprocess.run(
                daemon.ctr_argv("snapshots", "ls"), capture_output=True, text=True, check=False
            ).stdout
            if out.count("Committed") < 5:
                raise StepFailed(f"ctr pull left {out.count('Committed')} committed snapshots")
        finally:
            daemon.stop()


def guarded(side: Side, step: Callable[[Side], None]) -> None:
    if side.failed:
        return
    try:
        step(side)
    except (StepFailed, OSError, subprocess.SubprocessError) as e:
        side.failed = str(e)


def median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def fmt_s(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def print_table(ours: Side, ctr: Side, image: BuiltImage, n: int, ours_argv: str) -> None:
    mb = image.compressed / 1e6
    print(f"\nmedian wall time in s over {n} iterations (lower is better)")
    header = f"{'step':<24}{'ours':>10}{'ctr':>10}{'ours/ctr':>12}"
    print(header)
    print("-" * len(header))
    for step in ("pull + unpack", "sync after"):
        a, b = median(ours.times.get(step)), median(ctr.times.get(step))
        ratio = f"{a / b:.2f}x" if a is not None and b else "-"
        print(f"{step:<24}{fmt_s(a):>10}{fmt_s(b):>10}{ratio:>12}")
    a, b = median(ours.times.get("pull + unpack")), median(ctr.times.get("pull + unpack"))
    rate_a = f"{mb / a:.1f}" if a else "-"
    rate_b = f"{mb / b:.1f}" if b else "-"
    print(f"{'MB/s (compressed)':<24}{rate_a:>10}{rate_b:>10}")
    fetch = median(ours.times.get("fetch (--no-unpack)"))
    unpack = median(ours.times.get("unpack (2nd pull)"))
    if fetch is not None and unpack is not None:
        print(f"\nours in phases (separate pass, medians of {n}):")
        print(f"  fetch   pull --no-unpack, empty root  {fetch:6.2f} s  {mb / fetch:6.1f} MB/s")
        print(f"  unpack  pull again, content present   {unpack:6.2f} s")
    print(f"\nimage: {mb:.1f} MB compressed (10^6 bytes), {len(image.layers)} gzip layers:")
    for i, x in enumerate(image.layers, 1):
        print(f"  {i}. {x.size / 1e6:6.1f} MB ({x.raw_size / 1e6:6.1f} MB tar)  {x.what}")
    print(f"\nours: {ours_argv}")
    print("ctr:  ctr images pull --plain-http REF (containerd with a fresh root per iteration)")
    for side in (ours, ctr):
        if side.failed:
            print(f"{side.label} FAILED: {side.failed}")


def default_ours() -> str:
    venv = REPO / ".venv" / "bin" / "dockyard-image"
    return str(venv) if venv.exists() else (shutil.which("dockyard-image") or str(venv))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("-n", "--iterations", type=int, default=3, help="pulls per side (3)")
    ap.add_argument("--ours", default=default_ours(), help="dockyard-image (the venv's)")
    ap.add_argument(
        "--fs",
        choices=["ext4", "tmpfs", "host"],
        default="ext4",
        help="where the stores go: a fresh loop-mounted ext4 (default), a tmpfs, or the"
        " temp dir's own filesystem",
    )
    args = ap.parse_args(argv)

    if os.geteuid() != 0:
        print("bench_pull: run as root", file=sys.stderr)
        return 0
    tools = [REGISTRY_BIN, "containerd", "ctr", "skopeo"] + (
        ["mkfs.ext4"] if args.fs == "ext4" else []
    )
    for tool in tools:
        if not shutil.which(tool):
            print(f"bench_pull: {tool} is not installed", file=sys.stderr)
            return 0

    n = max(1, args.iterations)
    base = Path(tempfile.mkdtemp(prefix="dockyard-bench-pull-"))
    ours, ctr = Side("ours"), Side("ctr")
    try:
        t0 = time.perf_counter()
        image = build_image(base / "image")
        print(
            f"bench_pull: built the image ({image.compressed / 1e6:.1f} MB compressed) "
            f"in {time.perf_counter() - t0:.1f}s"
        )
        with registry(base / "registry") as host:
            ref = f"{host}/{IMAGE_REPO}:{IMAGE_TAG}"
            push(image.layout, ref, base / "push.log")
            shutil.rmtree(image.layout)  # the registry has its own copy
            bench = Bench(base, scratch_fs(args.fs, base), ref, args.ours)
            print(f"bench_pull: pushed {ref}; {n} iterations per side, stores on {args.fs}")
            sides = [(ours, bench.pull_ours), (ctr, bench.pull_ctr)]
            for i in range(n):
                for side, step in sides if i % 2 == 0 else sides[::-1]:
                    guarded(side, step)
                    done = side.times.get("pull + unpack", [])
                    result = "FAILED" if side.failed else f"{done[-1]:.2f} s"
                    print(f"  {i + 1}/{n} {side.label}: {result}", flush=True)
            for _ in range(n):
                guarded(ours, bench.phases_ours)
    finally:
        for pid in pids_mentioning(f"{base}/"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            remove_tree(base)
        except (OSError, RuntimeError) as e:
            print(f"note: {e}; left {base}", file=sys.stderr)
    print_table(ours, ctr, image, n, f"{args.ours} --root DIR pull --insecure REF")
    print(f"stores on: {FS_NOTE[args.fs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
