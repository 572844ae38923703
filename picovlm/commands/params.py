"""`picovlm params`: parameters per tower and the memory they need."""

from __future__ import annotations

import argparse
import json


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --config and free `section.field=value` overrides: shared by every verb that builds a model."""
    parser.add_argument(
        "--preset",
        help="named preset, e.g. super-small-11 or nanovlm-222m (default picovlm-small-retrieval; see docs/config.md)",
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
        description="Print parameters per tower for the model `picovlm train` builds from a preset or config: "
        "ViT, projector, LM (embedding and non-embedding), total, and the memory the weights need in fp32, "
        "bf16 and int8. The vocabulary is the trainer's: a BPE of at most train.tokenizer_vocab_size tokens "
        "(1,024 by default; trained on train.data_dir when given, so the figure is exact), or the size of "
        "train.tokenizer. Setting the vocabulary yourself reports it as given: model.lm_vocab_size=49152 "
        "gives the presets' published sizes (SmolLM2's vocabulary; the blog's Table 1). With train.data_dir, "
        "pictures of at most half vit_img_size are counted as the trainer reads them: at their own size, "
        "with patches halved to match (train.native_image_size).",
    )
    add_config_arguments(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (keys vit, projector, lm, lm_embedding, lm_non_embedding, total, "
        "lm_vocab_size, vocabulary, vit_img_size, vit_patch_size, pictures)",
    )
    p.set_defaults(func=run)


def vocabulary_given(config_path: str | None, overrides: list[str] | None) -> bool:
    """Whether the user set the vocabulary (an override or the config file's model section): then it is
    reported as given, e.g. a run's own config.yaml, or 49,152 for the published sizes."""
    from picovlm.config import parse_overrides, read_config_file

    if "lm_vocab_size" in parse_overrides(overrides or [])["model"]:
        return True
    return bool(config_path) and "lm_vocab_size" in (read_config_file(config_path).get("model") or {})


def run(args: argparse.Namespace) -> int:
    from picovlm.config import load_config, replace
    from picovlm.model.params import format_report, param_report, trained_vocab_size

    cfg, train_cfg = load_config(args.preset, args.config, args.overrides)
    if vocabulary_given(args.config, args.overrides):
        vocabulary = f"{cfg.lm_vocab_size:,} tokens, model.lm_vocab_size as given" + (
            ""
            if train_cfg.tokenizer
            else " (`picovlm train` sizes it to the BPE it trains: leave it out to see that model)"
        )
    else:
        size, source = trained_vocab_size(cfg, train_cfg)
        vocabulary = (
            f"{size:,} tokens, what `picovlm train` gives this model: {source}; "
            f"model.lm_vocab_size=49152 for the published sizes (the blog's Table 1)"
        )
        cfg = replace(cfg, lm_vocab_size=size)
    pictures: list[str] = []  # what the trainer's fit_image_size would say about train.data_dir's pictures
    if train_cfg.data_dir and train_cfg.native_image_size:
        from picovlm.data.cauldron import load_cauldron
        from picovlm.train.setup import fit_image_size

        cfg = fit_image_size(cfg, load_cauldron(train_cfg.data_dir, split=train_cfg.train_split), pictures)
    report = param_report(cfg)
    if args.json:
        figures = {"lm_vocab_size": cfg.lm_vocab_size, "vocabulary": vocabulary}
        figures |= {"vit_img_size": cfg.vit_img_size, "vit_patch_size": cfg.vit_patch_size}
        print(json.dumps({**report.to_dict(), **figures, "pictures": pictures[0] if pictures else None}))
    else:
        print(format_report(args.preset or args.config or "config", report, vocabulary))
        for line in pictures:
            print(f"pictures: {line}")
    return 0
