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
    from batchery import __version__

    parser = argparse.ArgumentParser(prog="batchery", description="A fast inference server with dynamic batching.")
    parser.add_argument("--version", action="version", version=f"batchery {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve one or more models over HTTP",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Each model's own settings (max_batch_size, max_delay_ms, workers, devices, ...) come from the model\n"
            "class, a TOML config file, or BATCHERY_MODEL_<NAME>_<SETTING> variables (NAME upper-cased, dashes as\n"
            "underscores), e.g. BATCHERY_MODEL_ALL_MINILM_L6_V2_MAX_BATCH_SIZE=64. See docs/models.md."
        ),
    )
    serve.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help=(
            "path/to/file.py:Class, package.module:Class, a config file (batchery.toml) or a built-in name "
            "(embedding, ocr); none serves the default embedding model. Files and modules are imported with "
            "their folder (a file's) or the current folder (a module's) on the import path"
        ),
    )
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (env {env_name(f.name)}, default {f.default!r})"
        if isinstance(f.default, bool):  # bool("false") would be True; see `_spelled_out` for the bare forms
            help_text += f"; {flag} alone means true, --no-{flag[2:]} false"
            serve.add_argument(flag, dest=f.name, type=_boolean, default=None, metavar="true|false", help=help_text)
        else:
            serve.add_argument(flag, dest=f.name, type=type(f.default), default=None, help=help_text)
    from batchery.bench import cli as bench_cli

    bench_cli.add_parser(commands)
    return parser


def _boolean(raw: str) -> bool:
    try:
        return parse_bool(raw)
    except ValueError as exc:  # argparse shows this message, exits 2
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _boolean_flags() -> set[str]:
    return {"--" + f.name.replace("_", "-") for f in dataclasses.fields(Settings) if isinstance(f.default, bool)}


def _spelled_out(argv: Sequence[str]) -> list[str]:
    """`serve`'s arguments as argparse should read them: flags first, each with its value attached, then the targets.

    - A boolean flag alone is true (`--watch`), `--no-watch` is false, `--watch off` reads its word. A bare flag
      then never swallows the target after it (`--watch app.py:A`), while a word that is neither a boolean nor a
      target (`--watch maybe`) is read as the flag's value, so the message says it is not a boolean.
    - Targets may come between flags (`serve a.py:A --port 8001 b.py:B`): argparse alone would refuse the second.
    """
    args = list(argv)
    command = next((i for i, token in enumerate(args) if not token.startswith("-")), None)
    if command is None or args[command] != "serve":
        return args
    booleans = _boolean_flags()
    valued = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(Settings)} - booleans
    flags, targets = args[: command + 1], []
    rest = args[command + 1 :]
    i = 0
    while i < len(rest):
        token = rest[i]
        i += 1
        if token == "--":  # everything after it is a target
            targets.extend(rest[i:])
            break
        negated = "--" + token[len("--no-") :] if token.startswith("--no-") else None
        if negated in booleans:
            flags.append(f"{negated}=false")
        elif token in booleans:
            value = "true"
            if i < len(rest) and (_is_boolean(rest[i]) or _is_word(rest[i])):
                value = rest[i]
                i += 1
            flags.append(f"{token}={value}")
        elif token in valued and i < len(rest):
            flags.append(f"{token}={rest[i]}")
            i += 1
        elif token.startswith("-"):
            flags.append(token)  # --flag=value, -h, or a mistake argparse will name
        else:
            targets.append(token)
    return [*flags, *(["--"] if targets else []), *targets]


def _is_word(token: str) -> bool:
    """A plain word that cannot be a target (no `:Class`, no .toml, no built-in name): meant as a flag's value."""
    from batchery.loader import BUILTIN

    return not token.startswith("-") and ":" not in token and not token.endswith(".toml") and token not in BUILTIN


def _is_boolean(word: str) -> bool:
    try:
        parse_bool(word)
    except ValueError:
        return False
    return True


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line read as `batchery` reads it (argparse exits 2 with a message on a mistake)."""
    return build_parser().parse_args(_spelled_out(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
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
