"""``list`` and ``ps``: the containers under --root, the processes of one."""

from __future__ import annotations

import json
import os
import pwd
import subprocess

from dockyard.errors import FailedPrecondition, InvalidArgument
from dockyard.runtime import state as st


def list_containers(root: str, fmt: str, quiet: bool) -> None:
    if fmt not in ("table", "json"):
        raise InvalidArgument(f"invalid --format {fmt!r}: table or json")
    items = []
    for cid in st.list_ids(root):
        try:
            s = st.load(root, cid)
        except Exception:
            continue
        o = s.oci_state()
        owner = _owner(os.path.join(root, cid))
        items.append(
            {
                "ociVersion": o["ociVersion"],
                "id": cid,
                "pid": o["pid"],
                "status": o["status"],
                "bundle": o["bundle"],
                "rootfs": o["rootfs"],
                "created": o["created"],
                "annotations": o.get("annotations") or {},
                "owner": owner,
            }
        )
    if quiet:
        for i in items:
            print(i["id"])
        return
    if fmt == "json":
        print(json.dumps(items))
        return
    rows = [["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]]
    rows += [
        [i["id"], str(i["pid"]), i["status"], i["bundle"], i["created"], i["owner"]] for i in items
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _owner(path: str) -> str:
    try:
        return pwd.getpwuid(os.stat(path).st_uid).pw_name
    except (KeyError, OSError):
        return ""


def container_pids(s: st.ContainerState) -> list[int]:
    cg = s.cgroup()
    return sorted(cg.pids()) if cg.exists() else []


def ps(root: str, cid: str, fmt: str, ps_args: list[str]) -> None:
    s = st.load(root, cid)
    if s.status() == st.STOPPED:
        raise FailedPrecondition(f"container {cid!r} is not running")
    pids = container_pids(s)
    if fmt == "json":
        print(json.dumps(pids))
        return
    if fmt != "table":
        raise InvalidArgument(f"invalid --format {fmt!r}: table or json")
    out = subprocess.run(["ps", *(ps_args or ["-ef"])], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    if not lines:
        return
    header = lines[0]
    cols = header.split()
    if "PID" not in cols:
        raise InvalidArgument("ps: the ps options must show a PID column")
    idx = cols.index("PID")
    print(header)
    wanted = set(pids)
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > idx and fields[idx].isdigit() and int(fields[idx]) in wanted:
            print(line)
