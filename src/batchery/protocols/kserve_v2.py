"""KServe V2 / Open Inference Protocol: health, metadata and `POST /v2/models/{name}/infer`, JSON and binary.

Tensors map to model inputs along their first dimension: row i of every input tensor is input i of the batch
(the row itself with one input tensor, `{name: row}` with several; a one-element row is that element, so text
arrives as a string). Outputs stack back the same way. A model may declare `tensor_inputs` and `tensor_outputs`
(lists of `{"name", "datatype", "shape"}`) for its metadata; declared inputs are checked before inference.
Errors are `{"error": "message"}`, as the protocol specifies. An infer body may be sent with `Content-Encoding:
gzip` or `deflate` (tritonclient's `request_compression_algorithm`); its size limit applies once decompressed.
"""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from batchery._version import __version__
from batchery.cache import canonical_json
from batchery.config import Settings
from batchery.engine import Engine
from batchery.errors import (
    BadRequest,
    BatcheryError,
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from batchery.protocols import tensors
from batchery.protocols.responses import json_response
from batchery.protocols.serving import Serving, count_refusal
from batchery.protocols.tensors import Tensor

HEADER_LENGTH = "Inference-Header-Content-Length"
DEFAULT_OUTPUT = "OUTPUT"
_SPLIT = struct.Struct("<Q")
#: zlib's `wbits` for each Content-Encoding a request body may have (tritonclient's request compression).
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(slots=True)
class InferRequest:
    """A decoded infer request: its input tensors and which outputs to send, and how."""

    inputs: list[Tensor]
    id: str | None = None
    #: Requested output names mapped to "send as binary"; empty: every output.
    outputs: dict[str, bool] = field(default_factory=dict)
    binary_output: bool = False


def _canonical(raw: bytes, header_length: str | None) -> bytes:
    """What a cached response depends on: the JSON header with sorted keys and without the request's `id` (which
    many clients make unique per request), then the binary tensor data. `raw` was decoded already: it is valid."""
    split = int(header_length) if header_length is not None else len(raw)
    header = orjson.loads(raw[:split])
    header.pop("id", None)
    return canonical_json(header) + b"\0" + raw[split:]


def _with_id(body: bytes, split: int, request_id: str | None) -> tuple[bytes, int]:
    """`body` (a JSON object, then binary data when `split` is its length) with `request_id` as its first field."""
    if request_id is None:
        return body, split
    field = b'"id":' + orjson.dumps(request_id) + b","
    return body[:1] + field + body[1:], split + len(field) if split else 0


def decode(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer body: all JSON, or a JSON header of `header_length` bytes followed by binary tensor data."""
    split = len(body)
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            split = -1
        if not 0 <= split <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} is {header_length!r}; it must be the JSON header's size in bytes")
    try:
        data = orjson.loads(body[:split])
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request's JSON is not valid: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list) or not data["inputs"]:
        raise BadRequest('the request must be a JSON object with a non-empty "inputs" list of tensors')
    binary, offset = memoryview(body)[split:], 0
    inputs: list[Tensor] = []
    names: set[str] = set()
    for index, spec in enumerate(data["inputs"]):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise BadRequest(f"input {index} must be an object with a name, shape, datatype and data")
        where = f"input '{spec['name']}'"
        if spec["name"] in names:  # rows become {name: value}: a second tensor would silently replace the first
            raise BadRequest(f"{where} is given twice; send each input tensor once, under its own name")
        names.add(spec["name"])
        datatype, shape = tensors.check_header(where, spec.get("datatype"), spec.get("shape"))
        size = _parameters(spec).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadRequest(f"{where} has binary_data_size {size!r}, past the end of the binary data")
            array = tensors.from_binary(where, datatype, shape, bytes(binary[offset : offset + size]))
            offset += size
        elif "data" in spec:
            array = tensors.from_json(where, datatype, shape, spec["data"])
        else:
            raise BadRequest(f"{where} has no data: give it data, or binary_data_size with the binary extension")
        inputs.append(Tensor(spec["name"], datatype, array))
    request = InferRequest(inputs, id=data.get("id") if isinstance(data.get("id"), str) else None)
    request.binary_output = bool(_parameters(data).get("binary_data_output", False))
    for spec in data.get("outputs") or []:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise BadRequest('each of "outputs" must be an object with a name')
        request.outputs[spec["name"]] = bool(_parameters(spec).get("binary_data", request.binary_output))
    return request


def decompress(body: bytes, encoding: str | None, *, max_bytes: int) -> bytes:
    """The body as it was before its `Content-Encoding` (none, identity, gzip or deflate): 413 once it passes
    `max_bytes` decompressed, so a small compressed body cannot expand without bound."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    wbits = _ENCODINGS.get(coding)
    if wbits is None:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; send the body uncompressed, or as gzip or deflate"
        )
    parts: list[bytes] = []
    size, rest = 0, body
    while True:
        decompressor = zlib.decompressobj(wbits)
        try:
            part = decompressor.decompress(rest, max_bytes - size + 1)  # at most one byte past the limit
        except zlib.error as exc:
            raise BadRequest(f"the body is not valid {coding} data ({exc}); send it as Content-Encoding says") from exc
        size += len(part)
        if size > max_bytes:
            raise PayloadTooLarge(f"the request body is over the limit of {max_bytes} bytes once decompressed")
        if not decompressor.eof:
            raise BadRequest(f"the {coding} body ends early; send all of it")
        parts.append(part)
        rest = decompressor.unused_data
        if not rest:
            return b"".join(parts)
        if wbits == zlib.MAX_WBITS:  # gzip allows several members one after the other; deflate is one stream
            raise BadRequest("the deflate body has bytes after its end; send only the compressed data")


def items(request: InferRequest, declared: list[dict[str, Any]] | None, *, model: str, max_items: int) -> list[Any]:
    """The model inputs the tensors hold, one per row of the first dimension; checked against declared tensors."""
    if declared:
        _check_declared(request.inputs, declared, model)
    batch = {len(t.array.shape) and t.array.shape[0] for t in request.inputs}
    if len(batch) != 1 or not batch.pop():
        shapes = ", ".join(f"{t.name} {list(t.array.shape)}" for t in request.inputs)
        raise BadRequest(f"every input needs the same first (batch) dimension of at least 1; got {shapes}")
    count = request.inputs[0].array.shape[0]
    if count > max_items:
        raise PayloadTooLarge(f"the batch dimension is {count}; the limit is {max_items} inputs per request")
    if len(request.inputs) == 1:
        return tensors.rows(request.inputs[0].array)
    columns = {t.name: tensors.rows(t.array) for t in request.inputs}
    return [{name: column[i] for name, column in columns.items()} for i in range(count)]


def outputs(values: list[Any], declared: list[dict[str, Any]] | None) -> list[Tensor]:
    """Stack one model output per input into tensors: dict outputs give one tensor per key."""
    types = {spec.get("name"): spec.get("datatype") for spec in declared or []}
    if values and all(isinstance(value, dict) for value in values):
        names = list(values[0])
        return [tensors.from_values(n, [value.get(n) for value in values], types.get(n)) for n in names]
    name = str(declared[0].get("name", DEFAULT_OUTPUT)) if declared else DEFAULT_OUTPUT
    return [tensors.from_values(name, values, types.get(name))]


def encode(request: InferRequest, results: list[Tensor], *, model: str, version: str) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensor data follows it."""
    if request.outputs:
        unknown = sorted(set(request.outputs) - {t.name for t in results})
        if unknown:
            raise BadRequest(f"model '{model}' has no output {unknown[0]!r}; its outputs: {[t.name for t in results]}")
        results = [t for t in results if t.name in request.outputs]
    described, binaries = [], []
    for tensor in results:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.array.shape)}
        if request.outputs.get(tensor.name, request.binary_output):
            raw = tensors.to_binary(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binaries.append(raw)
        else:
            entry["data"] = tensors.to_json(tensor)
        described.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = described
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binaries:
        return header, None
    return header + b"".join(binaries), len(header)


def error_response(error: BatcheryError) -> Response:
    """`{"error": "message"}`; bad input is a 400, as the protocol has it."""
    status = 400 if isinstance(error, InvalidInput) else error.status
    headers = {"Retry-After": str(max(1, round(error.retry_after)))} if error.retry_after is not None else None
    return json_response(orjson.dumps({"error": error.message}), status, headers)


def _check_declared(given: list[Tensor], declared: list[dict[str, Any]], model: str) -> None:
    specs = {str(spec.get("name")): spec for spec in declared}
    described = ", ".join(f"{name} ({spec.get('datatype')}, shape {spec.get('shape')})" for name, spec in specs.items())
    for tensor in given:
        spec = specs.get(tensor.name)
        if spec is None:
            raise BadRequest(f"model '{model}' has no input '{tensor.name}'; it takes: {described}")
        if spec.get("datatype") not in (None, tensor.datatype):
            raise BadRequest(
                f"input '{tensor.name}' has datatype {tensor.datatype}; model '{model}' expects {spec['datatype']}"
            )
        if not _shape_fits(list(tensor.array.shape), spec.get("shape")):
            raise BadRequest(
                f"input '{tensor.name}' has shape {list(tensor.array.shape)}; model '{model}' expects "
                f"{spec['shape']} (-1: any size; a trailing 1 is allowed)"
            )
    missing = sorted(set(specs) - {t.name for t in given})
    if missing:
        raise BadRequest(f"model '{model}' needs input '{missing[0]}'; it takes: {described}")


def _shape_fits(shape: list[int], expected: Any) -> bool:
    if not isinstance(expected, list):
        return True
    if len(shape) == len(expected) + 1 and shape[-1] == 1:
        shape = shape[:-1]
    return len(shape) == len(expected) and all(e in (-1, s) for s, e in zip(shape, expected, strict=True))


def _parameters(spec: dict[str, Any]) -> dict[str, Any]:
    parameters = spec.get("parameters")
    return parameters if isinstance(parameters, dict) else {}


def _declared(handle: Any, attribute: str) -> list[dict[str, Any]] | None:
    model = getattr(handle, "prototype", None)
    model = getattr(model, "model", model)  # a streaming model's declarations are on the model it wraps
    value = getattr(model, attribute, None)
    return [dict(spec) for spec in value] if value else None


def routes(engine: Engine, settings: Settings) -> APIRouter:
    """The V2 health, metadata and infer routes; each model answers with and without `/versions/{version}`."""
    router = APIRouter(tags=["kserve-v2"])
    max_items, max_body_bytes = settings.max_items, settings.max_body_bytes
    serving = Serving(engine, settings, "kserve_v2")

    def find(request: Request) -> Any:
        handle = engine.handle(request.path_params["name"])
        version = request.path_params.get("version")
        if version not in (None, "", handle.version):
            raise ModelNotFound(f"model '{handle.name}' has no version {version!r}; it serves {handle.version!r}")
        return handle

    async def server_metadata() -> Response:
        body = {"name": "batchery", "version": __version__, "extensions": ["binary_tensor_data"]}
        return json_response(orjson.dumps(body))

    async def live() -> Response:
        return json_response(b'{"live":true}')

    async def ready() -> Response:
        # The protocol answers "not ready" with a 4xx status.
        return json_response(b'{"ready":true}') if engine.is_ready() else json_response(b'{"ready":false}', 400)

    async def model_metadata(request: Request) -> Response:
        try:
            handle = find(request)
        except BatcheryError as exc:
            return error_response(exc)
        body = {
            "name": handle.name,
            "versions": [handle.version],
            "platform": "batchery",
            "inputs": _declared(handle, "tensor_inputs") or [],
            "outputs": _declared(handle, "tensor_outputs") or [],
        }
        return json_response(orjson.dumps(body))

    async def model_ready(request: Request) -> Response:
        try:
            handle = find(request)
        except BatcheryError as exc:
            return error_response(exc)
        serving_now = engine.is_ready(handle)
        body = orjson.dumps({"name": handle.name, "ready": serving_now})
        return json_response(body, 200 if serving_now else 400)

    async def infer(request: Request) -> Response:
        try:
            handle = find(request)
            encoding, header_length = request.headers.get("content-encoding"), request.headers.get(HEADER_LENGTH)
            raw = decompress(await request.body(), encoding, max_bytes=max_body_bytes)
            decoded = decode(raw, header_length)
            inputs = items(decoded, _declared(handle, "tensor_inputs"), model=handle.name, max_items=max_items)

            async def compute() -> bytes:
                values, version = await serving.infer(request, handle, inputs)
                results = outputs(values, _declared(handle, "tensor_outputs"))
                # Made without the request's id, which goes in below: an entry serves every id.
                body, split = encode(replace(decoded, id=None), results, model=handle.name, version=version)
                # A cached entry is bytes only: the JSON header's length (0: all JSON) travels in front.
                return _SPLIT.pack(split or 0) + body

            key = functools.partial(_canonical, raw, header_length)  # parsed again only when caching is on
            cached, cache, _ = await serving.cached(request, handle, key, compute)
        except BatcheryError as exc:
            count_refusal(request, exc, engine)
            return error_response(exc)
        (split,) = _SPLIT.unpack_from(cached)
        body, split = _with_id(cached[_SPLIT.size :], split, decoded.id)
        headers = {"X-Cache": cache} if cache is not None else {}
        if not split:
            return json_response(body, headers=headers)
        headers[HEADER_LENGTH] = str(split)
        return Response(body, headers=headers, media_type="application/octet-stream")

    router.add_api_route("/v2", server_metadata, methods=["GET"], summary="Server metadata")
    router.add_api_route("/v2/health/live", live, methods=["GET"], summary="Liveness")
    router.add_api_route("/v2/health/ready", ready, methods=["GET"], summary="Readiness: every model is loaded")
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        router.add_api_route(prefix, model_metadata, methods=["GET"], summary="Model metadata")
        router.add_api_route(prefix + "/ready", model_ready, methods=["GET"], summary="Model readiness")
        router.add_api_route(prefix + "/infer", infer, methods=["POST"], summary="Inference on typed tensors")
    return router
