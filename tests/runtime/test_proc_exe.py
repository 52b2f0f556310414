"""A container must never get a handle on the runtime's own files (CVE-2019-5736 class).

While ``exec`` joins a container, a process of the runtime is briefly
inside it. A hostile init scans /proc for any process whose executable is
not its own busybox and tries to open ``/proc/<pid>/exe`` read-only, read-
write, and to reopen a read-only handle through ``/proc/self/fd/N`` for
writing; it also looks at such a process's open fds, its root and its cwd.
The exec'd program is a script whose interpreter is ``/proc/self/exe``: a
runtime that execs it from its own binary runs *itself* in the container,
which is exactly how the original exploit got hold of runc.

The scanner never writes through a handle it gets (that would damage the
host); it records the device and inode of what it could open, and the test
compares them with the runtime's files on the host. Those files' sha256
and mtime must also be unchanged.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dockyard
from tests.conftest import Bundle, Runtime, new_id, runtime_name
from tests.runtime.helpers import call_detached, fingerprint, wait_for, wait_status

SCANNER = r"""
self=$$
echo up > /up
while [ ! -e /stop ]; do
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [ "$pid" = "$self" ] && continue
    [ /proc/$pid/exe -ef /bin/busybox ] && continue
    [ -e /proc/$pid ] || continue
    echo "saw $pid" >> /log
    ( exec 3< /proc/$pid/exe &&
      echo "ro $(stat -L -c '%d %i' /proc/self/fd/3)" ) >> /log 2>/dev/null
    ( exec 3<> /proc/$pid/exe &&
      echo "rw $(stat -L -c '%d %i' /proc/self/fd/3)" ) >> /log 2>/dev/null
    ( exec 3< /proc/$pid/exe && exec 4<> /proc/self/fd/3 &&
      echo "reopen-rw $(stat -L -c '%d %i' /proc/self/fd/4)" ) >> /log 2>/dev/null
    for f in /proc/$pid/fd/*; do
      stat -L -c "fd %d %i" "$f" >> /log 2>/dev/null
    done
    # compared by what stat saw: a process that ends between two tests
    # would make "! [ root -ef / ]" true without being outside
    root=$(stat -L -c '%d %i' /proc/$pid/root/ 2>/dev/null)
    if [ -n "$root" ] && [ "$root" != "$(stat -c '%d %i' /)" ]; then
      echo "root-outside $pid" >> /log
    fi
    ( cd -P /proc/$pid/cwd 2>/dev/null || exit 0
      i=0; while [ $i -lt 40 ]; do cd -P .. || exit 0; i=$((i+1)); done
      [ . -ef / ] || echo "cwd-outside $pid" ) >> /log 2>/dev/null
  done
done
"""

# Run by the kernel as "/proc/self/exe /bin/selfexe": for a Python runtime
# that is the interpreter, which then reads this file as a script and keeps
# the process alive long enough for the scanner.
SELF_EXE_SCRIPT = "#!/proc/self/exe\nimport time\ntime.sleep(0.5)\n"

ROUNDS = 12


def runtime_files(runtime: Runtime) -> list[Path]:
    """The host files the runtime runs from: its binary or interpreter, libraries, sources."""
    files: set[Path] = set()
    exe = Path(os.path.realpath(runtime.argv[0]))
    files.add(exe)
    if runtime_name() == "dockyard-runtime":
        files.add(Path(os.path.realpath(sys.executable)))
        with open(exe, "rb") as f:
            first = f.readline()
        if first.startswith(b"#!"):
            files.add(Path(os.path.realpath(first[2:].split()[0].decode())))
        # shared libraries of the interpreter (libpython when built shared)
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if "libpython" in path and os.path.isfile(path):
                    files.add(Path(os.path.realpath(path)))
        # the sources the runtime runs from (not the rest of the stack's)
        package = Path(dockyard.__file__).parent
        files.update(package.glob("*.py"))
        for sub in ("runtime", "spec"):
            files.update((package / sub).rglob("*.py"))
    return sorted(files)


def _fingerprints(files: list[Path]) -> dict[Path, tuple[str, int, int, int] | None]:
    out: dict[Path, tuple[str, int, int, int] | None] = {}
    for f in files:
        try:
            out[f] = fingerprint(f)
        except FileNotFoundError:
            out[f] = None
    return out


@pytest.fixture
def guarded(runtime: Runtime) -> Iterator[dict[tuple[int, int], str]]:
    """The runtime's host files by (device, inode); their content must not change."""
    files = runtime_files(runtime)
    before = _fingerprints(files)
    yield {(fp[2], fp[3]): str(f) for f, fp in before.items() if fp}
    after = _fingerprints(files)
    changed = [str(f) for f in files if (before[f] or ("",))[:2] != (after[f] or ("",))[:2]]
    assert not changed, f"host files of the runtime changed while a container ran: {changed}"


def test_exec_does_not_expose_the_runtime_binary(
    bundle: Bundle, runtime: Runtime, guarded: dict[tuple[int, int], str]
) -> None:
    (bundle.rootfs / "bin" / "selfexe").write_text(SELF_EXE_SCRIPT)
    (bundle.rootfs / "bin" / "selfexe").chmod(0o755)
    bundle.set_args("sh", "-c", SCANNER).write()
    cid = new_id()
    call_detached(runtime, "run", "-d", "--bundle", str(bundle.path), cid)
    wait_for(lambda: (bundle.rootfs / "up").exists(), what="the scanner to start")

    # positive control: a process with another executable is seen and opened
    (bundle.rootfs / "opt").mkdir()
    other = bundle.rootfs / "opt" / "sleep"  # busybox picks the applet by this name
    shutil.copy2(bundle.rootfs / "bin" / "busybox", other)
    runtime("exec", cid, "/opt/sleep", "0.3", timeout=30)
    for _ in range(ROUNDS):
        runtime("exec", cid, "/bin/selfexe", check=False, timeout=30)
        runtime("exec", cid, "true", timeout=30)
    assert runtime.state(cid)["status"] == "running"
    (bundle.rootfs / "stop").touch()
    wait_status(runtime, cid, "stopped")

    log = (bundle.rootfs / "log").read_text() if (bundle.rootfs / "log").exists() else ""
    host = dict(guarded)
    # the container's view of its own state must not include the host's bundle or state dir
    for extra in (bundle.path, bundle.path / "config.json", runtime.root):
        st = os.stat(extra)
        host[(st.st_dev, st.st_ino)] = str(extra)
    reached: list[str] = []
    for line in log.splitlines():
        words = line.split() or [""]
        if words[0] in ("root-outside", "cwd-outside"):
            reached.append(line)
        elif words[0] in ("ro", "rw", "reopen-rw", "fd") and len(words) == 3:
            found = host.get((int(words[1]), int(words[2])))
            if found:
                reached.append(f"{words[0]} handle on {found}")
    assert not reached, "the container got hold of host files:\n" + "\n".join(reached)
    st = other.stat()
    assert f"ro {st.st_dev} {st.st_ino}" in log.splitlines(), "the scanner saw nothing"


def test_self_exe_script_does_not_run_the_runtime(
    bundle: Bundle, runtime: Runtime, guarded: dict[tuple[int, int], str]
) -> None:
    """A #!/proc/self/exe program, exec'd, may fail; it must not reach the host's binary."""
    probe = (
        "#!/proc/self/exe\n"
        "import os\n"
        "st = os.stat('/proc/self/exe')\n"
        "print('exe', st.st_dev, st.st_ino)\n"
    )
    (bundle.rootfs / "bin" / "selfexe").write_text(probe)
    (bundle.rootfs / "bin" / "selfexe").chmod(0o755)
    bundle.set_args("sleep", "1000").write()
    cid = new_id()
    call_detached(runtime, "run", "-d", "--bundle", str(bundle.path), cid)
    p = runtime("exec", cid, "/bin/selfexe", check=False, timeout=30)
    for line in p.stdout.splitlines():
        words = line.split()
        if words[:1] == ["exe"] and len(words) == 3:
            found = guarded.get((int(words[1]), int(words[2])))
            assert not found, f"the container ran the runtime's own binary {found} as its process"


def test_runtime_files_are_found(runtime: Runtime) -> None:
    files = runtime_files(runtime)
    assert files
    assert all(f.is_file() for f in files)
    assert Path(os.path.realpath(runtime.argv[0])) in files
