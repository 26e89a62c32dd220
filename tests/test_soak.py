"""The soak, shortened to about a minute: mixed traffic through the default model on a `batchery serve` process.

The full run is `scripts/soak` (1,000,000 requests, docs/reliability.md). Here: every answer is the expected one
(200, or the deliberate 400, 413 and 422), and after warm-up the server's resident memory, open file descriptors
and threads stay within 5% of their level when warm-up ended.
"""

from __future__ import annotations

import os

import pytest

from long.soak import ServeProcess, drive

REQUESTS = int(os.environ.get("BATCHERY_SOAK_REQUESTS", "6000"))


@pytest.mark.slow
async def test_a_short_soak_answers_everything_as_expected_with_flat_resources() -> None:
    with ServeProcess() as server:
        assert server.process is not None
        report = await drive(server.url, server.process.pid, requests=REQUESTS, every=REQUESTS // 12, connections=16)
    print(f"soak: {report.requests} requests in {report.seconds} s, statuses {dict(report.statuses)}, "
          f"drift {report.drift}")  # fmt: skip
    assert report.requests == REQUESTS
    assert not report.unexpected, report.unexpected
    assert {400, 413, 422} <= set(report.statuses), "the mix lost its deliberate errors"
    for resource, change in report.drift.items():
        assert change <= 0.05, f"{resource} moved {change:.1%} after warm-up: {report.samples}"
