"""The OCR example: text rendered with Pillow is read back through the pipeline's stages, over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from batchery.examples.ocr import OcrPipeline
from batchery.testing import running_server

pytest.importorskip("rapidocr_onnxruntime")

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def render(lines: list[str], *, width: int = 480, upside_down: bool = False) -> bytes:
    font = ImageFont.truetype(str(FONT), 28) if FONT.exists() else ImageFont.load_default(28)
    image = Image.new("RGB", (width, 30 + 50 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((20, 15 + 50 * index), line, fill="black", font=font)
    if upside_down:
        image = image.rotate(180)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def texts(output: dict[str, object]) -> list[str]:
    lines = output["lines"]
    assert isinstance(lines, list)
    return [str(line["text"]).replace(" ", "") for line in lines]


@pytest.mark.slow
async def test_ocr_reads_rendered_text_over_http() -> None:
    pipeline = OcrPipeline()
    async with running_server([pipeline]) as server, httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        first = render(["Invoice 12345", "Total 42.50"])
        second = render(["batchery reads"], upside_down=True)
        third = render(["Hello world"])

        upload = await http.post("/v1/models/ocr/predict", files={"file": ("a.png", first, "image/png")})
        assert upload.status_code == 200, upload.text
        output = upload.json()["output"]
        assert texts(output) == ["Invoice12345", "Total42.50"]
        line = output["lines"][0]
        assert 0.5 <= line["score"] <= 1.0
        assert len(line["box"]) == 4  # four corners, in the original image's pixels
        assert all(0 <= x <= 480 and 0 <= y <= 130 for x, y in line["box"])

        # Concurrent requests: their boxes share the classifier's and recogniser's batches, answers stay apart.
        pair = [("f", ("1.png", third, "image/png")), ("f", ("2.png", first, "image/png"))]
        responses = await asyncio.gather(
            http.post("/v1/models/ocr/predict", json={"input": base64.b64encode(second).decode()}),
            http.post("/v1/models/ocr/predict", files=pair),
        )
        assert texts(responses[0].json()["output"]) == ["batcheryreads"]
        # Detection may split a line at a wide space: compare the text read, not how it was cut into boxes.
        assert ["".join(texts(o)) for o in responses[1].json()["outputs"]] == ["Helloworld", "Invoice12345Total42.50"]

        blank = await http.post("/v1/models/ocr/predict", files={"file": ("b.png", render([]), "image/png")})
        assert blank.json()["output"] == {"lines": []}
        corrupt = await http.post("/v1/models/ocr/predict", files={"file": ("c.png", first[:100], "image/png")})
        assert corrupt.status_code == 422
        models = {m["name"]: m for m in (await http.get("/v1/models")).json()["models"]}
        assert models["ocr"]["batching"] == "pipeline: ocr-det -> ocr-cls -> ocr-rec"
        assert server.engine.handles["ocr-rec"].batcher.stats.items >= 5


def transparent_text(text: str) -> Image.Image:
    """Black text on a fully transparent background (its hidden pixels black too, as many editors store them)."""
    font = ImageFont.truetype(str(FONT), 28) if FONT.exists() else ImageFont.load_default(28)
    clear = Image.new("RGBA", (480, 80), (0, 0, 0, 0))
    ImageDraw.Draw(clear).text((20, 25), text, fill=(0, 0, 0, 255), font=font)
    return clear


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
async def test_hostile_images_get_a_4xx_and_never_touch_other_requests() -> None:
    pipeline = OcrPipeline()
    good = render(["Invoice 12345"])
    clear = transparent_text("Hello world")
    one_bit = Image.new("1", (6300, 6300), 1)  # 40 Mpx in a few KB: under the per-image limit
    async with running_server([pipeline]) as server, httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        path = "/v1/models/ocr/predict"
        normal = asyncio.ensure_future(http.post(path, files={"file": ("g.png", good, "image/png")}))

        for size in ((3000, 2), (2, 3000), (1000, 1), (40, 2000)):  # too thin, or gigabytes for the detector
            thin = png_of(Image.new("RGB", size, "white"))
            answer = await http.post(path, files={"file": ("t.png", thin, "image/png")})
            assert answer.status_code == 422, (size, answer.text)
            assert f"{size[0]}x{size[1]} pixels" in answer.json()["error"]["message"]

        bits = png_of(one_bit)
        assert len(bits) < 50_000
        many = await http.post(path, files=[("f", (f"{i}.png", bits, "image/png")) for i in range(3)])
        assert many.status_code == 413, many.text
        assert "per request" in many.json()["error"]["message"]

        for route, body in (("ocr-rec", {"input": "abc"}), ("ocr-det", {"input": [1, 2]}), ("ocr-cls", {"input": 3})):
            garbage = await http.post(f"/v1/models/{route}/predict", json=body)
            assert garbage.status_code == 422, (route, garbage.text)
            assert "/v1/models/ocr/predict" in garbage.json()["error"]["message"]

        transparent = await http.post(path, files={"file": ("a.png", png_of(clear), "image/png")})
        assert "".join(texts(transparent.json()["output"])) == "Helloworld"
        assert "".join(texts((await normal).json()["output"])) == "Invoice12345"
