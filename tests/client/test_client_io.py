"""The client library's stdio and import paths, against containerd and the supervisor.

Terminals and their size, output to a log file the shim writes, a task
reattached to its FIFOs by a client started after the one that made it (an
engine's restart), a task whose shim cannot be found leaving no FIFO behind,
and the import of a docker-archive (no OCI layout in it).
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from dockyard.client import cio
from dockyard.client.client import Client
from dockyard.client.tasks import TaskStatus
from dockyard.errors import DockyardError, NotFound
from dockyard.image.images import Image
from dockyard.spec.image import MediaType
from tests.client import clientfixtures
from tests.client.clientfixtures import Daemon, Shim, spec_for
from tests.compat import host
from tests.conftest import new_id

daemon = clientfixtures.daemon
ns = clientfixtures.ns
shim = clientfixtures.shim
image = clientfixtures.image

WAIT = host.COMMAND_TIMEOUT


def fifo_dirs(daemon: Daemon) -> list[str]:
    root = Path(daemon.fifo_root)
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_terminal_and_its_size(ns: Client, image: Image, shim: Shim, daemon: Daemon) -> None:
    cid = new_id()
    spec = spec_for(ns, image, cid, ["sh", "-c", "tty; stty size"], terminal=True)
    out = io.BytesIO()
    with ns.container(
        cid, image, remove_timeout=WAIT, spec=spec, runtime=shim.name, runtime_options=shim.options
    ) as container:
        task = container.new_task(
            cio.streams(stdout=out, terminal=True, fifo_root=daemon.fifo_root)
        )
        try:
            assert task.io is not None
            assert task.io.config.terminal and task.io.config.stderr == ""
            task.resize(100, 30)
            exited = task.wait_async()
            task.start()
            assert exited.result(WAIT).code == 0
        finally:
            task.delete(force=True, timeout=WAIT)
    # a terminal ends lines with \r\n
    assert out.getvalue().split(b"\r\n")[:2] == [b"/dev/pts/0", b"30 100"], out.getvalue()


def test_output_to_a_log_file(ns: Client, image: Image, shim: Shim, daemon: Daemon) -> None:
    cid = new_id()
    log = daemon.base / f"{cid}.log"
    # stderr first, and a pause before stdout: containerd's runc shim (1.6) hands
    # the stdout copy the log file itself rather than its shared closer, so the
    # file is closed when stdout ends, and a stderr line not copied by then is lost
    spec = spec_for(ns, image, cid, ["sh", "-c", "echo err >&2; sleep 0.3; echo out"])

    def both_lines() -> bool:
        return log.exists() and sorted(log.read_text().splitlines()) == ["err", "out"]

    try:
        with ns.container(
            cid,
            image,
            remove_timeout=WAIT,
            spec=spec,
            runtime=shim.name,
            runtime_options=shim.options,
        ) as container:
            task = container.new_task(cio.log_uri(f"file://{log}"))
            try:
                exited = task.wait_async()
                task.start()
                assert exited.result(WAIT).code == 0
                # containerd's runc shim copies into the file on its own time: the
                # exit does not wait for the copy (ours does), and a delete before
                # the copy is done loses what was not copied yet
                host.wait_for(both_lines, 10, "both lines in the log file")
            finally:
                task.delete(force=True, timeout=WAIT)
        assert both_lines()
    finally:
        log.unlink(missing_ok=True)


# A client that makes and starts a task with FIFO stdio, then exits without
# closing anything: an engine that went away. Its stdin source never ends.
_FIRST_CLIENT = """
import io, os, sys
from dockyard.client import cio
from dockyard.client.client import Client
address, namespace, cid, fifo_root = sys.argv[1:]
client = Client(address, namespace)
r, w = os.pipe()
task = client.load_container(cid).new_task(
    cio.streams(stdin=os.fdopen(r, "rb"), stdout=io.BytesIO(), fifo_root=fifo_root)
)
task.start()
print(task.pid)
"""


def test_a_restarted_client_reattaches_to_the_fifos(
    ns: Client, image: Image, shim: Shim, daemon: Daemon
) -> None:
    cid = new_id()
    spec = spec_for(ns, image, cid, ["sh", "-c", "while read l; do echo got $l; done; echo bye"])
    with ns.container(
        cid, image, remove_timeout=WAIT, spec=spec, runtime=shim.name, runtime_options=shim.options
    ):
        first = subprocess.run(
            [
                sys.executable,
                "-c",
                _FIRST_CLIENT,
                daemon.address,
                ns.namespace,
                cid,
                daemon.fifo_root,
            ],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        assert first.returncode == 0, first.stderr
        pid = int(first.stdout)
        # a new client finds the task and its FIFOs, and talks to it
        with Client(daemon.address, ns.namespace) as again:
            out = io.BytesIO()
            task = again.load_container(cid).task(attach=cio.attach(stdin=b"one\n", stdout=out))
            assert task.pid == pid
            assert task.io is not None and task.io.config.stdin
            # all of stdin sent, the process is told to close it: it ends
            status = task.wait_async().result(WAIT)
            assert status.code == 0
            assert task.status().status == TaskStatus.STOPPED
            task.delete(timeout=WAIT)
        assert out.getvalue() == b"got one\nbye\n"
    # the FIFOs and their directory went with the task
    assert fifo_dirs(daemon) == []


def test_a_task_that_cannot_be_created_leaves_nothing(
    ns: Client, image: Image, daemon: Daemon
) -> None:
    cid = new_id()
    spec = spec_for(ns, image, cid, ["true"])
    with ns.container(cid, image, spec=spec, runtime="io.containerd.nothere.v1") as container:
        with pytest.raises(DockyardError):
            container.new_task(cio.streams(stdout=io.BytesIO(), fifo_root=daemon.fifo_root))
        with pytest.raises(NotFound):
            container.task()
        assert fifo_dirs(daemon) == []
    assert ns.containers.list() == []
    # only the image's own snapshot is left: the container's went with it
    assert [i.name for i in ns.snapshots().list()] == [daemon.image.layer_digest]


def docker_only_archive(src: Path, dest: Path) -> None:
    """The archive without its OCI layout: what ``docker save`` wrote before Docker 25."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        for member in tin:
            if member.name in ("index.json", "oci-layout"):
                continue
            tout.addfile(member, tin.extractfile(member) if member.isfile() else None)


def test_import_a_docker_archive(ns: Client, daemon: Daemon, tmp_path: Path) -> None:
    archive = tmp_path / "docker.tar"
    docker_only_archive(daemon.image.path, archive)
    [made] = ns.import_image(str(archive))
    assert made.name == daemon.image.ref
    # a Docker schema 2 manifest written for it, over the same config and layer
    assert made.target.media_type == MediaType.DOCKER_MANIFEST
    assert made.target.digest != daemon.image.manifest_digest
    labels = ns.content.info(made.target.digest).labels
    assert labels["containerd.io/gc.ref.content.config"] == daemon.image.config_digest
    assert labels["containerd.io/gc.ref.content.l.0"] == daemon.image.layer_digest
    assert ns.unpack(made) == daemon.image.layer_digest
    # the record keeps all of it; nothing of the import is left otherwise
    assert ns.leases.list() == []
    assert ns.content.list_statuses() == []
    ns.images.delete(made.name, sync=True)
    assert ns.content.list() == []
    assert ns.snapshots().list() == []
