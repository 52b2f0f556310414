"""Files replaced whole: a reader sees the old content or the new, never part of one.

The new content goes to a temporary file in the same directory (named
``.<name>.<pid>-<random>.tmp``, created exclusively, so two writers never
share one), which is then renamed over the file. With ``sync`` the data and
the rename are flushed to disk first and after, so that they survive a crash
too. Imports nothing but ``os``: the runtime and the shim use it on their
start-up paths.
"""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, data: bytes, mode: int = 0o644, *, sync: bool = False) -> None:
    """Make ``data`` the content of ``path`` (created with ``mode``, less the umask)."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync:
        fsync_dir(directory)
