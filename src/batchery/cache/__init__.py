"""The response cache: a backend per model (memory or Redis), keys from canonical requests, one compute per key.

No web framework in here: protocol adapters call `ResponseCache.get_or_compute` (see cache/responses.py).
"""

from batchery.cache.keys import cache_key, canonical_json
from batchery.cache.memory import MemoryCache
from batchery.cache.responses import Cache, CacheUnavailable, ResponseCache
from batchery.cache.singleflight import SingleFlight

__all__ = ["Cache", "CacheUnavailable", "MemoryCache", "ResponseCache", "SingleFlight", "cache_key", "canonical_json"]
