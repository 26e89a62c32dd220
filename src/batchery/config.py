"""Server settings, declared once: CLI flags and `BATCHERY_*` environment variables are derived from them."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batchery.errors import ConfigError


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _secret(default: Any, help: str) -> Any:
    """A setting kept out of `repr()`, so keys and passwords never reach a log line."""
    return field(default=default, repr=False, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server reads at start-up. Precedence: explicit argument > environment > default."""

    host: str = _setting("127.0.0.1", "interface to listen on")
    port: int = _setting(8000, "TCP port to listen on (0 picks a free one)")
    log_level: str = _setting("info", "debug, info, warning or error")
    max_body_bytes: int = _setting(8 * 1024 * 1024, "largest request body accepted (413 above)")
    max_items: int = _setting(256, "most inputs in one request (413 above)")
    drain_seconds: float = _setting(30.0, "on shutdown, how long queued and running requests may take to finish")
    load_timeout_seconds: float = _setting(
        600.0, "how long a model's setup and warm-up may take, at start-up or in a reload (0: no limit)"
    )
    workers: int = _setting(0, "worker lanes per model (0: the model's own setting, else one per core)")
    watch: bool = _setting(False, "reload a model when the file it was loaded from changes (checked every second)")
    dashboard: bool = _setting(True, "serve the live dashboard at GET /dashboard (its data needs the admin key)")
    trusted_proxies: str = _setting("", "proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For is believed")
    allow_clients: str = _setting("", "if set, only these client IPs or CIDRs are served (probes stay open)")
    # Hostile clients (docs/reliability.md): bounds on what one connection may cost.
    max_header_bytes: int = _setting(64 * 1024, "largest request line plus headers (431 above)")
    header_timeout_seconds: float = _setting(10.0, "a request head must arrive within this of its first byte (408)")
    body_timeout_seconds: float = _setting(60.0, "a request body must arrive within this of its head (408)")
    send_timeout_seconds: float = _setting(
        60.0, "a client that reads none of its response for this long is disconnected and the response dropped"
    )
    keep_alive_seconds: int = _setting(5, "an idle keep-alive connection is closed after this")
    max_connections: int = _setting(10_000, "connections (or requests) above this get 503 at once (0: no limit)")
    cors_origins: str = _setting("", "comma-separated origins allowed by CORS, or * (empty: CORS off)")
    # Production hardening (docs/production.md): every one of these is off or safe by default.
    api_keys: str = _secret("", "comma-separated API keys; with none here or in api_keys_file, auth is off")
    api_keys_file: str = _setting("", "file with one API key per line (# comments allowed)")
    admin_api_key: str = _secret("", "the key for /admin routes; with none set, /admin is refused")
    metrics: str = _setting("open", "GET /metrics: open (no key needed), auth (needs an API key) or off")
    access_log: str = _setting("off", "access log per request: off, text or json")
    request_timeout_ms: float = _setting(
        0.0, "default deadline per request (0: none); X-Request-Timeout-Ms shortens it"
    )
    rate_limit: float = _setting(0.0, "requests per second per API key, or per client address without auth (0: off)")
    rate_limit_burst: int = _setting(0, "token bucket size: requests allowed at once (0: rate_limit, at least 1)")
    rate_limit_backend: str = _setting("memory", "memory (per process) or redis (shared by replicas, needs redis_url)")
    cache: str = _setting("", "response cache: memory or redis for every model, or per model: 'a=memory,b=redis'")
    cache_max_bytes: int = _setting(64 * 1024 * 1024, "memory cache size bound (keys and responses, in bytes)")
    cache_max_value_bytes: int = _setting(1024 * 1024, "responses larger than this are not cached (bytes)")
    cache_ttl_seconds: float = _setting(300.0, "how long a cached response is served")
    redis_url: str = _secret("", "redis://host:port/db for the redis cache and rate limit backends")
    redis_timeout_ms: float = _setting(50.0, "a Redis call slower than this is abandoned and Redis bypassed for 1 s")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_type(f.name, getattr(self, f.name))
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, not {self.port}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, not {self.log_level!r}")
        for name in ("max_body_bytes", "max_items"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.workers < 0:
            raise ConfigError("workers must be >= 0")
        for name in ("drain_seconds", "load_timeout_seconds"):
            if not 0 <= getattr(self, name) < math.inf:  # also refuses NaN
                raise ConfigError(f"{name} must be a finite number >= 0, not {getattr(self, name)}")
        for name in (
            "max_header_bytes",
            "header_timeout_seconds",
            "body_timeout_seconds",
            "send_timeout_seconds",
            "keep_alive_seconds",
        ):
            if not getattr(self, name) > 0:  # `not >` also refuses NaN
                raise ConfigError(f"{name} must be > 0")
        if self.max_connections < 0:
            raise ConfigError("max_connections must be >= 0 (0: no limit)")
        self._validate_production()

    def _validate_production(self) -> None:
        choices: dict[str, tuple[str, ...]] = {
            "metrics": ("open", "auth", "off"),
            "access_log": ("off", "text", "json"),
        }
        choices["rate_limit_backend"] = ("memory", "redis")
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("request_timeout_ms", "rate_limit", "rate_limit_burst", "cache_ttl_seconds"):
            if not 0 <= getattr(self, name) < math.inf:  # also refuses NaN
                raise ConfigError(f"{name} must be a finite number >= 0, not {getattr(self, name)!r}")
        if not 0 < self.redis_timeout_ms < math.inf or self.cache_max_bytes < 1 or self.cache_max_value_bytes < 1:
            raise ConfigError("redis_timeout_ms, cache_max_bytes and cache_max_value_bytes must be > 0")
        uses_redis = self.rate_limit_backend == "redis" and self.rate_limit > 0
        uses_redis = uses_redis or "redis" in cache_backends(self.cache).values()
        if uses_redis and not self.redis_url:
            raise ConfigError("a redis backend is selected but redis_url is empty; set BATCHERY_REDIS_URL")

    def cache_backend(self, model: str) -> str | None:
        """The cache backend ("memory" or "redis") for `model`, or None when its responses are not cached."""
        backends = cache_backends(self.cache)
        backend = backends.get(model, backends.get("*", "off"))
        return None if backend == "off" else backend

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


#: `BATCHERY_*` variables read outside `Settings`: the model cache folder; per-model settings have their prefix.
_OTHER_VARIABLES = frozenset({"BATCHERY_CACHE_DIR"})
_MODEL_PREFIX = "BATCHERY_MODEL_"


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """`BATCHERY_*` variables that name no setting, each with the nearest setting's variable when one is close
    (`BATCHERY_API_KEY` -> `BATCHERY_API_KEYS`): a misspelt one would otherwise be ignored without a word, and
    a misspelt `BATCHERY_API_KEYS` leaves the server open."""
    import difflib

    env = os.environ if env is None else env
    known = {env_name(f.name) for f in dataclasses.fields(Settings)} | _OTHER_VARIABLES
    lines = []
    for name in sorted(env):
        if not name.startswith("BATCHERY_") or name in known or name.startswith(_MODEL_PREFIX):
            continue
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        lines.append(f"{name} (did you mean {near[0]}?)" if near else name)
    return lines


def cache_backends(spec: str) -> dict[str, str]:
    """Parse the `cache` setting: "memory" means every model ("*"); "a=memory,b=off" names models."""
    backends: dict[str, str] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        model, _, backend = part.rpartition("=")
        backend = backend.strip()
        if backend not in ("memory", "redis", "off"):
            raise ConfigError(f"cache: {part!r} names no backend; use memory, redis or off, as in 'mymodel=memory'")
        backends[model.strip() or "*"] = backend
    return backends


def env_name(field_name: str) -> str:
    return f"BATCHERY_{field_name.upper()}"


def yield_to_env(values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`values` (a config file's `[server]` table) less the settings a `BATCHERY_*` variable sets: env beats a file."""
    env = os.environ if env is None else env
    return {key: value for key, value in values.items() if env_name(key) not in env}


#: What a setting's type is called in messages.
_KIND_NAMES: dict[type[Any], str] = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_type(name: str, value: Any) -> None:
    """Refuse a value of the wrong type for the setting `name`: `port = "8112"` or `watch = "no"` in a file.

    Strings are never read as booleans ("false" would be truthy) and booleans never count as numbers.
    """
    kind: type[Any] = type(Settings.__dataclass_fields__[name].default)
    if isinstance(value, bool):
        ok = kind is bool
    elif kind is float:
        ok = isinstance(value, (int, float))
    else:
        ok = isinstance(value, kind)
    if not ok:
        hint = "; write it without quotes" if isinstance(value, str) else ""
        raise ConfigError(f"{name} must be {_KIND_NAMES[kind]}, not {value!r}{hint}")


def parse_bool(raw: str) -> bool:
    """A boolean from text, strictly: 1/true/yes/on or 0/false/no/off (any case); anything else is a ValueError."""
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not a boolean: use true or false")


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind: type[Any] = type(f.default)
    try:
        if kind is bool:
            return parse_bool(raw)
        return kind(raw)
    except ValueError as exc:
        hint = "true or false" if kind is bool else _KIND_NAMES[kind]
        raise ConfigError(f"{env_name(f.name)}={raw!r} is not valid: use {hint}") from exc
