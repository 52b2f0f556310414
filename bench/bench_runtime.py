#!/usr/bin/env python3
"""dockyard-runtime next to runc (and crun), in one run, on the same bundle.

Times, as medians over N iterations with the runtimes interleaved:
  run            ``run`` of busybox ``true`` (create, start, wait, delete in one)
  create         ``create`` of a container whose process is ``true``
  start          ``start`` of it
  delete         ``delete --force`` of it
  create+start+delete   the three above, summed per iteration
  exec           ``exec <id> true`` into a running container
and, in a separate shorter pass, each runtime process's peak RSS (ru_maxrss,
taken by GNU time; for ``run`` it includes the container's init before it
execs ``true``, as that is the runtime too). Wall time is what a caller (a
shim, a daemon) waits for: fork, exec of the binary or interpreter, the
work, exit.

Usage (as root): ``python3 bench/bench_runtime.py [-n 20] [--runtime PATH]``.
``--runtime runc`` puts runc on both sides, which checks the harness.
Always exits 0: a runtime that fails is reported as such in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dockyard.spec.runtime import DOCKER_DEFAULT_CAPABILITIES

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
CGROUP_ROOT = Path("/sys/fs/cgroup")
GNU_TIME = "/usr/bin/time"  # Debian package "time"
# crun 1.8 refuses a hybrid cgroup layout (v1 controllers plus a cgroup2 mount
# at /sys/fs/cgroup/unified). In a private mount namespace without that mount
# it sees plain v1; the wrapper (unshare + sh) adds a little time of its own.
CRUN_WRAPPER = 'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$0" "$@"'


@dataclass
class Runtime:
    label: str
    argv: list[str]  # prefix that runs it
    note: str = ""
    failed: str = ""
    times: dict[str, list[float]] = field(default_factory=dict)
    rss: dict[str, list[int]] = field(default_factory=dict)


class RuntimeFailed(Exception):
    pass


def hybrid_cgroups() -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if parts[4] == "/sys/fs/cgroup/unified" and "cgroup2" in parts:
                    return True
    except OSError:
        pass
    return False


def default_ours() -> str:
    """The installed entry point of the project's venv (what a daemon would run)."""
    venv = REPO / ".venv" / "bin" / "dockyard-runtime"
    if venv.exists():
        return str(venv)
    return shutil.which("dockyard-runtime") or str(venv)


def describe(path: str) -> str:
    """For a script entry point, say which interpreter its #! line runs."""
    try:
        with open(path, "rb") as f:
            head = f.readline(200)
    except OSError:
        return path
    if head.startswith(b"#!"):
        return f"{path} (#! {head[2:].decode(errors='replace').strip()})"
    return path


def make_bundle(base: Path) -> Path:
    bundle = base / "bundle"
    rootfs = bundle / "rootfs"
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in ("true", "sleep", "sh"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    caps = list(DOCKER_DEFAULT_CAPABILITIES)
    config = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["true"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
        ],
        "linux": {
            "cgroupsPath": "",  # set per container
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    (bundle / "config.template.json").write_text(json.dumps(config))
    return bundle


def set_config(bundle: Path, args: list[str], cgroup_path: str) -> None:
    config = json.loads((bundle / "config.template.json").read_text())
    config["process"]["args"] = args
    config["linux"]["cgroupsPath"] = cgroup_path
    (bundle / "config.json").write_text(json.dumps(config))


class Bench:
    def __init__(self, base: Path, cgroup: str) -> None:
        self.base = base
        self.cgroup = cgroup
        self.bundle = make_bundle(base)
        self.errlog = base / "stderr.log"
        self.rsslog = base / "rss.txt"
        self.measure_rss = False
        self.count = 0

    def new_id(self) -> str:
        self.count += 1
        return f"b{self.count}"

    def root(self, rt: Runtime) -> str:
        return str(self.base / "state" / rt.label)

    def call(self, rt: Runtime, *args: str, check: bool = True) -> tuple[float, int]:
        """Run the runtime once; return (seconds, peak RSS in KiB or 0).

        In the RSS phase the runtime runs under GNU time, which forks it from
        a small process: ru_maxrss of a child forked straight from this
        Python would count this interpreter's RSS, inherited up to the exec.
        """
        argv = [*rt.argv, "--root", self.root(rt), *args]
        if self.measure_rss:
            argv = [GNU_TIME, "--format", "%M", "--output", str(self.rsslog), *argv]
        with self.errlog.open("wb") as err:
            # stdout to /dev/null and stderr to a file: a detached container
            # keeps its stdio open, and a pipe would block on it.
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
            proc.wait()
            elapsed = time.perf_counter() - t0
        if check and proc.returncode != 0:
            msg = self.errlog.read_text(errors="replace").strip().splitlines()
            raise RuntimeFailed(
                f"{' '.join(args[:1])} exited {proc.returncode}: {msg[-1] if msg else ''}"
            )
        rss = 0
        if self.measure_rss:
            lines = self.rsslog.read_text().split()
            rss = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        return elapsed, rss

    def record(self, rt: Runtime, op: str, seconds: float, rss: int) -> None:
        if self.measure_rss:
            rt.rss.setdefault(op, []).append(rss)
        else:
            rt.times.setdefault(op, []).append(seconds)

    def cgroup_path(self, cid: str, rt: Runtime) -> str:
        return f"/{self.cgroup}/{rt.label}-{cid}"

    # One iteration of each measurement.

    def run_true(self, rt: Runtime) -> None:
        cid = self.new_id()
        set_config(self.bundle, ["true"], self.cgroup_path(cid, rt))
        t, rss = self.call(rt, "run", "--bundle", str(self.bundle), cid)
        self.record(rt, "run", t, rss)

    def create_start_delete(self, rt: Runtime) -> None:
        cid = self.new_id()
        set_config(self.bundle, ["true"], self.cgroup_path(cid, rt))
        try:
            t1, r1 = self.call(rt, "create", "--bundle", str(self.bundle), cid)
            t2, r2 = self.call(rt, "start", cid)
        finally:
            t3, r3 = self.call(rt, "delete", "--force", cid, check=False)
        self.record(rt, "create", t1, r1)
        self.record(rt, "start", t2, r2)
        self.record(rt, "delete", t3, r3)
        self.record(rt, "create+start+delete", t1 + t2 + t3, max(r1, r2, r3))

    def start_sleeper(self, rt: Runtime) -> str:
        cid = f"sleeper-{rt.label}"
        set_config(self.bundle, ["sleep", "100000"], self.cgroup_path(cid, rt))
        self.call(rt, "run", "--detach", "--bundle", str(self.bundle), cid)
        return cid

    def exec_true(self, rt: Runtime, cid: str) -> None:
        t, rss = self.call(rt, "exec", cid, "true")
        self.record(rt, "exec", t, rss)

    def cleanup(self, runtimes: list[Runtime]) -> None:
        for rt in runtimes:
            state = Path(self.root(rt))
            ids = [p.name for p in state.iterdir()] if state.is_dir() else []
            for cid in ids:
                self.call(rt, "delete", "--force", cid, check=False)
        if CGROUP_ROOT.is_dir():
            for ctrl in CGROUP_ROOT.iterdir():
                top = ctrl / self.cgroup
                if top.is_dir():
                    for d in sorted(top.glob("*/"), reverse=True):
                        try:
                            d.rmdir()
                        except OSError:
                            pass
                    try:
                        top.rmdir()
                    except OSError as e:
                        print(f"note: could not remove cgroup {top}: {e}", file=sys.stderr)


def guarded(rt: Runtime, fn: Callable[[Runtime], None]) -> None:
    """Run one measurement; a runtime that fails is marked and skipped from then on."""
    if rt.failed:
        return
    try:
        fn(rt)
    except (RuntimeFailed, OSError) as e:
        rt.failed = str(e)


def rotated(runtimes: list[Runtime], i: int) -> list[Runtime]:
    """Each runtime takes each place in the round in turn: no position bias."""
    k = i % len(runtimes)
    return runtimes[k:] + runtimes[:k]


def fmt_ms(values: list[float] | None) -> str:
    return f"{statistics.median(values) * 1000:.1f}" if values else "-"


def fmt_mib(values: list[int] | None) -> str:
    return f"{statistics.median(values) / 1024:.1f}" if values else "-"


OPS = ["run", "create", "start", "delete", "create+start+delete", "exec"]


def print_tables(runtimes: list[Runtime], n: int, rss_n: int) -> None:
    ours, ref = runtimes[0], runtimes[1]
    labels = [rt.label for rt in runtimes]
    width = max(12, *(len(x) + 2 for x in labels))
    print(f"\nmedian wall time in ms over {n} iterations (lower is better)")
    header = f"{'operation':<22}" + "".join(f"{x:>{width}}" for x in labels)
    header += f"{ours.label + '/' + ref.label:>{width + 8}}"
    print(header)
    print("-" * len(header))
    for op in OPS:
        row = f"{op:<22}" + "".join(f"{fmt_ms(rt.times.get(op)):>{width}}" for rt in runtimes)
        a, b = ours.times.get(op), ref.times.get(op)
        ratio = f"{statistics.median(a) / statistics.median(b):.2f}x" if a and b else "-"
        print(row + f"{ratio:>{width + 8}}")
    if not rss_n:
        print(f"\npeak RSS: not measured ({GNU_TIME} missing: apt-get install time)")
    else:
        print(f"\nmedian peak RSS of the runtime process in MiB (ru_maxrss), {rss_n} iterations")
        header = f"{'operation':<22}" + "".join(f"{x:>{width}}" for x in labels)
        print(header)
        print("-" * len(header))
        for op in ("run", "create", "start", "delete", "exec"):
            print(f"{op:<22}" + "".join(f"{fmt_mib(rt.rss.get(op)):>{width}}" for rt in runtimes))
    print()
    for rt in runtimes:
        line = f"{rt.label}: {' '.join(rt.argv)}"
        if rt.note:
            line += f"\n    note: {rt.note}"
        if rt.failed:
            line += f"\n    FAILED: {rt.failed}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("-n", "--iterations", type=int, default=20, help="iterations per op")
    ap.add_argument("--runtime", default=default_ours(), help="ours (default: the venv's)")
    ap.add_argument("--reference", default="runc", help="the reference runtime (runc)")
    ap.add_argument("--crun", default="crun", help="crun binary; '' to leave crun out")
    args = ap.parse_args(argv)

    if os.geteuid() != 0:
        print("bench_runtime: run as root", file=sys.stderr)
        return 0
    if not os.path.exists(BUSYBOX):
        print("bench_runtime: busybox (busybox-static) is not installed", file=sys.stderr)
        return 0

    def resolve(name: str) -> str:
        return shutil.which(name) or name

    runtimes = [
        Runtime("ours", [resolve(args.runtime)]),
        Runtime("runc", [resolve(args.reference)]),
    ]
    if args.crun and shutil.which(args.crun):
        crun = resolve(args.crun)
        if hybrid_cgroups():
            runtimes.append(
                Runtime(
                    "crun",
                    ["unshare", "--mount", "sh", "-c", CRUN_WRAPPER, crun],
                    "run in a private mount namespace with /sys/fs/cgroup/unified "
                    "unmounted (crun 1.8 refuses the hybrid cgroup layout); "
                    "unshare + sh add a few ms",
                )
            )
        else:
            runtimes.append(Runtime("crun", [crun]))
    runtimes[0].note = "entry point " + describe(runtimes[0].argv[0])

    cgroup = f"dockyard-bench-{os.getpid()}"
    base = Path(tempfile.mkdtemp(prefix="dockyard-bench-"))
    bench = Bench(base, cgroup)
    n = max(1, args.iterations)
    rss_n = min(n, 5) if os.access(GNU_TIME, os.X_OK) else 0
    print(f"bench_runtime: {n} iterations, runtimes: {', '.join(rt.label for rt in runtimes)}")
    try:
        # One untimed round first: page cache, interpreter byte-code caches.
        for rt in runtimes:
            guarded(rt, bench.run_true)
            rt.times.clear()
            rt.rss.clear()
        sleepers: dict[str, str] = {}
        for rt in runtimes:
            guarded(rt, lambda r: sleepers.__setitem__(r.label, bench.start_sleeper(r)))
        for phase, count in (("time", n), ("rss", rss_n)):
            bench.measure_rss = phase == "rss"
            for i in range(count):
                for rt in rotated(runtimes, i):
                    guarded(rt, bench.run_true)
            for i in range(count):
                for rt in rotated(runtimes, i):
                    guarded(rt, bench.create_start_delete)
            for i in range(count):
                for rt in rotated(runtimes, i):
                    if rt.label in sleepers:
                        guarded(rt, lambda r: bench.exec_true(r, sleepers[r.label]))
    finally:
        bench.cleanup(runtimes)
        with open("/proc/self/mountinfo") as f:
            mounted = any(f" {base}/" in line or f" {base} " in line for line in f)
        if mounted:
            print(f"note: mounts left under {base}; not removing it", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    print_tables(runtimes, n, rss_n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
