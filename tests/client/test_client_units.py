"""The client library's parts that need no daemon: the status-code mapping,
signal names, garbage-collection label keys, and the FIFO stdio with this
test in the shim's place."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

import dockyard.client
from dockyard.client import cio
from dockyard.client.image import gc_label_key
from dockyard.client.leases import random_id
from dockyard.client.rpc import from_grpc
from dockyard.client.tasks import signal_number
from dockyard.errors import (
    AlreadyExists,
    DockyardError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SystemFailure,
    Unsupported,
)
from dockyard.spec.image import MediaType


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.OUT_OF_RANGE, InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.UNIMPLEMENTED, Unsupported),
        (grpc.StatusCode.INTERNAL, SystemFailure),
        (grpc.StatusCode.UNKNOWN, SystemFailure),
        (grpc.StatusCode.UNAVAILABLE, SystemFailure),
    ],
)
def test_status_codes_map_to_dockyard_errors(
    code: grpc.StatusCode, error: type[DockyardError]
) -> None:
    mapped = from_grpc(_Failed(code, 'container "x": not found'), "get on sock")
    assert type(mapped) is error
    if code == grpc.StatusCode.UNAVAILABLE:
        # grpc's own words: what was asked, of whom, is said first
        assert str(mapped) == 'get on sock: unavailable: container "x": not found'
    else:
        assert str(mapped) == 'container "x": not found'


def test_signal_names_and_numbers() -> None:
    assert signal_number(9) == signal_number("9") == signal_number("KILL") == 9
    assert signal_number("sigterm") == 15
    assert signal_number("RTMIN+1") == signal.SIGRTMIN + 1
    for bad in ("SIGNOPE", "0", "99"):
        with pytest.raises(InvalidArgument):
            signal_number(bad)


def test_gc_label_keys_are_containerds() -> None:
    prefix = "containerd.io/gc.ref.content."
    assert gc_label_key(MediaType.OCI_CONFIG) == prefix + "config"
    assert gc_label_key(MediaType.DOCKER_MANIFEST) == prefix + "m."
    assert gc_label_key(MediaType.DOCKER_LAYER_GZIP) == prefix + "l."
    assert gc_label_key(MediaType.OCI_INDEX) == prefix


def test_lease_ids_differ() -> None:
    ids = {random_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.replace("-", "").replace("_", "").isalnum() for i in ids)


def test_fifos_carry_stdio_both_ways(tmp_path: Path) -> None:
    """This test plays the shim: it opens the other ends of the FIFOs."""
    out, err = io.BytesIO(), io.BytesIO()
    creator = cio.streams(stdin=b"to the process", stdout=out, stderr=err, fifo_root=str(tmp_path))
    stdio = creator("proc")
    cfg = stdio.config
    assert os.path.dirname(cfg.stdin) == os.path.dirname(cfg.stdout) != str(tmp_path)
    assert [os.path.basename(p) for p in (cfg.stdin, cfg.stdout, cfg.stderr)] == [
        "proc-stdin",
        "proc-stdout",
        "proc-stderr",
    ]
    stdin_done = threading.Event()
    stdio.on_stdin_done(stdin_done.set)
    with open(cfg.stdin, "rb") as f:
        assert f.read() == b"to the process"
    assert stdin_done.wait(30)
    with open(cfg.stdout, "wb") as f:
        f.write(b"out\n")
    with open(cfg.stderr, "wb") as f:
        f.write(b"err\n")
    stdio.wait(30)
    assert (out.getvalue(), err.getvalue()) == (b"out\n", b"err\n")
    assert stdio.errors == []
    stdio.close()
    assert list(tmp_path.iterdir()) == []


def test_fifos_never_opened_are_cancelled(tmp_path: Path) -> None:
    """A process that never started: the copies' opens give up, nothing is left."""
    stdio = cio.streams(stdin=b"x", stdout=io.BytesIO(), fifo_root=str(tmp_path))("p")
    called: list[bool] = []
    stdio.on_stdin_done(lambda: called.append(True))
    stdio.cancel()
    stdio.wait(30)
    stdio.close()
    assert list(tmp_path.iterdir()) == []
    assert called == []  # nothing was sent: no CloseIO
    copies = [t for t in threading.enumerate() if t.name in ("copy p-stdin", "copy p-stdout")]
    for t in copies:
        t.join(30)
    assert not any(t.is_alive() for t in copies)


def test_a_terminal_has_no_stderr_and_no_streams_no_fifos(tmp_path: Path) -> None:
    tty = cio.streams(stdout=io.BytesIO(), terminal=True, fifo_root=str(tmp_path))("t")
    assert tty.config.terminal and tty.config.stdout and not tty.config.stderr
    tty.cancel()
    tty.close()
    none = cio.streams(fifo_root=str(tmp_path))("n")
    assert none.config == cio.Config()
    assert list(tmp_path.iterdir()) == []


def test_package_exports_load_lazily() -> None:
    """The package and the spec builders import without grpc or the services;
    every exported name then loads from its module on first use."""
    code = (
        "import sys\n"
        "import dockyard.client, dockyard.client.oci\n"
        "print(sorted(m for m in ('grpc', 'dockyard.client.client', 'dockyard.client.rpc')"
        " if m in sys.modules))\n"
        "c = dockyard.client\n"
        "print([n for n in c.__all__ if getattr(c, n, None) is None])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split("\n")[:2] == ["[]", "[]"]
    assert sorted(dockyard.client.__all__) == sorted(dockyard.client._EXPORTS)
    with pytest.raises(AttributeError):
        _ = dockyard.client.NoSuchName
