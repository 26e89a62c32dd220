"""Request bodies: the default embedding payload (distinct short sentences) or bodies read from a file."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson

from batchery.errors import ConfigError

_SUBJECTS = (
    "The old lighthouse keeper",
    "A curious fox",
    "Our new neighbour",
    "The quiet librarian",
    "A tired engineer",
    "The river pilot",
    "My younger sister",
    "The city council",
    "A travelling musician",
    "The night nurse",
)
_ACTIONS = (
    "repaired the broken clock",
    "watched the storm roll in",
    "planted tomatoes in spring",
    "wrote a letter to the editor",
    "found a map in the attic",
    "baked bread before dawn",
    "crossed the frozen lake",
    "counted the passing trains",
    "painted the fence blue",
    "forgot the meeting again",
)
_ENDINGS = ("yesterday.", "near the harbour.", "without a word.")


def sentences(count: int = 300) -> list[str]:
    """`count` (at most 300) distinct short English sentences of 8-14 word pieces, always the same ones."""
    combos = itertools.product(_ENDINGS, _ACTIONS, _SUBJECTS)
    return [f"{subject} {action} {ending}" for ending, action, subject in itertools.islice(combos, count)]


def embedding_bodies(per_request: int = 1, count: int = 300) -> list[bytes]:
    """Native-protocol bodies: `{"input": s}` for one sentence per request, else `{"inputs": [...]}`."""
    texts = sentences(count)
    if per_request == 1:
        return [orjson.dumps({"input": t}) for t in texts]
    return [
        orjson.dumps({"inputs": [texts[(i + j) % len(texts)] for j in range(per_request)]}) for i in range(len(texts))
    ]


def read_bodies(path: Path) -> list[bytes]:
    """Bodies from `path`: one JSON document per line (JSON lines), or the whole file as one body."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the payload file {path}: {exc.strerror}; check the path") from exc
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"the payload file {path} is empty; write one JSON body per line")
    try:
        for line in lines:
            orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(
                f"the payload file {path} is neither JSON lines nor one JSON document ({exc}); fix its syntax"
            ) from exc
        return [raw.strip()]
    return lines
