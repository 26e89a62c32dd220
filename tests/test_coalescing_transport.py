"""Response head and body leave in one write (http_limits.CoalescingTransport): one syscall and one TCP segment."""

from __future__ import annotations

import asyncio

from batchery.http_limits import CoalescingTransport


class RecordingTransport(asyncio.Transport):
    """Records what reaches the socket layer."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def write_eof(self) -> None:
        self.writes.append(b"<eof>")

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_a_head_and_the_body_written_right_after_it_go_out_as_one_write() -> None:
    raw = RecordingTransport()
    transport = CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    transport.write(b"body")
    assert raw.writes == []
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"]
    transport.write(b"a later chunk")  # a stream's next chunk waits one loop iteration at most
    await asyncio.sleep(0)
    assert raw.writes[-1] == b"a later chunk"


async def test_close_and_eof_send_what_is_pending_first_and_nothing_twice() -> None:
    raw = RecordingTransport()
    transport = CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"last")
    transport.write_eof()
    transport.writelines([b"a", b"b"])
    transport.close()
    await asyncio.sleep(0)
    assert raw.writes == [b"last", b"<eof>", b"ab"]
    assert raw.closed
    assert transport.is_closing()  # everything else is the real transport's


async def test_nothing_is_written_to_a_transport_closed_before_the_flush() -> None:
    raw = RecordingTransport()
    transport = CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"too late")
    raw.close()  # e.g. the peer went away
    await asyncio.sleep(0)
    assert raw.writes == []
