"""The `noop` workload's model for batchery: returns each input unchanged (pure serving overhead).

batchery serve benchmarks/echo_model.py:Echo
"""

from __future__ import annotations

from typing import Any

from batchery import Model


class Echo(Model):
    """Every input comes back as it went in; batching settings are batchery's defaults."""

    name = "echo"
    example = "warm-up"

    def predict(self, batch: list[Any]) -> list[Any]:
        return batch
