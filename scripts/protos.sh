#!/usr/bin/env bash
# Regenerate the Python code of dockyard's .proto files (dockyard/api/**):
# *_pb2.py, *_pb2.pyi and, for files that define a service, *_pb2_grpc.py.
# The generated files are committed; run this after editing a .proto.
#
#   bash scripts/protos.sh           # regenerate in place
#   bash scripts/protos.sh OUTDIR    # write the generated tree under OUTDIR
#                                    # (the tests compare it with the committed one)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-.}
mkdir -p "$OUT"

# Sorted, so that the protoc command line (and anything it orders by it) is
# the same on every machine.
mapfile -t protos < <(find dockyard/api -name '*.proto' | LC_ALL=C sort)

# Imports are repo-root-relative ("dockyard/api/types/mount.proto"), so the
# modules come out as dockyard.api.types.mount_pb2.
"$PYTHON" -m grpc_tools.protoc -I . \
    --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
    "${protos[@]}"

for proto in "${protos[@]}"; do
    # protoc writes a _pb2_grpc.py for every file; keep it only where there
    # is a service to serve or call.
    if ! grep -qE '^[[:space:]]*service[[:space:]]' "$proto"; then
        rm -f "$OUT/${proto%.proto}_pb2_grpc.py"
    fi
done

# Every directory from dockyard/api down to a generated module is a package.
for proto in "${protos[@]}"; do
    dir=$(dirname "$proto")
    while [ "$dir" != "dockyard" ] && [ "$dir" != "." ]; do
        [ -e "$OUT/$dir/__init__.py" ] || : > "$OUT/$dir/__init__.py"
        dir=$(dirname "$dir")
    done
done
