"""The image side of the supervisor, as a library (containerd's place in the stack).

- ``dockyard.image.reference``: Docker's image names (``parse``).
- ``dockyard.image.content``: the content store (``ContentStore``): blobs by
  digest, written through resumable ingests, committed only when verified.
- The spec types every layer shares (media types, digests, descriptors,
  manifests, indexes, configs, platforms) live in ``dockyard.spec.image``.

Snapshotters, layer apply/diff, image records and the registry client sit
beside these modules and build on them.
"""
