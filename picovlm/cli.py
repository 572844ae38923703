"""`picovlm <verb>`: a thin command line over the library.

Each module in COMMAND_MODULES defines `add_parser(subparsers)`, which registers one or more verbs and
sets `func` to a function taking the parsed arguments. The work itself lives in library functions that
the tests call directly; the functions here only translate arguments and print.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from picovlm.errors import PicovlmError

COMMAND_MODULES = [
    "picovlm.commands.params",
    "picovlm.commands.hub",
    "picovlm.commands.data",
    "picovlm.commands.grow",
    "picovlm.commands.eval",
    "picovlm.commands.realset",
    "picovlm.commands.train",
    "picovlm.commands.deploy",
    "picovlm.commands.demo",
]


def build_parser() -> argparse.ArgumentParser:
    from picovlm import __version__

    parser = argparse.ArgumentParser(
        prog="picovlm",
        description="Super-small vision-language models: data, training, evaluation, CPU deployment.",
    )
    parser.add_argument("--version", action="version", version=f"picovlm {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="<verb>")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt as err:  # Ctrl-C, or a run stopped by a signal (train/interrupt.py): 130, 143
        print(str(err) or "interrupted", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    except PicovlmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
