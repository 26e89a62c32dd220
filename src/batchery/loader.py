"""Turn a target such as `path/to/file.py:MyModel` or `package.module:MyModel` into a model instance."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from batchery.errors import ConfigError
from batchery.spec import ModelSpec, Served

BUILTIN = {
    "embedding": "batchery.models.embedding:SentenceEmbedder",
    "ocr": "batchery.examples.ocr:OcrPipeline",  # issue 7: the OCR pipeline example
}


def served(target: str, spec: ModelSpec | None = None) -> Served:
    """The model `target` names, with its settings and a re-importer so a hot reload picks up new code."""
    module_part = BUILTIN.get(target, target).rpartition(":")[0]
    files = (str(Path(module_part).resolve()),) if module_part.endswith(".py") else ()
    return Served(load_model(target), spec or ModelSpec(), lambda: load_model(target, fresh=True), files)


def load_model(target: str, *, fresh: bool = False) -> Any:
    """Import the class (or instance) that `target` names and return an instance of it."""
    target = BUILTIN.get(target, target)
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise ConfigError(
            f"cannot read the model target {target!r}. Hint: write path/to/file.py:ClassName, "
            f"package.module:ClassName or one of: {', '.join(BUILTIN)}"
        )
    module = _import(module_part, fresh)
    try:
        obj = getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"{module_part} has no attribute {attr!r}") from exc
    return obj() if isinstance(obj, type) else obj


def _import(module_part: str, fresh: bool = False) -> Any:
    if module_part.endswith(".py") or "/" in module_part:
        path = Path(module_part).resolve()
        if not path.is_file():
            raise ConfigError(f"no such file: {path}")
        name = f"batchery_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # lets copy.deepcopy and pickling find the class again
        spec.loader.exec_module(module)
        return module
    try:
        module = importlib.import_module(module_part)
        return importlib.reload(module) if fresh else module
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_part!r}: {exc}") from exc
