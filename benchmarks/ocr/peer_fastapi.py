"""The peer: a plain FastAPI server calling rapidocr's `RapidOCR()` per request, as its README shows.

uvicorn benchmarks.ocr.peer_fastapi:app --port 8001
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, UploadFile
from rapidocr_onnxruntime import RapidOCR

app = FastAPI()
engine = RapidOCR()


@app.post("/ocr")
def ocr(file: UploadFile) -> dict[str, Any]:
    # A sync route: FastAPI runs it on its thread pool, so requests overlap as far as the GIL allows.
    result, _ = engine(file.file.read())
    lines = [{"text": text, "score": float(score), "box": box} for box, text, score in result or []]
    return {"lines": lines}
