"""Type URLs of the OCI runtime spec's types, which travel in an Any as JSON.

containerd's client and runtime packages register these Go types (they are
not protobuf messages) under these names, and the value of such an Any is
the type's JSON. This module imports nothing, protobuf least of all: the
shim, which checks these URLs, takes them from here as
``dockyard.api.typeurl`` does.
"""

_RUNTIME_SPEC = "types.containerd.io/opencontainers/runtime-spec/1/"
SPEC = _RUNTIME_SPEC + "Spec"  # a container's spec
PROCESS = _RUNTIME_SPEC + "Process"  # an exec
LINUX_RESOURCES = _RUNTIME_SPEC + "LinuxResources"  # a task update
WINDOWS_RESOURCES = _RUNTIME_SPEC + "WindowsResources"

# Type URLs whose value is JSON rather than a protobuf message.
JSON_TYPE_URLS = frozenset({SPEC, PROCESS, LINUX_RESOURCES, WINDOWS_RESOURCES})
