"""`batchery bench` against a real EchoModel server: load modes, reports, the CLI and its error messages."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchery._http_client import Connection, ProtocolError
from batchery.bench import load, payloads, report, trace
from batchery.bench.load import BACKLOG_ERROR, MAX_RATE, LoadSpec, Measurement, Progress, measure
from batchery.cli import main
from batchery.errors import ConfigError
from batchery.model import Model
from batchery.testing import EchoModel, running_server, server_thread


def _spec(url: str, **kwargs: object) -> LoadSpec:
    options: dict[str, object] = {"duration": 0.3, "warmup": 0.0, "connections": 4, **kwargs}
    return LoadSpec(f"{url}/v1/models/echo/predict", payloads.embedding_bodies(), **options)  # type: ignore[arg-type]


async def test_closed_loop_measures_only_successes() -> None:
    async with running_server([EchoModel()]) as server:
        result = report.summarize(await measure(_spec(server.url)))
    assert result.mode == "closed"
    assert result.ok > 0
    assert result.errors == 0
    assert result.rejected == 0
    assert result.statuses == {"200": result.ok}
    assert result.throughput > 0
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms <= result.max_ms


async def test_open_loop_sends_at_the_given_rate() -> None:
    async with running_server([EchoModel()]) as server:
        result = report.summarize(await measure(_spec(server.url, rate=100.0, duration=0.5)))
    assert result.mode == "open"
    assert result.rate == 100.0
    assert result.ok > 0
    # A fixed arrival rate bounds the count, however fast the server answers.
    assert result.requests <= 100 * 0.5 + 2


async def test_max_requests_stops_the_run() -> None:
    async with running_server([EchoModel()]) as server:
        m = await measure(_spec(server.url, max_requests=50, duration=60.0, connections=1))
    assert len(m.ok_ms) == 50


async def test_errors_are_counted_not_raised() -> None:
    async with running_server([EchoModel()]) as server:
        m = await measure(LoadSpec(f"{server.url}/v1/models/nope/predict", [b'{"input": 1}'], duration=0.2, warmup=0))
    summary = report.summarize(m)
    assert summary.ok == 0
    assert summary.errors == summary.requests > 0
    assert summary.statuses == {"404": summary.requests}
    assert math.isnan(summary.p50_ms)
    assert orjson.loads(report.to_json([summary]))["runs"][0]["p50_ms"] is None


def test_statuses_are_classified() -> None:
    m = Measurement(LoadSpec("http://127.0.0.1:1/x", [b"{}"]))
    for status in (200, 204, 503, 429, 500, 422):
        m.record(status, 1.0)
    assert (len(m.ok_ms), len(m.rejected_ms), len(m.failed_ms)) == (2, 2, 2)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert report.percentile(values, 50) == 50.0
    assert report.percentile(values, 99) == 99.0
    assert report.percentile(values, 100) == 100.0
    assert report.percentile([7.0], 1) == 7.0


def test_default_payload_is_distinct_sentences() -> None:
    texts = payloads.sentences()
    assert len(texts) == len(set(texts)) == 300
    bodies = payloads.embedding_bodies(per_request=16)
    assert len(orjson.loads(bodies[0])["inputs"]) == 16
    assert orjson.loads(payloads.embedding_bodies()[0]) == {"input": texts[0]}


def test_payload_file_forms(tmp_path: Path) -> None:
    lines = tmp_path / "lines.jsonl"
    lines.write_text('{"input": 1}\n\n{"input": 2}\n')
    assert payloads.read_bodies(lines) == [b'{"input": 1}', b'{"input": 2}']
    whole = tmp_path / "one.json"
    whole.write_text('{\n  "input": [1, 2]\n}\n')
    assert orjson.loads(payloads.read_bodies(whole)[0]) == {"input": [1, 2]}
    broken = tmp_path / "broken.json"
    broken.write_text("{nope\n")
    with pytest.raises(ConfigError, match="neither JSON lines"):
        payloads.read_bodies(broken)
    empty = tmp_path / "empty.json"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        payloads.read_bodies(empty)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"connections": 0}, "connections"),
        ({"rate": -1.0}, "rate"),
        ({"duration": 0.0}, "duration"),
    ],
)
def test_spec_validation(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LoadSpec("http://127.0.0.1:8000/x", [b"{}"], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="http://host:port"):
        LoadSpec("https://example.com/x", [b"{}"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"duration": math.inf},
        {"duration": math.nan},
        {"warmup": math.inf},
        {"warmup": math.nan},
        {"timeout": math.inf},
        {"rate": math.inf},
        {"rate": MAX_RATE * 10},
    ],
)
def test_spec_refuses_infinite_and_impossible_numbers(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        LoadSpec("http://127.0.0.1:8000/x", [b"{}"], **kwargs)  # type: ignore[arg-type]


def test_cli_sweep_writes_table_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = tmp_path / "bodies.jsonl"
    payload.write_text('{"input": "a"}\n{"inputs": ["b", "c"]}\n')
    out = tmp_path / "result.json"
    png = tmp_path / "plot.png"
    with server_thread([EchoModel()]) as server:
        argv = ["bench", f"{server.url}/v1/models/echo/predict", "--payload", str(payload), "-c", "1,4"]
        code = main([*argv, "-d", "0.3", "--warmup", "0", "--json", str(out), "--plot", str(png)])
    assert code == 0
    captured = capsys.readouterr()
    assert "| 1 conn |" in captured.out
    assert "| 4 conn |" in captured.out
    assert "measuring" in captured.err  # the live progress line
    runs = orjson.loads(out.read_bytes())["runs"]
    assert [r["connections"] for r in runs] == [1, 4]
    assert all(r["ok"] > 0 and r["errors"] == 0 for r in runs)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_open_loop_json_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    with server_thread([EchoModel()]) as server:
        url = f"{server.url}/v1/models/echo/predict"
        code = main(["bench", url, "-r", "50", "-d", "0.3", "--warmup", "0", "-q", "--json", "-"])
    assert code == 0
    captured = capsys.readouterr()
    document = orjson.loads(captured.out)  # stdout holds the JSON and nothing else
    assert document["runs"][0]["mode"] == "open"
    assert "| 50 req/s offered |" in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ftp://host/x"], "must look like http://"),
        (["http://127.0.0.1:1/x"], "cannot connect to 127.0.0.1:1"),
        (["http://127.0.0.1:99999/x"], "invalid port"),
        (["http://127.0.0.1:1/x", "--payload", "/no/such/file"], "cannot read the payload file"),
        (["http://127.0.0.1:1/x", "-r", "10", "-c", "1,2"], "one --connections value"),
        (["http://127.0.0.1:1/x", "--warmup", "-1"], "--warmup must be >= 0"),
        (["http://127.0.0.1:1/x", "--warmup", "nan"], "--warmup must be >= 0 seconds and finite"),
        (["http://127.0.0.1:1/x", "--warmup", "inf"], "--warmup must be >= 0 seconds and finite"),
        (["http://127.0.0.1:1/x", "-r", "1e9"], "at most 100,000 req/s"),
        (["http://127.0.0.1:1/x", "--trace", "bursty:high=1e9,low=0,on=1,off=1"], "at most 100,000 req/s"),
        (["http://127.0.0.1:1/x", "--trace", "bursty:high=10,low=0,on=1,off=1,duration=inf"], "finite"),
    ],
)
def test_cli_bad_arguments_get_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *argv, "-d", "0.1"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag", [["-c", "0"], ["-c", "a,b"], ["-r", "nan"], ["-r", "inf"], ["-d", "-3"], ["-d", "inf"], ["-d", "nan"]]
)
def test_cli_rejects_bad_numbers(flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "http://127.0.0.1:1/x", *flag])
    assert exc.value.code == 2
    assert "batchery bench: error: argument" in capsys.readouterr().err


async def test_trace_sends_each_arrival_once_with_the_headers() -> None:
    arrivals = [0.0, 0.01, 0.02, 0.1, 0.2, 0.21, 0.3]
    async with running_server([EchoModel()]) as server:
        good = report.summarize(await measure(_spec(server.url, arrivals=arrivals, deadline_ms=60_000.0)))
        # A header the server refuses proves the headers are sent.
        bad = await measure(_spec(server.url, arrivals=arrivals, headers={"X-Request-Timeout-Ms": "soon"}))
    assert good.mode == "trace"
    assert good.requests == good.ok == good.good == len(arrivals)
    assert good.good_share == 1.0
    assert bad.statuses == {400: len(arrivals)}


async def test_goodput_counts_only_answers_within_the_deadline() -> None:
    async with running_server([EchoModel()]) as server:
        result = report.summarize(await measure(_spec(server.url, rate=50.0, deadline_ms=1e-6)))
    assert result.ok > 0
    assert result.good == 0
    assert result.goodput == 0.0


def test_bursty_trace_is_seeded_and_follows_its_rates() -> None:
    offsets = trace.bursty(high=1000.0, low=100.0, on=0.5, off=1.5, duration=20.0, seed=3)
    assert offsets == trace.bursty(high=1000.0, low=100.0, on=0.5, off=1.5, duration=20.0, seed=3)
    assert offsets != trace.bursty(high=1000.0, low=100.0, on=0.5, off=1.5, duration=20.0, seed=4)
    assert offsets == sorted(offsets)
    assert offsets[0] >= 0
    assert offsets[-1] < 20.0
    in_bursts = sum(1 for t in offsets if t % 2.0 < 0.5)
    # 10 bursts x 500 expected, 10 quiet periods x 150 expected; Poisson counts stay well within 10%.
    assert 4500 < in_bursts < 5500
    assert 1350 < len(offsets) - in_bursts < 1650
    assert trace.parse("bursty:high=1000,low=100,on=0.5,off=1.5,duration=20,seed=3") == offsets


def test_trace_files_and_bad_traces(tmp_path: Path) -> None:
    path = tmp_path / "trace.txt"
    path.write_text("# seconds\n0.5\n0\n\n1.25  # late\n")
    assert trace.read(path) == [0.0, 0.5, 1.25]
    path.write_text("0\nsoon\n")
    with pytest.raises(ConfigError, match=r"trace\.txt:2: 'soon' is not a number"):
        trace.read(path)
    with pytest.raises(ConfigError, match="unknown bursty trace setting 'peak'"):
        trace.parse("bursty:peak=5")
    with pytest.raises(ConfigError, match="misses on, off"):
        trace.parse("bursty:high=5,low=1")
    with pytest.raises(ConfigError, match="no arrivals"):
        trace.parse("bursty:high=0.001,low=0,on=0.1,off=0.1,duration=0.2")
    with pytest.raises(ConfigError, match="rate or a trace"):
        LoadSpec("http://127.0.0.1:8000/x", [b"{}"], rate=5.0, arrivals=[0.0])


def test_cli_trace_with_header_and_deadline(capsys: pytest.CaptureFixture[str]) -> None:
    with server_thread([EchoModel()]) as server:
        url = f"{server.url}/v1/models/echo/predict"
        argv = ["bench", url, "--trace", "bursty:high=200,low=20,on=0.1,off=0.1,duration=0.4,seed=1"]
        code = main([*argv, "-H", "X-Request-Timeout-Ms: 5000", "--deadline-ms", "5000", "--warmup", "0", "-q"])
        assert code == 0
        assert main(["bench", url, "-H", "no colon", "-d", "0.1"]) == 2
    captured = capsys.readouterr()
    assert "| trace of " in captured.out
    assert "good (share)" in captured.out
    assert "a header must look like 'Name: value'" in captured.err


# --- the HTTP client against servers that answer in other ways (a fake server per test) ---


@contextlib.asynccontextmanager
async def fake_server(reply: bytes, *, close: bool = False) -> AsyncIterator[str]:
    """A server on a free port that answers every request with the raw bytes `reply` (closing after it if `close`)."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                await reader.readexactly(int(lengths[0].split(b":")[1]) if lengths else 0)
                writer.write(reply)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with server:
            yield f"http://127.0.0.1:{port}"
    finally:
        for writer in writers:
            writer.close()


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    b'7;ext=1\r\n{"a":1}\r\n3\r\n   \r\n0\r\nX-Trailer: t\r\n\r\n'
)
HTTP10 = b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"a":1}'


async def test_client_reads_chunked_bodies_and_keeps_the_connection() -> None:
    async with fake_server(b"HTTP/1.1 100 Continue\r\n\r\n" + CHUNKED) as url:
        conn = await Connection.open(url)
        try:
            for _ in range(3):  # the same connection: each body was read to its end
                response = await asyncio.wait_for(conn.request("POST", "/x", b"{}"), 5)
                assert (response.status, response.body, response.keep_alive) == (200, b'{"a":1}   ', True)
        finally:
            await conn.close()


async def test_client_reads_a_body_that_ends_with_the_connection() -> None:
    async with fake_server(HTTP10, close=True) as url:
        conn = await Connection.open(url)
        try:
            response = await asyncio.wait_for(conn.request("POST", "/x", b"{}"), 5)
        finally:
            await conn.close()
    assert (response.status, response.body, response.keep_alive) == (200, b'{"a":1}', False)


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_client_refuses_malformed_responses(reply: bytes) -> None:
    async with fake_server(reply) as url:
        conn = await Connection.open(url)
        try:
            with pytest.raises(ProtocolError):
                await asyncio.wait_for(conn.request("POST", "/x", b"{}"), 5)
        finally:
            await conn.close()


async def test_bench_counts_chunked_and_close_delimited_answers_as_successes() -> None:
    for reply, close in ((CHUNKED, False), (HTTP10, True)):
        async with fake_server(reply, close=close) as url:
            result = report.summarize(await measure(_spec(url, duration=0.3, connections=2)))
        assert result.ok == result.requests > 2, reply
        assert result.errors == 0


async def test_bench_counts_a_malformed_answer_as_an_error_and_goes_on() -> None:
    async with fake_server(b"garbage\r\n\r\n") as url:
        result = report.summarize(await measure(_spec(url, duration=0.2, connections=2)))
    assert result.ok == 0
    assert result.errors == result.requests > 0
    assert result.transport_errors == {"ProtocolError": result.requests}


# --- exit codes, messages and where the output goes ---


def test_cli_exits_1_with_the_statuses_when_nothing_succeeded(capsys: pytest.CaptureFixture[str]) -> None:
    with server_thread([EchoModel()]) as server:
        code = main(["bench", f"{server.url}/v1/models/nope/predict", "-d", "0.2", "--warmup", "0", "-q"])
    assert code == 1
    captured = capsys.readouterr()
    assert "| 404: " in captured.out  # the table shows what came back
    assert "no request succeeded" in captured.err
    assert "check the URL path" in captured.err


def test_cli_checks_output_paths_before_the_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    unreachable = "http://127.0.0.1:1/x"  # a load would fail with 'cannot connect': the path check comes first
    for flag, path, message in [
        ("--json", tmp_path, "it is a directory"),
        ("--json", tmp_path / "missing" / "r.json", "No such file or directory"),
        ("--plot", a_file / "p.png", "cannot write --plot"),
    ]:
        assert main(["bench", unreachable, flag, str(path), "-d", "0.1"]) == 2
        err = capsys.readouterr().err
        assert f"cannot write {flag} {path}" in err
        assert message in err
    fresh = tmp_path / "fresh.json"
    assert main(["bench", unreachable, "--json", str(fresh), "-d", "0.1"]) == 2
    assert "cannot connect" in capsys.readouterr().err
    assert not fresh.exists()  # the check leaves nothing behind


def test_cli_refuses_a_trace_that_ends_within_the_warmup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trace.txt"
    path.write_text("0\n0.2\n0.4\n")
    assert main(["bench", "http://127.0.0.1:1/x", "--trace", str(path)]) == 2
    assert "within the 1 s warm-up" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="pass --warmup 0"):
        LoadSpec("http://127.0.0.1:8000/x", [b"{}"], arrivals=[0.0, 0.4], warmup=0.5)


def test_ctrl_c_prints_what_was_measured() -> None:
    with server_thread([EchoModel()]) as server:
        argv = ["bench", f"{server.url}/v1/models/echo/predict", "-d", "60", "-c", "2", "--warmup", "0"]
        code = "import sys; from batchery.cli import main; sys.exit(main())"
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert proc.stderr is not None
            for line in proc.stderr:  # one progress line a second: stderr is not a terminal
                if "measuring" in line:
                    break
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err
    row = next(line for line in out.splitlines() if line.startswith("| 2 conn |"))
    assert int(row.split("|")[6]) > 0  # the ok column: what was measured before Ctrl-C


# --- the generator: stopping, pacing and counting ---


async def test_stop_ends_a_run_early_with_what_was_measured() -> None:
    stop = asyncio.Event()
    async with running_server([EchoModel()]) as server:
        asyncio.get_running_loop().call_later(0.3, stop.set)
        m = await asyncio.wait_for(measure(_spec(server.url, duration=60.0), stop=stop), 10)
    assert m.interrupted
    assert len(m.ok_ms) > 0
    assert 0.2 < m.wall_seconds < 2.0


async def test_open_loop_throughput_is_measured_over_the_duration() -> None:
    async with running_server([EchoModel()]) as server:
        m = await measure(_spec(server.url, rate=20.0, duration=0.5))
    result = report.summarize(m)
    assert result.ok == 10  # offsets 0, 0.05, ... 0.45
    assert result.duration_s == pytest.approx(0.5, abs=0.005)
    assert result.throughput <= 20.0 + 1e-9  # never more than offered


class _TwentyPerSecond(Model):
    """One input at a time, 50 ms each: at most 20 answers a second."""

    name = "slow"
    max_batch_size = 1
    workers = 1

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(0.05)
        return batch


async def test_open_loop_past_saturation_counts_the_answers_within_the_window() -> None:
    async with running_server([_TwentyPerSecond()]) as server:
        url = f"{server.url}/v1/models/slow/predict"
        m = await measure(LoadSpec(url, [b'{"input": 1}'], connections=64, rate=60.0, duration=0.5, warmup=0))
    result = report.summarize(m)
    # All 30 requests were answered, most of them after the window, as the queue drained: their latencies count,
    # but the rate is what the server computed within the window (about 10 answers in 0.5 s), never the 60/s sent.
    assert result.ok == 30
    assert result.max_ms > 1000
    assert 8.0 <= result.throughput <= 30.0
    assert result.goodput == result.throughput


async def test_scheduler_behind_schedule_yields_and_bounds_its_backlog() -> None:
    spec = LoadSpec("http://127.0.0.1:1/x", [b"{}"], rate=MAX_RATE, duration=0.2, warmup=0.0)
    run = load._Run(spec, None)
    run.start -= 0.2  # the whole run is overdue: 20,000 arrivals at once
    run.measure_from -= 0.2
    run.stop_at -= 0.2
    due: asyncio.Queue[float | None] = asyncio.Queue(maxsize=load._BACKLOG)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.wait_for(load._schedule(run, due), 30)
    seen = ticks
    ticker.cancel()
    assert seen > 1000  # other tasks (senders, the progress line) ran while it caught up
    assert due.qsize() == load._BACKLOG  # the rest were counted, not queued
    assert due.qsize() + run.result.transport_errors[BACKLOG_ERROR] == pytest.approx(20_000, abs=2)


async def test_max_requests_counts_exactly_with_several_connections() -> None:
    async with running_server([EchoModel()]) as server:
        m = await measure(_spec(server.url, max_requests=50, duration=60.0, connections=4))
    assert report.summarize(m).requests == len(m.ok_ms) == 50
    assert m.wall_seconds < 30


async def test_last_progress_line_divides_by_its_own_window() -> None:
    seen: list[Progress] = []
    async with running_server([EchoModel()]) as server:
        await measure(_spec(server.url, rate=200.0, duration=1.25), seen.append)
    assert seen[-1].elapsed > 1.2
    # About 50 answers in the last quarter second: 200 req/s, not 50 (that count over a whole second).
    assert seen[-1].recent_rate > 120


async def test_a_trace_counts_every_answer_over_its_run() -> None:
    # A trace's run ends with its last answer: counting only answers before its last arrival gave a burst trace
    # (every arrival at 0) a throughput of 0.
    async with running_server([EchoModel()]) as server:
        url = f"{server.url}/v1/models/echo/predict"
        m = await measure(LoadSpec(url, [b'{"input": 1}'], connections=8, arrivals=[0.0] * 8, warmup=0))
    result = report.summarize(m)
    assert result.ok == 8
    assert result.throughput == pytest.approx(8 / m.wall_seconds)
