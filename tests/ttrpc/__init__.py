"""Tests of dockyard's ttrpc: codec, Python client against Python server, and the
client against Go's ttrpc server in containerd-shim-runc-v2."""
