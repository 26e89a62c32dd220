"""Arrival traces for open-loop load: when each request is meant to be sent, in seconds from the start of a run.

A trace is either read from a file (one offset per line) or generated: `bursty` alternates bursts and quiet
periods, each a Poisson process at its own rate, from a fixed seed, so every server sees the same arrivals.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

from batchery.bench.spec import MAX_RATE
from batchery.errors import ConfigError

_BURSTY_KEYS = {"high": float, "low": float, "on": float, "off": float, "seed": int, "duration": float}
_MAX_ARRIVALS = 10_000_000  # a trace is held in memory: about 80 MB of offsets at most


def bursty(high: float, low: float, on: float, off: float, duration: float, seed: int = 0) -> list[float]:
    """Poisson arrivals at `high`/s for `on` s, then `low`/s for `off` s, repeated for `duration` s (seeded)."""
    if not all(map(math.isfinite, (high, low, on, off, duration))) or not (
        high > 0 and low >= 0 and on > 0 and off >= 0 and duration > 0
    ):
        raise ConfigError("a bursty trace needs finite high > 0, low >= 0, on > 0, off >= 0 and duration > 0")
    if max(high, low) > MAX_RATE:
        raise ConfigError(f"a bursty trace's rates must be at most {MAX_RATE:,.0f} req/s (what one client can time)")
    expected = (high * on + low * off) / (on + off) * duration
    if expected > _MAX_ARRIVALS:
        raise ConfigError(
            f"the bursty trace would hold about {expected:,.0f} arrivals, more than {_MAX_ARRIVALS:,}; "
            "shorten its duration or lower its rates"
        )
    rng = random.Random(seed)
    offsets: list[float] = []
    period = on + off
    cycle = 0.0
    while cycle < duration:
        for start, length, rate in ((cycle, on, high), (cycle + on, off, low)):
            if rate <= 0 or length <= 0:
                continue
            at = start + rng.expovariate(rate)
            while at < min(start + length, duration):
                offsets.append(at)
                at += rng.expovariate(rate)
        cycle += period
    return offsets


def read(path: Path) -> list[float]:
    """Offsets from `path`, one number of seconds per line (blank lines and `#` comments skipped), sorted."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the trace file {path}: {exc.strerror}; check the path") from exc
    offsets: list[float] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            offsets.append(float(line))
        except ValueError:
            raise ConfigError(f"{path}:{number}: {line!r} is not a number of seconds: one offset a line") from None
    return check(sorted(offsets), str(path))


def parse(text: str) -> list[float]:
    """A trace from the CLI: `bursty:high=600,low=60,on=0.5,off=1.5,duration=10,seed=1`, or a file path."""
    if not text.startswith("bursty:"):
        return read(Path(text))
    values: dict[str, float] = {"seed": 0, "duration": 10.0}
    for part in text[len("bursty:") :].split(","):
        key, _, raw = part.partition("=")
        key = key.strip()
        if key not in _BURSTY_KEYS:
            raise ConfigError(f"unknown bursty trace setting {key!r}; use {', '.join(_BURSTY_KEYS)}")
        try:
            values[key] = _BURSTY_KEYS[key](raw)
        except ValueError:
            raise ConfigError(f"bursty trace setting {key} must be a number, not {raw!r}") from None
    missing = [key for key in ("high", "low", "on", "off") if key not in values]
    if missing:
        raise ConfigError(f"the bursty trace misses {', '.join(missing)}: e.g. bursty:high=600,low=60,on=0.5,off=1.5")
    offsets = bursty(
        values["high"], values["low"], values["on"], values["off"], values["duration"], int(values["seed"])
    )
    return check(offsets, text)


def check(offsets: list[float], where: str) -> list[float]:
    """`offsets` if non-empty, finite, non-negative and in order; else a ConfigError naming `where`."""
    if not offsets:
        raise ConfigError(f"the trace {where} has no arrivals; raise its rates or its duration")
    if not all(map(math.isfinite, offsets)):
        raise ConfigError(f"the trace {where} holds an offset that is not a finite number of seconds")
    if offsets[0] < 0 or any(b < a for a, b in itertools.pairwise(offsets)):
        raise ConfigError(f"the trace {where} must hold non-negative offsets in increasing order")
    return offsets
