"""`picovlm params`: parameters per tower and the memory they need."""

from __future__ import annotations

import argparse
import json


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --config and free `section.field=value` overrides: shared by every verb that builds a model."""
    parser.add_argument(
        "--preset",
        help="named preset, e.g. super-small-11 or nanovlm-222m (default picovlm-small; see docs/config.md)",
    )
    parser.add_argument("--config", help="YAML or JSON config file with 'model' and/or 'train' sections")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="FIELD=VALUE",
        help="config overrides such as model.lm_hidden_dim=144 or train.batch_size=16",
    )


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "params",
        help="parameter count per tower (ViT, projector, LM) and memory for fp32/bf16/int8",
        description="Print parameters per tower for a preset or config: ViT, projector, LM (embedding and "
        "non-embedding), total, and the memory the weights need in fp32, bf16 and int8.",
    )
    add_config_arguments(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (keys vit, projector, lm, lm_embedding, total)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from picovlm.config import load_config
    from picovlm.model.params import format_report, param_report

    cfg, _ = load_config(args.preset, args.config, args.overrides)
    report = param_report(cfg)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(format_report(args.preset or args.config or "config", report))
    return 0
