"""schemathesis against a real server, over every route in the OpenAPI document, with API keys off and on.

No 5xx; every 4xx carries a JSON error body that says what is wrong; statuses, content types and bodies match
the document. `BATCHERY_FUZZ_EXAMPLES` sets the cases per operation (the long run: `scripts/fuzz`), and
`BATCHERY_FUZZ_REPORT` names a JSON file for the counts (docs/reliability.md).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from batchery.server import Server
from batchery.testing import EchoModel, running_server, server_thread

EXAMPLES = int(os.environ.get("BATCHERY_FUZZ_EXAMPLES", "30"))
USER_KEY, ADMIN_KEY = "fuzz-user-key", "fuzz-admin-key"
#: (mode, status) -> count, and the operations seen, for the report.
TALLY: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module", params=["keys-off", "keys-on"])
def fuzz_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, Server]]:
    keys = {"api_keys": USER_KEY, "admin_api_key": ADMIN_KEY} if request.param == "keys-on" else {}
    # Small limits, so generated bodies reach them; the cache on, so its path is fuzzed too.
    with server_thread([EchoModel()], max_items=16, max_body_bytes=64 * 1024, cache="memory", **keys) as server:
        yield request.param, server


def _headers(mode: str, case: Any) -> dict[str, str]:
    if mode == "keys-off":
        return {}
    # Mostly the right key for the route (so bodies get fuzzed past auth); sometimes none, sometimes a wrong one.
    choice = hash((case.method, case.path, str(case.body)[:64])) % 6
    if choice == 0:
        return {}
    if choice == 1:
        return {"X-API-Key": "not-a-key"}
    return {"X-API-Key": ADMIN_KEY if case.path.startswith("/admin") else USER_KEY}


def test_every_route_answers_within_its_schema(fuzz_server: tuple[str, Server]) -> None:
    mode, server = fuzz_server
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", headers={"X-API-Key": USER_KEY})
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [f"{op.method} {op.path}" for op in operations]
    failures = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
        )
        def fuzz(case: Any) -> None:
            _check(mode, server, case)

        try:
            fuzz()
        except Exception as exc:  # collect every operation's first failure, then report them all
            failures[f"{operation.method.upper()} {operation.path}"] = f"{type(exc).__name__}: {str(exc)[:800]}"
    assert not failures, "\n\n".join(f"{where}\n{what}" for where, what in failures.items())


def _check(mode: str, server: Server, case: Any) -> None:
    params = case.path_parameters or {}
    if "name" in params and hash(str(case.body)[:64]) % 4:  # mostly the served model, so bodies reach it
        params["name"] = "echo"
        if "version" in params:
            params["version"] = "1"
    response = case.call(base_url=server.url, headers=_headers(mode, case), timeout=30)
    TALLY[(mode, response.status_code)] += 1
    assert response.status_code < 500 or response.status_code == 503, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )
    if 400 <= response.status_code < 500 and response.status_code != 405:
        body = orjson.loads(response.content)  # every refusal is JSON...
        error = body["error"]  # batchery's {"code", "message"}, OpenAI's, or KServe's plain string
        message = error if isinstance(error, str) else error["message"]
        assert isinstance(message, str)  # ...that says what is wrong
        assert len(message) > 10, error
        assert "Traceback" not in response.text
    case.validate_response(
        response, checks=[status_code_conformance, content_type_conformance, response_schema_conformance]
    )


def test_zz_report() -> None:
    """Runs last in this module: write the counts where BATCHERY_FUZZ_REPORT says."""
    target = os.environ.get("BATCHERY_FUZZ_REPORT")
    summary = {
        "examples_per_operation": EXAMPLES,
        "cases": sum(TALLY.values()),
        "statuses": {f"{mode} {status}": count for (mode, status), count in sorted(TALLY.items())},
    }
    print(summary)
    if target:
        with open(target, "wb") as out:
            out.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2))


def _v2(datatype: str, shape: str, data: str) -> bytes:
    return f'{{"inputs": [{{"name": "x", "datatype": {datatype}, "shape": {shape}, "data": {data}}}]}}'.encode()


#: Bodies a review found answered with a text/plain 500 or silently accepted; each must be a JSON 4xx.
HOSTILE = [
    ("/v2/models/echo/infer", _v2('["BYTES"]', "[1]", '["hi"]')),
    ("/v2/models/echo/infer", _v2('{"a": 1}', "[1]", '["hi"]')),
    ("/v2/models/echo/infer", _v2('"BYTES"', "[1]", "[" * 990 + '"a"' + "]" * 990)),
    ("/v2/models/echo/infer", _v2('"BYTES"', "[1]", "[" * 1020 + '"a"' + "]" * 1020)),
    ("/v2/models/echo/infer", _v2('"FP32"', "[1]", "[" * 1020 + "1.5" + "]" * 1020)),
    ("/v2/models/echo/infer", _v2('"BYTES"', "[1]", "[" * 950 + '"a"' + "]" * 950)),
    ("/v2/models/echo/infer", _v2('"BYTES"', "[" + ", ".join(["1"] * 100) + "]", '["a"]')),
    ("/v1/models/echo/predict", b'{"input": "a", "inputs": ["b"]}'),
    ("/v1/embeddings", b'{"model": "echo", "input": "hi", "encoding_format": {}}'),
    ("/v1/embeddings", b'{"model": "echo", "input": "hi", "encoding_format": ""}'),
    ("/v1/embeddings", b'{"model": "echo", "input": [true]}'),
]


async def test_hostile_bodies_get_a_json_4xx_not_a_500() -> None:
    async with running_server([EchoModel()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        for path, body in HOSTILE:
            response = await http.post(path, content=body)
            where = f"{path} {body[:80]!r}"
            assert 400 <= response.status_code < 500, f"{where} -> {response.status_code}: {response.text[:300]}"
            assert response.headers["content-type"] == "application/json", where
            error = orjson.loads(response.content)["error"]
            message = error if isinstance(error, str) else error["message"]
            assert len(message) > 10, where
            assert "Traceback" not in response.text, where
