#!/usr/bin/env bash
# Install what the tests need (scripts/setup.sh), then lint, type-check and run
# every test under tests/. Exits non-zero if any step fails; a pytest run that
# collects no test counts as a failure. Extra arguments go to pytest.
#
#   sudo bash scripts/test.sh                      # everything
#   sudo bash scripts/test.sh tests/compat -k runc # a subset
#   DOCKYARD_TEST_RUNTIME=runc sudo -E bash scripts/test.sh tests/runtime
set -uo pipefail

cd "$(dirname "$0")/.."
VENV=.venv/bin

declare -a names=() results=()
failed=0

step() {
    local name=$1
    shift
    printf '\n==> %s: %s\n' "$name" "$*"
    local start=$SECONDS rc=0
    "$@" || rc=$?
    local took=$((SECONDS - start))
    names+=("$name")
    if [ "$rc" -eq 0 ]; then
        results+=("ok      (${took}s)")
    else
        results+=("FAILED  (exit $rc, ${took}s)")
        failed=1
    fi
    return "$rc"
}

run_pytest() {
    local rc=0
    "$VENV/pytest" "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "pytest collected no tests: that is a failure here" >&2
    fi
    return "$rc"
}

if ! step setup bash scripts/setup.sh; then
    echo "setup failed: not running the checks" >&2
    exit 1
fi
step "ruff check" "$VENV/ruff" check .
step "ruff format" "$VENV/ruff" format --check .
step mypy "$VENV/mypy"
step pytest run_pytest "$@"

printf '\n==> summary\n'
for i in "${!names[@]}"; do
    printf '    %-12s %s\n' "${names[$i]}" "${results[$i]}"
done
if [ "$failed" -ne 0 ]; then
    printf '==> FAILED\n'
    exit 1
fi
printf '==> all passed\n'
