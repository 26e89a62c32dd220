"""Modules the loader executed from model files, importable by the same name in spawned children.

The loader registers each file it executes under a module name of its own (`batchery_user_...`), which is not on
`sys.path`, so a spawned child cannot import it: pickle sends a function or class by reference (module name and
qualified name), and the child would fail with ModuleNotFoundError. A process pool or worker calls `install` in
the child with the parent's `registered()` names before it unpickles anything, so the child finds each name and
executes the same file under it, only when something it receives refers to it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType

_files: dict[str, str] = {}


def register(name: str, path: str) -> None:
    """Record that the module `name` (already in `sys.modules`) was executed from the file `path`."""
    _files[name] = path


def registered() -> dict[str, str]:
    """Every registered module name with its file: what a spawned child needs to import them by name."""
    return dict(_files)


def install(files: Mapping[str, str]) -> None:
    """In a child: let `import name` (and so unpickling) execute `files[name]` as the module `name`."""
    _files.update(files)
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        file = _files.get(fullname)
        return importlib.util.spec_from_file_location(fullname, file) if file is not None else None
