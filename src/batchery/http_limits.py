"""Bounds on what one HTTP connection may cost, for uvicorn's httptools protocol (which has none of its own).

- A request head (line and headers) larger than `max_header_bytes` gets 431 and the connection is closed.
- A head not complete within `header_timeout` of its first byte, or of the connection opening (a client that
  connects and says nothing, or trickles a header a byte at a time: slowloris), gets 408 and is closed.
- A body not complete within `body_timeout` of its head (slow, or shorter than its Content-Length) gets 408.
- A client that reads nothing of what is written to it for `send_timeout` (the socket stays full, and what waits to be
  sent does not shrink) is disconnected and the response dropped: otherwise its response would sit in the server's
  memory for as long as it keeps the connection open (closing a transport waits for its buffer to drain, so the
  keep-alive timeout does not end it).
Every refusal, and uvicorn's 400 for bytes that are not HTTP, is a small JSON error body in the shape of the
protocol the request's path belongs to (KServe V2's under /v2, OpenAI's on /v1/embeddings, batchery's elsewhere),
like the app's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from batchery.app.scope import ON_HANGUP
from batchery.errors import BatcheryError
from batchery.protocols import error_response


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head that is over the limit."""


class _Refused(BatcheryError):
    """A refusal of the protocol layer, carrying its own status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _refusal(path: str, status: int, reason: bytes, code: str, message: str) -> bytes:
    """The whole response: `message` as the protocol serving `path` writes errors, then the connection closes."""
    body = bytes(error_response(path, _Refused(status, code, message)).body)
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, reason, len(body)) + body


def _path(url: bytes) -> str:
    """The path of a request target read so far (empty when none was), without its query."""
    return url.partition(b"?")[0].decode("latin-1")


class LimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head size limit and head/body read timeouts (see the module doc)."""

    max_header_bytes = 64 * 1024
    header_timeout = 10.0
    body_timeout = 60.0
    send_timeout = 60.0

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._reading_head = True
        self._head_bytes = 0  # bytes received while the head is read: bounds what the parser buffers
        self._head_parsed = 0  # the head's size as parsed: bounds a whole head that arrives in one read
        self._began_in_read = False  # a message began in the read being parsed
        self._read_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._unsent = 0  # bytes waiting to be sent when the send timer was armed

    @classmethod
    def configured(
        cls, *, max_header_bytes: int, header_timeout: float, body_timeout: float, send_timeout: float = 60.0
    ) -> type[LimitedHttpTools]:
        """A subclass carrying these limits (uvicorn builds one protocol instance per connection from a class)."""
        limits = {
            "max_header_bytes": max_header_bytes,
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "send_timeout": send_timeout,
        }
        return type("LimitedHttpTools", (cls,), limits)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm(self.header_timeout)  # a connection that never sends a byte must not stay open forever

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_send_timer()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_started:
            hang_up = cycle.scope.get(ON_HANGUP)
            if callable(hang_up):
                hang_up()  # the request is cancelled now, not computed for a client that is gone

    def data_received(self, data: bytes) -> None:
        self._began_in_read = False
        super().data_received(data)
        if self._reading_head and not self.transport.is_closing():
            # A head that began inside this read shares it with what came before (a previous request's body,
            # pipelined): count it from the next read on; meanwhile its parsed size bounds it (`_count_head`).
            if not self._began_in_read:
                self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse_large_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._began_in_read = True
        self._head_bytes = self._head_parsed = 0
        self._arm(self.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)  # "name: value\r\n"
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        """Stop the parser once the head is over the limit, even when it all came in one read: the request must
        not reach the app. The parser turns the exception into its own error, which `send_400_response` gets."""
        self._head_parsed += size
        if self._head_parsed > self.max_header_bytes:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._arm(self.body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self._head_parsed > self.max_header_bytes:  # `_count_head` stopped the parser
            self._refuse_large_head()
            return
        # uvicorn's own answer to bytes that are not HTTP is text/plain; every batchery error is JSON.
        self._refuse(400, b"Bad Request", "bad_request", f"{msg} Send HTTP/1.1 with a valid request line and headers")

    def _refuse_large_head(self) -> None:
        self._refuse(
            431,
            b"Request Header Fields Too Large",
            "headers_too_large",
            f"the request line and headers are over the limit of {self.max_header_bytes} bytes",
        )

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:  # the socket is full: the client has this long to read some of it
            self._arm_send()

    def _arm_send(self) -> None:
        self._unsent = self.transport.get_write_buffer_size()
        self._send_timer = self.loop.call_later(self.send_timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_send_timer()

    def _stop_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if self.transport.get_write_buffer_size() < self._unsent:  # a slow reader, but a reader: more time
            self._arm_send()
            return
        # abort(), not close(): close() waits for the buffer to drain, which a client that does not read never lets
        # happen. The request is recorded as a hang-up if its response had not started (connection_lost).
        self.transport.abort()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # too late for a status: just end it
            return
        what = "headers" if self._reading_head else "body"
        limit = self.header_timeout if self._reading_head else self.body_timeout
        message = f"the request {what} did not arrive within {limit:g} s; send it at once, or not at all"
        self._refuse(408, b"Request Timeout", "request_timeout", message)

    def _refuse(self, status: int, reason: bytes, code: str, message: str) -> None:
        self._disarm()
        if self.cycle is not None:
            self.cycle.disconnected = True  # the app, if running, reads a disconnect and its writes are dropped
        self.transport.write(_refusal(_path(getattr(self, "url", b"")), status, reason, code, message))
        self.transport.close()


class CoalescingTransport:
    """A transport that sends a response head and the body written right after it as one write (one syscall,
    one TCP segment): uvicorn writes them separately. A write waits at most until the loop's next iteration."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._pending += data

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def _flush(self) -> None:
        if self._pending is not None:
            data, self._pending = self._pending, None
            if not self._transport.is_closing():
                self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
