"""`batchery serve` in a child process, as a user runs it: for tests of signals, exit codes and the process's own
resources. The server's log (stdout and stderr together) is read all along, so its pipe never fills."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Mapping
from pathlib import Path


async def serve_process(
    *args: str, env: Mapping[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, str, asyncio.Task[list[str]]]:
    """`batchery serve ARGS --port 0`, once it logs that it is ready: the process, its URL, and a task that
    returns every line of its log once it exits."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "batchery"), "serve", *args, "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), 120)).decode()
        if not line:
            raise AssertionError("the server exited before it was ready:\n" + "".join(lines))
        lines.append(line)
        ready = re.search(r"is ready on (http://\S+)", line)
        if ready:
            break

    async def read_log() -> list[str]:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            lines.append(line.decode())
        return lines

    return process, ready.group(1), asyncio.create_task(read_log())
