"""``dockyard-supervisor``: the command that runs the daemon.

    dockyard-supervisor [--config FILE] [--root DIR] [--state DIR]
                        [--address SOCKET] [--snapshotter NAME]
                        [--default-runtime NAME] [--log-level LEVEL]

Flags override the config file; the file overrides the defaults.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dockyard.errors import DockyardError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dockyard-supervisor",
        description="containerd-compatible gRPC supervisor of dockyard",
    )
    p.add_argument("--config", "-c", help="TOML config file")
    p.add_argument("--root", help="persistent state (default /var/lib/dockyard)")
    p.add_argument("--state", help="runtime state (default /run/dockyard)")
    p.add_argument("--address", "-a", help="gRPC socket (default /run/dockyard/supervisor.sock)")
    p.add_argument("--snapshotter", help="default snapshotter (overlayfs, native)")
    p.add_argument("--default-runtime", help="default runtime (shim) name")
    p.add_argument("--log-level", "-l", default="info", help="debug, info, warning, error")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from dockyard.ttrpc import favor_latency

    favor_latency()
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from dockyard.supervisor.config import load
    from dockyard.supervisor.daemon import Supervisor

    try:
        config = load(args.config)
        # a ttrpc address derived from the gRPC one follows a new --address
        derived_ttrpc = config.ttrpc_address == config.address + ".ttrpc"
        # each flag is named as the config attribute it overrides
        for name in ("root", "state", "address", "snapshotter", "default_runtime"):
            value = getattr(args, name)
            if value:
                setattr(config, name, value)
        if derived_ttrpc:
            config.ttrpc_address = ""
        config.finish()
        sup = Supervisor(config)
        sup.install_signal_handlers()
        sup.start()
    except DockyardError as e:
        sys.stderr.write(f"dockyard-supervisor: {e}\n")
        return 1
    sup.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
