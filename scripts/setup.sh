#!/usr/bin/env bash
# Set up a Debian 12 machine for dockyard, as root: the packages the tests and
# the demo need (the reference runtimes and daemons among them), and the
# project's virtualenv in .venv. Idempotent: work already done is skipped, so a
# second run takes about a second.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

PACKAGES=(
    busybox-static     # the rootfs of every test container
    runc crun          # reference OCI runtimes
    containerd         # reference supervisor, ctr, containerd-shim-runc-v2
    docker.io          # reference engine (dockerd) and the docker CLI
    iptables iproute2  # networking tools the stack and the tests use
    libseccomp2        # seccomp filters are loaded through it
    util-linux         # unshare, nsenter, mount
    procps             # ps, for looking at what runs
    time               # GNU time: peak RSS of a runtime in the benchmark
    docker-registry    # a real OCI distribution registry, started by the image tests
    skopeo umoci       # reference image tools: copy into registries, unpack OCI layouts
    openssl apache2-utils  # TLS certificates and htpasswd files for the test registry
    pigz zstd          # multi-threaded gzip and zstd, for layers
    python3 python3-venv
    git
)

say() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (sudo bash scripts/setup.sh)" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Install without starting the packaged services (containerd, dockerd): the
    # tests start private instances of their own. policy-rc.d is the Debian way.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    trap 'if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [ "$own_policy" = 1 ]; then
        rm -f "$policy"
        own_policy=0
    fi
else
    say "packages: all installed"
fi

# The virtualenv, with the python3 on PATH; rebuilt if its interpreter is gone.
VENV="$ROOT/.venv"
if [ -d "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "virtualenv broken, recreating"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv .venv with $(command -v python3) ($(python3 --version 2>&1))"
    python3 -m venv "$VENV"
fi

# Reinstall only when the project's metadata changed (or never installed).
STAMP="$VENV/.dockyard-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$want" != "$have" ] || ! "$VENV/bin/python" -c 'import dockyard' >/dev/null 2>&1 \
    || [ ! -x "$VENV/bin/dockyard-runtime" ] || [ ! -x "$VENV/bin/pytest" ]; then
    say "installing dockyard into .venv (pip install -e '.[dev]')"
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    echo "$want" > "$STAMP"
else
    say "virtualenv: up to date"
fi

# The per-container commands (the runtime is started several times per
# container) get launchers that skip site processing: dockyard.launcher.
# Written every time (each atomically, in milliseconds): pip's install puts
# its own scripts there, and a changed template reaches existing checkouts.
say "writing fast launchers into .venv/bin"
"$VENV/bin/python" -m dockyard.launcher "$VENV/bin" >/dev/null

say "setup done"
