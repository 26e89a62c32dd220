"""The parts of `rapidocr-onnxruntime` we reuse: its model files, configuration and pre/post-processing helpers."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from batchery.errors import ModelLoadError


def package() -> Any:
    try:
        import rapidocr_onnxruntime
    except ImportError as exc:
        raise ModelLoadError("the OCR example needs rapidocr-onnxruntime: pip install 'batchery[ocr]'") from exc
    return rapidocr_onnxruntime


@functools.cache
def config() -> dict[str, Any]:
    """rapidocr's own `config.yaml`, so that our stages read text exactly as `RapidOCR()` does (read once; the
    stages only read it)."""
    from rapidocr_onnxruntime.utils import read_yaml

    root = Path(package().__file__).parent
    cfg: dict[str, Any] = read_yaml(str(root / "config.yaml"))
    for section in ("Det", "Cls", "Rec"):
        cfg[section]["model_path"] = str(root / cfg[section]["model_path"])
    return cfg
