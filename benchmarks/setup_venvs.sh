#!/usr/bin/env bash
# Build one virtual environment per peer server under benchmarks/.venvs/ (gitignored).
# Usage: benchmarks/setup_venvs.sh [peer ...]   (default: all of mosec pytriton litserve fastapi granian)
set -uo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-/root/.pyenv/versions/3.11.7/bin/python3.11}
COMMON="numpy onnxruntime tokenizers orjson"
declare -A PKGS=(
  [mosec]="mosec msgspec"
  [pytriton]="nvidia-pytriton"
  [litserve]="litserve"
  [fastapi]="fastapi uvicorn[standard]"
  [granian]="granian[uvloop] prometheus-client"
)
peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(mosec pytriton litserve fastapi granian)
for peer in "${peers[@]}"; do
  venv=.venvs/$peer
  if [ -x "$venv/bin/python" ] && [ -f "$venv/.ok" ]; then echo "$peer: ready"; continue; fi
  echo "$peer: building $venv"
  if [ "$peer" = granian ]; then
    # granian serves batchery's own ASGI app, so it gets batchery itself (editable) beside it.
    "$PY" -m venv "$venv" && "$venv/bin/pip" install -q -e ".." ${PKGS[$peer]} && touch "$venv/.ok" \
      || echo "$peer: FAILED (see above)"
  else
    "$PY" -m venv "$venv" && "$venv/bin/pip" install -q $COMMON ${PKGS[$peer]} && touch "$venv/.ok" \
      || echo "$peer: FAILED (see above)"
  fi
done
