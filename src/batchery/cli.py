"""`batchery serve [TARGET ...]`: flags are derived from `Settings`, so they match the `BATCHERY_*` variables."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from batchery.config import Settings, env_name
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
        serve.add_argument(flag, dest=f.name, type=type(f.default), default=None, help=help_text)
    from batchery.bench import cli as bench_cli

    bench_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    from batchery.loader import load_model
    from batchery.server import serve

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}
    models = [load_model(target) for target in args.targets]
    try:
        serve(*models, **overrides)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
