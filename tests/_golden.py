"""Stored request/response examples under tests/golden/<protocol>/, replayed against a real server.

A case is a JSON file: {"about", "request": {"method", "path", "headers"?, "json"? | "text"?, "binary_hex"?},
"response": {"status", "headers"?, "json"? | "text"?, "binary_hex"?}}. "binary_hex" follows the JSON part,
as KServe's binary tensor extension sends it (`Inference-Header-Content-Length` is set from the JSON part).
In expected JSON, the string "<any>" matches any value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from batchery.model import Model

GOLDEN = Path(__file__).resolve().parent / "golden"
ANY = "<any>"


class Letters(Model):
    """A tiny deterministic embedding model: [characters, vowels, spaces] as float32."""

    name = "letters"
    example = "warm up"

    def decode_request(self, item: Any) -> str:
        if not isinstance(item, str):
            raise TypeError(f"expected a string, got {type(item).__name__}")
        return item

    def predict(self, batch: list[str]) -> list[Any]:
        return [np.array([len(t), sum(c in "aeiou" for c in t.lower()), t.count(" ")], dtype=np.float32) for t in batch]


def cases(protocol: str) -> list[Path]:
    return sorted((GOLDEN / protocol).glob("*.json"))


def request_of(case: dict[str, Any]) -> tuple[str, str, dict[str, str], bytes]:
    spec = case["request"]
    headers = dict(spec.get("headers", {}))
    body = b""
    if "json" in spec:
        body = orjson.dumps(spec["json"])
        headers.setdefault("content-type", "application/json")
    elif "text" in spec:
        body = spec["text"].encode()
    if "binary_hex" in spec:
        headers["inference-header-content-length"] = str(len(body))
        body += bytes.fromhex(spec["binary_hex"])
    return spec["method"], spec["path"], headers, body


async def replay(http: httpx.AsyncClient, path: Path) -> None:
    """Send the stored request; assert the response matches the stored one."""
    case = orjson.loads(path.read_bytes())  # noqa: ASYNC240 (a small local file, read once per test)
    method, url, headers, body = request_of(case)
    response = await http.request(method, url, headers=headers, content=body)
    expected = case["response"]
    where = path.relative_to(GOLDEN)
    assert response.status_code == expected["status"], (where, response.text)
    for key, value in expected.get("headers", {}).items():
        assert response.headers.get(key) == value, (where, key, response.headers.get(key))
    raw = response.content
    if "binary_hex" in expected:
        split = int(response.headers["inference-header-content-length"])
        raw, binary = raw[:split], raw[split:]
        assert binary.hex() == expected["binary_hex"].replace(" ", ""), where
    if "json" in expected:
        actual = orjson.loads(raw)
        assert matches(expected["json"], actual), (where, actual)
    if "text" in expected:
        assert raw.decode() == expected["text"], (where, raw.decode())


def matches(expected: Any, actual: Any) -> bool:
    if expected == ANY:
        return True
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(matches(v, actual[k]) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual)
