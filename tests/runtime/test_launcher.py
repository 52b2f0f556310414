"""The launchers ``dockyard.launcher`` writes for the per-container commands.

They run the entry point with ``-I -S`` and end with ``os._exit``: what must
survive that is the package on ``sys.path``, the exit status and the output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dockyard.launcher import ENTRY_POINTS, write_launchers


def test_launchers_are_written_for_every_entry_point(tmp_path: Path) -> None:
    written = write_launchers(str(tmp_path))
    assert sorted(written) == sorted(str(tmp_path / name) for name in ENTRY_POINTS)
    for path in written:
        assert os.access(path, os.X_OK), path
        assert Path(path).read_text().splitlines()[0] == f"#!{sys.executable} -IS"
    assert not list(tmp_path.glob("*.tmp"))


def test_runtime_launcher_runs_the_cli(tmp_path: Path) -> None:
    write_launchers(str(tmp_path))
    runtime = str(tmp_path / "dockyard-runtime")
    p = subprocess.run([runtime, "--version"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("dockyard-runtime version "), p.stdout


def test_runtime_launcher_keeps_the_exit_status_and_stderr(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    write_launchers(str(bindir))
    root = tmp_path / "state"
    p = subprocess.run(
        [str(bindir / "dockyard-runtime"), "--root", str(root), "state", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 1
    assert "container 'nope' does not exist" in p.stderr, p.stderr


def test_launchers_find_the_dependencies(tmp_path: Path) -> None:
    """Without site processing only the launcher's own sys.path finds what the
    entry points import from site-packages (protobuf for the shim)."""
    write_launchers(str(tmp_path))
    for name in ENTRY_POINTS:
        text = (tmp_path / name).read_text()
        setup = text[: text.index("\nfrom dockyard")]  # everything before the entry point
        p = subprocess.run(
            [sys.executable, "-IS", "-c", setup + CHECK_PATH],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert p.returncode == 0, (name, p.stderr)
        assert p.stdout.split() == ["package-first", "stdlib-before-site-packages"], p.stdout


CHECK_PATH = """
import google.protobuf, os, zstandard
where = [os.path.dirname(m.__file__) for m in (os, google.protobuf)]
first = sys.path[0]
print("package-first" if os.path.isdir(os.path.join(first, "dockyard")) else first)
stdlib = sys.path.index(where[0])
# the entry protobuf was found through: the longest one holding it (the
# package's own directory may hold the virtualenv too)
found = [i for i, p in enumerate(sys.path) if where[1].startswith(p + os.sep)]
site = max(found, key=lambda i: len(sys.path[i]))
print("stdlib-before-site-packages" if stdlib < site else sys.path)
"""
