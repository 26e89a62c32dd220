"""`batchery serve [TARGET ...]`: flags are derived from `Settings`, so they match the `BATCHERY_*` variables."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from batchery.config import Settings, env_name, parse_bool, yield_to_env
from batchery.errors import BatcheryError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchery", description="A fast inference server with dynamic batching.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve one or more models over HTTP")
    serve.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="path/to/file.py:Class or package.module:Class; none serves the default embedding model",
    )
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (env {env_name(f.name)}, default {f.default!r})"
        kind = _boolean if isinstance(f.default, bool) else type(f.default)  # bool("false") would be True
        serve.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)
    from batchery.bench import cli as bench_cli

    bench_cli.add_parser(commands)
    return parser


def _boolean(raw: str) -> bool:
    try:
        return parse_bool(raw)
    except ValueError as exc:  # argparse shows this message, exits 2
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from batchery.runtimes.onnx_impl import opt_out_of_telemetry

    opt_out_of_telemetry()  # before a model file imports onnxruntime
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "bench":
            from batchery.bench import cli as bench_cli

            return bench_cli.run(args)
    except BatcheryError as exc:
        print(f"batchery: {exc.message}", file=sys.stderr)
        return 2
    return 2


def _serve(args: argparse.Namespace) -> int:
    from batchery import config_file
    from batchery.loader import served
    from batchery.server import serve

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}
    overrides: dict[str, Any] = {}
    models: list[Any] = []
    for target in args.targets:
        if target.endswith(".toml"):  # a config file: its [server] settings yield to BATCHERY_* and to flags
            server_settings, entries = config_file.load(target)
            overrides.update(yield_to_env(server_settings))
            models.extend(entries)
        else:
            models.append(served(target))
    overrides.update({key: value for key, value in flags.items() if value is not None})
    try:
        serve(*models, **overrides)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
