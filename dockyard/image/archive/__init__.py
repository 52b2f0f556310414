"""Layer tars: apply one onto a directory, and write one from a directory's changes.

containerd's diff service as a library (OCI image-spec layer.md). Plain
functions; no daemon or gRPC here.
"""

from dockyard.image.archive._root import fold_dots
from dockyard.image.archive.apply import ApplyResult, apply_layer
from dockyard.image.archive.compression import detect as detect_compression
from dockyard.image.archive.diff import DiffResult, write_diff

__all__ = [
    "ApplyResult",
    "DiffResult",
    "apply_layer",
    "detect_compression",
    "fold_dots",
    "write_diff",
]
