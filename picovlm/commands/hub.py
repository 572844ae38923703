"""`picovlm init` (a VLM from pretrained SigLIP + SmolLM2 towers) and `picovlm hub push`."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    _add_init(subparsers)
    _add_hub_push(subparsers)


def _add_init(subparsers) -> None:
    p = subparsers.add_parser(
        "init",
        help="build a VLM from a pretrained SigLIP vision tower and a Llama-family LM (optionally truncated)",
        description="Build a VLM whose vision tower comes from a SigLIP/SigLIP2 checkpoint and whose language "
        "model comes from a Llama-family checkpoint such as SmolLM2 (local folders or Hub ids; safetensors "
        "only). --vit-blocks / --lm-blocks keep only the first n blocks of each. The projector starts fresh; "
        "the LM's tokenizer.json is attached when present (picovlm's special tokens are added and their "
        "embedding rows start at the mean embedding). Writes config.json, model.safetensors and "
        "tokenizer.json to --out with save_pretrained.",
    )
    p.add_argument(
        "--vision",
        required=True,
        help="SigLIP checkpoint: folder or Hub id, e.g. google/siglip-base-patch16-224",
    )
    p.add_argument(
        "--lm",
        required=True,
        help="Llama-family checkpoint: folder or Hub id, e.g. HuggingFaceTB/SmolLM2-135M",
    )
    p.add_argument("--out", required=True, help="output folder (written with save_pretrained)")
    p.add_argument("--vit-blocks", type=int, help="keep the first N vision blocks (default: all)")
    p.add_argument("--lm-blocks", type=int, help="keep the first N language-model blocks (default: all)")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) for both checkpoints")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="FIELD=VALUE",
        help="model config overrides that do not change the towers' shapes, e.g. model.lm_max_length=512 "
        "or model.mp_pixel_shuffle_factor=4",
    )
    p.set_defaults(func=run_init)


def _add_hub_push(subparsers) -> None:
    hub = subparsers.add_parser(
        "hub",
        help="share models on the Hugging Face Hub",
        description="Hugging Face Hub actions. See `picovlm hub push --help`.",
    )
    hub_verbs = hub.add_subparsers(dest="hub_verb", metavar="<action>", required=True)
    push = hub_verbs.add_parser(
        "push",
        help="upload a saved model folder with a generated model card",
        description="Load the model folder (config.json, model.safetensors, tokenizer.json), write a model card "
        "(YAML front matter, usage, parameter counts per tower, config table, training data) and upload "
        "everything to a Hub model repo, creating it if needed. Needs a write token: `hf auth login` "
        "or --token.",
    )
    push.add_argument(
        "--model", required=True, help="folder written by save_pretrained (e.g. a run's final model)"
    )
    push.add_argument("--repo", required=True, help="Hub repo id, e.g. your-name/picovlm-shapes")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--token", help="Hugging Face write token (default: the logged-in token / HF_TOKEN)")
    push.add_argument("--message", default="Upload picovlm model", help="commit message")
    push.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="SOURCE",
        help="a training data source for the model card (Hub dataset id or description); repeatable",
    )
    push.add_argument(
        "--base-model",
        action="append",
        default=[],
        metavar="ID",
        help="checkpoint it started from; repeatable",
    )
    push.add_argument("--license", help="license id for the model card, e.g. apache-2.0")
    push.set_defaults(func=run_push)


def run_init(args: argparse.Namespace) -> int:
    from picovlm.config import parse_overrides
    from picovlm.model.hf import vlm_from_pretrained_towers

    overrides = parse_overrides(args.overrides)
    if overrides["train"]:
        print("note: train.* overrides are ignored by init")
    model, reports = vlm_from_pretrained_towers(
        args.vision,
        args.lm,
        vit_n_blocks=args.vit_blocks,
        lm_n_blocks=args.lm_blocks,
        revision=args.revision,
        **overrides["model"],
    )
    for report in reports:
        print(report)
    out = model.save_pretrained(args.out)
    print(
        f"saved to {out}"
        + ("" if model.tokenizer else " (no tokenizer.json in the LM folder: attach one before training)")
    )
    return 0


def run_push(args: argparse.Namespace) -> int:
    from picovlm.hub import push_to_hub
    from picovlm.model.vlm import VisionLanguageModel

    model = VisionLanguageModel.from_pretrained(args.model)
    url = push_to_hub(
        model,
        args.repo,
        private=args.private,
        token=args.token,
        commit_message=args.message,
        training_data=args.data,
        base_models=args.base_model,
        license=args.license,
    )
    print(f"uploaded to {url}")
    return 0
