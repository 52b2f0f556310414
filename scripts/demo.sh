#!/usr/bin/env bash
# The dockyard demo, as root: set up the machine, build a small busybox OCI
# image (from Debian's busybox-static), start dockyard-supervisor, and with
# containerd's own client `ctr` import the image and run a container from it:
# the supervisor starts dockyard's shim, which runs dockyard-runtime.
# Cleans up after itself.
#
#   sudo bash scripts/demo.sh
#
# Grows with the stack: the engine and the CLI join here as they arrive.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

bash scripts/setup.sh

RUNTIME=$ROOT/.venv/bin/dockyard-runtime
PY=$ROOT/.venv/bin/python

WORK=$(mktemp -d /tmp/dockyard-demo.XXXXXX)
ID=dockyard-demo-$$

SUPERVISOR=
SHIM_DIR_EXISTED=0
[ -d /run/containerd/s ] && SHIM_DIR_EXISTED=1
# the shim runs dockyard-runtime with its state in /run/dockyard/runtime/<namespace>
RUNTIME_DIR_EXISTED=0
[ -d /run/dockyard/runtime/demo ] && RUNTIME_DIR_EXISTED=1
cleanup() {
    if [ -n "$SUPERVISOR" ]; then
        ctr --address "$WORK/supervisor.sock" --namespace demo tasks kill -s SIGKILL "$ID" \
            >/dev/null 2>&1 || true
        ctr --address "$WORK/supervisor.sock" --namespace demo tasks delete -f "$ID" \
            >/dev/null 2>&1 || true
        ctr --address "$WORK/supervisor.sock" --namespace demo containers rm "$ID" \
            >/dev/null 2>&1 || true
        kill "$SUPERVISOR" 2>/dev/null || true
        wait "$SUPERVISOR" 2>/dev/null || true
    fi
    if [ "$SHIM_DIR_EXISTED" = 0 ]; then rmdir /run/containerd/s /run/containerd 2>/dev/null || true; fi
    if [ "$RUNTIME_DIR_EXISTED" = 0 ]; then
        rmdir /run/dockyard/runtime/demo /run/dockyard/runtime /run/dockyard 2>/dev/null || true
    fi
    if grep -q " $WORK[/ ]" /proc/self/mountinfo; then
        echo "demo: something is still mounted under $WORK; leaving it for inspection" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

step "runtime: $RUNTIME"
"$RUNTIME" --version

step "building a busybox OCI image from Debian's busybox-static (no internet needed)"
"$PY" - "$WORK/busybox.tar" "$ROOT" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[2])
from tests.images import build_image_archive

archive = build_image_archive(Path(sys.argv[1]), "docker.io/library/busybox:demo")
print(f"{archive.path.name}: {archive.path.stat().st_size} bytes, {archive.ref}")
EOF

step "dockyard-supervisor: starting it with a private root, state and socket"
SOCK=$WORK/supervisor.sock
"$PY" -m dockyard.supervisor.main --root "$WORK/root" --state "$WORK/state" \
    --address "$SOCK" >"$WORK/supervisor.log" 2>&1 &
SUPERVISOR=$!
for _ in $(seq 100); do
    if [ -S "$SOCK" ] && ctr --address "$SOCK" version >/dev/null 2>&1; then break; fi
    if ! kill -0 "$SUPERVISOR" 2>/dev/null; then
        echo "demo: the supervisor exited:" >&2
        tail -20 "$WORK/supervisor.log" >&2
        exit 1
    fi
    sleep 0.1
done
CTR=(ctr --address "$SOCK" --namespace demo)
"${CTR[@]}" version | sed -n '/Server/,$p'

step "ctr images import (containerd's own client, talking to dockyard-supervisor)"
"${CTR[@]}" images import "$WORK/busybox.tar"
"${CTR[@]}" images ls

step "ctr run --rm: dockyard-supervisor -> containerd-shim-dockyard-v2 -> dockyard-runtime"
start=$(date +%s%N)
rc=0
"${CTR[@]}" run --rm --runtime io.containerd.dockyard.v2 --fifo-dir "$WORK/fifo" \
    docker.io/library/busybox:demo "$ID" sh -c \
    'echo "hello from inside the container"; echo "hostname: $(hostname)";
     echo "id: $(id)"; echo "uname: $(uname -srm)"; echo "pid: $$";
     echo "mounts: $(wc -l < /proc/self/mounts)"' || rc=$?
end=$(date +%s%N)
echo "exit status $rc, $(((end - start) / 1000000)) ms"
if [ "$rc" -ne 0 ]; then
    echo "demo: the container did not run cleanly; supervisor log:" >&2
    tail -30 "$WORK/supervisor.log" >&2
    exit "$rc"
fi

step "left behind: $("${CTR[@]}" containers ls --quiet | wc -l) containers, $("${CTR[@]}" tasks ls --quiet 2>/dev/null | wc -l) tasks"
step "demo done"
