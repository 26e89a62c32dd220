"""A model for tests/test_shutdown.py, loaded by a `batchery serve` subprocess: it records every input it computed."""

from __future__ import annotations

import os
import time
from typing import Any

from batchery.model import Model


class Recorder(Model):
    """Echoes after a short sleep ($BATCHERY_TEST_BATCH_SECONDS, default 0.05), appending each computed input to
    the file named by $BATCHERY_TEST_RECORD."""

    name = "recorder"
    example = "warm-up"
    workers = 1
    max_batch_size = 4

    def setup(self, device: str) -> None:
        self.path = os.environ["BATCHERY_TEST_RECORD"]
        self.seconds = float(os.environ.get("BATCHERY_TEST_BATCH_SECONDS", "0.05"))

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(self.seconds)
        computed = [item for item in batch if item != "warm-up"]
        if computed:
            with open(self.path, "a") as record:
                record.write("".join(f"{item}\n" for item in computed))
        return list(batch)
