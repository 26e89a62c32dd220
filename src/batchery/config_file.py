"""`batchery serve batchery.toml`: server settings and several models from one TOML file.

    [server]
    port = 8000
    cache = "memory"

    [[models]]
    target = "embedding"            # a built-in name, path/to/file.py:Class or package.module:Class
    max_batch_size = 32
    devices = "auto"

    [[models]]
    target = "examples/quickstart.py:Shout"
    name = "shout"
    workers = 1

Relative file targets are read relative to the config file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from batchery.config import Settings, check_type
from batchery.errors import ConfigError
from batchery.spec import ModelSpec, Served


def load(path: str | Path) -> tuple[dict[str, Any], list[Served]]:
    """The `[server]` settings (checked for type; BATCHERY_* variables and flags beat them) and the models listed."""
    path = Path(path)
    try:
        # TOML is UTF-8 whatever the locale says; a byte-order mark (Windows editors write one) is not an error.
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError as exc:
        raise ConfigError(f"no such config file: {path}") from exc
    except OSError as exc:  # a folder, no permission
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 (byte {exc.start}): TOML files are UTF-8; save it as UTF-8 and try again"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    unknown = set(data) - {"server", "models"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}; use [server] and [[models]]")
    server = data.get("server", {})
    if not isinstance(server, dict):
        raise ConfigError(f"{path}: server must be a table: write [server] with one setting per line below it")
    known = {f.name for f in dataclasses.fields(Settings)}
    if set(server) - known:
        raise ConfigError(f"{path}: unknown [server] setting(s): {', '.join(sorted(set(server) - known))}")
    for key, value in server.items():
        try:
            check_type(key, value)
        except ConfigError as exc:
            raise ConfigError(f"{path}: [server] {exc.message}") from exc
    entries = data.get("models", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: list at least one model as [[models]] with a target")
    return dict(server), [_model(path, index, entry) for index, entry in enumerate(entries)]


def _model(path: Path, index: int, entry: Any) -> Served:
    from batchery.loader import BUILTIN, served

    where = f"{path}: models[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("target"), str):
        raise ConfigError(f"{where} needs a target: a built-in name, path/to/file.py:Class or package.module:Class")
    settings = dict(entry)
    target = settings.pop("target")
    module_part = target.rpartition(":")[0]
    if target not in BUILTIN and (module_part.endswith(".py") or "/" in module_part):
        target = str((path.parent / Path(module_part).expanduser()).resolve()) + ":" + target.rpartition(":")[2]
    return served(target, ModelSpec.from_mapping(settings, where))
