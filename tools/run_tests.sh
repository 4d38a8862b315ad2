#!/usr/bin/env bash
# Quick start, command 2: install (first run only) and run the test suite on the CPU.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh tests/ops -x`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$repo/tools/setup_env.sh" | tail -n 1)
cd "$repo"
exec "$py" -m pytest -q "$@"
