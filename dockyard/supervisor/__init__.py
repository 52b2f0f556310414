"""dockyard-supervisor: containerd's place in the stack.

A daemon serving containerd's v1 gRPC services on a unix socket, so that
containerd's own clients (``ctr``, the Go client) and dockyard's client
library work against it. The image side (content, images, snapshots, diff,
leases, gc) adapts ``dockyard.image``; tasks run through one shim per
container over ttrpc (containerd's runtime v2).
"""
