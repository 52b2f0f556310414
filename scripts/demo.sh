#!/usr/bin/env bash
# The dockyard demo, as root: set up the machine, build a small busybox OCI
# image (from Debian's busybox-static), import and unpack it with
# dockyard-image, and run a container from it with dockyard-runtime, the way
# containerd's shim or dockerd would run runc. Cleans up after itself.
#
#   sudo bash scripts/demo.sh
#   DOCKYARD_RUNTIME=runc sudo -E bash scripts/demo.sh   # the same with runc
#
# Grows with the stack: the shim, the supervisor, the engine and the CLI join
# here as they arrive.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

bash scripts/setup.sh

RUNTIME=${DOCKYARD_RUNTIME:-$ROOT/.venv/bin/dockyard-runtime}
PY=$ROOT/.venv/bin/python

WORK=$(mktemp -d /tmp/dockyard-demo.XXXXXX)
BUNDLE=$WORK/bundle
STATE=$WORK/state
ID=dockyard-demo-$$

cleanup() {
    "$RUNTIME" --root "$STATE" delete --force "$ID" >/dev/null 2>&1 || true
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

step "dockyard-image: import it into a store, then unpack it as the bundle's rootfs"
IMAGE_TOOL=$ROOT/.venv/bin/dockyard-image
"$IMAGE_TOOL" --root "$WORK/images" import "$WORK/busybox.tar"
"$IMAGE_TOOL" --root "$WORK/images" ls
"$IMAGE_TOOL" --root "$WORK/images" unpack busybox:demo "$BUNDLE/rootfs"
echo "rootfs: $(find "$BUNDLE/rootfs" | wc -l) entries"

step "generating config.json with '$(basename "$RUNTIME") spec', made non-terminal"
"$RUNTIME" spec --bundle "$BUNDLE"
"$PY" - "$BUNDLE/config.json" <<'EOF'
import json
import sys

path = sys.argv[1]
with open(path) as f:
    config = json.load(f)
config["process"]["terminal"] = False
config["process"]["args"] = [
    "sh",
    "-c",
    'echo "hello from inside the container"; echo "hostname: $(hostname)";'
    ' echo "id: $(id)"; echo "uname: $(uname -srm)"; echo "pid: $$";'
    ' echo "mounts: $(wc -l < /proc/self/mounts)"',
]
config["hostname"] = "dockyard-demo"
with open(path, "w") as f:
    json.dump(config, f, indent=2)
print("process.args:", config["process"]["args"][:2], "...")
EOF

step "$(basename "$RUNTIME") run $ID"
start=$(date +%s%N)
rc=0
"$RUNTIME" --root "$STATE" run --bundle "$BUNDLE" "$ID" || rc=$?
end=$(date +%s%N)
echo "exit status $rc, $(((end - start) / 1000000)) ms"
if [ "$rc" -ne 0 ]; then
    echo "demo: the container did not run cleanly" >&2
    exit "$rc"
fi

step "state after run: $("$RUNTIME" --root "$STATE" list --quiet | wc -l) containers left"
step "demo done"
