"""The `bitnet` command: one dispatcher over the subcommands each package provides.

A package provides commands through a module `bitnet_<pkg>.commands` with a `COMMANDS` dict:
name -> Command(help, add_arguments(parser), run(args) -> int). A command whose package is not installed
is still listed, and running it says which extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (providing module, extra that installs it)
PROVIDERS = {
    "inspect": ("bitnet_models.commands", None),
    "models": ("bitnet_models.commands", None),
    "download": ("bitnet_models.commands", None),
    "tokenize": ("bitnet_tokenizers.commands", "inference"),
    "generate": ("bitnet_inference.commands", "inference"),
    "chat": ("bitnet_inference.commands", "inference"),
    "perplexity": ("bitnet_inference.commands", "inference"),
    "bench": ("bitnet_inference.commands", "inference"),
    "serve": ("bitnet_inference.serve.commands", "serve"),
    "convert": ("bitnet_models.convert.commands", None),
    "crossval": ("bitnet_crossval.commands", "crossval"),
}


def _load(module: str):
    try:
        return importlib.import_module(module).COMMANDS
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name.split(".")[0]):
            return None
        raise


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (`only`) one that imports just the module of the command being run: importing
    every subcommand's dependencies would cost more start-up time than `bitnet inspect` itself."""
    parser = argparse.ArgumentParser(prog="bitnet", description="BitNet b1.58 inference in Python")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cache: dict[str, dict | None] = {}
    for name, (module, extra) in PROVIDERS.items():
        if only is not None and name != only:
            continue
        if module not in cache:
            cache[module] = _load(module)
        commands = cache[module]
        cmd = commands.get(name) if commands else None
        if cmd is None:
            hint = f"pip install 'bitnet[{extra}]'" if extra else "reinstall bitnet"
            p = sub.add_parser(name, help=f"(not installed: {hint})", add_help=False)
            p.set_defaults(func=_missing(name, module, hint), missing=True)
            continue
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(func=cmd.run)
    return parser


def _missing(name: str, module: str, hint: str):
    def run(args: argparse.Namespace) -> int:
        print(f"error: `bitnet {name}` needs {module.split('.')[0]}, which is not installed: {hint}", file=sys.stderr)
        return 2

    return run


def main(argv: list[str] | None = None) -> int:
    from bitnet_quantization.errors import BitNetError

    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in PROVIDERS else None
    parser = build_parser(only=command)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "missing", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except BitNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
