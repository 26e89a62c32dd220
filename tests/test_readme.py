"""The README's first example is examples/quickstart.py verbatim, and it serves what the README says."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from batchery.loader import load_model
from batchery.testing import running_server

ROOT = Path(__file__).resolve().parent.parent


def test_readme_opens_with_exactly_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert first_block is not None
    assert readme.startswith("```sh")
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make serve", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_first_example_is_the_quickstart_file() -> None:
    readme = (ROOT / "README.md").read_text()
    first_python = re.search(r"```python\n(.*?)```", readme, re.S)
    assert first_python is not None
    assert first_python.group(1) == (ROOT / "examples" / "quickstart.py").read_text()


async def test_quickstart_serves_what_the_readme_shows() -> None:
    model = load_model(str(ROOT / "examples" / "quickstart.py") + ":Shout")
    async with running_server([model]) as server, httpx.AsyncClient(base_url=server.url) as http:
        one = await http.post("/v1/models/shout/predict", content=b'{"input": "hello"}')
        assert one.text == '{"model":"shout","version":"1","output":"HELLO!"}'
        many = await http.post("/v1/models/shout/predict", content=b'{"inputs": ["a", "b"]}')
        assert many.text == '{"model":"shout","version":"1","outputs":["A!","B!"]}'
