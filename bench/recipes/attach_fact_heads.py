"""Give a run trained before the fact heads were saved (docs/recipes.md, finding 24) its heads: read them
from the run's checkpoint.pt (the last step's, the same step as model/) and write them, with each
indexed training row's facts, beside model/'s retrieval index, so `--copy-fact-weight` works on it.

    python bench/recipes/attach_fact_heads.py RUN_DIR DATA_DIR [--out MODEL_DIR]

Runs trained since write them themselves (model/ and best/). best/ is left alone here: its step's
heads are not in the checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from datasets import load_from_disk

from picovlm.model.vlm import VisionLanguageModel
from picovlm.retrieval import build_training_index
from picovlm.train.checkpoint import load_checkpoint, save_model
from picovlm.train.facts import FactHeads, FactVocabulary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("data_dir")
    parser.add_argument(
        "--out", type=Path, help="where to write the model (default: RUN_DIR/model, in place)"
    )
    args = parser.parse_args()
    saved = load_checkpoint(args.run_dir)
    if "extra" not in saved:
        raise SystemExit(
            f"{args.run_dir}/checkpoint.pt has no fact heads: the run trained without the fact loss."
        )
    model = VisionLanguageModel.from_pretrained(args.run_dir / "model").float().eval()
    if model.retrieval is None:
        raise SystemExit(
            f"{args.run_dir}/model does not retrieve: the heads weigh a retrieving model's neighbours."
        )
    for name, tensor in model.state_dict().items():  # model/ must be the checkpoint's step
        if not torch.equal(tensor, saved["model"][name].to(tensor.dtype)):
            raise SystemExit(
                f"{args.run_dir}: model/ differs from checkpoint.pt ({name}): not the same step."
            )
    train = load_from_disk(args.data_dir)["train"]
    vocabulary = FactVocabulary.from_rows(train["fields"])  # as the trainer built it
    heads = FactHeads(vocabulary, model.cfg.vit_hidden_dim)
    heads.load_state_dict(saved["extra"])
    index = build_training_index(train, model.retrieval.k, vocabulary.encode)
    if index.answers != model.retrieval.answers:
        raise SystemExit(f"{args.data_dir}: its training rows are not those of {args.run_dir}'s index.")
    model.retrieval.facts = index.facts
    save_model(model, args.out or args.run_dir / "model", heads)
    print(
        f"wrote {len(vocabulary)} fact heads ({', '.join(vocabulary.values)}) to {args.out or args.run_dir / 'model'}"
    )


if __name__ == "__main__":
    main()
