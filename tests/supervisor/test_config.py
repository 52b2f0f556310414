"""The supervisor's configuration file: the gRPC socket is mode 0660 and
belongs to the group ``[grpc] gid`` names (a number or a group name), and a
bad value is refused with the key named, before anything is served. Several
supervisors run side by side, one per root: a second on a root in use is
refused."""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dockyard.errors import InvalidArgument
from dockyard.supervisor import config
from tests.compat import host
from tests.supervisor.conftest import daemon_env

# A group every Debian system has, that is not root's.
GROUP = "daemon"


def test_gid_takes_a_number_or_a_group_name() -> None:
    gid = grp.getgrnam(GROUP).gr_gid
    assert config.from_dict({"grpc": {"gid": gid}}).gid == gid
    assert config.from_dict({"grpc": {"gid": GROUP}}).gid == gid
    assert config.from_dict({}).gid == 0
    for bad, words in (
        ("no-such-group-here", "no group named"),
        (-1, "want a group id or name"),
        (True, "want a group id or name"),
    ):
        with pytest.raises(InvalidArgument, match=f"grpc.gid: {words}"):
            config.from_dict({"grpc": {"gid": bad}})


def _supervisor(base: Path, toml: str = "", root: Path | None = None) -> subprocess.Popen[bytes]:
    cfg = base / "config.toml"
    cfg.write_text(toml)
    log = (base / "supervisor.log").open("ab")
    with log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dockyard.supervisor.main",
                *("--config", str(cfg)),
                *("--root", str(root or base / "root"), "--state", str(base / "state")),
                *("--address", str(base / "sup.sock")),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=daemon_env(),
            cwd=str(base),
        )


def test_the_socket_is_0660_and_of_the_configured_group(tmp_path: Path) -> None:
    gid = grp.getgrnam(GROUP).gr_gid
    proc = _supervisor(tmp_path, f'[grpc]\ngid = "{GROUP}"\n')
    sock = tmp_path / "sup.sock"
    try:
        host.wait_for(lambda: sock.exists() or proc.poll() is not None, 30, "the socket")
        # chmod and chown follow the bind: wait for the group to be set
        host.wait_for(lambda: os.stat(sock).st_gid == gid, 10, "the socket's group")
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode)
        assert (oct(st.st_mode & 0o777), st.st_uid) == (oct(0o660), 0)
    finally:
        host.stop_process(proc)
        host.remove_tree(tmp_path / "root")
        host.remove_tree(tmp_path / "state")


def test_a_bad_gid_is_refused_before_serving(tmp_path: Path) -> None:
    proc = _supervisor(tmp_path, '[grpc]\ngid = "no-such-group-here"\n')
    try:
        assert proc.wait(30) != 0
    finally:
        host.stop_process(proc)
    assert (
        "grpc.gid: no group named 'no-such-group-here'" in (tmp_path / "supervisor.log").read_text()
    )
    assert not (tmp_path / "sup.sock").exists()


def _serving(proc: subprocess.Popen[bytes], sock: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"supervisor exited {proc.returncode}")
    if not sock.exists():
        return False
    p = subprocess.run(
        ["ctr", "--address", str(sock), "version"], capture_output=True, timeout=30, check=False
    )
    return p.returncode == 0


def test_side_by_side_one_per_root(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    first, other = _supervisor(a), _supervisor(b)
    try:
        host.wait_for(lambda: _serving(first, a / "sup.sock"), 30, "the first supervisor")
        host.wait_for(lambda: _serving(other, b / "sup.sock"), 30, "one on another root")
        second = _supervisor(c, root=a / "root")
        try:
            assert second.wait(30) != 0
        finally:
            host.stop_process(second)
        log = (c / "supervisor.log").read_text()
        assert "another supervisor is using it" in log, log
        assert _serving(first, a / "sup.sock"), "the first one serves on"
    finally:
        for proc in (first, other):
            host.stop_process(proc)
        for d in (a, b, c):
            host.remove_tree(d)
