"""`picovlm <verb>`: a thin command line over the library.

Each module in COMMAND_MODULES defines `add_parser(subparsers)`, which registers one or more verbs and
sets `func` to a function taking the parsed arguments. The work itself lives in library functions that
the tests call directly; the functions here only translate arguments and print. Building the parser
imports no heavy module (each verb imports its own when it runs), so `--help` is fast and works on a
runtime-only install.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
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

# `pip install picovlm` is the deployment box's install: the torch-free runtime behind `picovlm serve`.
# Every other verb trains, evaluates or exports, and needs the `train` extra (pyproject.toml), whose
# packages are listed here by import name (tests/deploy/test_runtime_install.py keeps the two alike).
RUNTIME_VERBS = {"serve"}
TRAIN_EXTRA_MODULES = (
    "torch yaml safetensors datasets huggingface_hub tqdm matplotlib psutil sacrebleu onnx onnxscript".split()
)


def missing_train_extra() -> list[str]:
    """The train extra's modules that are not installed (found without importing them)."""
    return [name for name in TRAIN_EXTRA_MODULES if importlib.util.find_spec(name) is None]


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
    # Checked before the verb starts, so a runtime-only install says what to install instead of a
    # traceback from an import halfway through the work.
    if args.verb not in RUNTIME_VERBS and (missing := missing_train_extra()):
        print(
            f"picovlm {args.verb} needs the training extra: pip install 'picovlm[train]' "
            f"(not installed: {', '.join(missing)})",
            file=sys.stderr,
        )
        return 1
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
