"""The supervisor's garbage collection: containerd's gc scheduler over ``dockyard.image.gc``.

What is collected and why is ``dockyard.image.gc.collect``, namespaced
(``records``: the content each namespace has). The supervisor adds its
own roots: every container record keeps its snapshot (and what its labels
refer to), in its namespace. A lease's ingest ``ref`` is the backend's
``<namespace>/<ref>``.

When: deleting something (an image, a lease, content, a snapshot, a
container) calls ``schedule()``; a background thread collects once a short
``delay`` has passed, so a burst of deletions costs one collection (the
coalescing of containerd's scheduler). A request that asks for ``sync``
calls ``collect()``, which runs at once and returns when it is done.
Collections never overlap: each holds the gc lock exclusively, and the
writes that create content and snapshots hold it shared.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from dockyard.image import gc
from dockyard.supervisor.content import backend_ref

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor

log = logging.getLogger("dockyard.supervisor.gc")


class Collector:
    def __init__(self, sup: Supervisor, delay: float = 0.1) -> None:
        self.sup = sup
        self.delay = delay
        self._wake = threading.Event()
        self._stopping = False
        self._run_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="gc", daemon=True)
        self._thread.start()

    def schedule(self) -> None:
        """Collect soon, in the background (after a deletion)."""
        self._wake.set()

    def collect(self) -> gc.Report:
        """Collect now and wait for it (a request with ``sync``)."""
        sup = self.sup

        def mark_containers(mark: gc.Marker) -> None:
            for ns, c in sup.metadata.all_containers():
                if c.snapshotter and c.snapshot_key:
                    mark.snapshot(c.snapshotter, c.snapshot_key, ns)
                mark.labels(c.labels, ns)

        with self._run_lock:
            report = gc.collect(
                sup.content,
                sup.images,
                sup.snapshotters,
                sup.leases,
                records=sup.namespaced_content,
                mark_roots=mark_containers,
                ingest_ref=backend_ref,
                ingest_expires=sup.namespaced_content.ingest_expiries().get,
                root=sup.config.root,
            )
        if report.records or report.blobs or report.snapshots or report.ingests or report.leases:
            log.debug(
                "gc: removed %d records, %d blobs (%d bytes), %d snapshots, %d ingests,"
                " %d expired leases",
                len(report.records),
                len(report.blobs),
                report.bytes,
                len(report.snapshots),
                len(report.ingests),
                len(report.leases),
            )
        return report

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            if self._stopping:
                return
            # let a burst of deletions settle: one collection for all of them
            time.sleep(self.delay)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.collect()
            except Exception:
                log.exception("garbage collection failed")

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=30)
