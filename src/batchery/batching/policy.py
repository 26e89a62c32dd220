"""What the adaptive policy learns online: the cost of a batch by its size, and the arrival rate.

Waiting for more inputs while a lane is free pays off only if the arrivals expected during one batch's fixed
cost outnumber what is queued: with cost(n) = a + c·n and arrival rate λ, the throughput of a batch formed after
waiting w, (n + λw) / (a + c(n + λw) + w), grows with w exactly when λ·a > n. So at low load (λ·a < 1) a lone
request goes at once; under load batches grow until n reaches λ·a, the cap, the delay bound or a deadline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class CostModel:
    """Least-squares fit of batch seconds = fixed + per_item · size over the most recent batches."""

    def __init__(self, window: int = 64) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)
        self.fixed = 0.0
        self.per_item = 0.0

    def observe(self, size: int, seconds: float) -> None:
        self._samples.append((size, seconds))
        self._fit()

    @property
    def trained(self) -> bool:
        return len(self._samples) >= 4

    def cost(self, size: int) -> float:
        """Expected seconds to compute a batch of `size` (0 until trained)."""
        return self.fixed + self.per_item * size

    def _fit(self) -> None:
        samples = self._samples
        count = len(samples)
        mean_x = sum(s for s, _ in samples) / count
        mean_y = sum(t for _, t in samples) / count
        var_x = sum((s - mean_x) ** 2 for s, _ in samples)
        if var_x == 0:  # every batch had the same size: attribute it all to per-item cost
            self.fixed, self.per_item = 0.0, mean_y / max(mean_x, 1.0)
            return
        slope = sum((s - mean_x) * (t - mean_y) for s, t in samples) / var_x
        slope = max(slope, 0.0)
        self.per_item = slope
        self.fixed = max(mean_y - slope * mean_x, 0.0)


class ArrivalRate:
    """Exponentially weighted arrival rate in items per second, decaying over `half_life` seconds."""

    def __init__(self, half_life: float = 0.5) -> None:
        self._half_life = half_life
        self._rate = 0.0
        self._last: float | None = None

    def observe(self, now: float, count: int = 1) -> None:
        if self._last is None:
            self._last = now
            return
        elapsed = max(now - self._last, 1e-6)
        self._last = now
        decay = 0.5 ** (elapsed / self._half_life)
        self._rate = self._rate * decay + (1 - decay) * (count / elapsed)

    def rate(self, now: float) -> float:
        if self._last is None:
            return 0.0
        return float(self._rate * 0.5 ** (max(now - self._last, 0.0) / self._half_life))


class ReturningClients:
    """Inputs just answered whose clients are expected to send their next one at once (a closed loop), and how
    often that held: a pipeline stage's inputs, or an open-loop load's, do not come back, and waiting for them
    would only idle a lane. Expected back within a window after their answer; expected at all only while at
    least half of them came back in time (an exponentially weighted share, updated as each window closes).
    """

    def __init__(self, weight: float = 0.2) -> None:
        self._weight = weight
        self._pending = 0
        self._answered = 0
        self.until = 0.0
        self.share_back = 1.0

    def answered(self, count: int, now: float, window: Callable[[int], float]) -> None:
        """`count` inputs were just answered; they are expected back within `window(pending)` seconds."""
        if now >= self.until:
            self._close()
        self._pending += count
        self._answered += count
        self.until = now + window(self._pending)

    def arrived(self, count: int, now: float) -> None:
        """`count` new inputs arrived: answered clients coming back, if still within their window."""
        if now < self.until:
            self._pending = max(0, self._pending - count)

    def expected(self, now: float) -> int:
        """How many answered inputs are still expected back now (0 once the window is over, or while the
        clients have stopped coming back)."""
        if now >= self.until or self.share_back < 0.5:
            return 0
        return self._pending

    def _close(self) -> None:
        if self._answered:
            back = (self._answered - self._pending) / self._answered
            self.share_back += self._weight * (back - self.share_back)
        self._pending = self._answered = 0


def worth_waiting(queued: int, cap: int, fixed_cost: float, rate: float) -> bool:
    """True when waiting for more inputs raises throughput: λ·a > n, and the batch is not full."""
    return queued < cap and rate * fixed_cost > queued
