"""Give a retrieving run trained before finding 28 (docs/recipes.md) the fact probes that weigh its
neighbours' vote: fit them on its index's picture vectors and the training rows' facts, as training
now does, and write them beside the index of model/ and best/, so `--copy-fact-weight` reads the
pictures. The run's weights and its index are not changed.

    python bench/recipes/attach_fact_probes.py RUN_DIR DATA_DIR

Heads saved by such a run (they read the vision tower) are replaced.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datasets import load_from_disk

from picovlm.model.vlm import VisionLanguageModel
from picovlm.retrieval import READS_PICTURES, build_training_index
from picovlm.train.checkpoint import save_model
from picovlm.train.facts import FactVocabulary, fit_fact_probes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("data_dir")
    args = parser.parse_args()
    train = load_from_disk(args.data_dir)["train"]
    vocabulary = FactVocabulary.from_rows(train["fields"])  # as the trainer builds it
    if not len(vocabulary):
        raise SystemExit(f"{args.data_dir}: its training rows have no facts that repeat: nothing to fit.")
    counts = [len(values) for values in vocabulary.values.values()]
    for folder in (args.run_dir / "model", args.run_dir / "best"):
        if not (folder / "config.json").is_file():
            continue
        model = VisionLanguageModel.from_pretrained(folder)
        index = model.retrieval
        if index is None:
            raise SystemExit(f"{folder} does not retrieve: the probes weigh a retrieving model's neighbours.")
        rows = build_training_index(train, index.k, vocabulary.encode)  # each indexed row's facts
        if rows.answers != index.answers:
            raise SystemExit(f"{args.data_dir}: its training rows are not those of {folder}'s index.")
        probes = fit_fact_probes(index.table, rows.facts.classes, counts)
        index.facts = rows.facts.with_heads(probes, READS_PICTURES)
        save_model(model, folder)
        print(f"fitted {len(vocabulary)} fact probes ({', '.join(vocabulary.values)}) for {folder}")


if __name__ == "__main__":
    main()
