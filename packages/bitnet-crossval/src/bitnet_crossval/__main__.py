"""`python -m bitnet_crossval ...`: the same as `bitnet crossval ...`, for when the dispatcher is not installed."""

from __future__ import annotations

import argparse
import sys

from bitnet_crossval.commands import COMMANDS
from bitnet_quantization.errors import BitNetError


def main(argv: list[str] | None = None) -> int:
    cmd = COMMANDS["crossval"]
    parser = argparse.ArgumentParser(prog="bitnet crossval", description=cmd.help)
    cmd.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return int(cmd.run(args) or 0)
    except BitNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
