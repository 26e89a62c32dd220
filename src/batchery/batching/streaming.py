"""Streaming models: `predict(batch)` yields steps, each step one partial result per input of the batch.

A model with `stream = True` is served behind a `StreamingModel`, which looks like an ordinary model to the
batcher and the lanes, so streams are batched like any input: several streams advance together, one `predict`
generator per batch. For each step the lane hands the partials back with one `call_soon_threadsafe`, into one
`asyncio.Queue` per stream. A stream whose client went away is skipped; once every stream of a batch has
finished or gone, the generator is closed and the lane takes the next batch.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from batchery.batching.oom import ItemError
from batchery.errors import PredictError


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"batchery.{self.name}"


#: Put this in a step instead of a partial when that input's stream has ended (later steps may hold anything).
DONE: Any = _Marker("DONE")
#: What a `Stream`'s queue receives after the stream's last partial.
END: Any = _Marker("END")


@dataclass(slots=True)
class Stream:
    """One streamed input: the lane puts its encoded partials on `queue`, then `END`."""

    payload: Any
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    #: Set on the loop when the client went away; the lane reads it between steps and stops feeding this stream.
    cancelled: bool = False
    partials: int = 0
    #: Set when its batch is dispatched: the version of the lane computing it, and that its computation began
    #: (its deadline no longer applies: it bounds the wait for a batch, not the stream).
    version: str = ""
    started: bool = False


class StreamingModel:
    """Adapts a model whose `predict` yields steps to the one-output-per-input contract of lanes.

    Served through a stream route, each input is a `Stream` and its output is the number of partials sent.
    Called any other way (warm-up, `/predict`), each input's output is the list of all its partials.
    """

    stream = True

    def __init__(self, model: Any) -> None:
        self.model = model
        # The handle reads these settings from its model; copy them rather than proxying every attribute.
        for setting in (
            "name",
            "version",
            "max_batch_size",
            "max_delay_ms",
            "batching",
            "workers",
            "max_queue_per_worker",
            "max_queue_wait_ms",
            "elastic",
            "example",
        ):
            if hasattr(model, setting):
                setattr(self, setting, getattr(model, setting))
        if not getattr(model, "name", None):
            self.name = type(model).__name__.lower()

    def __deepcopy__(self, memo: dict[int, Any]) -> StreamingModel:
        return StreamingModel(copy.deepcopy(self.model, memo))

    def setup(self, device: str) -> None:
        setup = getattr(self.model, "setup", None)
        if setup is not None:
            setup(device)

    def decode_request(self, item: Any) -> Any:
        decode = getattr(self.model, "decode_request", None)
        return decode(item) if decode is not None else item

    def close(self) -> None:
        close = getattr(self.model, "close", None)
        if callable(close):
            close()

    def encode_response(self, output: Any) -> Any:
        return output  # partials were encoded one by one in predict

    def predict(self, batch: list[Any]) -> list[Any]:
        streamed = [index for index, entry in enumerate(batch) if isinstance(entry, Stream)]
        if not streamed:
            return self._collect(batch)
        if len(streamed) == len(batch):
            return self._stream(batch)
        # A batch that mixes streams and `/predict` inputs: one generator each, the collected ones first (if
        # they fail, nothing has gone out yet and the batch may be split and retried).
        outputs: list[Any] = [None] * len(batch)
        collected = [index for index, entry in enumerate(batch) if not isinstance(entry, Stream)]
        for index, output in zip(collected, self._collect([batch[i] for i in collected]), strict=True):
            outputs[index] = output
        for index, output in zip(streamed, self._stream([batch[i] for i in streamed]), strict=True):
            outputs[index] = output
        return outputs

    def _steps(self, payloads: list[Any]) -> Iterator[list[Any]]:
        steps = self.model.predict(payloads)
        if not isinstance(steps, Iterable) or isinstance(steps, list | tuple):
            raise PredictError(
                f"streaming model '{self.name}' returned {type(steps).__name__} from predict. "
                "Hint: with stream = True, predict must yield steps, each a list with one partial per input"
            )
        return iter(steps)

    def _check(self, step: Any, size: int) -> list[Any]:
        if not isinstance(step, list | tuple) or len(step) != size:
            got = len(step) if isinstance(step, list | tuple) else type(step).__name__
            raise PredictError(
                f"streaming model '{self.name}' yielded a step of {got} partials for a batch of {size} inputs. "
                "Hint: each step must be a list with one partial (or batchery DONE) per input, in order"
            )
        return list(step)

    def _collect(self, payloads: list[Any]) -> list[Any]:
        outputs: list[list[Any]] = [[] for _ in payloads]
        live = [True] * len(payloads)
        encode = getattr(self.model, "encode_response", None) or (lambda output: output)
        for step in self._steps(payloads):
            for index, partial in enumerate(self._check(step, len(payloads))):
                if not live[index]:
                    continue
                if partial is DONE:
                    live[index] = False
                else:
                    outputs[index].append(encode(partial))
            if not any(live):
                break
        return outputs

    def _stream(self, streams: list[Stream]) -> list[Any]:
        encode = getattr(self.model, "encode_response", None) or (lambda output: output)
        loop = streams[0].loop
        live = [True] * len(streams)
        for stream in streams:
            stream.started = True
        steps = self._steps([stream.payload for stream in streams])
        failed: Exception | None = None
        try:
            for step in steps:
                delivery: list[tuple[Stream, Any]] = []
                for index, partial in enumerate(self._check(step, len(streams))):
                    stream = streams[index]
                    if not live[index]:
                        continue
                    if stream.cancelled:
                        live[index] = False
                        continue
                    if partial is DONE:
                        live[index] = False
                        delivery.append((stream, END))
                    else:
                        stream.partials += 1
                        delivery.append((stream, encode(partial)))
                if delivery:
                    loop.call_soon_threadsafe(_deliver, delivery)
                if not any(alive and not stream.cancelled for stream, alive in zip(streams, live, strict=True)):
                    break  # every client has its END or has gone: free the lane now
        except Exception as exc:
            if not any(stream.partials for stream in streams):
                raise  # nothing went out: the batch may be split and retried (isolate.py, oom.py) like any other
            failed = exc  # partials went out: computing these streams again would send them twice
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                close()  # runs the model's own clean-up (try/finally in its generator) at once
        if failed is not None:
            error = PredictError(f"streaming model '{self.name}' failed mid-stream: {failed!r}")
            error.__cause__ = failed
            # Each stream still running ends with the error (an `event: error`); those already done keep theirs.
            return [ItemError(error) if alive else stream.partials for stream, alive in zip(streams, live, strict=True)]
        # Streams that ran out with the generator end here; their END follows their last partial.
        ending = [(stream, END) for stream, alive in zip(streams, live, strict=True) if alive and not stream.cancelled]
        if ending:
            loop.call_soon_threadsafe(_deliver, ending)
        return [stream.partials for stream in streams]


def _deliver(delivery: list[tuple[Stream, Any]]) -> None:
    for stream, message in delivery:
        stream.queue.put_nowait(message)
