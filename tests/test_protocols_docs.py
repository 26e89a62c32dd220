"""docs/protocols.md's examples run as written, against a real server serving what the page says."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchery.batching.streaming import StreamingModel
from batchery.models.embedding import SentenceEmbedder
from batchery.models.words import WordStreamer
from batchery.server import Server
from batchery.testing import server_thread

PAGE = Path(__file__).resolve().parent.parent / "docs" / "protocols.md"
DOCUMENTED = "127.0.0.1:8000"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), re.S)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    embedder = SentenceEmbedder()
    embedder.workers = 1
    with server_thread([embedder, WordStreamer()]) as running:
        yield running


def test_the_page_serves_what_the_tests_serve() -> None:
    assert blocks("console") == ["batchery serve embedding batchery.models.words:WordStreamer\n"]


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_example(server: Server, index: int) -> None:
    source = blocks("python")[index].replace(DOCUMENTED, server.url.removeprefix("http://"))
    namespace: dict[str, object] = {"__name__": f"protocols_doc_{index}"}
    exec(compile(source, f"{PAGE.name}[python {index}]", "exec"), namespace)
    for value in list(namespace.values()):
        if isinstance(value, type) and getattr(value, "stream", False) and value.__module__ == namespace["__name__"]:
            # A streaming model defined on the page streams as the page says.
            assert StreamingModel(value()).predict([3, 1]) == [[3, 2, 1], [1]]


@pytest.mark.parametrize("index", range(len(blocks("sh"))))
def test_shell_example(server: Server, index: int) -> None:
    source = blocks("sh")[index]
    comments = [line[2:] for line in source.splitlines() if line.startswith("# ")]
    script = source.replace(DOCUMENTED, server.url.removeprefix("http://"))
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    # The first line of the documented output (up to any "...") is what the command printed.
    assert comments[0].split("...")[0] in done.stdout
