"""The shim's short-lived actions, ``start`` and ``delete``, as runc's shim 1.6 does them.

``start`` (runtime/v2/runc/manager): the socket is
``unix:///run/containerd/s/<sha256 of containerd's address, namespace and id>``.
If a live shim already listens there (containers grouped into one shim by a
``io.containerd.runc.v2.group`` or CRI sandbox annotation), its address is
the answer. Otherwise the socket is made, its address written to the
bundle's ``address`` file, and the shim starts itself without an action in
a session of its own, the listener as fd 3 — or, when ``DOCKYARD_SHIM_TEMPLATE``
names a shim template, has the template fork it (``template``; any failure
there falls back to starting it). The runtime options on stdin may move it
into a cgroup; its OOM score is containerd's plus one. The address is
printed and ``start`` exits.

``delete`` runs when containerd lost its shim: the runtime deletes the
container (``--force``), the root filesystem is unmounted, and a
``DeleteResponse`` (the init's pid, exit status 137) goes to stdout.
"""

from __future__ import annotations

import _socket  # not socket: its import costs start ~14 ms (enum, selectors)
import errno
import os
import sys
import time

from dockyard.errors import DockyardError, SystemFailure
from dockyard.shim import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from dockyard.shim.main import Flags

SOCKET_DIR = "/run/containerd/s"
ADDRESS_FILE = "address"
# Annotations that put several containers in one shim (runc's shim reads them).
GROUP_LABELS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")


def socket_address(containerd_address: str, namespace: str, id: str) -> str:
    """The shim's socket address: the same naming scheme as runc's shim."""
    try:  # the builtin module: hashlib would load OpenSSL (~4 ms)
        from _sha256 import sha256  # type: ignore[import-not-found]
    except ImportError:
        from hashlib import sha256

    # Go's filepath.Join: skips empty elements and cleans the result.
    joined = os.path.normpath(os.path.join(containerd_address, namespace, id))
    digest = sha256(joined.encode()).hexdigest()
    return f"unix://{SOCKET_DIR}/{digest}"


def socket_path(address: str) -> str:
    """The AF_UNIX address of a shim socket address, by containerd's shim rule:
    ``unix:///path`` is a file, anything else names an abstract socket (what
    older shims printed). Not ``ttrpc.client.socket_address``, which reads a
    dial address such as ``TTRPC_ADDRESS``, where a bare path is a file."""
    if address.startswith("unix://"):
        return address[len("unix://") :]
    return "\0" + address


def new_socket(address: str) -> Any:
    """A listening unix socket (a ``_socket.socket``) at ``address``."""
    path = socket_path(address)
    if not path.startswith("\0"):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        if not path.startswith("\0"):
            os.chmod(path, 0o600)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def can_connect(address: str) -> bool:
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.settimeout(0.1)
        s.connect(socket_path(address))
    except OSError:
        return False
    finally:
        s.close()
    return True


def remove_socket(address: str) -> None:
    path = socket_path(address)
    if path.startswith("\0"):
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_address(address: str, directory: str = ".") -> None:
    from dockyard.atomicfile import replace_file

    replace_file(os.path.join(directory, ADDRESS_FILE), address.encode(), 0o666, sync=True)


def read_address(directory: str = ".") -> str:
    try:
        with open(os.path.join(directory, ADDRESS_FILE)) as f:
            return f.read()
    except OSError:
        return ""


def _grouping(id: str, bundle: str = ".") -> str:
    """The id whose shim this container joins: its group annotation, else itself."""
    from dockyard import jsonio

    try:
        config = jsonio.load_file(os.path.join(bundle, "config.json"))
        annotations = config.get("annotations") or {}
    except (OSError, ValueError, AttributeError) as e:
        raise SystemFailure(f"read config.json of {id}: {e}") from None
    for label in GROUP_LABELS:
        if isinstance(annotations, dict) and annotations.get(label):
            return str(annotations[label])
    return id


def self_command() -> list[str]:
    """How to run this shim again: its executable, or the module under this Python."""
    exe = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if exe and not exe.endswith(".py") and os.access(exe, os.X_OK):
        return [exe]
    return [sys.executable, "-m", "dockyard.shim"]


def start(flags: Flags) -> int:
    address = launch(
        self_command(),
        flags.namespace,
        flags.id,
        flags.address,
        options=_read_options(),
        debug=flags.debug,
        oom_parent=os.getppid(),
    )
    sys.stdout.write(address)
    return 0


def launch(
    command: list[str],
    namespace: str,
    id: str,
    containerd_address: str,
    *,
    bundle: str = ".",
    env: Mapping[str, str] | None = None,
    options: bytes = b"",
    debug: bool = False,
    oom_parent: int,
    command_fallback: bool = True,
) -> str:
    """What ``start`` does, for the container ``id`` whose bundle is ``bundle``:
    the address of the shim serving it, started now if none does.

    ``command`` runs the shim; ``env`` is its environment (default: ours);
    ``options`` the runtime options containerd writes on stdin; the shim's
    OOM score is one more than ``oom_parent``'s. Without ``command_fallback``
    a template that cannot fork the shim raises ``TemplateError`` instead
    of the shim being started as a command (see ``Template.start_shim``).
    """
    address = socket_address(containerd_address, namespace, _grouping(id, bundle))
    try:
        listener = new_socket(address)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise SystemFailure(
                f"create shim socket {socket_path(address)}: {e.strerror}"
            ) from None
        if can_connect(address):
            # A shim serves this address already (a grouped container, or a retry).
            write_address(address, bundle)
            return address
        remove_socket(address)
        listener = new_socket(address)
    try:
        write_address(address, bundle)
        argv = [*command, "-namespace", namespace, "-id", id, "-address", containerd_address]
        if debug:
            argv.append("-debug")
        _start_shim(
            argv,
            listener.fileno(),
            options,
            env=os.environ if env is None else env,
            bundle=bundle,
            oom_parent=oom_parent,
            forkable=len(command) == 1,
            command_fallback=command_fallback,
        )
    except BaseException:
        remove_socket(address)
        raise
    finally:
        listener.close()
    return address


def _start_shim(
    argv: list[str],
    listener: int,
    options: bytes,
    *,
    env: Mapping[str, str],
    bundle: str,
    oom_parent: int,
    forkable: bool,
    command_fallback: bool,
) -> int:
    """Start the long-running shim serving ``listener``: forked by the template
    when there is one and ``argv`` is the shim binary's, else as a command; its pid."""
    from dockyard.shim.template import ENV, TemplateError, fork_shim

    template = env.get(ENV, "") if forkable else ""
    log_fifo = os.path.join(bundle, "log")
    if template:
        try:
            forked = fork_shim(template, argv, listener, env=env, cwd=bundle)
        except TemplateError as e:
            if not command_fallback:
                raise
            log.to_fifo(
                "warning",
                f"shim template {template}: {e}: starting the shim as a command",
                log_fifo,
            )
        else:
            try:
                _apply_options(forked.pid, options)
                _adjust_oom_score(forked.pid, oom_parent)
            except BaseException:
                forked.cancel()
                raise
            if forked.go():
                return forked.pid
            if not command_fallback:
                raise TemplateError("the shim it forked is gone")
            log.to_fifo(
                "warning", f"shim template {template}: the shim it forked is gone", log_fifo
            )
    elif not command_fallback:
        raise TemplateError("no shim template to fork the shim")
    if os.path.abspath(bundle) != os.getcwd():
        # A command starts in the bundle (posix_spawn cannot change directory).
        raise SystemFailure(f"start the shim as a command: not in its bundle {bundle}")
    from dockyard.shim.reaper import spawn

    pid = spawn(argv, extra={3: listener}, env=env, setsid=True)
    try:
        _apply_options(pid, options)
        _adjust_oom_score(pid, oom_parent)
    except BaseException:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except OSError:
            pass
        raise
    return pid


def _read_options() -> bytes:
    """The runtime options containerd writes on stdin (a marshalled Any), if any."""
    if os.isatty(0):
        return b""
    data = b""
    while True:
        try:
            chunk = os.read(0, 65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _apply_options(pid: int, data: bytes) -> None:
    """The runtime options' ``shim_cgroup``: the shim joins it."""
    if not data:
        return
    from dockyard.shim import messages, options
    from dockyard.shim.codec import DecodeError

    try:
        value = messages.Any.FromString(data)
    except DecodeError as e:
        raise SystemFailure(f"runtime options on stdin: {e}") from None
    cgroup = options.parse(value).shim_cgroup
    if not cgroup:
        return
    from dockyard.runtime import cgroups

    mgr = cgroups.load_manager(cgroups.resolve_paths(cgroup, "shim"))
    mgr.apply(pid)


def _adjust_oom_score(pid: int, parent: int) -> None:
    """containerd's (``parent``'s) score + 1, so the OOM killer picks the shim first."""
    try:
        with open(f"/proc/{parent}/oom_score_adj") as f:
            score = int(f.read().strip())
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(min(score + 1, 1000)))
    except (OSError, ValueError) as e:
        raise SystemFailure(f"set shim oom score: {e}") from None


def delete(flags: Flags) -> int:
    from dockyard.shim import messages, options
    from dockyard.shim.container import shim_dir
    from dockyard.shim.process import INIT_PID_FILE, read_pid_file
    from dockyard.shim.reaper import DirectLauncher
    from dockyard.shim.rootfs import unmount_rootfs
    from dockyard.shim.runtime import DEFAULT_RUNTIME, default_root, find_binary, new_runtime

    log.configure(debug=flags.debug, namespace=flags.namespace, id=flags.id)
    bundle = os.path.abspath(flags.bundle or os.getcwd())
    saved = options.load(bundle) or {}
    try:
        here = shim_dir()
        binary = str(saved.get("runtime") or find_binary(DEFAULT_RUNTIME, here))
        root = str(saved.get("root") or default_root(binary, flags.namespace))
        runtime = new_runtime(
            binary,
            root,
            os.path.join(bundle, "log.json"),
            DirectLauncher(),
            here,
            systemd_cgroup=bool(saved.get("systemd_cgroup")),
        )
        runtime.delete(flags.id, force=True)
    except DockyardError as e:
        # Gone already is the usual case: containerd runs this after every shim.
        if "does not exist" not in str(e):
            log.warn(f"delete container {flags.id}: {e}")
    try:
        unmount_rootfs(os.path.join(bundle, "rootfs"))
    except DockyardError as e:
        log.warn(str(e))
    address = read_address(bundle)
    if address and not can_connect(address):
        remove_socket(address)
    try:
        pid = read_pid_file(os.path.join(bundle, INIT_PID_FILE))
    except (OSError, DockyardError):
        pid = 0
    now = messages.Timestamp.from_ns(time.time_ns())
    response = messages.DeleteResponse(pid=pid, exit_status=128 + 9, exited_at=now)
    sys.stdout.buffer.write(response.SerializeToString())
    return 0
