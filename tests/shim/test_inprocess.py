"""dockyard-runtime run in-process by the shim keeps what the command guarantees.

The shim runs dockyard-runtime's CLI in a fork of itself (``InProcessRuntime``)
instead of starting it. The fork holds the shim's memory and, until it
closes them, its fds: none of it may reach a container. Each test runs in
every mode of ``shim_env`` (in-process, command, template), so the command
path is the control.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import dockyard
from dockyard.api.runtime.task.v2 import shim_pb2 as api
from dockyard.shim import reaper
from dockyard.shim.runtime import InProcessRuntime, RuncCLI, new_runtime
from dockyard.ttrpc import Error, codes
from tests.conftest import Bundle
from tests.runtime.helpers import fingerprint
from tests.runtime.test_proc_exe import ROUNDS, SCANNER, SELF_EXE_SCRIPT
from tests.shim.conftest import ShimEnv
from tests.shim.harness import BIN_DIR, FifoReader, ShimUnderTest, make_fifos, runc_options

Started = Callable[..., ShimUnderTest]


def create(shim: ShimUnderTest, env: ShimEnv, bundle: Bundle, **fields: object) -> int:
    fields.setdefault("options", runc_options(root=str(env.runtime_root)))
    req = api.CreateTaskRequest(id=shim.id, bundle=str(bundle.path), **fields)  # type: ignore[arg-type]
    return shim.call("Create", req, api.CreateTaskResponse).pid


def exec_spec(bundle: Bundle, *args: str) -> dict[str, object]:
    process = dict(bundle.config["process"])
    process["args"] = list(args)
    return process


def environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [kv.decode().partition("=") for kv in f.read().split(b"\0") if kv]
    return {k: v for k, _, v in pairs}


def test_runtime_runs_in_the_shim_unless_told_otherwise(
    shim_env: ShimEnv, started: Started, bundle: Bundle
) -> None:
    """A createRuntime hook is a child of the runtime: its parent says where it ran."""
    out = shim_env.base / "runtime-cmdline"
    bundle.config["hooks"] = {
        "createRuntime": [
            {"path": "/bin/sh", "args": ["sh", "-c", f"cat /proc/$PPID/cmdline > {out}"]}
        ]
    }
    bundle.set_args("true").write()
    shim = started(bundle)
    create(shim, shim_env, bundle)
    runtime = out.read_bytes().split(b"\0")
    if shim_env.mode == "command":
        assert any(a.endswith(b"/dockyard-runtime") for a in runtime), runtime
    else:
        # The shim's own process image: its argv, forked, never exec'd.
        assert any(a.endswith(b"/containerd-shim-dockyard-v2") for a in runtime), runtime
        assert not any(a.endswith(b"/dockyard-runtime") for a in runtime), runtime
    shim.delete()


def test_runtime_driver_by_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = str(BIN_DIR / "dockyard-runtime")
    runc = shutil.which("runc") or "/usr/sbin/runc"
    log = str(tmp_path / "log.json")
    launcher = reaper.DirectLauncher()
    assert type(new_runtime(ours, "/r", log, launcher, str(BIN_DIR))) is InProcessRuntime
    assert type(new_runtime(runc, "/r", log, launcher, str(BIN_DIR))) is RuncCLI
    # Another dockyard-runtime than the one beside the shim is run as a command.
    other = tmp_path / "dockyard-runtime"
    shutil.copy2(ours, other)
    assert type(new_runtime(str(other), "/r", log, launcher, str(BIN_DIR))) is RuncCLI
    monkeypatch.setenv("DOCKYARD_SHIM_RUNTIME_IN_PROCESS", "0")
    assert type(new_runtime(ours, "/r", log, launcher, str(BIN_DIR))) is RuncCLI


def test_container_processes_get_only_their_stdio_and_their_own_program(
    shim_env: ShimEnv, started: Started, bundle: Bundle
) -> None:
    bundle.set_args("sleep", "1000").write()
    shim = started(bundle)
    fifos = make_fifos(shim_env.base, "out", "err")
    out, err = FifoReader(fifos["out"]), FifoReader(fifos["err"])
    try:
        pid = create(shim, shim_env, bundle, stdout=fifos["out"], stderr=fifos["err"])
        shim.start_task()
        shim.exec("x", exec_spec(bundle, "sleep", "1000"))
        xpid = shim.start_task("x")
        busybox = bundle.rootfs / "bin" / "busybox"
        for p in (pid, xpid):
            assert sorted(os.listdir(f"/proc/{p}/fd"), key=int) == ["0", "1", "2"]
            assert os.path.samefile(f"/proc/{p}/exe", busybox)
            env = environ(p)
            assert set(env) <= {"PATH", "HOME", "TERM"}, env
        for name in ("1", "2"):
            assert os.readlink(f"/proc/{pid}/fd/{name}").startswith("pipe:")
        shim.kill(signal.SIGKILL, "x")
        shim.wait("x")
        shim.delete("x")
        shim.kill(signal.SIGKILL)
        assert shim.wait().exit_status == 137
        shim.delete()
    finally:
        out.close()
        err.close()


def _host_files() -> dict[tuple[int, int], str]:
    """What the shim and the in-process runtime run from, by (device, inode)."""
    files = {Path(os.path.realpath(sys.executable))}
    for name in ("dockyard-runtime", "containerd-shim-dockyard-v2"):
        files.add(Path(os.path.realpath(BIN_DIR / name)))
    with open("/proc/self/maps") as maps:
        for line in maps:
            lib = line.split()[-1]
            if "libpython" in lib and os.path.isfile(lib):
                files.add(Path(os.path.realpath(lib)))
    package = Path(dockyard.__file__).parent
    files.update(package.glob("*.py"))
    for sub in ("runtime", "spec", "shim", "ttrpc"):
        files.update((package / sub).rglob("*.py"))
    out = {}
    for path in files:
        fp = fingerprint(path)
        out[(fp[2], fp[3])] = str(path)
    return out


def test_exec_through_the_shim_reaches_no_host_file(
    shim_env: ShimEnv, started: Started, bundle: Bundle
) -> None:
    """test_proc_exe's scanner, with the execs coming through the shim: a process
    of the runtime inside the container is a fork of the shim in-process."""
    (bundle.rootfs / "bin" / "selfexe").write_text(SELF_EXE_SCRIPT)
    (bundle.rootfs / "bin" / "selfexe").chmod(0o755)
    (bundle.rootfs / "opt").mkdir()
    other = bundle.rootfs / "opt" / "sleep"
    shutil.copy2(bundle.rootfs / "bin" / "busybox", other)
    bundle.set_args("sh", "-c", SCANNER).write()
    guarded = _host_files()
    before = {k: fingerprint(v)[:2] for k, v in guarded.items()}
    shim = started(bundle)
    create(shim, shim_env, bundle)
    shim.start_task()
    from tests.compat import host

    host.wait_for(lambda: (bundle.rootfs / "up").exists(), 30, "the scanner to start")
    runs = [("control", ["/opt/sleep", "0.3"])]
    for i in range(ROUNDS):
        runs += [(f"self{i}", ["/bin/selfexe"]), (f"true{i}", ["true"])]
    for exec_id, args in runs:
        shim.exec(exec_id, exec_spec(bundle, *args))
        try:
            shim.start_task(exec_id)
        except Exception:
            pass  # the #!/proc/self/exe script may fail to start: that is fine
        shim.wait(exec_id)
        shim.delete(exec_id)
    (bundle.rootfs / "stop").touch()
    shim.wait()
    shim.delete()

    log = (bundle.rootfs / "log").read_text() if (bundle.rootfs / "log").exists() else ""
    reached = []
    for line in log.splitlines():
        words = line.split() or [""]
        if words[0] in ("root-outside", "cwd-outside"):
            reached.append(line)
        elif words[0] in ("ro", "rw", "reopen-rw", "fd") and len(words) == 3:
            found = guarded.get((int(words[1]), int(words[2])))
            if found:
                reached.append(f"{words[0]} handle on {found}")
    assert not reached, "the container got hold of host files:\n" + "\n".join(reached)
    st = other.stat()
    assert f"ro {st.st_dev} {st.st_ino}" in log.splitlines(), "the scanner saw nothing"
    after = {k: fingerprint(v)[:2] for k, v in guarded.items()}
    assert before == after, "host files changed while the container ran"


FORK_CALL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, threading
    from dockyard.shim.reaper import fork_call

    keep_open = os.pipe()  # inheritable fds of the caller: must not reach the child
    os.set_inheritable(keep_open[0], True)
    stdin_r, stdin_w = os.pipe()
    os.write(stdin_w, b"from the caller")
    os.close(stdin_w)
    out = os.memfd_create("out")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGTERM})
    threading.Thread(target=threading.Event().wait, daemon=True).start()

    def child():
        import gc
        open_fds = []
        for fd in range(3, 1024):
            try:
                os.fstat(fd)
                open_fds.append(fd)
            except OSError:
                pass
        with open("/proc/self/status") as f:
            blocked = [l.split()[1] for l in f if l.startswith("SigBlk:")][0]
        print(json.dumps({
            "fds": open_fds, "blocked": blocked, "gc": gc.isenabled(),
            "stdin": sys.stdin.read(),
            "stderr_is_null": os.path.samefile("/proc/self/fd/2", os.devnull),
        }))
        return 7

    pid = fork_call(child, stdin=stdin_r, stdout=out)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), os.pread(out, 4096, 0).decode())
    """
)


def test_fork_call_child_is_a_fresh_command() -> None:
    p = subprocess.run(
        [sys.executable, "-c", FORK_CALL_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])),
        check=False,
    )
    assert p.returncode == 0, p.stderr
    code, _, report = p.stdout.partition(" ")
    assert code == "7"
    seen = json.loads(report)
    assert seen == {
        "fds": [],
        "blocked": "0000000000000000",
        "gc": False,
        "stdin": "from the caller",
        "stderr_is_null": True,
    }


PRELOAD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from dockyard.shim import preload

    preload.shim()
    preload.runtime()
    before = set(sys.modules)
    from dockyard.runtime.cli import main

    root, bundle, log, process = sys.argv[1:5]
    cid = "preload-check"
    base = ["--root", root, "--log", log, "--log-format", "json"]
    codes = []
    try:
        for args in (
            ["create", "--bundle", bundle, "--pid-file", bundle + "/pid", cid],
            ["state", cid],
            ["start", cid],
            ["ps", "--format", "json", cid],
            ["exec", "--process", process, "--detach", "--pid-file", bundle + "/xpid", cid],
            ["pause", cid],
            ["resume", cid],
            ["update", "--pids-limit", "50", cid],
            ["kill", cid, "KILL"],
            ["start", "no-such-container"],
            ["features"],
        ):
            codes.append(main(base + args))
    finally:
        main(base + ["delete", "--force", cid])
    late = sorted(set(sys.modules) - before)
    print("codes", codes)
    print("late", late)
    """
)


def test_preload_has_everything_the_runtime_imports(bundle: Bundle, tmp_path: Path) -> None:
    """A fork of a threaded shim must not import: another thread may hold the lock."""
    bundle.set_args("sleep", "1000").write()
    process = tmp_path / "process.json"
    process.write_text(json.dumps(exec_spec(bundle, "true")))
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            PRELOAD_SCRIPT,
            str(tmp_path / "root"),
            str(bundle.path),
            str(tmp_path / "log.json"),
            str(process),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])),
        check=False,
    )
    assert p.returncode == 0, p.stderr
    lines = dict(line.split(" ", 1) for line in p.stdout.splitlines() if " " in line)
    assert lines["codes"] == "[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]", p.stdout + p.stderr
    assert lines["late"] == "[]", "imported after the preload: " + lines["late"]


@pytest.mark.parametrize("hooks", [False, True], ids=["direct", "hooks"])
def test_start_and_delete_with_and_without_hooks(
    shim_env: ShimEnv, started: Started, bundle: Bundle, hooks: bool
) -> None:
    """In-process, start and delete run in the shim's thread when the container
    has no poststart/poststop hook, and in a fork of it when it has: a hook is
    a child whose exit the shim's reaper would take. Either way the hooks run
    with their exit seen, and delete leaves no runtime state."""
    log = shim_env.base / "hook-log"
    if hooks:
        bundle.config["hooks"] = {
            stage: [{"path": "/bin/sh", "args": ["sh", "-c", f"echo {stage} >> {log}"]}]
            for stage in ("poststart", "poststop")
        }
    bundle.set_args("true").write()
    shim = started(bundle)
    create(shim, shim_env, bundle)
    state_dir = shim_env.runtime_root / shim.namespace / shim.id
    assert state_dir.is_dir()
    shim.start_task()
    assert shim.wait().exit_status == 0
    with pytest.raises(Error) as again:
        shim.start_task()
    assert again.value.code == codes.FAILED_PRECONDITION
    shim.delete()
    assert not state_dir.exists()
    if hooks:
        assert log.read_text().split() == ["poststart", "poststop"]
    else:
        assert not log.exists()
