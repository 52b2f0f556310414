#!/usr/bin/env python3
"""dockyard-supervisor and its shim next to containerd and its runc shim, in one run.

Starts a private containerd and a private dockyard-supervisor under one temp
dir, imports the same busybox image into each, and measures:

  run     ``ctr run --rm IMAGE ID true``, medians over N runs with the
          lines interleaved after a warm-up:
            dockyard              dockyard-supervisor + containerd-shim-dockyard-v2
                                  + dockyard-runtime (io.containerd.dockyard.v2)
            containerd            containerd + containerd-shim-runc-v2 + runc
            dockyard+runc-shim    dockyard-supervisor + containerd-shim-runc-v2 + runc:
                                  the supervisor's own cost, shim and runtime equal
            containerd+our-shim   containerd + containerd-shim-dockyard-v2 +
                                  dockyard-runtime: the shim's cost, supervisor equal
            containerd+our-shim+template
                                  the same with ``dockyard-shim-template`` beside a
                                  second containerd (DOCKYARD_SHIM_TEMPLATE): our
                                  shim forked, not started as an interpreter
          target: dockyard / containerd <= 1.0
  memory  RSS and PSS (``/proc/<pid>/smaps_rollup``) of each shim with N
          containers running (``ctr run -d ... sleep``): every process of the
          shim (its pid and descendants outside the container's pid
          namespace); medians per container. target: our PSS <= runc shim's
  idle    RSS and PSS of each daemon after start + image import, no
          containers (and again after the other phases, when they ran);
          reported side by side (the issue asks for idle RSS, no target)

``--profile`` adds a breakdown of ``ctr run --rm``: a second supervisor whose
gRPC handlers, shim calls and shim commands are timed from inside (a wrapper
around its ``main``; nothing in the project changes) and a second containerd,
while the kernel's process connector reports when each shim, runtime and
container process is exec'd and exits (nothing is traced or slowed down). It
prints the same milestones for both daemons, the supervisor's phases, one
whole timeline per line, and the round trip of one gRPC call to each daemon.

Usage (as root): ``python3 bench/bench_supervisor.py [--runs 20]
[--containers 20] [--only run|memory|idle] [--profile] [--json]``.
Everything started is ended by pid, the containers removed, cgroups, mounts,
shim sockets and runtime state of its namespaces removed, and the temp dir
too, also on failure and Ctrl-C. Exits 0 when it completes: a line that
fails is reported as FAILED.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the daemon helpers and the image are shared with the tests

from dockyard.shim.manager import socket_address  # noqa: E402
from tests.compat.host import (  # noqa: E402
    CONTAINERD_CONFIG,
    CreatedDirs,
    pids_mentioning,
    remove_cgroups,
    stop_pid,
    stop_process,
    tail,
    unmount_under,
)
from tests.images import build_image_archive  # noqa: E402

VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
DOCKYARD_SHIM = "io.containerd.dockyard.v2"
RUNC_SHIM = "io.containerd.runc.v2"
# Places outside the temp dir that the shims and runtimes use: the shims'
# sockets, ctr's default fifo dir, and the runtimes' state roots (each run
# has namespaces of its own below those).
HOST_DIRS = (
    "/run/containerd",
    "/run/containerd/s",
    "/run/containerd/fifo",
    "/run/containerd/runc",
    "/run/dockyard",
    "/run/dockyard/runtime",
)
RUNTIME_ROOTS = ("/run/containerd/runc", "/run/dockyard/runtime")
COMMAND_TIMEOUT = 60.0
QUICK_TIMEOUT = 15.0
SETTLE = 2.0  # seconds a daemon or the shims are left alone before memory is read


class StepFailed(Exception):
    pass


def log(msg: str) -> None:
    print(f"bench_supervisor: {msg}", file=sys.stderr, flush=True)


def read_all(path: Path) -> str:
    """A log or trace this run wrote; empty if it was never written."""
    return path.read_text(errors="replace") if path.exists() else ""


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


# -- the daemons ---------------------------------------------------------------------


@dataclass
class Daemon:
    """A private containerd or dockyard-supervisor; every path under ``base``."""

    kind: str  # "containerd" or "dockyard"
    base: Path
    namespace: str
    argv_extra: list[str] = field(default_factory=list)
    python_c: str = ""  # dockyard only: run this -c code instead of -m (the profile)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    ids: set[str] = field(default_factory=set)  # containers it was asked to make
    started_in: float = 0.0

    @property
    def label(self) -> str:
        return "containerd" if self.kind == "containerd" else "dockyard-supervisor"

    @property
    def address(self) -> str:
        return str(self.base / ("containerd.sock" if self.kind == "containerd" else "sup.sock"))

    @property
    def log(self) -> Path:
        return self.base / "daemon.log"

    @property
    def fifo_dir(self) -> str:
        return str(self.base / "fifo")

    def argv(self) -> list[str]:
        if self.kind == "containerd":
            config = self.base / "config.toml"
            config.write_text(CONTAINERD_CONFIG.format(base=self.base))
            return ["containerd", "--config", str(config)]
        flags = [
            "--root",
            str(self.base / "root"),
            "--state",
            str(self.base / "state"),
            "--address",
            self.address,
            *self.argv_extra,
        ]
        if self.python_c:
            return [PYTHON, "-c", self.python_c, *flags]
        return [PYTHON, "-m", "dockyard.supervisor.main", *flags]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        if self.kind == "containerd":
            # Our shim after everything else: containerd finds it for the
            # containerd+our-shim line and nothing of the host is shadowed.
            env["PATH"] = f"{path}:{VENV_BIN}"
        else:
            # As the supervisor is run: our shim and runtime first.
            env["PATH"] = f"{VENV_BIN}:{path}"
        env["PYTHONPATH"] = str(REPO)
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        t0 = time.perf_counter()
        with self.log.open("ab") as out:
            # A session of its own: a Ctrl-C reaches only us, and we stop it in order.
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=str(self.base),
                start_new_session=True,
            )

        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise StepFailed(f"{self.label} exited early: {tail(self.log, lines=1)}")
            if os.path.exists(self.address) and self.ctr("version", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise StepFailed(f"timed out waiting for {self.label} to serve")
            time.sleep(0.02)
        self.started_in = time.perf_counter() - t0

    def ctr_argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", self.address, "--namespace", self.namespace, *args]

    def ctr(
        self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            self.ctr_argv(*args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and p.returncode != 0:
            raise StepFailed(
                f"ctr {' '.join(args[:2])} on {self.label} exited {p.returncode}: "
                f"{last_line(p.stderr) or last_line(p.stdout)}"
            )
        return p

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", str(archive))

    def tasks(self) -> dict[str, tuple[int, str]]:
        """Task id -> (pid, status)."""
        out = self.ctr("task", "ls", timeout=QUICK_TIMEOUT).stdout.splitlines()[1:]
        found: dict[str, tuple[int, str]] = {}
        for line in out:
            cols = line.split()
            if len(cols) >= 3 and cols[1].isdigit():
                found[cols[0]] = (int(cols[1]), cols[2])
        return found

    def remove_all(self) -> None:
        """Kill and delete every task and container of our namespace (bounded in time)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            tasks = self.tasks()
            for cid, (_pid, status) in tasks.items():
                if status != "STOPPED":
                    self.ctr("task", "kill", "--signal", "SIGKILL", cid, check=False)
            deadline = time.monotonic() + 10
            while tasks and time.monotonic() < deadline:
                if all(s == "STOPPED" for _, s in self.tasks().values()):
                    break
                time.sleep(0.05)
            if tasks:
                self.ctr("task", "delete", "--force", *tasks, check=False)
            listed = self.ctr("container", "ls", "--quiet", check=False, timeout=QUICK_TIMEOUT)
            ids = listed.stdout.split()
            if ids:
                self.ctr("container", "delete", *ids, check=False)
        except subprocess.TimeoutExpired:
            log(f"note: {self.label} did not answer in time while removing containers")

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, timeout=15)
        # Shims outlive their daemon by design; any still running are ours to end.
        for pid in pids_mentioning(f"{self.base}/"):
            stop_pid(pid, timeout=5)

    def remove_leftovers(self) -> None:
        """Cgroups, runtime state and dead shim sockets of our namespace."""
        try:
            remove_cgroups(self.namespace)
        except (OSError, TimeoutError) as e:
            log(f"note: cgroups of {self.namespace}: {e}")
        for root in RUNTIME_ROOTS:
            shutil.rmtree(os.path.join(root, self.namespace), ignore_errors=True)
        for cid in self.ids:
            path = socket_address(self.address, self.namespace, cid).removeprefix("unix://")
            if os.path.exists(path) and not _listening(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


# -- memory of processes ------------------------------------------------------------


def rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB, from smaps_rollup."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def parents() -> dict[int, int]:
    """pid -> ppid of every process."""
    found: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(name)] = int(fields[1])
    return found


def tree(root: int, ppids: dict[int, int]) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def pid_ns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


@dataclass
class Usage:
    rss: int  # KiB
    pss: int  # KiB
    processes: int
    threads: int


def usage_of(pids: list[int]) -> Usage:
    rss = pss = nthreads = count = 0
    for pid in pids:
        try:
            r, p = rollup(pid)
            t = threads(pid)
        except (OSError, ValueError):
            continue  # gone meanwhile
        rss, pss, nthreads, count = rss + r, pss + p, nthreads + t, count + 1
    return Usage(rss, pss, count, nthreads)


def shim_usage(init_pid: int, ppids: dict[int, int]) -> tuple[int, Usage]:
    """The shim of a container whose init is ``init_pid``: (shim pid, its usage).

    The shim is the init's parent (it is the subreaper the runtime leaves the
    init with); everything it runs outside the container's pid namespace
    (helpers, a runtime command in flight) counts as the shim.
    """
    shim = ppids.get(init_pid, 0)
    try:
        cmd = Path(f"/proc/{shim}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        cmd = ""
    if "containerd-shim" not in cmd:
        raise StepFailed(f"the parent of init {init_pid} is not a shim: {cmd[:120]!r}")
    container_ns = pid_ns(init_pid)
    mine = [p for p in tree(shim, ppids) if p == shim or pid_ns(p) != container_ns]
    return shim, usage_of(mine)


# -- the lines --------------------------------------------------------------------------


@dataclass
class Line:
    key: str
    daemon: Daemon
    runtime: str
    what: str
    failed: str = ""
    times: list[float] = field(default_factory=list)
    shims: list[Usage] = field(default_factory=list)
    count: int = 0

    def new_id(self, tag: str) -> str:
        self.count += 1
        cid = f"{self.key.replace('+', '-')}-{tag}{self.count}"
        self.daemon.ids.add(cid)
        return cid


def wait_blocking(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for ``proc`` in a blocking waitpid; when it ended (perf_counter).

    Not ``Popen.wait(timeout)``: with a timeout it polls, sleeping up to 50 ms
    between tries, which would add up to 50 ms to what is measured. A timer
    kills the process if it runs longer than ``timeout``.
    """
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        proc.wait()
    finally:
        timer.cancel()
    return time.perf_counter()


def start_template(socket_path: Path) -> subprocess.Popen[bytes]:
    """``dockyard-shim-template`` serving ``socket_path``, as an operator runs it
    beside containerd; returned once it serves."""
    socket_path.parent.mkdir(mode=0o700)
    proc = subprocess.Popen(
        [str(VENV_BIN / "dockyard-shim-template"), "--socket", str(socket_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready or proc.stdout.readline() != b"ready\n":
        stop_process(proc, timeout=5)
        raise StepFailed("dockyard-shim-template did not start")
    proc.stdout.close()
    return proc


class Bench:
    def __init__(self, image_ref: str, work: Path) -> None:
        self.image_ref = image_ref
        self.errlog = work / "ctr.err"

    def run_rm(self, line: Line) -> float:
        """One ``ctr run --rm IMAGE ID true``; its wall time (s)."""
        d = line.daemon
        cid = line.new_id("r")
        argv = d.ctr_argv(
            "run", "--rm", "--runtime", line.runtime, "--fifo-dir", d.fifo_dir,
            self.image_ref, cid, "true",
        )  # fmt: skip
        with self.errlog.open("wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            elapsed = wait_blocking(proc, COMMAND_TIMEOUT) - t0
        if elapsed > COMMAND_TIMEOUT:
            raise StepFailed(f"ctr run --rm {cid}: no answer in {COMMAND_TIMEOUT:.0f}s")
        if proc.returncode != 0:
            raise StepFailed(
                f"ctr run --rm {cid} exited {proc.returncode}: "
                f"{last_line(self.errlog.read_text(errors='replace'))}"
            )
        return elapsed

    def warm_up(self, line: Line) -> None:
        self.run_rm(line)

    def start_sleepers(self, line: Line, n: int) -> list[str]:
        d = line.daemon
        ids = []
        for _ in range(n):
            cid = line.new_id("m")
            d.ctr(
                "run", "-d", "--runtime", line.runtime, "--fifo-dir", d.fifo_dir,
                self.image_ref, cid, "sleep", "1000000",
            )  # fmt: skip
            ids.append(cid)
        return ids

    def measure_shims(self, line: Line, n: int) -> None:
        d = line.daemon
        ids = self.start_sleepers(line, n)
        time.sleep(SETTLE)
        tasks = d.tasks()
        ppids = parents()
        seen: set[int] = set()
        for cid in ids:
            pid, status = tasks.get(cid, (0, "missing"))
            if status != "RUNNING" or not pid:
                raise StepFailed(f"container {cid} is {status}, not RUNNING")
            shim, use = shim_usage(pid, ppids)
            if shim in seen:
                raise StepFailed(
                    f"two containers share shim {shim}: per-container numbers need one each"
                )
            seen.add(shim)
            line.shims.append(use)
        d.remove_all()


def guarded(line: Line, fn: Callable[[Line], None]) -> None:
    """One step; a line that fails is marked and skipped from then on."""
    if line.failed:
        return
    try:
        fn(line)
    except (StepFailed, OSError, subprocess.TimeoutExpired) as e:
        line.failed = str(e)
        log(f"{line.key} FAILED: {e}")


def rotated(lines: list[Line], i: int) -> list[Line]:
    k = i % len(lines)
    return lines[k:] + lines[:k]


# -- the profile ---------------------------------------------------------------------------

# Run as the supervisor's ``python -c``: times every unary gRPC handler, every
# call to a shim, each shim command and the bundle's making and removal, into
# the JSON-lines file named by DOCKYARD_BENCH_TRACE; then runs the real main.
PROFILE_BOOTSTRAP = r"""
import json, os, sys, threading, time
import grpc
_out = open(os.environ["DOCKYARD_BENCH_TRACE"], "a", buffering=1)
_lock = threading.Lock()
def _rec(kind, name, t0, t1):
    with _lock:
        _out.write(json.dumps({"k": kind, "m": name, "t0": t0, "t1": t1}) + "\n")
class _Timing(grpc.ServerInterceptor):
    def intercept_service(self, continuation, details):
        h = continuation(details)
        if h is None:
            return h
        name = details.method
        if h.unary_unary is not None:
            inner = h.unary_unary
            def unary(req, ctx):
                t0 = time.monotonic()
                try:
                    return inner(req, ctx)
                finally:
                    _rec("rpc", name, t0, time.monotonic())
            return grpc.unary_unary_rpc_method_handler(
                unary, h.request_deserializer, h.response_serializer)
        if h.unary_stream is not None:
            inner_s = h.unary_stream
            def stream(req, ctx):
                t0 = time.monotonic()
                try:
                    yield from inner_s(req, ctx)
                finally:
                    _rec("rpc", name, t0, time.monotonic())
            return grpc.unary_stream_rpc_method_handler(
                stream, h.request_deserializer, h.response_serializer)
        return h
_server = grpc.server
def _patched_server(*a, **kw):
    kw["interceptors"] = [*(kw.get("interceptors") or ()), _Timing()]
    return _server(*a, **kw)
grpc.server = _patched_server
def _timed(owner, attr, kind, label):
    orig = getattr(owner, attr)
    def wrapper(*a, **kw):
        t0 = time.monotonic()
        try:
            return orig(*a, **kw)
        finally:
            _rec(kind, label(a, kw), t0, time.monotonic())
    setattr(owner, attr, wrapper)
from dockyard.ttrpc import client as _tc
from dockyard.supervisor import shims as _shims
_timed(_tc.Client, "call", "shim", lambda a, kw: a[2])
def _binary(a, kw):
    return "shim " + os.path.basename(a[2]).replace("containerd-shim-", "") + " " + a[3][-1]
_timed(_shims.ShimManager, "_run_binary", "exec", _binary)
_timed(_shims.Bundle, "create", "bundle", lambda a, kw: "create")
_timed(_shims.Bundle, "delete", "bundle", lambda a, kw: "delete")
from dockyard.supervisor.main import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Proc:
    pid: int
    label: str
    t_exec: float  # or of the fork, for a fork that never execs
    t_exit: float | None = None
    fork: bool = False


def classify(argv: list[str], comm: str) -> str:
    """A short name for an exec'd process: which shim action, runtime verb, ..."""
    first = os.path.basename(argv[0]) if argv else comm
    # A #! script (our shim and runtime) runs as "python -IS <script> args".
    if first.startswith("python"):
        rest = argv[1:]
        while rest and rest[0].startswith("-"):
            rest = rest[1:]
        if rest:
            argv, first = rest, os.path.basename(rest[0])
    if first.startswith("containerd-shim") or comm.startswith("containerd-shim"):
        kind = "dockyard" if "dockyard" in first else "runc"
        last = argv[-1] if argv else ""
        action = last if last in ("start", "delete") else "server"
        return f"shim({kind}) {action}"
    if first in ("dockyard-runtime", "runc", "crun") or comm.startswith("dockyard-runtim"):
        verb = ""
        i = 1
        with_value = {"--root", "--log", "--log-format", "--criu"}
        while i < len(argv):
            arg = argv[i]
            if arg in with_value:
                i += 2
                continue
            if arg.startswith("-"):
                i += 1
                continue
            verb = arg
            break
        return f"{first} {verb}".strip()
    return f"exec {first or comm}"


class ProcWatcher:
    """Exec and exit of every process below some root pids, from the kernel's
    process connector (netlink): nothing is traced, so nothing is slowed down.

    Times are CLOCK_MONOTONIC, as ``time.monotonic()``. A process is followed
    from its parent's fork; its command line is read as soon as its exec is
    seen (one that is gone by then is named by its ``comm``).
    """

    NETLINK_CONNECTOR = 11
    CN_IDX_PROC = CN_VAL_PROC = 1
    PROC_CN_MCAST_LISTEN, PROC_CN_MCAST_IGNORE = 1, 2
    FORK, EXEC, EXIT = 0x1, 0x2, 0x80000000

    def __init__(self, roots: list[int]) -> None:
        self.tracked: set[int] = set(roots)
        self.procs: dict[int, Proc] = {}
        self.done: list[Proc] = []
        self.lost = 0
        self._stop = False
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, self.NETLINK_CONNECTOR)
        try:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
            self.sock.bind((0, self.CN_IDX_PROC))
            self.sock.settimeout(0.2)
            self._control(self.PROC_CN_MCAST_LISTEN)
        except OSError:
            self.sock.close()
            raise
        self.thread = threading.Thread(target=self._loop, name="proc-watch", daemon=True)
        self.thread.start()

    def _control(self, op: int) -> None:
        body = struct.pack("I", op)
        cn = struct.pack("IIIIHH", self.CN_IDX_PROC, self.CN_VAL_PROC, 0, 0, len(body), 0)
        msg = cn + body
        self.sock.send(struct.pack("IHHII", 16 + len(msg), 3, 0, 0, 0) + msg)  # NLMSG_DONE

    def _loop(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                self.lost += 1  # ENOBUFS: events dropped
                continue
            if len(data) < 52:
                continue
            what, _cpu, ts = struct.unpack_from("IIQ", data, 36)
            t = ts / 1e9
            if what == self.FORK:
                _ppid, ptgid, cpid, ctgid = struct.unpack_from("IIII", data, 52)
                # A new thread shows as a "fork" too, with its process's parent as
                # the parent: only a new thread group leader is a new process.
                if ptgid in self.tracked and cpid == ctgid and ctgid not in self.procs:
                    self.tracked.add(ctgid)
                    # Work done in a fork (a runtime run as a library, say) shows
                    # as "<parent> fork"; a fork that execs is named by what it execs.
                    parent = self.procs.get(ptgid)
                    label = f"{parent.label if parent else 'daemon'} fork"
                    self.procs[ctgid] = Proc(ctgid, label, t, fork=True)
            elif what == self.EXEC:
                pid, tgid = struct.unpack_from("II", data, 52)
                if tgid in self.tracked:
                    old = self.procs.pop(tgid, None)
                    if old is not None and not old.fork:
                        old.t_exit = t  # exec'd again: the old program ends here
                        self.done.append(old)
                    self.procs[tgid] = Proc(tgid, classify(*self._cmdline(tgid)), t)
            elif what == self.EXIT:
                pid, tgid = struct.unpack_from("II", data, 52)
                if pid == tgid and tgid in self.tracked:
                    self.tracked.discard(tgid)
                    p = self.procs.pop(tgid, None)
                    if p is not None:
                        p.t_exit = t
                        self.done.append(p)

    @staticmethod
    def _cmdline(pid: int) -> tuple[list[str], str]:
        argv: list[str] = []
        comm = ""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            pass
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            pass
        return argv, comm

    def close(self) -> list[Proc]:
        self._stop = True
        self.thread.join()
        with contextlib.suppress(OSError):
            self._control(self.PROC_CN_MCAST_IGNORE)
        self.sock.close()
        return self.done + list(self.procs.values())


@dataclass
class Span:
    kind: str
    name: str
    t0: float
    t1: float | None


def short_rpc(method: str) -> str:
    # /containerd.services.tasks.v1.Tasks/Create -> tasks.Create
    service, _, name = method.rpartition("/")
    parts = service.strip("/").split(".")
    svc = parts[2] if len(parts) > 2 and parts[0] == "containerd" else service
    return f"{svc}.{name}"


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


@dataclass
class ProfileRun:
    line: str
    t0: float
    t1: float
    spans: list[Span]


def profile(base: Path, archive: Path, image_ref: str, n: int) -> dict[str, Any]:
    """Instrumented daemons; ``ctr run --rm`` phase by phase.

    A supervisor run through PROFILE_BOOTSTRAP (its handlers and shim calls
    timed) and a plain containerd; the kernel's process connector reports
    the processes both start (shims, runtimes, the container), which gives
    the same milestones on both sides without slowing anything down.
    """
    trace = base / "trace.jsonl"
    tag = uuid.uuid4().hex[:6]
    sup = Daemon("dockyard", base / "dockyard", f"bench-pd-{tag}", python_c=PROFILE_BOOTSTRAP)
    ctd = Daemon("containerd", base / "containerd", f"bench-pc-{tag}")
    os.environ["DOCKYARD_BENCH_TRACE"] = str(trace)
    runs: list[ProfileRun] = []
    watcher: ProcWatcher | None = None
    procs: list[Proc] = []
    note = ""
    try:
        base.mkdir(parents=True, exist_ok=True)
        for d in (sup, ctd):
            d.start()
            d.import_image(archive)
        try:
            watcher = ProcWatcher([sup.pid(), ctd.pid()])
        except OSError as e:
            note = f"no process connector ({e.strerror or e}): no process milestones"
        bench = Bench(image_ref, base)
        lines = [
            Line("dockyard", sup, DOCKYARD_SHIM, ""),
            Line("dockyard+runc-shim", sup, RUNC_SHIM, ""),
            Line("containerd", ctd, RUNC_SHIM, ""),
        ]
        for line in lines:  # warm-up
            guarded(line, bench.warm_up)
        for i in range(n):
            for line in rotated(lines, i):
                t0 = time.monotonic()
                guarded(line, bench.warm_up)
                if not line.failed:
                    runs.append(ProfileRun(line.key, t0, time.monotonic(), []))
            if (i + 1) % 5 == 0 or i + 1 == n:
                log(f"profile {i + 1}/{n}")
        time.sleep(0.2)
    finally:
        if watcher is not None:
            procs = watcher.close()
            if watcher.lost:
                note = f"the process connector dropped events {watcher.lost} times"
        for d in (sup, ctd):
            d.remove_all()
            d.stop()
            d.remove_leftovers()
        os.environ.pop("DOCKYARD_BENCH_TRACE", None)
    spans: list[Span] = []
    for raw in read_all(trace).splitlines():
        try:
            r = json.loads(raw)
        except ValueError:
            continue
        name = short_rpc(r["m"]) if r["k"] == "rpc" else r["m"]
        spans.append(Span(r["k"], name, r["t0"], r["t1"]))
    spans += [Span("proc", p.label, p.t_exec, p.t_exit) for p in procs]
    spans += shim_serving_marks(sup.log, time.time() - time.monotonic())
    for run in runs:
        run.spans = sorted(
            (s for s in spans if run.t0 <= s.t0 <= run.t1), key=lambda s: (s.t0, s.kind)
        )
    return summarize_profile(runs, note)


def _proc(spans: list[Span], suffix: str, shim: bool = False) -> Span | None:
    """The first process span whose name ends with ``suffix`` (a shim's or not)."""
    for s in spans:
        if s.kind == "proc" and s.name.endswith(suffix) and s.name.startswith("shim(") == shim:
            return s
    return None


def _runtime(spans: list[Span]) -> tuple[Span | None, Span | None, Span | None]:
    """The runtime's create, start and delete: commands, or forks of the shim
    server when the shim runs the runtime as a library (create, start, ...,
    delete in that order)."""
    create, start, delete = _proc(spans, " create"), _proc(spans, " start"), _proc(spans, " delete")
    if create is None:
        forks = [s for s in spans if s.kind == "proc" and s.name.endswith(" server fork")]
        if len(forks) >= 3:
            create, start, delete = forks[0], forks[1], forks[-1]
    return create, start, delete


# The same milestones on both sides, from the processes seen exec'd and exiting.
MILESTONES = [
    "ctr starts -> shim start exec'd (image, snapshot, container, task request)",
    "shim start exec'd -> shim server exec'd",
    "shim server exec'd -> runtime create begins",
    "runtime create (begins -> ends)",
    "runtime create ends -> runtime start begins (Create answer, tasks.Start)",
    "runtime start (begins -> ends)",
    "runtime start ends -> container exits",
    "container exits -> runtime delete begins (Wait answer, tasks.Delete)",
    "runtime delete (begins -> ends)",
    "runtime delete ends -> ctr exits (shim shutdown, bundle, snapshot, records)",
]


def _milestones(run: ProfileRun) -> dict[str, float]:
    sp = run.spans
    starter = _proc(sp, " start", shim=True)
    server = _proc(sp, " server", shim=True)
    create, start, delete = _runtime(sp)
    init = _proc(sp, "exec true")

    def at(span: Span | None, end: bool = False) -> float | None:
        if span is None:
            return None
        return span.t1 if end else span.t0

    points = [
        run.t0,
        at(starter),
        at(server),
        at(create),
        at(create, end=True),
        at(start),
        at(start, end=True),
        at(init, end=True),
        at(delete),
        at(delete, end=True),
        run.t1,
    ]
    out: dict[str, float] = {}
    for label, a, b in zip(MILESTONES, points, points[1:], strict=False):
        if a is not None and b is not None:
            out[label] = b - a
    return out


def _first(spans: list[Span], kind: str, prefix: str) -> Span | None:
    for s in spans:
        if s.kind == kind and s.name.startswith(prefix):
            return s
    return None


def _gaps(spans: list[Span]) -> dict[str, float]:
    """Hand-offs between the layers, from the spans of one run (where all were seen)."""
    command = _first(spans, "exec", "shim ")
    starter = _proc(spans, " start", shim=True)
    server = _proc(spans, " server", shim=True)
    serving = _first(spans, "mark", "shim serving")
    create, start, _delete = _runtime(spans)
    init = _first(spans, "proc", "exec true")
    sh_create = _first(spans, "shim", "Create")
    sh_start = _first(spans, "shim", "Start")
    sh_wait = _first(spans, "shim", "Wait")
    rpc_create = _first(spans, "rpc", "tasks.Create")
    out: dict[str, float] = {}

    def gap(label: str, a: Span | None, a_end: bool, b: Span | None, b_end: bool) -> None:
        if a is None or b is None:
            return
        ta = a.t1 if a_end else a.t0
        tb = b.t1 if b_end else b.t0
        if ta is not None and tb is not None:
            out[label] = tb - ta

    gap("shim start command begins -> shim server exec'd", command, False, server, False)
    gap("shim start process exits -> the supervisor has its address", starter, True, command, True)
    gap(
        "shim server exec'd -> serving (interpreter, imports, listen)",
        server,
        False,
        serving,
        False,
    )
    gap("shim server exec'd -> supervisor sends Create (start command done)",
        server, False, sh_create, False)  # fmt: skip
    if serving and sh_create and create:
        # The shim takes Create once it serves and the supervisor has sent it.
        out["shim has Create -> runtime create begins (Create handling)"] = create.t0 - max(
            serving.t0, sh_create.t0
        )
    gap("runtime create ends -> shim answers Create", create, True, sh_create, True)
    gap("shim answers Create -> tasks.Create answered", sh_create, True, rpc_create, True)
    gap("runtime start ends -> shim answers Start", start, True, sh_start, True)
    gap("container exits -> shim answers Wait", init, True, sh_wait, True)
    return out


def shim_serving_marks(log_path: Path, offset: float) -> list[Span]:
    """When each of our shims logged "serving the task api" (monotonic time).

    The shim logs wall-clock UTC; ``offset`` is time.time() - time.monotonic().
    """
    marks = []
    pattern = re.compile(r'time="(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z"[^\n]*'
                         r'msg="serving the task api"')  # fmt: skip
    for m in pattern.finditer(read_all(log_path)):
        whole = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        t = whole.timestamp() + float(m.group(2) or 0) - offset
        marks.append(Span("mark", "shim serving", t, t))
    return marks


def summarize_profile(runs: list[ProfileRun], note: str) -> dict[str, Any]:
    out: dict[str, Any] = {"note": note, "lines": {}}
    prefix = {"rpc": "gRPC ", "shim": "ttrpc to shim: ", "exec": "command: ",
              "bundle": "bundle ", "proc": "process: ", "mark": "mark: "}  # fmt: skip
    for key in dict.fromkeys(r.line for r in runs):
        mine = [r for r in runs if r.line == key]
        phases: dict[str, list[float]] = {}
        calls: dict[str, list[int]] = {}
        for r in mine:
            per: dict[str, float] = {"ctr run --rm (total)": r.t1 - r.t0}
            count: dict[str, int] = {}
            rpcs = [(s.t0, s.t1) for s in r.spans if s.kind == "rpc" and s.t1 is not None]
            per["outside any gRPC handler (ctr, transport, dispatch)"] = (
                r.t1 - r.t0
            ) - union_length(rpcs)
            count["gRPC calls"] = len(rpcs)
            for s in r.spans:
                if s.t1 is None or s.kind == "mark":
                    continue
                label = prefix[s.kind] + s.name
                per[label] = per.get(label, 0.0) + (s.t1 - s.t0)
                count[label] = count.get(label, 0) + 1
            for k, v in _gaps(r.spans).items():
                per["gap: " + k] = v
            for k, v in _milestones(r).items():
                per["milestone: " + k] = v
            for k, v in per.items():
                phases.setdefault(k, []).append(v)
            for k, c in count.items():
                calls.setdefault(k, []).append(c)
        medians = {k: statistics.median(v) for k, v in phases.items()}
        example = sorted(mine, key=lambda r: r.t1 - r.t0)[len(mine) // 2]
        timeline = [
            {
                "kind": s.kind,
                "name": s.name,
                "start_ms": round((s.t0 - example.t0) * 1000, 1),
                "ms": round((s.t1 - s.t0) * 1000, 1) if s.t1 is not None else None,
            }
            for s in example.spans
        ]
        out["lines"][key] = {
            "runs": len(mine),
            "phases_ms": {k: round(v * 1000, 1) for k, v in medians.items()},
            "calls_per_run": {k: statistics.median(v) for k, v in calls.items()},
            "example_total_ms": round((example.t1 - example.t0) * 1000, 1),
            "example_timeline": timeline,
        }
    return out


def rpc_round_trips(d: Daemon, config_digest: str, image: str, n: int) -> dict[str, float]:
    """Median ms of one unary gRPC call, from one Python client, for a few cheap calls."""
    import grpc

    from dockyard.api.services.content.v1 import content_pb2
    from dockyard.api.services.images.v1 import images_pb2

    calls = {
        "version.Version": ("/containerd.services.version.v1.Version/Version", b""),
        "content.Info": (
            "/containerd.services.content.v1.Content/Info",
            content_pb2.InfoRequest(digest=config_digest).SerializeToString(),
        ),
        "images.Get": (
            "/containerd.services.images.v1.Images/Get",
            images_pb2.GetImageRequest(name=image).SerializeToString(),
        ),
    }
    md = (("containerd-namespace", d.namespace),)
    out: dict[str, float] = {}
    with grpc.insecure_channel("unix:" + d.address) as channel:
        for name, (method, payload) in calls.items():
            call = channel.unary_unary(method)
            for _ in range(10):
                call(payload, metadata=md, timeout=10)
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                call(payload, metadata=md, timeout=10)
                times.append(time.perf_counter() - t0)
            out[name] = round(statistics.median(times) * 1000, 3)
    return out


def print_profile(p: dict[str, Any]) -> None:
    if p.get("round_trips"):
        rt = p["round_trips"]
        whos = list(rt)
        print("\none unary gRPC call from a Python client, median ms (transport + dispatch)")
        print(f"{'call':<22}" + "".join(f"{w:>22}" for w in whos))
        for call in rt[whos[0]]:
            print(f"{call:<22}" + "".join(f"{rt[w].get(call, 0):>22.2f}" for w in whos))
    lines = p["lines"]
    if not lines:
        return
    keys = list(lines)
    print(
        f"\nprofile: median ms per ctr run --rm ({min(d['runs'] for d in lines.values())}+ "
        "runs each; the supervisor's handlers timed, processes seen by the process connector)"
    )
    if p["note"]:
        print(f"({p['note']})")
    title = "milestone (processes exec'd or forked, and ended)"
    head = f"  {title:<74}"
    print(head + "".join(f"{k:>20}" for k in keys))
    for label in ["ctr run --rm (total)", *(f"milestone: {m}" for m in MILESTONES)]:
        cells = [lines[k]["phases_ms"].get(label) for k in keys]
        if all(c is None for c in cells):
            continue
        name = label.removeprefix("milestone: ")
        print(
            f"  {name:<74}"
            + "".join(f"{c:>20.1f}" if c is not None else f"{'-':>20}" for c in cells)
        )
    for key in keys:
        data = lines[key]
        phases = {
            k: v for k, v in data["phases_ms"].items() if not k.startswith(("milestone:", "ctr"))
        }
        if not any(k.startswith("gRPC") for k in phases):
            continue  # not instrumented (containerd): the milestones are all there is
        print(f"\n  {key}: inside the supervisor (spans overlap), median ms per run")
        calls = data["calls_per_run"]
        print(f"  {'phase':<72}{'ms':>8}{'calls':>7}")
        for k in sorted(phases, key=lambda k: -phases[k]):
            c = calls.get("gRPC calls") if k.startswith("outside") else calls.get(k)
            cell = f"{c:>7.0f}" if c else ""
            print(f"  {k:<72}{phases[k]:>8.1f}{cell}")
    for key in keys:
        data = lines[key]
        full = key == keys[0]
        print(
            f"\n  {key}: one run ({data['example_total_ms']:.1f} ms), ms from ctr's start"
            + ("" if full else " (image, snapshot and container calls left out)")
        )
        for ev in data["example_timeline"]:
            if not full and ev["kind"] == "rpc" and not ev["name"].startswith("tasks."):
                continue
            dur = f"{ev['ms']:8.1f}" if ev["ms"] is not None else "       -"
            print(f"  {ev['start_ms']:8.1f} +{dur}  {ev['kind']:<6} {ev['name']}")


# -- output ----------------------------------------------------------------------------


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def mib(kib: float | None) -> str:
    return f"{kib / 1024:.1f}" if kib is not None else "-"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "NOT met")


def results(
    lines: list[Line], mem_lines: list[Line], idle: dict[str, dict[str, Usage]], args: Any
) -> dict[str, Any]:
    res: dict[str, Any] = {"runs": args.runs, "containers": args.containers, "run": {}}
    for line in lines:
        m = med(line.times)
        res["run"][line.key] = {
            "what": line.what,
            "median_ms": round(m * 1000, 1) if m is not None else None,
            "times_ms": [round(t * 1000, 1) for t in line.times],
            "failed": line.failed or None,
        }
    res["memory"] = {}
    for line in mem_lines:
        res["memory"][line.key] = {
            "what": line.what,
            "median_rss_kib": med([u.rss for u in line.shims]),
            "median_pss_kib": med([u.pss for u in line.shims]),
            "total_pss_kib": sum(u.pss for u in line.shims) or None,
            "processes_per_shim": med([u.processes for u in line.shims]),
            "threads_per_shim": med([u.threads for u in line.shims]),
            "failed": line.failed or None,
        }
    res["idle"] = {
        when: {
            who: {"rss_kib": u.rss, "pss_kib": u.pss, "threads": u.threads}
            for who, u in per.items()
        }
        for when, per in idle.items()
    }
    targets: dict[str, Any] = {}
    run = res["run"]
    if run.get("dockyard", {}).get("median_ms") and run.get("containerd", {}).get("median_ms"):
        ratio = run["dockyard"]["median_ms"] / run["containerd"]["median_ms"]
        targets["run_ratio"] = {"value": round(ratio, 2), "target": 1.0, "met": ratio <= 1.0}
    mem = res["memory"]
    ours_pss = mem.get("dockyard", {}).get("median_pss_kib")
    ref_pss = mem.get("containerd", {}).get("median_pss_kib")
    if ours_pss and ref_pss:
        targets["shim_pss"] = {
            "value_kib": ours_pss,
            "target_kib": ref_pss,
            "ratio": round(ours_pss / ref_pss, 2),
            "met": ours_pss <= ref_pss,
        }
    start = idle.get("after start + import", {})
    if "dockyard-supervisor" in start and "containerd" in start:
        # reported side by side; the issue sets no target for it
        ours_u, ref_u = start["dockyard-supervisor"], start["containerd"]
        res["idle_compared"] = {
            "rss_kib": [ours_u.rss, ref_u.rss],
            "pss_kib": [ours_u.pss, ref_u.pss],
            "rss_ratio": round(ours_u.rss / ref_u.rss, 2) if ref_u.rss else None,
        }
    res["targets"] = targets
    return res


def print_tables(res: dict[str, Any], lines: list[Line], mem_lines: list[Line]) -> None:
    ref = res["run"].get("containerd", {}).get("median_ms")
    if res["run"]:
        print(f"\nctr run --rm busybox true: median wall time over {res['runs']} runs (ms)")
        w = max(22, *(len(line.key) + 2 for line in lines))
        print(f"{'line':<{w}}{'median':>9}{'min':>9}{'max':>9}{'/containerd':>13}  stack")
        print("-" * 100)
        for line in lines:
            r = res["run"][line.key]
            m = r["median_ms"]
            ts = r["times_ms"]
            ratio = f"{m / ref:.2f}x" if m and ref else "-"
            cells = f"{m:>9.1f}{min(ts):>9.1f}{max(ts):>9.1f}" if m else f"{'FAILED':>9}{'':>18}"
            print(f"{line.key:<{w}}{cells}{ratio:>13}  {line.what}")
    if res["memory"]:
        n = res["containers"]
        print(f"\nshim memory with {n} containers running (ctr run -d ... sleep), per container")
        print(
            f"{'line':<22}{'RSS MiB':>9}{'PSS MiB':>9}{'PSS x' + str(n):>10}"
            f"{'procs':>7}{'threads':>9}  shim"
        )
        print("-" * 100)
        for line in mem_lines:
            r = res["memory"][line.key]
            if r["median_pss_kib"] is None:
                print(f"{line.key:<22}{'FAILED':>9}")
                continue
            print(
                f"{line.key:<22}{mib(r['median_rss_kib']):>9}{mib(r['median_pss_kib']):>9}"
                f"{mib(r['total_pss_kib']):>10}{r['processes_per_shim']:>7.0f}"
                f"{r['threads_per_shim']:>9.0f}  {line.what}"
            )
    if res["idle"]:
        print("\ndaemon memory, no containers (the daemon process and any children)")
        print(f"{'when':<26}{'daemon':<22}{'RSS MiB':>9}{'PSS MiB':>9}{'threads':>9}")
        print("-" * 75)
        for when, per in res["idle"].items():
            for who, u in per.items():
                print(
                    f"{when:<26}{who:<22}{mib(u['rss_kib']):>9}{mib(u['pss_kib']):>9}"
                    f"{u['threads']:>9}"
                )
    t = res["targets"]
    print("\ntargets")
    if "run_ratio" in t:
        r = t["run_ratio"]
        print(
            f"  ctr run --rm, dockyard / containerd <= 1.0: {r['value']:.2f}x  {verdict(r['met'])}"
        )
    if "shim_pss" in t:
        r = t["shim_pss"]
        print(
            f"  shim PSS <= containerd-shim-runc-v2's: {mib(r['value_kib'])} vs "
            f"{mib(r['target_kib'])} MiB ({r['ratio']:.2f}x)  {verdict(r['met'])}"
        )
    if "idle_compared" in res:
        c = res["idle_compared"]
        print(
            f"  reported, no target: idle supervisor RSS {mib(c['rss_kib'][0])} vs "
            f"containerd {mib(c['rss_kib'][1])} MiB ({c['rss_ratio']:.2f}x); "
            f"PSS {mib(c['pss_kib'][0])} vs {mib(c['pss_kib'][1])} MiB"
        )
    for line in [*lines, *mem_lines]:
        if line.failed:
            print(f"{line.key} FAILED: {line.failed}")


# -- main --------------------------------------------------------------------------------


def daemon_usage(d: Daemon) -> Usage:
    return usage_of(tree(d.pid(), parents()))


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so that teardown runs."""

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--runs", "-n", type=int, default=20, help="ctr run --rm per line (20)")
    ap.add_argument("--containers", type=int, default=20, help="running containers per shim (20)")
    ap.add_argument("--only", choices=["run", "memory", "idle"], help="one measurement only")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs per line first (2)")
    ap.add_argument(
        "--profile", action="store_true", help="also break our ctr run --rm into phases"
    )
    ap.add_argument("--profile-runs", type=int, default=10, help="runs in the profile (10)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = ap.parse_args(argv)

    if os.geteuid() != 0:
        log("run as root")
        return 0
    for tool in ("containerd", "ctr", "containerd-shim-runc-v2", "runc"):
        if not shutil.which(tool):
            log(f"{tool} is not installed")
            return 0
    if not (VENV_BIN / "containerd-shim-dockyard-v2").exists():
        log(f"our shim is not installed in {VENV_BIN} (scripts/setup.sh)")
        return 0

    do = {args.only} if args.only else {"run", "memory", "idle"}
    base = Path(tempfile.mkdtemp(prefix="dockyard-bench-sup-"))
    tag = uuid.uuid4().hex[:6]
    created = CreatedDirs(*HOST_DIRS)
    ctd = Daemon("containerd", base / "containerd", f"bench-c-{tag}")
    sup = Daemon("dockyard", base / "dockyard", f"bench-d-{tag}")
    template_socket = base / "shim-template" / "t.sock"
    ctd_tpl = Daemon(
        "containerd",
        base / "containerd-tpl",
        f"bench-t-{tag}",
        extra_env={"DOCKYARD_SHIM_TEMPLATE": str(template_socket)},
    )
    template: subprocess.Popen[bytes] | None = None
    lines = [
        Line("dockyard", sup, DOCKYARD_SHIM,
             "dockyard-supervisor + containerd-shim-dockyard-v2 + dockyard-runtime"),
        Line("containerd", ctd, RUNC_SHIM, "containerd + containerd-shim-runc-v2 + runc"),
        Line("dockyard+runc-shim", sup, RUNC_SHIM,
             "dockyard-supervisor + containerd-shim-runc-v2 + runc"),
        Line("containerd+our-shim", ctd, DOCKYARD_SHIM,
             "containerd + containerd-shim-dockyard-v2 + dockyard-runtime"),
        Line("containerd+our-shim+template", ctd_tpl, DOCKYARD_SHIM,
             "containerd + containerd-shim-dockyard-v2 (forked by dockyard-shim-template)"
             " + dockyard-runtime"),
    ]  # fmt: skip
    mem_lines = [
        Line("dockyard", sup, DOCKYARD_SHIM, "containerd-shim-dockyard-v2 (dockyard-supervisor)"),
        Line("containerd", ctd, RUNC_SHIM, "containerd-shim-runc-v2 (containerd)"),
    ]
    idle: dict[str, dict[str, Usage]] = {}
    prof: dict[str, Any] | None = None
    n = max(1, args.runs)
    try:
        with terminate_as_interrupt():
            archive = build_image_archive(base / "busybox.tar")
            for d in (ctd, sup):
                d.start()
                d.import_image(archive.path)
                log(f"{d.label} serving after {d.started_in:.2f}s; image imported")
            if "run" in do:

                def start_templated(line: Line) -> None:
                    nonlocal template
                    template = start_template(template_socket)
                    ctd_tpl.start()
                    ctd_tpl.import_image(archive.path)

                guarded(lines[-1], start_templated)
            if "idle" in do:
                time.sleep(SETTLE)
                idle["after start + import"] = {d.label: daemon_usage(d) for d in (sup, ctd)}
            bench = Bench(archive.ref, base)
            if "run" in do:
                for _ in range(max(0, args.warmup)):
                    for line in lines:
                        guarded(line, bench.warm_up)
                for i in range(n):
                    for line in rotated(lines, i):
                        guarded(line, lambda ln: ln.times.append(bench.run_rm(ln)))
                    if (i + 1) % 5 == 0 or i + 1 == n:
                        log(f"run {i + 1}/{n}")
            if "memory" in do:
                for line in mem_lines:
                    guarded(line, lambda ln: bench.measure_shims(ln, max(1, args.containers)))
                    log(f"memory of {line.key}'s shims measured")
            if "idle" in do and do != {"idle"}:
                time.sleep(SETTLE)
                idle["after the other phases"] = {d.label: daemon_usage(d) for d in (sup, ctd)}
            if args.profile:
                trips = {
                    d.label: rpc_round_trips(d, archive.config_digest, archive.ref, 200)
                    for d in (sup, ctd)
                }
                prof = profile(base / "profile", archive.path, archive.ref, args.profile_runs)
                prof["round_trips"] = trips
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        raise
    finally:
        for d in (sup, ctd, ctd_tpl):
            if d.proc is None:
                continue
            d.remove_all()
            d.stop()
            d.remove_leftovers()
        if template is not None:
            stop_process(template, timeout=15)
        for pid in pids_mentioning(f"{base}/"):
            stop_pid(pid, timeout=5)
        try:
            unmount_under(base)
            shutil.rmtree(base, ignore_errors=True)
        except (OSError, RuntimeError) as e:
            log(f"note: {e}; left {base}")
        created.cleanup()
    res = results(
        [ln for ln in lines if "run" in do], [ln for ln in mem_lines if "memory" in do], idle, args
    )
    if prof is not None:
        res["profile"] = prof
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print_tables(
        res, [ln for ln in lines if "run" in do], [ln for ln in mem_lines if "memory" in do]
    )
    if prof is not None:
        print_profile(prof)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)  # cleaned up already: main's teardown ran
