"""The Redis rate limit backend: one token bucket per client shared by every replica, updated atomically.

A Lua script reads, refills and takes from the bucket in one step on the Redis server, with Redis' own clock,
so replicas never race or disagree on time. While Redis is down, each replica falls back to its own
in-process buckets (limits then apply per replica) until Redis is back.
"""

from __future__ import annotations

from typing import Any

from batchery.app.ratelimit import Decision, TokenBuckets
from batchery.cache.link import RedisLink, RedisUnavailable

PREFIX = "batchery:ratelimit:"

# KEYS[1]: the bucket. ARGV: rate (tokens/s), burst, cost. Returns {allowed (0|1), tokens left (a string:
# Redis turns Lua numbers into integers)}. The key expires once the bucket would be full again anyway.
TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then
  tokens, at = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


class RedisBuckets:
    """Token buckets in Redis; `fallback` answers while Redis is unreachable."""

    def __init__(self, link: RedisLink, rate: float, burst: int) -> None:
        self.link = link
        self.rate = rate
        self.burst = burst
        self.fallback = TokenBuckets(rate, burst)
        self._script: Any = link.client.register_script(TAKE)

    async def take(self, client: str) -> Decision:
        try:
            allowed, tokens = await self.link.run(
                lambda redis: self._script(keys=[PREFIX + client], args=[self.rate, self.burst, 1], client=redis)
            )
        except RedisUnavailable:
            return self.fallback.take_now(client)
        return Decision(bool(allowed), float(tokens), self.burst, self.rate)
