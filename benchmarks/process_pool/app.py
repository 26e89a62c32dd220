"""Serve the pre-processing pipeline with one pool layout: python -m benchmarks.process_pool.app KIND WORKERS PORT."""

from __future__ import annotations

import sys

from batchery.pipeline import CpuStep, Sequential
from batchery.server import serve
from benchmarks.process_pool.work import Identity, preprocess


def main() -> None:
    kind, workers, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pipeline = Sequential("prep", [CpuStep(preprocess, kind=kind, workers=workers), Identity()])
    serve(pipeline, port=port, log_level="warning")


if __name__ == "__main__":
    main()
