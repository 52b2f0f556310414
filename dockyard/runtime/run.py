"""``run``: create + start; in the foreground, wait, forward signals, delete.

The foreground runtime makes itself a child subreaper before forking, so the
container's init (whose parent, stage 1, exits) is reparented to it and its
exit status can be collected.
"""

from __future__ import annotations

from dockyard.runtime import libc
from dockyard.runtime import state as st
from dockyard.runtime.children import wait_forwarding_signals
from dockyard.runtime.create import CreateOptions, create
from dockyard.runtime.delete import destroy
from dockyard.runtime.start import start

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def run(root: str, cid: str, opts: CreateOptions, detach: bool) -> int:
    if not detach:
        libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    term = None
    cfg = None if detach or opts.console_socket else _try_load_config(opts.bundle)
    if cfg is not None and (cfg.get("process") or {}).get("terminal"):
        # runc does the same: with no console socket, the foreground runtime
        # holds the pty master itself and copies between it and its stdio
        from dockyard.runtime.console import TerminalProxy

        term = TerminalProxy()
        opts.console_fd = term.remote_fd
    try:
        s = create(root, cid, opts, cfg)
    except BaseException:
        if term is not None:
            term.close()
        raise
    try:
        if term is not None:
            term.receive_master()
        start(root, cid)
    except BaseException:
        if term is not None:
            term.close()
        _cleanup(s)
        raise
    if detach:
        return 0
    code = term.serve(s.pid) if term is not None else wait_forwarding_signals(s.pid)
    _cleanup(s)
    return code


def _try_load_config(bundle: str) -> dict[str, Any] | None:
    """The bundle's config, read once for both the terminal check and create."""
    from dockyard.spec.runtime import load_bundle_config

    try:
        return load_bundle_config(bundle, require_process=False)
    except Exception:
        return None  # create reads it again and reports the problem


def _cleanup(s: st.ContainerState) -> None:
    from dockyard.runtime.delete import delete

    try:
        delete(s.root, s.id, force=True)
    except Exception:
        destroy(s)
