"""LitServe: requests cross a multiprocessing queue to worker processes that batch them.

Knobs: BENCH_BATCH (max_batch_size), BENCH_WAIT_MS (batch_timeout), BENCH_WORKERS (workers_per_device).
"""

from typing import Any

import litserve as ls
from embedder import Embedder, answer, answer_each, config, texts_of

_CFG = config()


class Api(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = Embedder() if _CFG["workload"] != "noop" else None
        if self.model is not None:
            self.model.embed(["warm up"])

    # No annotation: LitServe reads it to build the route, and its default takes the JSON body as a dict.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return request

    def predict(self, x: Any) -> Any:
        bodies = x if _CFG["batch"] > 1 else [x]
        if self.model is None:
            out = [answer(b, texts_of(b)) for b in bodies]
        else:
            texts = [t for body in bodies for t in texts_of(body)]
            out = answer_each(bodies, self.model.embed(texts).tolist())
        return out if _CFG["batch"] > 1 else out[0]

    def batch(self, inputs: Any) -> Any:
        return list(inputs)

    def unbatch(self, output: Any) -> Any:
        return list(output)

    def encode_response(self, output: Any) -> Any:
        return output


if __name__ == "__main__":
    api = Api(max_batch_size=_CFG["batch"], batch_timeout=_CFG["wait_ms"] / 1000.0)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=_CFG["workers"])
    server.run(host="127.0.0.1", port=_CFG["port"], generate_client_file=False)
