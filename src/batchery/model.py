"""The user contract: load in `setup`, compute a batch in `predict`; everything else has a default."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from batchery.errors import BatcheryError, DecodeError, InvalidInput


class Model:
    """Subclass this, or write any class with the same methods (`predict`, `decode_request`, `encode_response`;
    `setup` and `close` are optional) and attributes.

    Batching settings live on the model. Each worker owns its own copy of the model, made before `setup`.
    """

    #: Route name: `POST /v1/models/{name}/predict`. Defaults to the class name in lower case.
    name: str | None = None
    #: Label reported in `/v1/models` and the `X-Model-Version` header.
    version: str = "1"
    #: Largest number of inputs computed in one `predict` call.
    max_batch_size: int = 32
    #: Longest time the first input of a batch may wait for others while a worker is free ("fixed" policy),
    #: and the cap on waiting under the "adaptive" policy.
    max_delay_ms: float = 5.0
    #: "adaptive": a free worker takes what is queued now, batches grow while workers are busy.
    #: "fixed": flush at `max_batch_size` or when `max_delay_ms` has passed since the first input.
    batching: str = "adaptive"
    #: Worker threads, each with its own copy of the model. None: one per CPU core this process may use.
    workers: int | None = None
    #: Inputs allowed to wait per worker before new requests get 503 (bounded queue).
    max_queue_per_worker: int = 1024
    #: Time bound of the queue: once a client's oldest queued input has waited this long (or eight full batches,
    #: if those take longer), new requests get 503 at once. 0 (default): no time bound, only the input bound.
    #: Set it for a latency target; clients that re-send at once on a 503 turn refusals into wasted parsing.
    max_queue_wait_ms: float = 0.0
    #: True when `predict` can use more threads: a batch that has the machine to itself is granted every
    #: core; read the grant with `batchery.granted_cores()` (during `setup`, it is the worker's share).
    elastic: bool = False
    #: With `input_cost(payload)` defined, the most cost (tokens, pixels...) one batch may hold; a single input
    #: above it runs alone. None: batches are capped by `max_batch_size` only.
    max_batch_cost: int | None = None
    #: Input used to warm each worker up with a real batch before the server reports ready. None: no warm-up.
    example: Any = None

    def setup(self, device: str) -> None:
        """Load the model so it can be called in `predict`."""

    def decode_request(self, item: Any) -> Any:
        """Turn one JSON input into what `predict` takes; raise ValueError or TypeError for bad input (422)."""
        return item

    def predict(self, batch: list[Any]) -> list[Any]:
        """Compute one output per input, in order."""
        raise NotImplementedError("Model.predict must be implemented: it takes a list and returns a list")

    def encode_response(self, output: Any) -> Any:
        """Turn one output of `predict` into something JSON can carry (numpy arrays are fine)."""
        return output

    def close(self) -> None:
        """Release what `setup` took (memory, a GPU, a child process); called on the worker's thread after its
        last batch, when a hot reload retires this version (and as the server stops, which does not wait for it)."""


def decode_all(decode: Callable[[Any], Any], inputs: Iterable[Any]) -> list[Any]:
    """Decode every input before any joins a batch, so a bad one fails only its own request (422, naming it)."""
    decoded = []
    for index, raw in enumerate(inputs):
        try:
            decoded.append(decode(raw))
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidInput(f"input {index}: {exc}") from exc
        except BatcheryError:  # decode_request's own verdict, with its status (413 for a huge image, say)
            raise
        except Exception as exc:  # a defect in decode_request, not a verdict on the input: not the client's 4xx
            raise DecodeError(
                f"decode_request failed on input {index}: {exc!r}. Hint: raise ValueError or TypeError for an "
                "input it refuses (the client gets 422)"
            ) from exc
    return decoded


def model_name(model: Any) -> str:
    """The route name of `model`: its `name` attribute, else its class name in lower case."""
    name = getattr(model, "name", None)
    return str(name) if name else type(model).__name__.lower()
