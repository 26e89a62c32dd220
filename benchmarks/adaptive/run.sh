#!/usr/bin/env bash
# One command for the adaptive batching benchmark (issue 8); arguments go to `python -m benchmarks.adaptive`.
set -euo pipefail
cd "$(dirname "$0")/../.."
trap 'grep -qs "benchmarks.adaptive" /tmp/batchery-bench.lock && rm -f /tmp/batchery-bench.lock' EXIT INT TERM
"${PYTHON:-.venv/bin/python}" -m benchmarks.adaptive "$@"
