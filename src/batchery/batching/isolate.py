"""A batch that fails is split until the failing inputs are alone: they fail alone, the rest are answered.

One bad input (a payload the model chokes on) must never fail the requests that shared its batch. A failing
batch is halved and each half retried, down to single inputs: a batch of n with one bad input costs about
2 log2(n) extra calls, and a model that fails on everything costs 2n - 1 calls for that batch. Out-of-memory
splitting (`oom.predict_splitting`) runs inside each call. A deliberate `BatcheryError` (a crashed process
worker's 503, say) is about the whole batch and is not retried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from batchery.batching.oom import ItemError, predict_splitting
from batchery.errors import BatcheryError, PredictError


def predict_isolating(
    predict: Callable[[list[Any]], Any], payloads: list[Any], failed_sizes: list[int], model_name: str
) -> tuple[list[Any], bool]:
    """`predict(payloads)`; if it raises, the inputs that fail alone get an `ItemError` each, the rest outputs.

    Also returns whether the batch was bisected. A batch of one raises as it always did: nothing to isolate.
    """
    try:
        return predict_splitting(predict, payloads, failed_sizes), False
    except BatcheryError:
        raise
    except Exception:
        if len(payloads) == 1:
            raise
        return _halves(predict, payloads, failed_sizes, model_name), True


def _bisect(predict: Callable[[list[Any]], Any], payloads: list[Any], failed: list[int], name: str) -> list[Any]:
    try:
        return predict_splitting(predict, payloads, failed)
    except BatcheryError:
        raise
    except Exception as exc:
        if len(payloads) == 1:
            error = PredictError(f"model '{name}' failed on this input (the rest of its batch was answered): {exc!r}")
            error.__cause__ = exc
            return [ItemError(error)]
    return _halves(predict, payloads, failed, name)


def _halves(predict: Callable[[list[Any]], Any], payloads: list[Any], failed: list[int], name: str) -> list[Any]:
    middle = len(payloads) // 2
    return _bisect(predict, payloads[:middle], failed, name) + _bisect(predict, payloads[middle:], failed, name)
