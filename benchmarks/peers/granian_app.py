"""batchery's ASGI app for granian (noop workload): `granian --interface asgi granian_app:app`.

Built like `batchery serve benchmarks/echo_model.py:Echo` does it, with default settings; only the transport
differs, so noop numbers compare uvicorn (uvloop + httptools) with granian.
"""

from __future__ import annotations

import sys
from pathlib import Path

from batchery import Engine
from batchery.app.factory import create_app

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from echo_model import Echo

app = create_app(Engine([Echo()]))
