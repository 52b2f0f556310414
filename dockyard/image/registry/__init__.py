"""The registry client: OCI distribution spec pull and push, token and basic auth."""

from dockyard.image.registry.auth import Credentials
from dockyard.image.registry.client import (
    ACCEPT_MANIFESTS,
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_SIZE,
    BlobFetch,
    Registry,
    Resolved,
    Sink,
)
from dockyard.image.registry.errors import RegistryError, Unauthorized

__all__ = [
    "ACCEPT_MANIFESTS",
    "MANIFEST_MEDIA_TYPES",
    "MAX_MANIFEST_SIZE",
    "BlobFetch",
    "Credentials",
    "Registry",
    "RegistryError",
    "Resolved",
    "Sink",
    "Unauthorized",
]
