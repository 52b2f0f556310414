"""Reading and writing cgroup files, with errors that name the file and value.

Writes are collected into a plan first and carried out only once the whole
``linux.resources`` object has been validated and every file to be written
is known to exist, so that a bad value never leaves a cgroup half updated.
"""

from __future__ import annotations

import errno
import os
import time

from dockyard.errors import SystemFailure, Unsupported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


def strerror(e: OSError) -> str:
    """``os.strerror`` in the house style: lowercase."""
    msg = os.strerror(e.errno) if e.errno else str(e)
    return msg[:1].lower() + msg[1:]


def read(dir: str, name: str) -> str:
    try:
        with open(os.path.join(dir, name)) as f:
            return f.read().strip()
    except OSError as e:
        raise SystemFailure(f"read {name} in {dir}: {strerror(e)}") from e


def read_optional(dir: str, name: str) -> str | None:
    """The file's content, or None when the kernel does not provide the file."""
    try:
        with open(os.path.join(dir, name)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.EOPNOTSUPP, errno.ENOTSUP):
            return None
        raise SystemFailure(f"read {name} in {dir}: {strerror(e)}") from e


def parse_uint(text: str) -> int:
    """A cgroup number; "max" (and v1's negative "unlimited") read as 0, like runc."""
    text = text.strip()
    if text == "max" or text.startswith("-"):
        return 0
    return int(text)


def read_uint(dir: str, name: str) -> int:
    """A number from an optional file; 0 when absent or unparsable."""
    text = read_optional(dir, name)
    if not text:
        return 0
    try:
        return parse_uint(text)
    except ValueError:
        return 0


def read_keyed(dir: str, name: str) -> dict[str, int]:
    """A flat keyed file (``memory.stat``, ``cpu.stat``): ``key value`` per line."""
    out: dict[str, int] = {}
    text = read_optional(dir, name)
    if not text:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = parse_uint(parts[1])
            except ValueError:
                continue
    return out


def write(dir: str, name: str, value: str) -> None:
    """Write ``value`` in one write(2), as the kernel parses each write separately."""
    path = os.path.join(dir, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except OSError as e:
        raise SystemFailure(f"set {name} to {value} in {dir}: {strerror(e)}") from e
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise SystemFailure(f"set {name} to {value} in {dir}: {strerror(e)}") from e
    finally:
        os.close(fd)


class Write:
    """One planned write; ``field`` is the OCI field it comes from, for messages."""

    __slots__ = ("dir", "field", "name", "value")

    def __init__(self, dir: str, name: str, value: str, field: str) -> None:
        self.dir = dir
        self.name = name
        self.value = value
        self.field = field

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Write) and (self.dir, self.name, self.value) == (
            other.dir,
            other.name,
            other.value,
        )

    def __hash__(self) -> int:
        return hash((self.dir, self.name, self.value))

    def __repr__(self) -> str:
        return f"Write({self.name}={self.value!r} in {self.dir})"


class Group:
    """Writes whose order the kernel cares about (period/quota/burst, memory/memsw).

    They are written in order; a write the kernel refuses with EINVAL is
    tried again once after the others, as the old value of a partner file
    may have been what made it invalid.
    """

    __slots__ = ("writes",)

    def __init__(self, writes: tuple[Write, ...]) -> None:
        self.writes = writes

    def __repr__(self) -> str:
        return f"Group{self.writes!r}"


class Call:
    """A planned step that is not a plain write (attaching a BPF program)."""

    __slots__ = ("run",)

    def __init__(self, run: Callable[[], None]) -> None:
        self.run = run


Step = Write | Group | Call


def check_exists(steps: Iterable[Step]) -> None:
    """Before anything is written: every file of the plan must exist."""
    for step in steps:
        writes = (
            (step,) if isinstance(step, Write) else step.writes if isinstance(step, Group) else ()
        )
        for w in writes:
            if not os.path.exists(os.path.join(w.dir, w.name)):
                raise Unsupported(
                    f"linux.resources.{w.field}: {w.name} does not exist in {w.dir}"
                    " (controller or feature not available)"
                )


def _einval(e: SystemFailure) -> bool:
    return isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.EINVAL


def run_plan(steps: list[Step]) -> None:
    check_exists(steps)
    for step in steps:
        if isinstance(step, Write):
            write(step.dir, step.name, step.value)
        elif isinstance(step, Group):
            retry: list[Write] = []
            for w in step.writes:
                try:
                    write(w.dir, w.name, w.value)
                except SystemFailure as e:
                    if not _einval(e) or len(step.writes) == 1:
                        raise
                    retry.append(w)
            for w in retry:
                write(w.dir, w.name, w.value)
        else:
            step.run()


def procs(dir: str) -> list[int]:
    """Every pid in ``cgroup.procs`` of ``dir`` and of all cgroups below it."""
    out: list[int] = []
    for dirpath, _, filenames in os.walk(dir):
        if "cgroup.procs" not in filenames:
            continue
        text = read_optional(dirpath, "cgroup.procs")
        if text:
            out.extend(int(p) for p in text.split())
    return out


def add_proc(dir: str, pid: int) -> None:
    # EINVAL can mean the task is still being created (TASK_NEW): try again.
    for attempt in range(5):
        try:
            write(dir, "cgroup.procs", str(pid))
            return
        except SystemFailure as e:
            cause = e.__cause__
            if attempt == 4 or not isinstance(cause, OSError) or cause.errno != errno.EINVAL:
                raise
            time.sleep(0.03)


def mkdirs(dir: str) -> list[str]:
    """``mkdir -p``; returns the directories it created, topmost first."""
    missing: list[str] = []
    cur = dir
    while not os.path.isdir(cur):
        missing.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    created: list[str] = []
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o755)
            created.append(d)
        except FileExistsError:
            pass
        except OSError as e:
            raise SystemFailure(f"create cgroup {d}: {strerror(e)}") from e
    return created


def _rmdir(path: str) -> None:
    delay = 0.005
    deadline = time.monotonic() + 3.0
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            # A cgroup stays busy for a moment after its last process exited
            # (longer on a loaded machine: the exit is still being torn down).
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise SystemFailure(f"remove cgroup {path}: {strerror(e)}") from e
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def remove(dir: str) -> None:
    """rmdir ``dir`` and every cgroup below it, deepest first; gone already is fine."""
    if not os.path.isdir(dir):
        return
    for dirpath, _, _ in os.walk(dir, topdown=False):
        _rmdir(dirpath)
