"""What one load run is: where, what, how hard and for how long, validated up front."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from batchery.errors import ConfigError

MAX_RATE = 100_000.0
"""The most arrivals per second the open-loop scheduler will time; one process sends fewer, whatever the server."""


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One measurement: where, what, how hard and for how long. `rate` and `arrivals` None mean closed loop.

    `arrivals` (open loop): intended send times in seconds from the start; the run ends with the last one, and
    the first `warmup` seconds of it are sent but not measured. `deadline_ms`: answers slower than this do not
    count as goodput. `headers` go with every request.
    """

    url: str
    bodies: Sequence[bytes]
    connections: int = 16
    rate: float | None = None
    duration: float = 10.0
    warmup: float = 1.0
    timeout: float = 30.0
    max_requests: int | None = None
    arrivals: Sequence[float] | None = None
    headers: Mapping[str, str] | None = None
    deadline_ms: float | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(
                f"the URL must look like http://host:port/path, not {self.url!r} (https is not supported)"
            )
        if not self.bodies:
            raise ConfigError("there are no request bodies; give a payload file with one JSON body per line")
        if self.connections < 1:
            raise ConfigError(f"connections must be >= 1, not {self.connections}")
        if self.rate is not None and not 0 < self.rate <= MAX_RATE:
            raise ConfigError(
                f"the arrival rate must be > 0 and at most {MAX_RATE:,.0f} requests/s (what one client process "
                f"can time), not {self.rate:g}; for more load, run several clients"
            )
        if not (_finite(self.duration) > 0 and _finite(self.warmup) >= 0 and _finite(self.timeout) > 0):
            raise ConfigError("duration and timeout must be finite numbers > 0 seconds and warmup a finite one >= 0")
        if self.max_requests is not None and self.max_requests < 1:
            raise ConfigError(f"max_requests must be >= 1, not {self.max_requests}")
        if self.arrivals is not None:
            self._check_arrivals(self.arrivals)
        if self.deadline_ms is not None and not _finite(self.deadline_ms) > 0:
            raise ConfigError(f"the goodput deadline must be a finite number > 0 ms, not {self.deadline_ms}")

    def _check_arrivals(self, arrivals: Sequence[float]) -> None:
        if self.rate is not None:
            raise ConfigError("give an arrival rate or a trace of arrivals, not both")
        if not arrivals or not arrivals[0] >= 0 or not math.isfinite(arrivals[-1]):
            raise ConfigError("a trace needs at least one arrival, at finite offsets >= 0 seconds")
        if arrivals[-1] < self.warmup:
            raise ConfigError(
                f"the trace ends at {arrivals[-1]:g} s, within the {self.warmup:g} s warm-up, so nothing would be "
                "measured: the warm-up is the start of the trace; pass --warmup 0 or a longer trace"
            )

    @property
    def open_loop(self) -> bool:
        return self.rate is not None or self.arrivals is not None

    @property
    def path(self) -> str:
        parts = urlsplit(self.url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    @property
    def method(self) -> str:
        return "POST"


def _finite(value: float) -> float:
    """`value`, or NaN (which fails every comparison) when it is infinite."""
    return value if math.isfinite(value) else math.nan
