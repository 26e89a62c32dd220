"""PyTriton: NVIDIA Triton (C++ HTTP front end and dynamic batcher) calling a Python function, CPU only.

Knobs: BENCH_BATCH (max_batch_size), BENCH_WAIT_MS (max_queue_delay), BENCH_WORKERS (instances). Requests are
KServe V2 bodies with a BYTES input `text` of shape [n, 1]. The launcher (benchmarks/servers.py) puts this
interpreter's libpython first on LD_LIBRARY_PATH and sets PYTRITON_HOME (see docs/performance.md).
"""

from __future__ import annotations

import numpy as np
from embedder import Embedder, config
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

_CFG = config()


def _embed_fn() -> object:
    model = Embedder()
    model.embed(["warm up"])

    @batch
    def infer(text: np.ndarray) -> dict[str, np.ndarray]:
        texts = [row[0].decode() for row in text]
        return {"embedding": model.embed(texts)}

    return infer


@batch
def _echo(text: np.ndarray) -> dict[str, np.ndarray]:
    return {"output": text}


if __name__ == "__main__":
    noop = _CFG["workload"] == "noop"
    funcs = [_echo if noop else _embed_fn() for _ in range(_CFG["workers"])]
    outputs = (
        [Tensor(name="output", dtype=bytes, shape=(1,))]
        if noop
        else [Tensor(name="embedding", dtype=np.float32, shape=(384,))]
    )
    port = _CFG["port"]
    triton_config = TritonConfig(http_address="127.0.0.1", http_port=port, grpc_port=port + 1, metrics_port=port + 2)
    with Triton(config=triton_config) as triton:
        triton.bind(
            model_name="model",
            infer_func=funcs,
            inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
            outputs=outputs,
            config=ModelConfig(
                max_batch_size=max(16, _CFG["batch"]),
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(_CFG["wait_ms"] * 1000)),
            ),
            strict=False,
        )
        triton.serve()
