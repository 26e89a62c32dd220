#!/usr/bin/env bash
# One command for the whole suite: builds the peers' venvs if needed, then measures.
#   benchmarks/run.sh            full run (median of 3)
#   benchmarks/run.sh --quick    development pass
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'rm -f /tmp/batchery-bench.lock' EXIT INT TERM
benchmarks/setup_venvs.sh
exec_py=${PYTHON:-.venv/bin/python}
"$exec_py" -m benchmarks.suite "$@"
