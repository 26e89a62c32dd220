"""Where the results go besides the table: a JSON file (or stdout) and a PNG plot, checked before the load runs."""

from __future__ import annotations

import errno
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from batchery.bench import report
from batchery.errors import ConfigError


def check(json_path: str | None, plot_path: Path | None) -> None:
    """A ConfigError now, not after the whole load, when a result file cannot be written (or matplotlib is missing)."""
    if json_path is not None and json_path != "-":
        _check_writable(Path(json_path), "--json", make_folders=False)
    if plot_path is not None:
        from batchery.bench import plot

        plot._pyplot()
        _check_writable(plot_path, "--plot", make_folders=True)  # as the plot itself does


def _check_writable(path: Path, flag: str, *, make_folders: bool) -> None:
    # Try it rather than asking os.access, which says yes to root everywhere: open for appending, then remove the
    # file again if it is new.
    existed = path.exists()
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "it is a directory")
        if make_folders:
            path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write {flag} {path}: {exc.strerror or exc}; give a file path in a writable folder"
        ) from exc
    if not existed:
        path.unlink(missing_ok=True)


def write(json_path: str | None, plot_path: Path | None, summaries: Sequence[report.Summary], out: TextIO) -> None:
    """Write the JSON (to stdout for '-') and the plot; OSError when a file cannot be written after all."""
    if json_path == "-":
        sys.stdout.write(report.to_json(summaries).decode() + "\n")
    elif json_path:
        Path(json_path).write_bytes(report.to_json(summaries))
    if plot_path is not None:
        from batchery.bench import plot

        points = [(s.throughput, s.p50_ms, s.p99_ms) for s in summaries if s.ok]
        url = summaries[0].url if summaries else ""
        plot.latency_vs_throughput({urlsplit(url).netloc: points}, plot_path, title=url)
        print(f"plot written to {plot_path}", file=out)
