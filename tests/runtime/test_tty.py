"""Terminals: ``process.terminal`` with ``--console-socket``, as containerd's shim drives it.

The runtime allocates the pty inside the container and sends the master
over the unix socket with SCM_RIGHTS; the test plays the shim's part.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

from tests.conftest import Bundle, Runtime, new_id
from tests.runtime.helpers import (
    ConsoleSocket,
    call_detached,
    entries_under,
    find_cgroup_dirs,
    read_pty,
    wait_status,
)


def with_terminal(bundle: Bundle, *args: str) -> Bundle:
    bundle.config["process"]["terminal"] = True
    return bundle.set_args(*args).write()


def create_with_console(runtime: Runtime, bundle: Bundle, console: ConsoleSocket, cid: str) -> int:
    call_detached(
        runtime, "create", "--console-socket", str(console.path), "--bundle", str(bundle.path), cid
    )
    return console.master()


def test_terminal_is_the_container_pty(bundle: Bundle, runtime: Runtime, tmp_path: Path) -> None:
    with_terminal(bundle, "sh", "-c", "tty; test -t 0 && test -t 1 && test -t 2 && echo all-ttys")
    cid = new_id()
    with ConsoleSocket(tmp_path) as console:
        master = create_with_console(runtime, bundle, console, cid)
        runtime("start", cid)
        out = read_pty(master)
    # a new devpts instance per container: its first pty is number 0
    assert out.replace("\r\n", "\n").splitlines()[:2] == ["/dev/pts/0", "all-ttys"]
    wait_status(runtime, cid, "stopped")


def test_terminal_input(bundle: Bundle, runtime: Runtime, tmp_path: Path) -> None:
    with_terminal(bundle, "sh", "-c", "read line; echo got:$line")
    cid = new_id()
    with ConsoleSocket(tmp_path) as console:
        master = create_with_console(runtime, bundle, console, cid)
        runtime("start", cid)
        os.write(master, b"hello\n")
        out = read_pty(master, until="got:hello")
    assert "got:hello" in out


def test_console_size(bundle: Bundle, runtime: Runtime, tmp_path: Path) -> None:
    bundle.config["process"]["consoleSize"] = {"height": 31, "width": 97}
    with_terminal(bundle, "stty", "size")
    cid = new_id()
    with ConsoleSocket(tmp_path) as console:
        master = create_with_console(runtime, bundle, console, cid)
        runtime("start", cid)
        out = read_pty(master)
    assert out.split() == ["31", "97"]


def test_terminal_needs_a_console_socket(bundle: Bundle, runtime: Runtime) -> None:
    with_terminal(bundle, "tty")
    cid = new_id()
    p = call_detached(runtime, "create", "--bundle", str(bundle.path), cid, check=False)
    assert p.returncode != 0
    assert "console" in p.stderr.lower()
    assert runtime("state", cid, check=False).returncode != 0
    assert not [e for e in entries_under(runtime.root) if cid in e]
    assert not find_cgroup_dirs(bundle.config["linux"]["cgroupsPath"])


def test_console_socket_that_does_not_exist(
    bundle: Bundle, runtime: Runtime, tmp_path: Path
) -> None:
    with_terminal(bundle, "tty")
    cid = new_id()
    missing = tmp_path / "nobody-listens.sock"
    p = call_detached(
        runtime, "create", "--console-socket", str(missing), "--bundle", str(bundle.path), cid,
        check=False,
    )  # fmt: skip
    assert p.returncode != 0
    assert runtime("state", cid, check=False).returncode != 0
    assert not [e for e in entries_under(runtime.root) if cid in e]
    assert not find_cgroup_dirs(bundle.config["linux"]["cgroupsPath"])


def test_exec_with_tty(bundle: Bundle, runtime: Runtime, tmp_path: Path) -> None:
    cid = new_id()
    bundle.set_args("sleep", "1000").write()
    call_detached(runtime, "run", "-d", "--bundle", str(bundle.path), cid)
    with ConsoleSocket(tmp_path) as console:
        call_detached(
            runtime, "exec", "-d", "-t", "--console-socket", str(console.path), cid,
            "sh", "-c", "tty; test -t 0 && echo stdin-is-a-tty; stty size",
        )  # fmt: skip
        out = read_pty(console.master())
    lines = out.replace("\r\n", "\n").splitlines()
    assert re.fullmatch(r"/dev/pts/\d+", lines[0]), out
    assert lines[1] == "stdin-is-a-tty"


def test_exec_with_tty_from_process_file(bundle: Bundle, runtime: Runtime, tmp_path: Path) -> None:
    cid = new_id()
    bundle.set_args("sleep", "1000").write()
    call_detached(runtime, "run", "-d", "--bundle", str(bundle.path), cid)
    process = dict(bundle.config["process"])
    process.update(terminal=True, args=["stty", "size"], consoleSize={"height": 12, "width": 34})
    spec = tmp_path / "process.json"
    spec.write_text(json.dumps(process))
    with ConsoleSocket(tmp_path) as console:
        call_detached(
            runtime, "exec", "-d", "--process", str(spec), "--console-socket", str(console.path),
            cid,
        )  # fmt: skip
        out = read_pty(console.master())
    assert out.split() == ["12", "34"]


def test_foreground_run_holds_the_terminal(bundle: Bundle, runtime: Runtime) -> None:
    """Without --console-socket a foreground ``run`` keeps the pty master itself.

    ``script`` gives the runtime a terminal of its own, as a person's shell would.
    """
    with_terminal(bundle, "sh", "-c", "tty; stty size; test -t 0 && echo all-ttys; exit 3")
    cmd = " ".join(
        shlex.quote(a)
        for a in [*runtime.argv, "--root", str(runtime.root), "run", "--bundle", str(bundle.path)]
    )
    cid = new_id()
    runtime.ids.add(cid)
    p = subprocess.run(
        ["script", "-qec", f"stty rows 31 cols 97; {cmd} {cid}", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 3, p.stdout + p.stderr
    lines = [line.strip() for line in p.stdout.splitlines()]
    assert re.search(r"^\W*/dev/pts/\d+$", p.stdout, re.M), p.stdout
    assert "31 97" in lines
    assert "all-ttys" in lines


def test_foreground_exec_with_tty_holds_the_terminal(bundle: Bundle, runtime: Runtime) -> None:
    """``exec -t`` without --console-socket or -d: the runtime holds the pty."""
    cid = new_id()
    bundle.set_args("sleep", "100").write()
    call_detached(runtime, "run", "-d", "--bundle", str(bundle.path), cid)
    argv = [*runtime.argv, "--root", str(runtime.root), "exec", "-t", cid]
    cmd = " ".join(shlex.quote(a) for a in [*argv, "sh", "-c", "tty; stty size; exit 5"])
    p = subprocess.run(
        ["script", "-qec", f"stty rows 29 cols 91; {cmd}", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 5, p.stdout + p.stderr
    assert re.search(r"^\W*/dev/pts/\d+$", p.stdout, re.M), p.stdout
    assert "29 91" in [line.strip() for line in p.stdout.splitlines()]
