"""batchery: a fast inference server with dynamic batching. Write `setup` and `predict`; batchery serves it."""

from typing import TYPE_CHECKING, Any

from batchery._version import __version__
from batchery.cores import core_slot, granted_cores
from batchery.engine import Engine
from batchery.model import Model

if TYPE_CHECKING:
    from batchery.server import Server, serve

__all__ = ["Engine", "Model", "Server", "__version__", "core_slot", "granted_cores", "serve"]


def __getattr__(name: str) -> Any:
    # The web layer loads on first use, so the engine imports without FastAPI or uvicorn.
    if name in ("Server", "serve"):
        from batchery import server

        return getattr(server, name)
    raise AttributeError(f"module 'batchery' has no attribute {name!r}")
