"""How large can the shuffled-image gap get on a set, if a model read every fact off the picture?

docs/recipes.md finding 31. Issue 14 asks for a shuffled-image gap above +0.3 nats per answer token. On
Wesnoth and the flags the final recipe stays near +0.1 and +0.0 (+0.05 and +0.01 calibrated), and
finding 29 argued why: most of a Wesnoth answer is the unit's own text, and a flag says little about
its nation. This script measures the bound instead of arguing it. `build` copies a set with each row's question
extended by the row's own facts (its `fields`, the words a perfect reader of the picture could state);
train the default recipe on the copy as a user would; `gap` then scores the answers with each row shown
another row's picture *and* facts (`picovlm eval`'s shuffle), at T=1 and at the calibrated temperature
(the grid of `picovlm eval`). A model that is told the facts has no reason to guess them, so its gap is
what knowing them is worth, plus what its picture says beyond them (an emoji's picture names the
emoji): the ceiling, under the same recipe and budget, for a model that reads the facts off the
picture. `gap` also shuffles the pictures alone (that second part) and the facts alone.

    python bench/recipes/fact_oracle.py build DATA_DIR OUT_DIR
    picovlm train train.data_dir=OUT_DIR train.out_dir=RUN train.max_minutes=10
    python bench/recipes/fact_oracle.py gap RUN/model OUT_DIR [--split test]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from picovlm.data.cauldron import load_cauldron_splits
from picovlm.eval.evaluate import (
    CALIBRATION_TEMPERATURES,
    EvalItem,
    answer_losses,
    items_from_rows,
    shuffled_gaps,
    shuffled_sources,
)


def facts_sentence(fields: str | dict | None) -> str:
    """A row's `fields` as the words a reader of its picture would state: "Facts: level 3; race wolf."."""
    if isinstance(fields, str):
        fields = json.loads(fields) if fields.strip() else {}
    if not fields:
        return ""
    return "Facts: " + "; ".join(f"{name} {value}" for name, value in sorted(fields.items())) + "."


def with_facts(texts: list[dict], fields: str | dict | None = None) -> dict:
    """A row's turns with its facts appended to every question."""
    facts = facts_sentence(fields)
    return {"texts": [{**turn, "user": f"{turn.get('user') or ''} {facts}".strip()} for turn in texts]}


def build(data_dir: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Copy every split of `data_dir` into `out_dir` with the facts in the questions; rows per split."""
    import datasets

    splits = load_cauldron_splits(data_dir)
    # only the text columns go through the function: the pictures are copied, never decoded
    oracle = datasets.DatasetDict(
        {
            name: split.map(
                with_facts, input_columns=[c for c in ("texts", "fields") if c in split.column_names]
            )
            for name, split in splits.items()
        }
    )
    oracle.save_to_disk(str(out_dir))
    return {name: len(split) for name, split in oracle.items()}


def shown(items: list[EvalItem], source: list[int], pictures: bool, facts: bool) -> list[EvalItem]:
    """Row i with the picture and/or the question (which holds the facts) of row source[i]."""
    return [
        replace(
            item,
            images=items[source[i]].images if pictures else item.images,
            question=items[source[i]].question if facts else item.question,
        )
        for i, item in enumerate(items)
    ]


def oracle_gaps(model, items: list[EvalItem], seed: int = 0, batch_size: int = 16) -> dict[str, float]:
    """Gaps (shuffled - true, nats per answer token) at T=1 and at the temperature that fits the true
    rows best, with the pictures and facts shuffled together, the pictures alone and the facts alone."""
    grid = CALIBRATION_TEMPERATURES
    true = answer_losses(model, items, grid, batch_size)
    source = shuffled_sources(items, seed)
    result = {"loss": float(true[grid.index(1.0)]), "rows": len(items)}
    for name, pictures, facts in (("both", True, True), ("pictures", True, False), ("facts", False, True)):
        shuffled = answer_losses(model, shown(items, source, pictures, facts), grid, batch_size)
        gap, gap_calibrated, result["calibrated_temperature"] = shuffled_gaps(true, shuffled)
        result[f"gap_{name}"], result[f"gap_{name}_calibrated"] = gap, gap_calibrated
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="copy a set with each row's facts in its question")
    build_parser.add_argument("data")
    build_parser.add_argument("out")
    gap_parser = commands.add_parser("gap", help="the shuffled gaps of a model trained on such a copy")
    gap_parser.add_argument("model")
    gap_parser.add_argument("data")
    gap_parser.add_argument("--split", default="test")
    args = parser.parse_args()

    if args.command == "build":
        print(json.dumps(build(args.data, args.out)))
        return
    from picovlm.data.cauldron import load_cauldron
    from picovlm.eval.evaluate import load_model

    model = load_model(args.model)
    items = items_from_rows(load_cauldron(args.data, split=args.split))
    gaps = oracle_gaps(model, items)
    print(json.dumps({"model": args.model, "split": args.split, **gaps}, indent=1))


if __name__ == "__main__":
    main()
