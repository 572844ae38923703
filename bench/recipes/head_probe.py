"""How well do a run's fact heads read the facts of unseen objects, beside the nearest-pixels lookup?

docs/recipes.md finding 22. The fact heads (`train.fact_loss_weight`, picovlm/train/facts.py) live only in
the run's checkpoint.pt; this loads them with the final weights and prints, per field of the test split,
the share of rows whose value the heads name, against the share the nearest training picture's row has.

    python bench/recipes/head_probe.py RUN_DIR DATA_DIR
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from datasets import load_from_disk

from picovlm.eval.evaluate import items_from_rows, vision_features
from picovlm.model.vlm import VisionLanguageModel
from picovlm.retrieval import thumbnail_vectors
from picovlm.train.checkpoint import load_checkpoint
from picovlm.train.facts import IGNORE, FactHeads, FactVocabulary


def first_images(split) -> list:
    return [images[0] for images in split["images"]]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir")
    parser.add_argument("data_dir")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_from_disk(args.data_dir)
    train, test = data["train"], data[args.split]
    saved = load_checkpoint(args.run_dir)
    if "extra" not in saved:
        raise SystemExit(
            f"{args.run_dir}/checkpoint.pt has no fact heads: the run trained without the fact loss."
        )
    model = VisionLanguageModel.from_pretrained(f"{args.run_dir}/model").float().eval()
    model.load_state_dict(saved["model"])  # the tower of the same step as the heads
    vocabulary = FactVocabulary.from_rows(train["fields"])  # as the trainer built it
    heads = FactHeads(vocabulary, model.cfg.vit_hidden_dim)
    heads.load_state_dict(saved["extra"])

    images = first_images(test)
    truth = torch.tensor([vocabulary.encode(fields) for fields in test["fields"]])
    features = torch.from_numpy(vision_features(model, items_from_rows(test), center=False))  # pooled ViT
    with torch.no_grad():
        named = torch.stack([head(features).argmax(dim=-1) for head in heads.heads], dim=1)
    nearest = np.argmax(thumbnail_vectors(images) @ thumbnail_vectors(first_images(train)).T, axis=1)
    looked_up = torch.tensor([vocabulary.encode(fields) for fields in train["fields"]])[nearest]

    print("| field | classes | test rows | fact heads | nearest-pixels lookup |\n|---|---|---|---|---|")
    for j, path in enumerate(vocabulary.values):
        known = truth[:, j] != IGNORE
        heads_right = float((named[known, j] == truth[known, j]).float().mean())
        lookup_right = float((looked_up[known, j] == truth[known, j]).float().mean())
        print(
            f"| {path} | {len(vocabulary.values[path])} | {int(known.sum())} | {heads_right:.3f} | {lookup_right:.3f} |"
        )


if __name__ == "__main__":
    main()
