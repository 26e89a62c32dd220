"""The benchmark's images: lines of text rendered with DejaVu Sans (Pillow's default font if it is missing)."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
TEXT = """invoice total amount due order number customer address street city payment date account
reference shipping quantity price item description tax discount balance receipt thank you for your business"""
WORDS = TEXT.split()


def images(count: int = 12, seed: int = 7) -> list[bytes]:
    """`count` PNG images of 640x320, each with 3 to 6 lines of words and numbers."""
    rng = random.Random(seed)
    font = ImageFont.truetype(str(FONT), 24) if FONT.exists() else ImageFont.load_default(24)
    out = []
    for _ in range(count):
        image = Image.new("RGB", (640, 320), "white")
        draw = ImageDraw.Draw(image)
        for line in range(rng.randint(3, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))] + [str(rng.randint(10, 99999))]
            draw.text((24, 16 + 50 * line), " ".join(words), fill="black", font=font)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out
