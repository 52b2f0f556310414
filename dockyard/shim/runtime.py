"""The OCI runtime as the shim drives it: runc's command line.

``OCIRuntime`` is the one seam between the shim and the runtime. ``RuncCLI``
runs a runc-compatible binary (dockyard-runtime, runc, crun) as
containerd-shim-runc-v2 runs runc: global ``--root``, ``--log <bundle>/log.json
--log-format json``, and the verbs create, start, exec, kill, delete, pause,
resume, update, state and ps. A failed command raises an error whose message
is the runtime's last logged error, as containerd reports it.

``InProcessRuntime`` runs dockyard-runtime as a library: the same argv goes
to ``dockyard.runtime.cli.main`` in a fork of the shim instead of a new
interpreter (no exec, no interpreter start, and no imports when the shim
was forked from the template, which has them all). The child is what the
command would be: the same stdio, no other fd, no blocked signal, its own
pid; the pid file, console socket and log work through the same paths,
and the parent waits and reads the log as for the command. It is used for
the dockyard-runtime installed beside the shim (the default runtime),
unless ``DOCKYARD_SHIM_RUNTIME_IN_PROCESS=0``; runc, crun and any other
binary are run as commands.
"""

from __future__ import annotations

import os

from dockyard.errors import DockyardError, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dockyard.shim.reaper import Command, Launcher

# The runtime every container gets unless its options name another binary.
DEFAULT_RUNTIME = "dockyard-runtime"
# State roots (the namespace is appended): containerd's runc shim's default,
# and dockyard-runtime's when the shim picks it.
RUNC_ROOT = "/run/containerd/runc"
DOCKYARD_ROOT = "/run/dockyard/runtime"
# "0" runs dockyard-runtime as a command too.
IN_PROCESS_ENV = "DOCKYARD_SHIM_RUNTIME_IN_PROCESS"


class RuntimeFailure(DockyardError):
    """The runtime command failed; the message is the runtime's own last error."""


class ChildStdio:
    """The fds a runtime command gets as its stdin, stdout and stderr (None: /dev/null)."""

    __slots__ = ("stderr", "stdin", "stdout")

    def __init__(
        self, stdin: int | None = None, stdout: int | None = None, stderr: int | None = None
    ) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr


class OCIRuntime:
    """What the shim asks of an OCI runtime (runc's verbs, by container id)."""

    binary: str
    root: str

    def create(
        self,
        cid: str,
        bundle: str,
        *,
        pid_file: str,
        console_socket: str | None = None,
        no_pivot: bool = False,
        no_new_keyring: bool = False,
        stdio: ChildStdio | None = None,
    ) -> None:
        raise NotImplementedError

    def start(self, cid: str) -> None:
        raise NotImplementedError

    def exec(
        self,
        cid: str,
        process_file: str,
        *,
        pid_file: str,
        console_socket: str | None = None,
        stdio: ChildStdio | None = None,
    ) -> None:
        """Start the process described by ``process_file`` (detached)."""
        raise NotImplementedError

    def kill(self, cid: str, signal: int, all: bool = False) -> None:
        raise NotImplementedError

    def delete(self, cid: str, force: bool = False) -> None:
        raise NotImplementedError

    def pause(self, cid: str) -> None:
        raise NotImplementedError

    def resume(self, cid: str) -> None:
        raise NotImplementedError

    def update(self, cid: str, resources: bytes) -> None:
        """Apply OCI ``LinuxResources`` given as JSON."""
        raise NotImplementedError

    def state(self, cid: str) -> dict[str, Any]:
        raise NotImplementedError

    def ps(self, cid: str) -> list[int]:
        raise NotImplementedError


def find_binary(name: str, beside: str | None = None) -> str:
    """The path of runtime ``name``: as given when it has a slash, else first in
    the directory ``beside`` (the shim's own), then on ``PATH``."""
    if "/" in name:
        return os.path.abspath(name)
    dirs = [beside] if beside else []
    dirs += os.environ.get("PATH", os.defpath).split(os.pathsep)
    for d in dirs:
        path = os.path.join(d or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise NotFound(f"runtime {name!r}: no such executable beside the shim or on PATH")


def default_root(binary: str, namespace: str, root: str = "") -> str:
    """The runtime's ``--root``: ``root`` or the binary's default, then the namespace."""
    if not root:
        is_ours = os.path.basename(binary) == DEFAULT_RUNTIME
        root = DOCKYARD_ROOT if is_ours else RUNC_ROOT
    return os.path.join(root, namespace)


def last_error(log_path: str) -> str:
    """The message of the last ``error`` entry of a runtime's JSON log."""
    from dockyard import jsonio

    try:
        with open(log_path, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for raw in reversed(lines):
        try:
            entry = jsonio.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") == "error":
            return str(entry.get("msg", "")).strip()
    return ""


class RuncCLI(OCIRuntime):
    """A runc-compatible binary driven through its command line."""

    def __init__(
        self, binary: str, root: str, log: str, launcher: Launcher, *, systemd_cgroup: bool = False
    ) -> None:
        self.binary = binary
        self.root = root
        self.log = log
        self.launcher = launcher
        self.systemd_cgroup = systemd_cgroup

    def _argv(self, *args: str) -> list[str]:
        argv = [self.binary, "--root", self.root, "--log", self.log, "--log-format", "json"]
        if self.systemd_cgroup:
            argv.append("--systemd-cgroup")
        return [*argv, *args]

    def _run(
        self, what: str, args: list[str], stdio: ChildStdio | None = None, stdin: int | None = None
    ) -> bytes:
        """Run the runtime; return its stdout, or raise with its error message.

        Without ``stdio`` the output goes to an anonymous file, read after the
        command exits: a pipe could be held open by the container it forks.
        """
        out = -1
        try:
            if stdio is None:
                out = os.memfd_create("runtime-output", os.MFD_CLOEXEC)
                stdio = ChildStdio(stdin, out, out)
            status = self._start(self._argv(*args), stdio).wait()
            output = os.pread(out, 1 << 20, 0) if out >= 0 else b""
        finally:
            if out >= 0:
                os.close(out)
        if status != 0:
            message = last_error(self.log)
            if not message:
                message = output.decode(errors="replace").strip()
            if not message:
                message = f"{os.path.basename(self.binary)} exited with status {status}"
            raise RuntimeFailure(f"{what}: {message}")
        return output

    def _start(self, argv: list[str], stdio: ChildStdio) -> Command:
        return self.launcher.launch(
            argv, stdin=stdio.stdin, stdout=stdio.stdout, stderr=stdio.stderr
        )

    def create(
        self,
        cid: str,
        bundle: str,
        *,
        pid_file: str,
        console_socket: str | None = None,
        no_pivot: bool = False,
        no_new_keyring: bool = False,
        stdio: ChildStdio | None = None,
    ) -> None:
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        if no_pivot:
            args.append("--no-pivot")
        if no_new_keyring:
            args.append("--no-new-keyring")
        self._run("OCI runtime create failed", [*args, cid], stdio)

    def start(self, cid: str) -> None:
        self._run("OCI runtime start failed", ["start", cid])

    def exec(
        self,
        cid: str,
        process_file: str,
        *,
        pid_file: str,
        console_socket: str | None = None,
        stdio: ChildStdio | None = None,
    ) -> None:
        args = ["exec", "--process", process_file, "--detach", "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        self._run("OCI runtime exec failed", [*args, cid], stdio)

    def kill(self, cid: str, signal: int, all: bool = False) -> None:
        args = ["kill", "--all"] if all else ["kill"]
        self._run("OCI runtime kill failed", [*args, cid, str(signal)])

    def delete(self, cid: str, force: bool = False) -> None:
        args = ["delete", "--force"] if force else ["delete"]
        self._run("OCI runtime delete failed", [*args, cid])

    def pause(self, cid: str) -> None:
        self._run("OCI runtime pause failed", ["pause", cid])

    def resume(self, cid: str) -> None:
        self._run("OCI runtime resume failed", ["resume", cid])

    def update(self, cid: str, resources: bytes) -> None:
        # runc reads the resources from a file; "-" is its stdin.
        src = os.memfd_create("resources", os.MFD_CLOEXEC)
        try:
            os.write(src, resources)
            os.lseek(src, 0, os.SEEK_SET)
            self._run("OCI runtime update failed", ["update", "--resources", "-", cid], stdin=src)
        finally:
            os.close(src)

    def state(self, cid: str) -> dict[str, Any]:
        from dockyard import jsonio

        out = self._run("OCI runtime state failed", ["state", cid])
        data = jsonio.loads(out)
        if not isinstance(data, dict):
            raise RuntimeFailure(f"OCI runtime state failed: not a JSON object: {out[:200]!r}")
        return data

    def ps(self, cid: str) -> list[int]:
        from dockyard import jsonio

        out = self._run("OCI runtime ps failed", ["ps", "--format", "json", cid])
        pids = jsonio.loads(out)
        if not isinstance(pids, list):
            raise RuntimeFailure(f"OCI runtime ps failed: not a JSON list: {out[:200]!r}")
        return [int(p) for p in pids]


class InProcessRuntime(RuncCLI):
    """dockyard-runtime's CLI run in a fork of the shim (see the module's doc).

    ``start`` and ``delete`` run in the calling thread instead, without a
    fork (about 3 ms each), when the container has no hook for them to run:
    a hook is a child process, and the shim's reaper would take its exit.
    Their errors read as the command's would.
    """

    def start(self, cid: str) -> None:
        s = self._direct_state(cid, "poststart")
        if s is None:
            super().start(cid)
            return
        from dockyard.runtime.start import start

        self._direct("OCI runtime start failed", lambda: start(self.root, cid, s))

    def delete(self, cid: str, force: bool = False) -> None:
        s = self._direct_state(cid, "poststop")
        if s is None:
            super().delete(cid, force)
            return
        from dockyard.runtime.delete import delete

        self._direct("OCI runtime delete failed", lambda: delete(self.root, cid, force, s))

    def _direct_state(self, cid: str, hook: str) -> Any:
        """The container's runtime state, or None: run the command (a hook to
        run, or no state to load, whose error the command reports)."""
        from dockyard.runtime import state as st

        try:
            s = st.load(self.root, cid)
        except (DockyardError, OSError, ValueError):
            return None
        if (s.config.get("hooks") or {}).get(hook):
            return None
        return s

    def _direct(self, what: str, fn: Callable[[], None]) -> None:
        from dockyard.runtime.cli import error_message

        try:
            fn()
        except (DockyardError, OSError) as e:
            raise RuntimeFailure(f"{what}: {error_message(e)}") from None

    def _start(self, argv: list[str], stdio: ChildStdio) -> Command:
        def run() -> int:
            import sys

            from dockyard.runtime.cli import main

            sys.argv = list(argv)
            return main(argv[1:])

        return self.launcher.call(run, stdin=stdio.stdin, stdout=stdio.stdout, stderr=stdio.stderr)


def runs_in_process(binary: str, shim_dir: str) -> bool:
    """Whether ``binary`` is dockyard-runtime installed beside the shim ``shim_dir``
    holds (the same package as the shim): then it runs in-process."""
    if os.environ.get(IN_PROCESS_ENV, "1") == "0":
        return False
    if binary.rpartition("/")[2] != DEFAULT_RUNTIME:
        return False
    try:
        theirs, ours = os.stat(binary), os.stat(f"{shim_dir}/{DEFAULT_RUNTIME}")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def default_runs_in_process(shim_dir: str) -> bool:
    """Whether the default runtime, found as a task would find it, runs in-process."""
    try:
        return runs_in_process(find_binary(DEFAULT_RUNTIME, shim_dir), shim_dir)
    except NotFound:
        return False


def new_runtime(
    binary: str,
    root: str,
    log: str,
    launcher: Launcher,
    shim_dir: str,
    *,
    systemd_cgroup: bool = False,
) -> RuncCLI:
    """The runtime driver for ``binary``: in-process for our own runtime, else its CLI."""
    cls = InProcessRuntime if runs_in_process(binary, shim_dir) else RuncCLI
    return cls(binary, root, log, launcher, systemd_cgroup=systemd_cgroup)
