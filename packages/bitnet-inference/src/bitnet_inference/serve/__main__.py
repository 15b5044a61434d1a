"""`python -m bitnet_inference.serve ...` = `bitnet serve ...`."""

import argparse
import sys

from bitnet_inference.serve.commands import COMMANDS


def main(argv=None) -> int:
    from bitnet_quantization.errors import BitNetError

    cmd = COMMANDS["serve"]
    parser = argparse.ArgumentParser(prog="bitnet serve", description=cmd.help)
    cmd.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd.run(args)
    except BitNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
