"""mosec: its Rust front end batches requests into Python worker processes.

Knobs: BENCH_BATCH (max batch size; 1 = batching off), BENCH_WAIT_MS, BENCH_WORKERS. Responses are encoded
with orjson: mosec's default serialiser is the stdlib json with indentation, which no fair peer keeps.
Run: python mosec_server.py --address 127.0.0.1 --port 8000  (mosec parses its own flags)
"""

from __future__ import annotations

from typing import Any

import orjson
from embedder import Embedder, answer, answer_each, config, texts_of
from mosec import Server, Worker

_CFG = config()


class _Base(Worker):
    def deserialize(self, data: bytes) -> Any:
        return orjson.loads(data)

    def serialize(self, data: Any) -> bytes:
        return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


class Embed(_Base):
    def __init__(self) -> None:
        super().__init__()
        self.model = Embedder()
        self.model.embed(["warm up"])

    def forward(self, data: Any) -> Any:
        bodies = data if _CFG["batch"] > 1 else [data]
        texts = [t for body in bodies for t in texts_of(body)]
        out = answer_each(bodies, list(self.model.embed(texts)))
        return out if _CFG["batch"] > 1 else out[0]


class NoopAnswer(_Base):
    def forward(self, data: Any) -> Any:
        if _CFG["batch"] > 1:
            return [answer(b, texts_of(b)) for b in data]
        return answer(data, texts_of(data))


if __name__ == "__main__":
    server = Server()
    worker = NoopAnswer if _CFG["workload"] == "noop" else Embed
    server.append_worker(worker, num=_CFG["workers"], max_batch_size=_CFG["batch"], max_wait_time=int(_CFG["wait_ms"]))
    server.run()
