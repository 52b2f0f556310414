"""What the long-running shim and dockyard-runtime import, imported ahead of time.

The shim forks: the template forks shims, and a shim forks dockyard-runtime
in-process (``runtime.InProcessRuntime``). A forked child has only the
thread that forked, so a module another thread was importing at that moment
stays locked for ever in the child, and importing it there deadlocks. Every
module a child can need is therefore imported before any thread starts: by
the template for the shims it forks, and by a shim started as a command
before its first thread. Imported in the template, their pages are shared
by every shim (copy-on-write), and nothing is imported after a fork.

``shim()`` covers what the long-running shim and the ttrpc package import
lazily; ``runtime()`` covers all of dockyard-runtime (every module of the
package, found by listing it, so a new one is not missed) and the standard
modules it imports inside functions.
"""

from __future__ import annotations

import os

SHIM_MODULES = (
    "dockyard.jsonio",
    "dockyard.errors",
    "dockyard.atomicfile",
    "dockyard.shim.main",
    "dockyard.shim.manager",
    "dockyard.shim.server",
    "dockyard.shim.service",
    "dockyard.shim.container",
    "dockyard.shim.process",
    "dockyard.shim.stdio",
    "dockyard.shim.options",
    "dockyard.shim.stats",
    "dockyard.shim.oom",
    "dockyard.shim.rootfs",
    "dockyard.shim.publisher",
    "dockyard.shim.reaper",
    "dockyard.shim.runtime",
    "dockyard.shim.messages",
    "dockyard.shim.codec",
    "dockyard.shim.log",
    "dockyard.spec.mount",
    "dockyard.runtime.libc",
    "dockyard.runtime.cgroups",
    "dockyard.ttrpc",
    "dockyard.ttrpc.client",
    "dockyard.ttrpc.server",
    # standard modules imported inside functions (stdio, server, ttrpc errors)
    "fcntl",
    "socket",
    "struct",
    "termios",
    "traceback",
)

# Standard modules dockyard-runtime imports inside functions (hooks, console,
# logging with --log-format json, internal errors with --debug).
RUNTIME_STDLIB = (
    "json",
    "subprocess",
    "traceback",
    "termios",
    "tty",
    "fcntl",
    "resource",
    "pwd",
    "select",
    "socket",
    "struct",
    "array",
)


# What is imported already: a shim forked from the template skips it all
# (looking every module up again would write to pages it shares).
_loaded: set[str] = set()


def _import_all(names: tuple[str, ...] | list[str]) -> None:
    for name in names:
        __import__(name)


def shim() -> None:
    """Import what the long-running shim needs (once)."""
    if "shim" not in _loaded:
        _import_all(SHIM_MODULES)
        _loaded.add("shim")


def loaded(part: str) -> bool:
    """Whether ``shim`` or ``runtime`` has run in this process (or the template)."""
    return part in _loaded


def runtime_modules() -> list[str]:
    """Every module of dockyard-runtime (its package and subpackages, not ``__main__``)."""
    import dockyard.runtime

    base = os.path.dirname(os.path.abspath(dockyard.runtime.__file__))
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        rel = os.path.relpath(dirpath, base)
        package = "dockyard.runtime" + ("" if rel == "." else "." + rel.replace(os.sep, "."))
        if "__init__.py" not in filenames:
            continue
        names.append(package)
        for f in sorted(filenames):
            if f.endswith(".py") and f not in ("__init__.py", "__main__.py"):
                names.append(f"{package}.{f[:-3]}")
    return names


def runtime() -> None:
    """Import all of dockyard-runtime and what it imports lazily (once)."""
    if "runtime" not in _loaded:
        _import_all(runtime_modules())
        _import_all(RUNTIME_STDLIB)
        _import_all(("dockyard.spec.runtime",))
        _loaded.add("runtime")
