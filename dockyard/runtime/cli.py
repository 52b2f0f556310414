"""``dockyard-runtime``: runc's command line over the runtime library.

Argument parsing only; each verb calls its module. Parsing is hand-written
(argparse costs milliseconds of imports, and the runtime starts per
container) and follows runc's conventions: global options before the
command, command options before its positional arguments, ``--flag value``,
``--flag=value``, ``-f value`` and single-dash long names all accepted.
Errors go to stderr (and to ``--log`` as runc writes them, so containerd's
shim can read them) and map once to the exit code of their class.
"""

from __future__ import annotations

import os
import sys
import time

from dockyard.errors import DockyardError, InvalidArgument, Unsupported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


VERSION = "0.1.0"

# flag name -> (kind, aliases); kind: "bool" | "str" | "int" | "list"
Flags = dict[str, tuple[str, tuple[str, ...]]]

GLOBAL_FLAGS: Flags = {
    "root": ("str", ()),
    "log": ("str", ()),
    "log-format": ("str", ()),
    "debug": ("bool", ()),
    "systemd-cgroup": ("bool", ()),
    "criu": ("str", ()),
    "rootless": ("str", ()),
    "help": ("bool", ("h",)),
    "version": ("bool", ("v",)),
}

CREATE_FLAGS: Flags = {
    "bundle": ("str", ("b",)),
    "console-socket": ("str", ()),
    "pid-file": ("str", ()),
    "no-pivot": ("bool", ()),
    "no-new-keyring": ("bool", ()),
    "preserve-fds": ("int", ()),
}

RUN_FLAGS: Flags = {
    **CREATE_FLAGS,
    "detach": ("bool", ("d",)),
    "keep": ("bool", ()),
    "no-subreaper": ("bool", ()),
}

EXEC_FLAGS: Flags = {
    "process": ("str", ("p",)),
    "detach": ("bool", ("d",)),
    "tty": ("bool", ("t",)),
    "console-socket": ("str", ()),
    "pid-file": ("str", ()),
    "env": ("list", ("e",)),
    "cwd": ("str", ()),
    "user": ("str", ("u",)),
    "additional-gids": ("list", ("g",)),
    "cap": ("list", ("c",)),
    "no-new-privs": ("bool", ()),
    "preserve-fds": ("int", ()),
    "apparmor": ("str", ()),
    "process-label": ("str", ()),
    "cgroup": ("list", ()),
    "ignore-paused": ("bool", ()),
}

UPDATE_FLAGS: Flags = {
    "resources": ("str", ("r",)),
    "memory": ("str", ()),
    "memory-reservation": ("str", ()),
    "memory-swap": ("str", ()),
    "kernel-memory": ("str", ()),
    "kernel-memory-tcp": ("str", ()),
    "cpu-shares": ("str", ()),
    "cpu-quota": ("str", ()),
    "cpu-period": ("str", ()),
    "cpu-rt-period": ("str", ()),
    "cpu-rt-runtime": ("str", ()),
    "cpuset-cpus": ("str", ()),
    "cpuset-mems": ("str", ()),
    "blkio-weight": ("str", ()),
    "pids-limit": ("str", ()),
    "l3-cache-schema": ("str", ()),
    "mem-bw-schema": ("str", ()),
}


class Parsed:
    def __init__(self, flags: dict[str, Any], args: list[str]) -> None:
        self.flags = flags
        self.args = args

    def get(self, name: str, default: Any = None) -> Any:
        return self.flags.get(name, default)


def parse(argv: list[str], spec: Flags, stop_at_positional: bool = False) -> Parsed:
    """Parse ``argv`` against ``spec``; options end at ``--`` (and, with
    ``stop_at_positional``, at the first positional: exec's command, ps's options)."""
    by_name: dict[str, str] = {}
    for name, (_, aliases) in spec.items():
        by_name[name] = name
        for a in aliases:
            by_name[a] = name
    flags: dict[str, Any] = {}
    args: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            args.extend(argv[i + 1 :])
            break
        if a.startswith("-") and a != "-" and not (args and stop_at_positional):
            key, eq, val = a.lstrip("-").partition("=")
            found = by_name.get(key)
            if found is None:
                raise InvalidArgument(f"flag provided but not defined: {a.split('=')[0]}")
            name = found
            kind = spec[name][0]
            if kind == "bool":
                flags[name] = val.lower() not in ("false", "0") if eq else True
            else:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise InvalidArgument(f"flag needs an argument: {a}")
                    val = argv[i]
                if kind == "int":
                    try:
                        flags[name] = int(val)
                    except ValueError:
                        raise InvalidArgument(
                            f"invalid value {val!r} for flag {a}: want an integer"
                        ) from None
                elif kind == "list":
                    flags.setdefault(name, []).append(val)
                else:
                    flags[name] = val
        else:
            args.append(a)
        i += 1
    return Parsed(flags, args)


def _one_id(p: Parsed, cmd: str) -> str:
    if len(p.args) != 1:
        raise InvalidArgument(f"{cmd}: expects exactly one container id, got {len(p.args)}")
    return str(p.args[0])


class Cli:
    def __init__(self, glob: Parsed) -> None:
        self.glob = glob
        from dockyard.runtime.state import DEFAULT_ROOT

        self.root = os.path.abspath(glob.get("root") or DEFAULT_ROOT)

    # -- verbs -------------------------------------------------------------
    def do_create(self, argv: list[str]) -> int:
        from dockyard.runtime.create import create

        p = parse(argv, CREATE_FLAGS)
        create(self.root, _one_id(p, "create"), _create_options(p))
        return 0

    def do_run(self, argv: list[str]) -> int:
        from dockyard.runtime.run import run

        p = parse(argv, RUN_FLAGS)
        return run(self.root, _one_id(p, "run"), _create_options(p), bool(p.get("detach")))

    def do_start(self, argv: list[str]) -> int:
        from dockyard.runtime.start import start

        start(self.root, _one_id(parse(argv, {}), "start"))
        return 0

    def do_state(self, argv: list[str]) -> int:
        from dockyard.jsonio import dumps_indent
        from dockyard.runtime import state as st

        s = st.load(self.root, _one_id(parse(argv, {}), "state"))
        print(dumps_indent(s.oci_state()))
        return 0

    def do_kill(self, argv: list[str]) -> int:
        from dockyard.runtime.kill import kill

        p = parse(argv, {"all": ("bool", ("a",))})
        if not 1 <= len(p.args) <= 2:
            raise InvalidArgument("kill: expects a container id and an optional signal")
        kill(self.root, p.args[0], p.args[1] if len(p.args) > 1 else "SIGTERM", p.get("all"))
        return 0

    def do_delete(self, argv: list[str]) -> int:
        from dockyard.runtime.delete import delete

        p = parse(argv, {"force": ("bool", ("f",))})
        if not p.args:
            raise InvalidArgument("delete: expects at least one container id")
        for cid in p.args:
            delete(self.root, cid, bool(p.get("force")))
        return 0

    def do_exec(self, argv: list[str]) -> int:
        from dockyard.runtime.cgroups import warm_migration

        warm_migration()
        from dockyard.runtime.exec import ExecOptions, exec_process

        p = parse(argv, EXEC_FLAGS, stop_at_positional=True)
        if not p.args:
            raise InvalidArgument("exec: expects a container id")
        cid, args = p.args[0], p.args[1:]
        try:
            gids = [int(g) for g in p.get("additional-gids", [])]
        except ValueError:
            raise InvalidArgument("exec: --additional-gids takes numeric gids") from None
        if p.get("apparmor"):
            raise Unsupported("exec --apparmor: AppArmor is not supported on this host")
        if p.get("process-label"):
            raise Unsupported("exec --process-label: SELinux is not supported on this host")
        opts = ExecOptions(
            process_file=p.get("process"),
            args=args,
            detach=bool(p.get("detach")),
            tty=bool(p.get("tty")),
            console_socket=p.get("console-socket"),
            pid_file=p.get("pid-file"),
            env=p.get("env", []),
            cwd=p.get("cwd"),
            user=p.get("user"),
            additional_gids=gids,
            caps=p.get("cap", []),
            no_new_privs=bool(p.get("no-new-privs")),
            preserve_fds=p.get("preserve-fds", 0),
        )
        result = exec_process(self.root, cid, opts)
        return 0 if opts.detach else result

    def do_list(self, argv: list[str]) -> int:
        from dockyard.runtime.listing import list_containers

        p = parse(argv, {"format": ("str", ("f",)), "quiet": ("bool", ("q",))})
        list_containers(self.root, p.get("format", "table"), bool(p.get("quiet")))
        return 0

    def do_ps(self, argv: list[str]) -> int:
        from dockyard.runtime.listing import ps

        p = parse(argv, {"format": ("str", ("f",))}, stop_at_positional=True)
        if not p.args:
            raise InvalidArgument("ps: expects a container id")
        ps(self.root, p.args[0], p.get("format", "table"), p.args[1:])
        return 0

    def do_pause(self, argv: list[str]) -> int:
        from dockyard.runtime.pause import pause

        pause(self.root, _one_id(parse(argv, {}), "pause"))
        return 0

    def do_resume(self, argv: list[str]) -> int:
        from dockyard.runtime.pause import resume

        resume(self.root, _one_id(parse(argv, {}), "resume"))
        return 0

    def do_update(self, argv: list[str]) -> int:
        from dockyard.runtime.update import update

        p = parse(argv, UPDATE_FLAGS)
        update(self.root, _one_id(p, "update"), p.flags)
        return 0

    def do_events(self, argv: list[str]) -> int:
        from dockyard.runtime.events import events

        p = parse(argv, {"stats": ("bool", ()), "interval": ("str", ())})
        events(self.root, _one_id(p, "events"), bool(p.get("stats")), p.get("interval", "5s"))
        return 0

    def do_features(self, argv: list[str]) -> int:
        import json

        from dockyard.runtime.features import features

        parse(argv, {})
        print(json.dumps(features(), indent=4))
        return 0

    def do_spec(self, argv: list[str]) -> int:
        import json

        from dockyard.spec.runtime import default_spec

        p = parse(argv, {"bundle": ("str", ("b",)), "rootless": ("bool", ())})
        path = os.path.join(p.get("bundle") or ".", "config.json")
        if os.path.exists(path):
            raise InvalidArgument(f"file {path} exists: remove it first")
        data = json.dumps(default_spec(bool(p.get("rootless"))), indent="\t")
        with open(path, "x") as f:
            f.write(data)
        return 0

    def do_checkpoint(self, argv: list[str]) -> int:
        raise Unsupported("checkpoint: CRIU checkpointing is not supported by dockyard-runtime")

    do_restore = do_checkpoint


COMMANDS = [
    "checkpoint",
    "create",
    "delete",
    "events",
    "exec",
    "features",
    "kill",
    "list",
    "pause",
    "ps",
    "restore",
    "resume",
    "run",
    "spec",
    "start",
    "state",
    "update",
]

USAGE = """usage: dockyard-runtime [global options] command [command options] [arguments...]

An OCI runtime with runc's command line.

commands:
  create    create a container              start     start a created container
  run       create and start a container    state     output the state of a container
  kill      send a signal to the container  delete    delete a container
  exec      run a process in a container    list      list containers
  ps        processes in a container        pause     suspend all processes
  resume    resume paused processes         update    update resource limits
  events    container events and stats      features  what this runtime supports
  spec      write a default config.json

global options:
  --root DIR          state directory (default /run/dockyard-runtime)
  --log FILE          append errors and debug output to FILE
  --log-format FMT    text or json
  --debug             log debug output
"""


def _create_options(p: Parsed) -> Any:
    from dockyard.runtime.create import CreateOptions

    return CreateOptions(
        bundle=p.get("bundle") or ".",
        console_socket=p.get("console-socket"),
        pid_file=p.get("pid-file"),
        no_pivot=bool(p.get("no-pivot")),
        no_new_keyring=bool(p.get("no-new-keyring")),
        preserve_fds=p.get("preserve-fds", 0),
    )


def _log(glob: Parsed | None, level: str, msg: str) -> None:
    path = glob.get("log") if glob else None
    if not path:
        return
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
    if glob and glob.get("log-format") == "json":
        import json

        line = json.dumps({"level": level, "msg": msg, "time": ts})
    else:
        line = f'time="{ts}" level={level} msg="{msg}"'
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def error_message(e: DockyardError | OSError) -> str:
    """What the runtime reports for an error (its stderr line and log entry)."""
    if isinstance(e, DockyardError):
        return str(e)
    return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    glob: Parsed | None = None
    try:
        glob = parse(argv, GLOBAL_FLAGS, stop_at_positional=True)
        if glob.get("version"):
            from dockyard.spec.runtime import OCI_VERSION

            print(f"dockyard-runtime version {VERSION}\nspec: {OCI_VERSION}")
            return 0
        if glob.get("help") or not glob.args:
            sys.stdout.write(USAGE)
            return 0
        if glob.get("log-format") not in (None, "text", "json"):
            raise InvalidArgument(f"invalid --log-format {glob.get('log-format')!r}: text or json")
        if glob.get("systemd-cgroup"):
            raise Unsupported(
                "--systemd-cgroup: the systemd cgroup driver is not supported; "
                "use cgroupfs paths in linux.cgroupsPath"
            )
        if glob.get("criu"):
            raise Unsupported("--criu: checkpoint/restore is not supported")
        cmd, rest = glob.args[0], glob.args[1:]
        if cmd not in COMMANDS:
            raise InvalidArgument(f"no such command {cmd!r}")
        handler: Callable[[list[str]], int] = getattr(Cli(glob), "do_" + cmd)
        if glob.get("debug"):
            _log(glob, "debug", f"{cmd} {' '.join(rest)}")
        return handler(rest)
    except (DockyardError, OSError) as e:
        msg, code = error_message(e), getattr(e, "exit_code", 1)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: say so, and keep the traceback for --debug
        msg = f"internal error: {type(e).__name__}: {e}"
        code = 1
        if glob is not None and glob.get("debug"):
            import traceback

            traceback.print_exc()
    sys.stderr.write(f"dockyard-runtime: {msg}\n")
    _log(glob, "error", msg)
    return code
