"""``containerd-shim-dockyard-v2``: the shim's command line, as containerd calls it.

containerd's runtime v2 runs a shim binary with Go-style flags (``-namespace
ns -address /run/containerd/containerd.sock -publish-binary containerd -id
<id>``, ``-bundle`` and ``-debug``) in the bundle directory, then an action:

- ``start``: start the long-running shim (or find the one already serving
  this container's socket) and print its address;
- ``delete``: clean up after a shim that died (runtime delete, unmount) and
  print a marshalled ``DeleteResponse``;
- none: be the long-running shim, serving the task API on fd 3.

The environment carries ``TTRPC_ADDRESS`` (where events go) besides.
Each action's code is imported only when it runs.
"""

from __future__ import annotations

import os
import sys

from dockyard.errors import DockyardError, InvalidArgument

NAME = "containerd-shim-dockyard-v2"
VERSION = "0.1.0"

_STRING_FLAGS = ("namespace", "id", "address", "publish-binary", "bundle", "socket")
_BOOL_FLAGS = ("debug", "v")


class Flags:
    """The flags containerd passes (shim.go parseFlags), and the action."""

    def __init__(self) -> None:
        self.namespace = ""
        self.id = ""
        self.address = ""
        self.publish_binary = "containerd"
        self.bundle = ""
        self.socket = ""
        self.debug = False
        self.v = False
        self.action = ""


def parse_flags(argv: list[str]) -> Flags:
    """Go's flag package rules: ``-f v``, ``-f=v``, ``--f v``, bools bare or ``=true``;
    flags end at the first non-flag argument or ``--``."""
    flags = Flags()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.lstrip("-").partition("=")
        attr = name.replace("-", "_")
        if name in _BOOL_FLAGS:
            if eq and value.lower() not in ("1", "t", "true", "0", "f", "false"):
                raise InvalidArgument(f"invalid boolean value {value!r} for flag -{name}")
            setattr(flags, attr, not eq or value.lower() in ("1", "t", "true"))
        elif name in _STRING_FLAGS:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise InvalidArgument(f"flag needs an argument: -{name}")
                value = argv[i]
            setattr(flags, attr, value)
        else:
            raise InvalidArgument(f"flag provided but not defined: -{name}")
        i += 1
    rest = argv[i:]
    flags.action = rest[0] if rest else ""
    return flags


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        flags = parse_flags(args)
        if flags.v:
            sys.stdout.write(f"{NAME}:\n  Version:  {VERSION}\n")
            return 0
        if not flags.namespace:
            raise InvalidArgument("shim namespace cannot be empty")
        if flags.action == "start":
            from dockyard.shim.manager import start

            return start(flags)
        if flags.action == "delete":
            from dockyard.shim.manager import delete

            return delete(flags)
        if flags.action:
            raise InvalidArgument(f"unknown action {flags.action!r}: start, delete or none")
        from dockyard.shim.server import serve

        return serve(flags)
    except DockyardError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
    return 1


def _fail(message: str) -> None:
    try:
        os.write(2, f"{NAME}: {message}\n".encode(errors="replace"))
    except OSError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
