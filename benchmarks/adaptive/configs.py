"""The batching configurations compared: the adaptive policy (the default), batching off, and a fixed sweep."""

from __future__ import annotations

from dataclasses import dataclass

MODEL = "all-minilm-l6-v2"
_PREFIX = "BATCHERY_MODEL_" + MODEL.upper().replace("-", "_") + "_"
SIZES = (8, 16, 32)
DELAYS_MS = (1.0, 2.0, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class Config:
    """One way to serve the default model: a label and the per-model settings overriding its defaults."""

    label: str
    kind: str  # "adaptive", "off" or "fixed"
    max_batch_size: int | None = None
    max_delay_ms: float | None = None
    #: A checkout's `src` to import batchery from instead of this one (to measure a change side by side).
    src: str | None = None

    def env(self) -> dict[str, str]:
        """BATCHERY_MODEL_* variables for `batchery serve` (none for the default, adaptive)."""
        if self.kind == "adaptive":
            return {"PYTHONPATH": self.src} if self.src else {}
        env = {_PREFIX + "BATCHING": "fixed", _PREFIX + "MAX_BATCH_SIZE": str(self.max_batch_size)}
        if self.max_delay_ms is not None:
            env[_PREFIX + "MAX_DELAY_MS"] = f"{self.max_delay_ms:g}"
        return env


ADAPTIVE = Config("adaptive", "adaptive")
# Batch size 1 flushes every input at once whatever the delay: batching off.
OFF = Config("off", "off", max_batch_size=1, max_delay_ms=0.0)


def candidate(src: str) -> Config:
    """The adaptive policy as implemented in the checkout whose `src` directory is `src`."""
    return Config(f"adaptive @ {src}", "adaptive", src=src)


def fixed(size: int, delay_ms: float) -> Config:
    return Config(f"fixed b{size} d{delay_ms:g}", "fixed", size, delay_ms)


def sweep(spec: str = "all") -> list[Config]:
    """The fixed configurations: "all" (sizes x delays), or a list like "8x1,32x5" (size x delay ms)."""
    if spec == "all":
        return [fixed(size, delay) for size in SIZES for delay in DELAYS_MS]
    configs = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        size, sep, delay = part.partition("x")
        if not sep:
            raise ValueError(f"fixed configuration {part!r} must look like SIZExDELAY_MS, e.g. 16x2")
        configs.append(fixed(int(size), float(delay)))
    return configs
