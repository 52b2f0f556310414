"""``delete``: remove a stopped container (or, with --force, kill it first)."""

from __future__ import annotations

import os

from dockyard.errors import FailedPrecondition, NotFound
from dockyard.runtime import state as st


def destroy(s: st.ContainerState) -> None:
    """Kill what is left, remove the cgroup, run poststop hooks, drop the state."""
    from dockyard.runtime.cgroups import remove_empty_dirs, wait_until

    cfg = s.config
    cg = s.cgroup()
    if cg.exists():
        # without a private pid namespace, init's death does not end the rest
        if cg.pids():
            cg.kill_all(st.SIGKILL)
            if cg.frozen():
                cg.thaw()
            wait_until(lambda: not cg.pids(), 10.0)
        cg.destroy()

    parents = list(s.data.get("cgroup_parents") or [])
    if not (cfg.get("linux") or {}).get("cgroupsPath"):
        # the default dockyard/<id>: the shared parent goes with the last container
        parents += [os.path.dirname(d) for d in (s.data.get("cgroup_paths") or {}).values()]
    remove_empty_dirs(parents)
    if "mount" not in s.data.get("namespaces", ["mount"]) and s.data.get("rootfs"):
        from dockyard.runtime.rootfs import unmount_below

        unmount_below(s.data["rootfs"])
    hooks = (cfg.get("hooks") or {}).get("poststop")
    oci = s.oci_state()
    st.remove_dir(s.dir)
    if hooks:
        from dockyard.runtime.hooks import run_hooks

        run_hooks(cfg, "poststop", oci)


def delete(root: str, cid: str, force: bool = False, s: st.ContainerState | None = None) -> None:
    """Delete ``cid``; ``s``: its state when the caller has loaded it."""
    if s is None:
        try:
            s = st.load(root, cid)
        except NotFound:
            if force:  # a create killed before its first save left only the directory
                st.remove_dir(os.path.join(root, cid))
                return
            raise
    status = s.status()
    if status == st.CREATING:
        raise FailedPrecondition(f"cannot delete container {cid!r}: it is still being created")
    # runtime.md "delete": a container that is not stopped is an error (runc
    # also deletes created ones; the spec does not); --force kills it first
    if status != st.STOPPED and not force:
        raise FailedPrecondition(
            f"cannot delete container {cid!r}: it is {status} (stop it first or use --force)"
        )
    if status != st.STOPPED and s.pid > 0:
        try:
            os.kill(s.pid, st.SIGKILL)
        except ProcessLookupError:
            pass
        if status == st.PAUSED:
            s.cgroup().thaw()
        from dockyard.runtime.cgroups import wait_until

        wait_until(lambda: not s.alive(), 10.0)
    destroy(s)
