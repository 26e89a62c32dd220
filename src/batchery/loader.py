"""Turn a target such as `path/to/file.py:MyModel` or `package.module:MyModel` into a model instance."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from batchery.errors import BatcheryError, ConfigError
from batchery.spec import ModelSpec, Served
from batchery.workers import file_modules

BUILTIN = {
    "embedding": "batchery.models.embedding:SentenceEmbedder",
    "ocr": "batchery.examples.ocr:OcrPipeline",  # issue 7: the OCR pipeline example
}

#: The module each model file was last executed as, and how many times it was executed, by resolved path.
_executed: dict[Path, ModuleType] = {}
_executions: dict[Path, int] = {}


def served(target: str, spec: ModelSpec | None = None, *, fresh: bool = False) -> Served:
    """The model `target` names, with its settings and a re-importer so a hot reload picks up new code.

    `fresh`: import its module again even if it was imported before (a reload to a changed file)."""
    module_part = BUILTIN.get(target, target).rpartition(":")[0]
    files = (str(Path(module_part).expanduser().resolve()),) if module_part.endswith(".py") else ()
    return Served(load_model(target, fresh=fresh), spec or ModelSpec(), lambda: load_model(target, fresh=True), files)


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
    if not isinstance(obj, type):
        return obj
    try:
        return obj()
    except BatcheryError:
        raise
    except Exception as exc:
        raise ConfigError(f"{target}: creating the model failed: {exc!r}") from exc


def _import(module_part: str, fresh: bool = False) -> Any:
    if module_part.endswith(".py") or "/" in module_part:
        path = Path(module_part).expanduser().resolve()  # `~/models/m.py` as a shell would read it
        if not path.is_file():
            raise ConfigError(f"no such file: {path}")
        if not fresh and path in _executed:
            return _executed[path]  # executed once for all its targets, so that their objects pickle together
        _importable(path.parent)  # as `python file.py` does: the file's own imports find the modules beside it
        name = _module_name(path)
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # lets copy.deepcopy and pickling find the class again
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # a syntax error, a missing import, or any error the file raises as it runs
            raise ConfigError(_import_failure(str(path), exc)) from exc
        _executed[path] = module
        file_modules.register(name, str(path))  # spawned children (process pools) import it by this name
        return module
    _importable(Path.cwd())  # as `python -m` and uvicorn do: a package in the current folder can be served
    try:
        module = importlib.import_module(module_part)
        return importlib.reload(module) if fresh else module
    except Exception as exc:
        raise ConfigError(_import_failure(repr(module_part), exc)) from exc


def _importable(folder: Path) -> None:
    """Put `folder` on the import path (last: installed packages keep their precedence); spawned children
    (process workers and pools) inherit it."""
    entry = str(folder)
    if entry not in sys.path:
        sys.path.append(entry)


def _module_name(path: Path) -> str:
    """A module name of this file's own: two files with one stem must not share it, and each hot reload (which
    executes the file again) gets a new one, so objects built by an earlier execution still pickle by name."""
    digest = hashlib.sha1(str(path).encode(), usedforsecurity=False).hexdigest()[:8]
    stem = re.sub(r"\W", "_", path.stem)  # a dot or dash in the file name must not make it a package path
    name = f"batchery_user_{stem}_{digest}"
    count = _executions[path] = _executions.get(path, 0) + 1
    return name if count == 1 else f"{name}_{count}"


def _import_failure(what: str, exc: Exception) -> str:
    """One line that says why `what` could not be imported and what to do about it."""
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else f"line {exc.lineno}"
        return f"cannot import {what}: {type(exc).__name__} at {where}: {exc.msg}. Fix the code and try again"
    if isinstance(exc, ImportError):
        hint = f" (is {exc.name!r} installed, and is its name right?)" if isinstance(exc, ModuleNotFoundError) else ""
        return f"cannot import {what}: {exc}{hint}"
    return f"cannot import {what}: it raised {exc!r} as it ran"
