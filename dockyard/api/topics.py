"""containerd's event topics, as its services and shims publish them.

One place for the names (containerd keeps them as constants in its
runtime and services packages); imports nothing, so the shim may use it.
"""

from __future__ import annotations

TASK_CREATE = "/tasks/create"
TASK_START = "/tasks/start"
TASK_EXIT = "/tasks/exit"
TASK_DELETE = "/tasks/delete"
TASK_EXEC_ADDED = "/tasks/exec-added"
TASK_EXEC_STARTED = "/tasks/exec-started"
TASK_PAUSED = "/tasks/paused"
TASK_RESUMED = "/tasks/resumed"
TASK_OOM = "/tasks/oom"

CONTAINER_CREATE = "/containers/create"
CONTAINER_UPDATE = "/containers/update"
CONTAINER_DELETE = "/containers/delete"

IMAGE_CREATE = "/images/create"
IMAGE_UPDATE = "/images/update"
IMAGE_DELETE = "/images/delete"

NAMESPACE_CREATE = "/namespaces/create"
NAMESPACE_UPDATE = "/namespaces/update"
NAMESPACE_DELETE = "/namespaces/delete"

SNAPSHOT_PREPARE = "/snapshot/prepare"
SNAPSHOT_COMMIT = "/snapshot/commit"
SNAPSHOT_REMOVE = "/snapshot/remove"

CONTENT_DELETE = "/content/delete"
