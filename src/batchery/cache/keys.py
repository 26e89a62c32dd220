"""Cache keys: a hash of the protocol, model name, model version and the canonical request."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

PREFIX = "batchery:cache:"


def canonical_json(value: Any) -> bytes:
    """`value` as JSON with sorted object keys, so requests that differ only in key order share an entry."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def cache_key(namespace: str, model: str, version: str, canonical: bytes) -> str:
    """A key naming one response: `namespace` (the protocol) keeps adapters' differently shaped bodies apart."""
    digest = hashlib.blake2b(f"{namespace}\0{model}\0{version}\0".encode(), digest_size=20)
    digest.update(canonical)
    return PREFIX + digest.hexdigest()
