"""The OCR pipeline: decode the image off the loop, detect, classify angles, recognise; lines in reading order."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import numpy as np

from batchery import images
from batchery.examples.ocr.stages import (
    AngleClassifier,
    Detected,
    Oriented,
    TextDetector,
    TextRecognizer,
    lines_for,
)
from batchery.pipeline import Pipeline, fan_out
from batchery.pipeline.base import stage
from batchery.workers.cpu_pool import CpuPool

if TYPE_CHECKING:
    from batchery.engine import Engine


class OcrPipeline(Pipeline):
    """`POST /v1/models/ocr/predict` with an image (upload or base64) returns `{"lines": [{text, score, box}]}`."""

    name = "ocr"
    version = "rapidocr-ppocrv4"
    image_limits = images.ImageLimits(max_bytes=20 * 1024 * 1024, max_pixels=40_000_000, max_request_pixels=80_000_000)
    #: Lines read with a lower mean confidence are dropped (rapidocr's `text_score`).
    text_score = 0.5

    def __init__(self, *, use_angle_cls: bool = True, decode_threads: int | None = None) -> None:
        self.detector = TextDetector()
        self.classifier = AngleClassifier() if use_angle_cls else None
        self.recognizer = TextRecognizer()
        self.decoding = CpuPool("thread", workers=decode_threads)  # Pillow releases the GIL while decoding

    def stages(self) -> list[Any]:
        return [model for model in (self.detector, self.classifier, self.recognizer) if model is not None]

    def decode_request(self, item: Any) -> Any:
        return images.from_json(item, self.image_limits)

    async def run(self, engine: Engine, payloads: list[Any], deadline: float | None) -> list[Any]:
        if len(payloads) > 1 and self.image_limits.max_request_pixels is not None:  # headers only, off the loop
            await self.decoding.run(images.check_request_pixels, payloads, self.image_limits)
        pictures = await asyncio.gather(*(self._decode(data) for data in payloads))
        detected: list[Detected] = await stage(engine, self.detector.name, pictures, deadline)
        crops = [found.crops for found in detected]
        if self.classifier is not None:
            oriented: list[list[Oriented]] = await fan_out(engine, self.classifier.name, crops, deadline)
            crops = [[item.crop for item in group] for group in oriented]
        read = await fan_out(engine, self.recognizer.name, [lines_for(group) for group in crops], deadline)
        return [self._lines(found, texts) for found, texts in zip(detected, read, strict=True)]

    async def _decode(self, data: bytes) -> Any:
        rgb = await images.decode_async(data, self.image_limits, pool=self.decoding)
        self.detector.check_size(rgb.shape[0], rgb.shape[1])  # before a tensor of gigabytes is built
        return np.ascontiguousarray(rgb[:, :, ::-1])  # the models were trained on BGR, as OpenCV reads

    def _lines(self, found: Detected, texts: list[tuple[str, float]]) -> dict[str, Any]:
        lines = [
            {"text": text, "score": round(score, 4), "box": box}
            for box, (text, score) in zip(found.boxes, texts, strict=True)
            if score >= self.text_score
        ]
        return {"lines": lines}

    async def aclose(self) -> None:
        self.decoding.close()
