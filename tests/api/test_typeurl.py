"""Type URLs of Any values as containerd 1.6 writes them, and round trips."""

from __future__ import annotations

import importlib
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message

from dockyard.api import typeurl
from dockyard.api.cgroups.v1 import metrics_pb2 as cgroups_v1
from dockyard.api.cgroups.v2 import metrics_pb2 as cgroups_v2
from dockyard.api.events import container_pb2, image_pb2, task_pb2
from dockyard.api.runc.options import oci_pb2
from dockyard.api.runtime.linux.runctypes import runc_pb2
from dockyard.api.runtimeoptions.v1 import api_pb2 as runtimeoptions_pb2
from dockyard.errors import InvalidArgument, NotFound

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "msg, url",
    [
        (task_pb2.TaskExit(container_id="c", pid=7, exit_status=1), "containerd.events.TaskExit"),
        (task_pb2.TaskOOM(container_id="c"), "containerd.events.TaskOOM"),
        (image_pb2.ImageCreate(name="a:b"), "containerd.services.images.v1.ImageCreate"),
        (
            container_pb2.ContainerCreate.Runtime(name="io.containerd.runc.v2"),
            "containerd.events.ContainerCreate.Runtime",
        ),
        (oci_pb2.Options(binary_name="dockyard-runtime"), "containerd.runc.v1.Options"),
        (oci_pb2.ProcessDetails(exec_id="e"), "containerd.runc.v1.ProcessDetails"),
        (runc_pb2.CreateOptions(no_pivot_root=True), "containerd.linux.runc.CreateOptions"),
        (runtimeoptions_pb2.Options(config_path="/x.toml"), "runtimeoptions.v1.Options"),
        (
            cgroups_v1.Metrics(pids=cgroups_v1.PidsStat(current=3)),
            "io.containerd.cgroups.v1.Metrics",
        ),
        (
            cgroups_v2.Metrics(cpu=cgroups_v2.CPUStat(usage_usec=9)),
            "io.containerd.cgroups.v2.Metrics",
        ),
    ],
)
def test_message_round_trip(msg: Message, url: str) -> None:
    assert typeurl.type_url(msg) == url
    packed = typeurl.pack(msg)
    assert packed.type_url == url
    assert packed.value == msg.SerializeToString()
    out = typeurl.unpack(packed)
    assert type(out) is type(msg)
    assert out == msg
    assert typeurl.unpack_to(packed, type(msg)) == msg


def test_pack_keeps_an_any() -> None:
    inner = typeurl.pack(task_pb2.TaskStart(container_id="c", pid=1))
    assert typeurl.pack(inner) is inner


def test_prefixed_url_is_understood() -> None:
    # what Any.Pack of a standard protobuf library writes
    standard = any_pb2.Any()
    standard.Pack(task_pb2.TaskExit(container_id="c"))
    assert standard.type_url == "type.googleapis.com/containerd.events.TaskExit"
    assert typeurl.unpack(standard) == task_pb2.TaskExit(container_id="c")


@pytest.mark.parametrize(
    "url, obj",
    [
        (
            "types.containerd.io/opencontainers/runtime-spec/1/Spec",
            {"ociVersion": "1.0.2-dev", "process": {"args": ["sh"], "cwd": "/"}},
        ),
        (
            "types.containerd.io/opencontainers/runtime-spec/1/Process",
            {"args": ["echo", "hé"], "env": ["A=1"], "terminal": False},
        ),
        (
            "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
            {"memory": {"limit": 1 << 30}, "cpu": {"shares": 512}},
        ),
    ],
)
def test_json_round_trip(url: str, obj: dict[str, object]) -> None:
    packed = typeurl.pack_json(url, obj)
    assert packed.type_url == url
    assert url in typeurl.JSON_TYPE_URLS
    assert typeurl.unpack(packed) == obj


def test_json_constants() -> None:
    assert typeurl.SPEC == "types.containerd.io/opencontainers/runtime-spec/1/Spec"
    assert typeurl.PROCESS == "types.containerd.io/opencontainers/runtime-spec/1/Process"
    assert (
        typeurl.LINUX_RESOURCES
        == "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
    )


def test_json_as_go_writes_it() -> None:
    # a spec as containerd's client encodes it (Go escapes <, > and &)
    packed = any_pb2.Any(
        type_url=typeurl.SPEC, value=b'{"ociVersion":"1.0.2-dev","hostname":"a\\u003cb"}'
    )
    assert typeurl.unpack(packed) == {"ociVersion": "1.0.2-dev", "hostname": "a<b"}


def test_unknown_type_is_not_found() -> None:
    with pytest.raises(NotFound, match=r"containerd\.events\.NoSuchEvent"):
        typeurl.unpack(any_pb2.Any(type_url="containerd.events.NoSuchEvent"))


def test_bad_value_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        typeurl.unpack(any_pb2.Any(type_url="containerd.events.TaskExit", value=b"\xff\xff"))
    with pytest.raises(InvalidArgument):
        typeurl.unpack(any_pb2.Any(type_url=typeurl.SPEC, value=b"{not json"))


def test_unpack_to_checks_the_type() -> None:
    packed = typeurl.pack(task_pb2.TaskExit(container_id="c"))
    with pytest.raises(InvalidArgument, match=r"containerd\.events\.TaskStart"):
        typeurl.unpack_to(packed, task_pb2.TaskStart)


def test_message_modules_hold_what_they_claim() -> None:
    # every listed module imports, and every message of theirs unpacks by name
    for name in typeurl.MESSAGE_MODULES:
        module = importlib.import_module(name)
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            assert typeurl.message_class(desc.full_name).DESCRIPTOR is desc


def _fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter without site processing, like the shim."""
    paths = [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    prog = f"import sys; sys.path[:0] = {paths!r}\n{code}"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", prog], capture_output=True, text=True, check=True
    )
    return result.stdout


def test_unpack_imports_event_modules_on_demand() -> None:
    out = _fresh_python(
        "from google.protobuf import any_pb2\n"
        "from dockyard.api import typeurl\n"
        "print('dockyard.api.events.task_pb2' in sys.modules)\n"
        "exit = any_pb2.Any(type_url='containerd.events.TaskExit', value=b'\\x18\\x07')\n"
        "m = typeurl.unpack(exit)\n"
        "print(type(m).__module__, m.pid)\n"
    )
    assert out.split("\n")[:2] == ["False", "dockyard.api.events.task_pb2 7"]


def test_typeurl_imports_stay_light() -> None:
    # the shim API's messages and typeurl: protobuf only, no grpc, no json package
    out = _fresh_python(
        "import dockyard.api.runtime.task.v2.shim_pb2\n"
        "import dockyard.api.services.ttrpc.events.v1.events_pb2\n"
        "import dockyard.api.typeurl\n"
        "print(sorted(m for m in ('grpc', 'json') if m in sys.modules))\n"
    )
    assert out.strip() == "[]"
