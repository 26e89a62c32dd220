"""Plain FastAPI as tutorials write it: a Pydantic body, the model called once per request, no batching.

noop is an `async def` route; embed a sync `def` route (FastAPI runs it in its thread pool).
Knob: BENCH_WORKERS uvicorn worker processes.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from embedder import Embedder, answer, config
from fastapi import FastAPI
from pydantic import BaseModel


class Body(BaseModel):
    input: Any = None
    inputs: list[Any] | None = None


app = FastAPI()
_model: Embedder | None = None


@app.post("/noop")
async def noop(body: Body) -> dict[str, Any]:
    return {"output": body.input} if body.inputs is None else {"outputs": body.inputs}


@app.post("/embed")
def embed(body: Body) -> dict[str, Any]:
    global _model
    if _model is None:
        _model = Embedder()
    texts = [body.input] if body.inputs is None else body.inputs
    data = body.model_dump(exclude_none=True)
    return answer(data, _model.embed(texts).tolist())


if __name__ == "__main__":
    cfg = config()
    uvicorn.run(
        "fastapi_server:app",
        host="127.0.0.1",
        port=cfg["port"],
        workers=cfg["workers"],
        log_level="warning",
        access_log=False,
    )
