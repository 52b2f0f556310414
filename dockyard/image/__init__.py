"""The image side: content store, references, and (from other modules) snapshots,
layer diffs and the registry client, as a library the supervisor serves.

- ``dockyard.image.reference``: Docker's image names (``parse``).
- ``dockyard.image.content``: the content store (``ContentStore``).
- The spec types (descriptors, manifests, digests, platforms) live in
  ``dockyard.spec.image``.
"""
