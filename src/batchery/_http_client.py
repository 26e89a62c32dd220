"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for tests and load that httpx's pool cannot keep up with.

Requests carry a Content-Length. Responses may be framed by Content-Length, chunked transfer coding or the end of the
connection (HTTP/1.0 style); anything it cannot parse raises `ProtocolError`. One connection carries one request at
a time; after a response with `keep_alive` false, open a new one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

_STATUS_LINE = re.compile(r"HTTP/1\.([01]) (\d{3})(?: .*)?")
_NO_BODY = (204, 304)


class ProtocolError(ValueError):
    """The server's response is not HTTP/1.x this client can read; the connection is no longer usable."""


@dataclass(slots=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    keep_alive: bool = True


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
        while True:
            minor, status, parsed = await self._read_head()
            if not 100 <= status < 200 or status == 101:
                break  # 1xx interim answers (100 Continue, 103 Early Hints) precede the real one
        keep_alive = _keep_alive(minor, parsed)
        if method == "HEAD" or status in _NO_BODY or 100 <= status < 200:
            payload = b""
        elif "chunked" in parsed.get("transfer-encoding", "").lower():
            payload = await self._read_chunked()
        elif "content-length" in parsed:
            payload = await self._reader.readexactly(_content_length(parsed["content-length"]))
        else:
            # No framing: the body runs to the end of the connection (RFC 9112, section 6.3).
            payload = await self._reader.read()
            keep_alive = False
        return RawResponse(status, parsed, payload, keep_alive)

    async def _read_head(self) -> tuple[int, int, dict[str, str]]:
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise ProtocolError(f"malformed status line {status_line[:80]!r}")
        parsed: dict[str, str] = {}
        for line in header_lines:
            if line:
                key, sep, value = line.partition(":")
                if not sep:
                    raise ProtocolError(f"malformed header line {line[:80]!r}")
                parsed[key.strip().lower()] = value.strip()
        return int(match[1]), int(match[2]), parsed

    async def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size_line = (await self._reader.readuntil(b"\r\n"))[:-2]
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)  # a chunk extension follows a ';'
            except ValueError:
                raise ProtocolError(f"malformed chunk size {size_line[:80]!r}") from None
            if size < 0:
                raise ProtocolError(f"malformed chunk size {size_line[:80]!r}")
            if size == 0:
                while await self._reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields, then the blank line that ends the message
                return b"".join(chunks)
            chunks.append(await self._reader.readexactly(size))
            if await self._reader.readexactly(2) != b"\r\n":
                raise ProtocolError("a chunk does not end with CRLF")

    def abort(self) -> None:
        """Drop the connection at once (from a cancelled task, where awaiting `close` is not an option)."""
        self._writer.transport.abort()

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


def _content_length(raw: str) -> int:
    if not raw.isdigit():  # also refuses a sign, spaces and a list of values
        raise ProtocolError(f"malformed Content-Length {raw[:40]!r}")
    return int(raw)


def _keep_alive(minor: int, headers: dict[str, str]) -> bool:
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    return "keep-alive" in tokens if minor == 0 else "close" not in tokens


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
                response = await conn.request("POST", path, bodies[index])
                results[index] = response
                if not response.keep_alive:
                    await conn.close()
                    conn = await Connection.open(url)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(min(connections, len(bodies)))))
    return [r for r in results if r is not None]
