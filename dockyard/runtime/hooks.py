"""OCI hooks (config.md "POSIX-platform Hooks"): run with the state on stdin."""

from __future__ import annotations

import os

from dockyard import jsonio
from dockyard.errors import SystemFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# runtime.md "Lifecycle": a failing poststart or poststop hook is a warning;
# the remaining hooks and the lifecycle go on.
WARN_ONLY = ("poststart", "poststop")


def run_hooks(cfg: dict[str, Any], name: str, state: dict[str, Any]) -> None:
    """Run every hook of kind ``name``; the first failure raises (see WARN_ONLY).

    A hook gets the container state JSON on stdin, its own args (args[0] is
    argv[0], not the path) and env, and is killed when its timeout passes.
    """
    hooks = (cfg.get("hooks") or {}).get(name) or []
    if not hooks:
        return
    payload = jsonio.dumps(state).encode()
    for i, h in enumerate(hooks):
        try:
            run_hook(h, payload, f"{name}[{i}]")
        except SystemFailure as e:
            if name not in WARN_ONLY:
                raise
            os.write(2, f"dockyard-runtime: warning: {e}\n".encode())


def run_hook(h: dict[str, Any], payload: bytes, what: str) -> None:
    path = h["path"]
    args = h.get("args") or [path]
    env = {}
    for kv in h.get("env") or []:
        k, _, v = kv.partition("=")
        env[k] = v
    timeout = h.get("timeout")
    import subprocess

    try:
        p = subprocess.Popen(
            args,
            executable=path,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
    except OSError as e:
        raise SystemFailure(f"hook {what} {path}: {os.strerror(e.errno or 0).lower()}") from None
    try:
        out, err = p.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise SystemFailure(f"hook {what} {path}: timed out after {timeout}s") from None
    except BrokenPipeError:
        out, err = p.communicate()
    if p.returncode != 0:
        msg = (err or out).decode(errors="replace").strip()
        raise SystemFailure(
            f"hook {what} {path}: exited with status {p.returncode}" + (f": {msg}" if msg else "")
        )
