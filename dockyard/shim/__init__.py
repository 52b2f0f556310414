"""dockyard's shim, ``containerd-shim-dockyard-v2``: containerd-shim-runc-v2's place.

One shim per container, started by containerd (or the supervisor) through
runtime v2's binary protocol; it serves containerd's shim v2 task API over
ttrpc, drives the OCI runtime through runc's command line, is the parent
(subreaper) of the container's processes, keeps their stdio and reports
their exits as events.

- ``main``: the command line and its actions; ``manager``: ``start`` and ``delete``;
- ``server``: the long-running shim (signals, reaping, ttrpc);
- ``service``: the task API; ``container``, ``process``: the state behind it;
- ``runtime``: the seam to the OCI runtime; ``reaper``: children and exits;
- ``stdio``: FIFOs, pipes and the console; ``rootfs``: the snapshot's mounts;
- ``publisher``: events to containerd; ``stats``: cgroup metrics; ``options``:
  the runtime options in their several forms.
"""
