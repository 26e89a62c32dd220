"""Server settings, declared once: CLI flags and `BATCHERY_*` environment variables are derived from them."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batchery.errors import ConfigError


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server reads at start-up. Precedence: explicit argument > environment > default."""

    host: str = _setting("127.0.0.1", "interface to listen on")
    port: int = _setting(8000, "TCP port to listen on (0 picks a free one)")
    log_level: str = _setting("info", "debug, info, warning or error")
    max_body_bytes: int = _setting(8 * 1024 * 1024, "largest request body accepted (413 above)")
    max_items: int = _setting(256, "most inputs in one request (413 above)")
    drain_seconds: float = _setting(30.0, "on shutdown, how long queued and running requests may take to finish")
    workers: int = _setting(0, "worker lanes per model (0: the model's own setting, else one per core)")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, not {self.port}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, not {self.log_level!r}")
        for name in ("max_body_bytes", "max_items"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.drain_seconds < 0 or self.workers < 0:
            raise ConfigError("drain_seconds and workers must be >= 0")

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from `BATCHERY_<NAME>` variables, then `overrides` (None values are ignored)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(env_name(f.name))
            if raw is not None:
                values[f.name] = _parse(f, raw)
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
        return cls(**values)


def env_name(field_name: str) -> str:
    return f"BATCHERY_{field_name.upper()}"


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind: type[Any] = type(f.default)
    try:
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{env_name(f.name)}={raw!r} is not a valid {kind.__name__}") from exc
