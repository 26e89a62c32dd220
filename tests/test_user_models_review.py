"""What the eighth session's review as a user serving their own model found: each test fails without its fix."""

from __future__ import annotations

import asyncio
import math
import re
import sys
from typing import Any

import httpx
import pytest

from batchery.config import Settings
from batchery.errors import ConfigError, InvalidInput, ModelLoadError, PayloadTooLarge
from batchery.handle import ModelHandle
from batchery.model import Model, decode_all
from batchery.testing import running_server
from batchery.workers.process import ProcessModel


class ExitsOnBad(Model):
    """Calls sys.exit() on one input, as a library's command-line helper might."""

    name = "exits"

    def predict(self, batch: list[Any]) -> list[Any]:
        if "bad" in batch:
            sys.exit(3)
        return batch


async def test_system_exit_in_predict_fails_its_batch_and_the_worker_goes_on() -> None:
    async with running_server([ExitsOnBad()], workers=1) as server, httpx.AsyncClient(base_url=server.url) as http:
        bad = await http.post("/v1/models/exits/predict", json={"input": "bad"}, timeout=10)
        assert bad.status_code == 500
        assert "SystemExit" in bad.json()["error"]["message"]
        for _ in range(3):  # the lane's thread survived: later requests are answered, not left hanging
            good = await http.post("/v1/models/exits/predict", json={"input": "good"}, timeout=10)
            assert good.status_code == 200
            assert good.json()["output"] == "good"


class EncodesSome(Model):
    """`encode_response` refuses one output; `predict` sleeps so that concurrent requests share a batch."""

    name = "encodes"

    def predict(self, batch: list[Any]) -> list[Any]:
        import time

        time.sleep(0.05)
        return batch

    def encode_response(self, output: Any) -> Any:
        if output == "bad":
            raise ValueError("cannot encode this one")
        return output


async def test_an_output_that_cannot_be_encoded_fails_only_its_own_request() -> None:
    async with running_server([EncodesSome()], workers=1) as server, httpx.AsyncClient(base_url=server.url) as http:
        await http.post("/v1/models/encodes/predict", json={"input": "warm"})
        first = asyncio.create_task(http.post("/v1/models/encodes/predict", json={"input": "first"}))
        await asyncio.sleep(0.01)  # the lane is busy with "first": the next three queue into one batch
        names = ["alice", "bad", "carol"]
        answers = await asyncio.gather(
            *(http.post("/v1/models/encodes/predict", json={"input": name}) for name in names)
        )
        await first
        by_name = dict(zip(names, answers, strict=True))
        assert by_name["alice"].status_code == by_name["carol"].status_code == 200
        assert by_name["carol"].json()["output"] == "carol"
        assert by_name["bad"].status_code == 500
        message = by_name["bad"].json()["error"]["message"]
        assert "cannot encode" in message
        assert "alice" not in message  # nobody else's input in the error
        assert "carol" not in message


class OnlyPredict:
    """Written without the base class, as Model's docstring allows, but without decode_request/encode_response."""

    name = "duck"

    def predict(self, batch: list[Any]) -> list[Any]:
        return batch


async def test_a_class_without_the_methods_requests_need_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigError, match=r"no decode_request\(item\) or encode_response\(output\) method"):
        async with running_server([OnlyPredict()]):
            pass


def _with(**attributes: Any) -> Model:
    model_class = type("Tuned", (Model,), {"name": "tuned", "predict": lambda self, batch: batch, **attributes})
    return model_class()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"max_batch_size": 2.5}, "max_batch_size must be an integer, not 2.5"),
        ({"max_batch_size": True}, "max_batch_size must be an integer, not True"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"max_delay_ms": math.inf}, "max_delay_ms must be a finite number"),
        ({"max_delay_ms": math.nan}, "max_delay_ms must be a finite number"),
    ],
)
async def test_class_attributes_are_checked_like_a_config_file(attributes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=f"model class Tuned: {message}"):
        async with running_server([_with(**attributes)]):
            pass


async def test_a_class_attribute_set_to_none_means_unset() -> None:
    async with running_server([_with(max_batch_size=None)]) as server, httpx.AsyncClient(base_url=server.url) as http:
        described = (await http.get("/v1/models")).json()
        tuned = next(model for model in described["models"] if model["name"] == "tuned")
        assert tuned["max_batch_size"] == 32  # the default, not a TypeError at start-up


@pytest.mark.parametrize("name", ["rate_limit", "request_timeout_ms", "cache_ttl_seconds", "redis_timeout_ms"])
def test_infinite_numbers_are_refused_in_server_settings(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.load({name: math.inf}, env={})
    with pytest.raises(ConfigError, match=name):
        Settings.load(env={f"BATCHERY_{name.upper()}": "inf"})


async def test_the_openapi_document_declares_every_path_parameter_and_names_the_served_models() -> None:
    async with running_server([ExitsOnBad()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        document = (await http.get("/openapi.json")).json()
    templated = 0
    for path, operations in document["paths"].items():
        for name in re.findall(r"{(\w+)}", path):
            for method, operation in operations.items():
                declared = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "path"}
                assert name in declared, (method, path, name)
                assert declared[name]["required"] is True
                templated += 1
    assert templated >= 11
    predict = document["paths"]["/v1/models/{name}/predict"]["post"]
    (name,) = [p for p in predict["parameters"] if p["name"] == "name"]
    assert name["schema"]["example"] == "exits"
    assert "exits" in name["description"]


class DecodesBadly(Model):
    """A defect in decode_request, not a refusal of the input: an IndexError."""

    name = "decodes"

    def decode_request(self, item: Any) -> Any:
        if item == "defect":
            return item.split()[5]
        return item

    def predict(self, batch: list[Any]) -> list[Any]:
        return batch


async def test_a_defect_in_decode_request_is_500_decode_failed_not_predict_failed() -> None:
    async with running_server([DecodesBadly()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        defect = await http.post("/v1/models/decodes/predict", json={"inputs": ["fine", "defect"]})
        assert defect.status_code == 500
        assert defect.json()["error"]["code"] == "decode_failed"
        assert "input 1" in defect.json()["error"]["message"]
        assert (await http.post("/v1/models/decodes/predict", json={"input": "fine"})).status_code == 200


class AsyncPredict(Model):
    name = "async"

    async def predict(self, batch: list[Any]) -> list[Any]:  # type: ignore[override]
        return batch


async def test_an_async_predict_is_refused_at_start_up_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="async predict; it must be a plain def"):
        async with running_server([AsyncPredict()]):
            pass


class StringArrays(Model):
    name = "strings"

    def predict(self, batch: list[Any]) -> list[Any]:
        import numpy as np

        return [np.array([str(item), str(item).upper()]) for item in batch]


async def test_numpy_arrays_of_strings_are_sent_as_lists() -> None:
    async with running_server([StringArrays()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post("/v1/models/strings/predict", json={"input": "ab"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"] == ["ab", "AB"]


@pytest.mark.parametrize("error", [InvalidInput("the image could not be decoded"), PayloadTooLarge("too big")])
def test_decode_request_keeps_its_own_deliberate_errors(error: Exception) -> None:
    def decode(item: Any) -> Any:
        raise error

    with pytest.raises(type(error)):  # not turned into 500 decode_failed
        decode_all(decode, ["x"])


async def test_class_attributes_that_used_to_work_still_do() -> None:
    import numpy as np

    from batchery.spec import ModelSpec, Served

    unnamed = _with(name="", max_batch_size=np.int64(16))  # "" falls back to the class name; numpy's integers
    overridden = Served(_with(max_batch_size=0), ModelSpec(max_batch_size=8))  # the file's setting is the one read
    async with running_server([unnamed]) as server, httpx.AsyncClient(base_url=server.url) as http:
        listed = {m["name"]: m for m in (await http.get("/v1/models")).json()["models"]}
        assert listed["tuned"]["max_batch_size"] == 16
    async with running_server([overridden]) as server, httpx.AsyncClient(base_url=server.url) as http:
        listed = {m["name"]: m for m in (await http.get("/v1/models")).json()["models"]}
        assert listed["tuned"]["max_batch_size"] == 8


class AsyncStreaming(AsyncPredict):
    stream = True


@pytest.mark.parametrize("wrap", [lambda model: ProcessModel(model), lambda model: AsyncStreaming()])
def test_an_async_predict_behind_a_wrapper_is_refused(wrap: Any) -> None:
    with pytest.raises(ConfigError, match="async predict"):
        ModelHandle(wrap(AsyncPredict()), total_cores=1)


class PlainEcho(Model):
    name = "async"  # the name AsyncPredict serves under

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)


async def test_a_hot_reload_to_an_async_predict_is_refused_and_the_serving_version_stays() -> None:
    async with running_server([PlainEcho()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        with pytest.raises(ModelLoadError, match="async predict"):
            await server.engine.reload("async", prototype=AsyncPredict())
        response = await http.post("/v1/models/async/predict", json={"input": "x"})
        assert response.status_code == 200, response.text
