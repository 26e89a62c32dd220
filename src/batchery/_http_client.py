"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for tests and load that httpx's pool cannot keep up with.

It speaks just enough HTTP: requests with Content-Length, responses with Content-Length (what batchery and most
servers send for JSON). One connection carries one request at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(slots=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One keep-alive connection to `host:port`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        reader, writer = await asyncio.open_connection(host, parts.port or 80)
        return cls(reader, writer, f"{host}:{parts.port or 80}")

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> RawResponse:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}", f"Content-Length: {len(body)}"]
        if body:
            lines.append("Content-Type: application/json")
        lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        parsed: dict[str, str] = {}
        for line in header_lines:
            if line:
                key, _, value = line.partition(":")
                parsed[key.strip().lower()] = value.strip()
        length = int(parsed.get("content-length", "0"))
        payload = await self._reader.readexactly(length) if length else b""
        return RawResponse(status, parsed, payload)

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


async def post_many(url: str, path: str, bodies: Sequence[bytes], *, connections: int = 64) -> list[RawResponse]:
    """POST every body to `url + path` over `connections` keep-alive connections; responses in body order."""
    results: list[RawResponse | None] = [None] * len(bodies)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        conn = await Connection.open(url)
        try:
            while next_index < len(bodies):
                index = next_index
                next_index += 1
                results[index] = await conn.request("POST", path, bodies[index])
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(min(connections, len(bodies)))))
    return [r for r in results if r is not None]
