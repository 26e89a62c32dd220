"""Reload triggers beside the admin route: SIGHUP reloads every model, an opt-in watch reloads on file change."""

from __future__ import annotations

import asyncio
import logging
import os

from batchery.engine import Engine, ModelHandle
from batchery.errors import BatcheryError

log = logging.getLogger("batchery.engine")


async def reload_all(engine: Engine) -> dict[str, str]:
    """Reload every model, one after the other; map each name to its new version, or to the error that kept the
    old version serving."""
    return {name: await _reload(handle) for name, handle in engine.handles.items()}


async def _reload(handle: ModelHandle) -> str:
    """`handle.reload()` that never raises: the new version, or "failed: why" with the old version serving on.
    Neither SIGHUP's other models nor the watch's later looks may be stopped by one failure."""
    try:
        return await handle.reload()
    except BatcheryError as exc:  # logged and counted by the handle
        return f"failed: {exc.message}"
    except Exception as exc:
        log.exception("reload of model '%s' failed", handle.name)
        return f"failed: {exc!r}"


class FileWatch:
    """Polls the files models were loaded from (once a second by default) and reloads a model when one changes."""

    def __init__(self, engine: Engine, interval: float = 1.0) -> None:
        self.engine = engine
        self.interval = interval
        self._seen = {name: self._stamps(name) for name in engine.handles}

    def _stamps(self, name: str) -> dict[str, float]:
        stamps = {}
        for path in self.engine.handles[name].watch_files:
            try:
                stamps[path] = os.stat(path).st_mtime
            except OSError:
                stamps[path] = -1.0
        return stamps

    async def run(self) -> None:
        """Until cancelled: reload each model whose files changed since the last look."""
        while True:
            await asyncio.sleep(self.interval)
            for name in self.engine.handles:
                stamps = self._stamps(name)
                seen, self._seen[name] = self._seen[name], stamps
                if stamps == seen or stamps.keys() != seen.keys():  # a reload to other files: watch those now
                    continue
                log.info("model '%s': its files changed, reloading", name)
                await _reload(self.engine.handles[name])
