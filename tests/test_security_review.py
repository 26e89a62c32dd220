"""What the eighth session's security review found, over real sockets: each test failed before its fix.

- A client that never reads its response kept it in the server's memory for as long as it held the connection.
- `/dashboard/data` decided at start-up whether it needed the admin key: when `api_keys_file` listed no key then and
  a rotation added keys later, every user key could read it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from batchery.testing import EchoModel, running_server

PREDICT = b"/v1/models/echo/predict"


def _address(server: Any) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


async def _until(condition: Any, within: float) -> bool:
    """Poll `condition()` until it holds or `within` seconds pass."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_a_client_that_never_reads_its_response_is_disconnected_and_the_response_dropped() -> None:
    # A 7 MB answer is more than the kernel's socket buffers hold, so the rest waits in the server's memory.
    body = orjson.dumps({"input": "x" * 7_000_000})
    request = b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (
        PREDICT,
        len(body),
    )
    async with running_server([EchoModel()], send_timeout_seconds=0.5) as server:
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, and never read
        client.setblocking(False)
        try:
            await loop.sock_connect(client, _address(server))
            await loop.sock_sendall(client, request + body)
            state = server._uvicorn.server_state
            assert await _until(lambda: len(state.connections) == 1, 10), "the request never arrived"
            # Before the fix the connection stayed open (and its answer buffered) until the client chose to leave.
            assert await _until(lambda: not state.connections, 10), "the server still holds the unread response"
            received = 0
            try:
                while chunk := await asyncio.wait_for(loop.sock_recv(client, 1 << 20), 10):
                    received += len(chunk)
            except ConnectionResetError:
                pass
            assert received < len(body), "the whole answer was still delivered: nothing was dropped"
        finally:
            client.close()


async def test_dashboard_data_needs_the_admin_key_once_a_rotation_turns_keys_on(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# no key yet: auth is off\n")
    async with (
        running_server([EchoModel()], api_keys_file=str(keys)) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        assert (await http.get("/dashboard/data")).status_code == 200  # keys off: open, as documented
        keys.write_text("user-key-8e21\n")
        later = time.time() + 5  # a new modification time, whatever the file system's resolution
        os.utime(keys, (later, later))

        async def refused_without_a_key() -> bool:
            return (await http.get("/v1/models")).status_code == 401

        deadline = time.monotonic() + 10  # the file is checked at most once a second
        while not await refused_without_a_key():
            assert time.monotonic() < deadline, "the rotated keys never took effect"
            await asyncio.sleep(0.1)
        user = await http.get("/dashboard/data", headers={"X-API-Key": "user-key-8e21"})
        assert user.status_code == 403, user.text  # it was 200 before the fix
