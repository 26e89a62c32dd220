"""Reload triggers beside the admin route: SIGHUP reloads every model, an opt-in watch reloads on file change."""

from __future__ import annotations

import asyncio
import logging
import os

from batchery.engine import Engine
from batchery.errors import BatcheryError

log = logging.getLogger("batchery.engine")


async def reload_all(engine: Engine) -> dict[str, str]:
    """Reload every model, one after the other; map each name to its new version, or to the error that kept the
    old version serving."""
    results: dict[str, str] = {}
    for name, handle in engine.handles.items():
        try:
            results[name] = await handle.reload()
        except BatcheryError as exc:  # logged and counted by the handle; the old version keeps serving
            results[name] = f"failed: {exc.message}"
        except Exception as exc:  # never stops the other models' reloads
            log.exception("reload of model '%s' failed", name)
            results[name] = f"failed: {exc!r}"
    return results


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
                try:
                    await self.engine.handles[name].reload()
                except BatcheryError:
                    pass  # logged and counted by the handle; the old version keeps serving
                except Exception:  # the watch must outlive any failure, or later changes go unseen
                    log.exception("reload of model '%s' failed", name)
