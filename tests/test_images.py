"""Image inputs: base64 and multipart uploads, decoded off the loop, with 413/415/422 for bad ones."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from batchery import Engine, Model, images
from batchery.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from batchery.pipeline import Pipeline
from batchery.pipeline.base import stage
from batchery.testing import running_server


def png(width: int = 8, height: int = 6, color: str = "red", mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, fmt)
    return buffer.getvalue()


class Area(Model):
    name = "area"
    workers = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        return [int(shape[0] * shape[1]) for shape in batch]


class Shapes(Pipeline):
    """Decodes each image off the loop and answers its height, width and area (the area from a stage)."""

    name = "shapes"
    image_limits = images.ImageLimits(max_bytes=50_000, max_pixels=100 * 100)

    def stages(self) -> list[Any]:
        return [Area()]

    def decode_request(self, item: Any) -> Any:
        return images.from_json(item, self.image_limits)

    async def run(self, engine: Engine, payloads: list[Any], deadline: float | None) -> list[Any]:
        arrays = [await images.decode_async(data, self.image_limits) for data in payloads]
        shapes = [array.shape for array in arrays]
        areas = await stage(engine, "area", shapes, deadline)
        return [{"height": s[0], "width": s[1], "area": a} for s, a in zip(shapes, areas, strict=True)]


def test_decode_converts_modes_and_shrinks() -> None:
    rgb = images.decode(png(mode="L", color="white"))
    assert rgb.shape == (6, 8, 3)
    assert rgb.dtype == np.uint8
    small = images.decode(png(400, 200, fmt="JPEG"), max_side=100)
    assert max(small.shape[:2]) <= 100


@pytest.mark.parametrize(
    ("data", "error", "says"),
    [
        (b"hello, not an image", UnsupportedMediaType, "not an image"),
        (png()[:40], InvalidInput, "could not be decoded"),
        (png(200, 200), PayloadTooLarge, "pixels"),
    ],
)
def test_decode_refuses_bad_images(data: bytes, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        images.decode(data, images.ImageLimits(max_pixels=100 * 100))


def _corrupt_samples() -> list[bytes]:
    jpeg, bmp = png(40, 30, fmt="JPEG"), png(fmt="BMP")
    samples = [png()[:20], jpeg[:10], jpeg[:100], jpeg[:200], bmp[:20], bmp[:40], b"BM" + bytes(range(60))]
    samples += [b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 30]
    flipped = bytearray(bmp)
    flipped[14:30] = b"\xff" * 16  # a BMP whose header claims nonsense
    return [*samples, bytes(flipped)]


@pytest.mark.parametrize("data", _corrupt_samples())
def test_truncated_or_corrupt_images_of_an_accepted_format_are_422_not_500(data: bytes) -> None:
    # Pillow raises OSError, SyntaxError, struct.error... from `open` as well as from decoding.
    with pytest.raises((InvalidInput, UnsupportedMediaType, PayloadTooLarge)):
        images.decode(data)


def test_transparency_lies_on_white_and_16_bit_grey_is_scaled_not_clipped() -> None:
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    clear.putpixel((0, 0), (0, 0, 0, 255))
    buffer = io.BytesIO()
    clear.save(buffer, "PNG")
    rgb = images.decode(buffer.getvalue())
    assert rgb[0, 0].tolist() == [0, 0, 0]  # the opaque black pixel
    assert rgb[1, 1].tolist() == [255, 255, 255]  # transparent: white, not the black it was stored as

    grey = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    buffer = io.BytesIO()
    grey.save(buffer, "PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode.startswith("I")
    assert images.decode(buffer.getvalue())[0, 0].tolist() == [128, 128, 128]

    for stored, shown in ((200, 200), (-5, 0), (40000, 156)):  # 32-bit TIFF: 8-bit values kept, negatives black
        tiff = io.BytesIO()
        Image.fromarray(np.full((2, 2), stored, dtype=np.int32), "I").save(tiff, "TIFF")
        assert images.decode(tiff.getvalue())[0, 0].tolist() == [shown] * 3, stored


def test_request_pixel_budget_counts_every_image_from_its_header() -> None:
    limits = images.ImageLimits(max_pixels=100 * 100, max_request_pixels=150 * 100)
    images.check_request_pixels([png(100, 100)], limits)  # one image: its own limit applies
    images.check_request_pixels([png(100, 50), png(100, 100)], limits)
    with pytest.raises(PayloadTooLarge, match="per request"):
        images.check_request_pixels([png(100, 100), png(100, 100)], limits)
    assert images.pixels(png(30, 20)) == 600


def test_decode_refuses_formats_not_allowed_and_bytes_over_limit() -> None:
    with pytest.raises(UnsupportedMediaType):
        images.decode(png(fmt="BMP"), images.ImageLimits(formats=frozenset({"PNG"})))
    with pytest.raises(PayloadTooLarge, match="bytes"):
        images.decode(png(), images.ImageLimits(max_bytes=10))


def test_from_json_forms() -> None:
    data = png()
    text = base64.b64encode(data).decode()
    assert images.from_json(text) == data
    assert images.from_json({"image": text}) == data
    assert images.from_json("data:image/png;base64," + text) == data
    assert images.from_json(data) == data
    for bad in ("not base64!", {"img": text}, 42, ""):
        with pytest.raises((ValueError, TypeError)):
            images.from_json(bad)
    with pytest.raises(PayloadTooLarge):
        images.from_json(text, images.ImageLimits(max_bytes=10))


def test_media_types() -> None:
    images.check_media_type("image/png")
    images.check_media_type("application/octet-stream")
    images.check_media_type(None)
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        images.check_media_type("text/plain; charset=utf-8")


@pytest.fixture
async def http() -> Any:
    async with running_server([Shapes()]) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield client


async def test_upload_one_and_several_files(http: httpx.AsyncClient) -> None:
    one = await http.post("/v1/models/shapes/predict", files={"file": ("a.png", png(8, 6), "image/png")})
    assert one.status_code == 200, one.text
    assert one.json()["output"] == {"height": 6, "width": 8, "area": 48}
    files = [
        ("files", ("a.png", png(8, 6), "image/png")),
        ("files", ("b.jpg", png(3, 5, fmt="JPEG"), "image/jpeg")),
        ("files", ("c.bin", png(2, 2), "application/octet-stream")),
    ]
    many = await http.post("/v1/models/shapes/predict", files=files, data={"note": "ignored"})
    assert [o["area"] for o in many.json()["outputs"]] == [48, 15, 4]


async def test_base64_json(http: httpx.AsyncClient) -> None:
    body = {"inputs": [base64.b64encode(png(4, 4)).decode(), {"image": base64.b64encode(png(2, 3)).decode()}]}
    response = await http.post("/v1/models/shapes/predict", json=body)
    assert response.status_code == 200, response.text
    assert [o["area"] for o in response.json()["outputs"]] == [16, 6]


@pytest.mark.parametrize(
    ("files", "status", "says"),
    [
        ({"file": ("a.txt", b"hello", "text/plain")}, 415, "text/plain"),
        ({"file": ("a.bin", b"hello, not an image", "application/octet-stream")}, 415, "not an image"),
        ({"file": ("a.png", png()[:40], "image/png")}, 422, "could not be decoded"),
        ({"file": ("big.png", png(200, 200), "image/png")}, 413, "pixels"),
        ({"file": ("huge.bmp", png(140, 140, fmt="BMP"), "image/bmp")}, 413, "bytes"),
    ],
)
async def test_bad_uploads(http: httpx.AsyncClient, files: dict[str, Any], status: int, says: str) -> None:
    response = await http.post("/v1/models/shapes/predict", files=files)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]


async def test_bad_forms_and_json(http: httpx.AsyncClient) -> None:
    no_file = await http.post("/v1/models/shapes/predict", data={"x": "1"}, files={"empty": ("", b"", "text/plain")})
    assert no_file.status_code in (415, 422)
    just_fields = await http.post(
        "/v1/models/shapes/predict",
        content=b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert just_fields.status_code == 422
    assert "no file" in just_fields.json()["error"]["message"]
    broken = await http.post(
        "/v1/models/shapes/predict", content=b"garbage", headers={"content-type": "multipart/form-data"}
    )
    assert broken.status_code == 400
    bad_base64 = await http.post("/v1/models/shapes/predict", json={"input": "%%%"})
    assert bad_base64.status_code == 422
    assert "base64" in bad_base64.json()["error"]["message"]
    missing = await http.post("/v1/models/nope/predict", files={"file": ("a.png", png(), "image/png")})
    assert missing.status_code == 404
