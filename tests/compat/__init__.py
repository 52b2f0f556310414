"""Neighbour tests: the reference daemons (containerd, dockerd) driving a runtime.

Each test runs once with the reference ``runc`` and once with our
``dockyard-runtime`` in its place, through the daemons' own options for a
runc-compatible binary. The daemons run privately under a temp dir and are
stopped, unmounted and removed by their fixtures.
"""
