"""bench/recipes/fact_oracle.py (docs/recipes.md finding 31): a set copied with each row's facts in its
question, and the shuffled gaps of a model trained on such a copy, split into pictures and facts."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

from picovlm.eval.evaluate import EvalItem, items_from_rows
from tests.eval.conftest import QUESTION, answer_for, make_rows, train_tiny


@pytest.fixture(scope="module")
def oracle():
    script = Path(__file__).parents[2] / "bench" / "recipes" / "fact_oracle.py"
    spec = importlib.util.spec_from_file_location("fact_oracle", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def colour_of(row: dict) -> str:
    """A squares row's colour, read back from its answer ("The square is red.")."""
    return row["texts"][0]["assistant"].split()[-1][:-1]


def with_fields(rows: list[dict]) -> list[dict]:
    """The squares' rows with their colour as a fact."""
    return [{**row, "fields": json.dumps({"colour": colour_of(row)})} for row in rows]


def test_build_puts_each_rows_own_facts_in_its_question_and_keeps_the_rest(oracle, tmp_path):
    from datasets import DatasetDict

    from picovlm.data.cauldron import load_cauldron_splits, rows_to_dataset

    splits = {"train": with_fields(make_rows(12, 0)), "test": with_fields(make_rows(6, 1))}
    DatasetDict(
        {name: rows_to_dataset(rows, ("images", "texts", "fields")) for name, rows in splits.items()}
    ).save_to_disk(str(tmp_path / "d"))

    assert oracle.build(tmp_path / "d", tmp_path / "oracle") == {"train": 12, "test": 6}
    copied = load_cauldron_splits(tmp_path / "oracle")
    for name, rows in splits.items():
        for row, copy in zip(rows, copied[name]):
            colour = json.loads(row["fields"])["colour"]
            assert copy["texts"][0]["user"] == f"{QUESTION} Facts: colour {colour}."
            assert copy["texts"][0]["assistant"] == answer_for(colour)
            assert copy["fields"] == row["fields"]
            assert copy["images"][0].tobytes() == row["images"][0].tobytes()
    assert oracle.facts_sentence('{"b": "2", "a": "x y"}') == "Facts: a x y; b 2."
    assert oracle.facts_sentence(None) == oracle.facts_sentence("") == ""


def test_a_model_told_the_facts_leans_on_them_and_not_on_the_picture(oracle):
    """Trained on squares whose pictures are shuffled but whose questions state the colour, the model
    reads the colour from the question: shuffling the facts costs it, shuffling the pictures does not,
    and shuffling both costs what shuffling the facts does."""
    rows = make_rows(120, 0)
    pictures = [row["images"] for row in rows]
    random.Random(1).shuffle(pictures)

    def told(row):
        user = f"{QUESTION} Facts: colour {colour_of(row)}."
        return {**row, "texts": [{**row["texts"][0], "user": user}]}

    model = train_tiny([{**told(row), "images": images} for row, images in zip(rows, pictures)])
    items = items_from_rows([told(row) for row in make_rows(24, 1, avoid=rows)])
    gaps = oracle.oracle_gaps(model, items)
    assert gaps["gap_facts"] > 0.3 and gaps["gap_facts_calibrated"] > 0.3
    assert abs(gaps["gap_pictures"]) < 0.05
    assert gaps["gap_both"] == pytest.approx(gaps["gap_facts"], abs=0.05)
    assert gaps["rows"] == 24 and gaps["loss"] > 0


def test_without_facts_the_oracle_gap_is_evals_shuffled_gap(oracle, tiny_models, squares_dir):
    """With one question for every row, shuffling the facts changes nothing, and shuffling the pictures
    is `picovlm eval`'s shuffle: the same gap it reports."""
    from picovlm.data.cauldron import load_cauldron
    from picovlm.eval.evaluate import evaluate
    from picovlm.model.vlm import VisionLanguageModel

    model = VisionLanguageModel.from_pretrained(tiny_models["grounded"])
    items: list[EvalItem] = items_from_rows(load_cauldron(squares_dir, split="test"))
    gaps = oracle.oracle_gaps(model, items)
    assert gaps["gap_facts"] == 0.0 and gaps["gap_facts_calibrated"] == 0.0
    assert gaps["gap_both"] == gaps["gap_pictures"]
    metrics = evaluate(model, squares_dir, max_new_tokens=4, thumbnails=False)["metrics"]
    assert gaps["gap_pictures"] == pytest.approx(metrics["image_gap_shuffled"], abs=1e-6)
    assert gaps["gap_pictures_calibrated"] == pytest.approx(
        metrics["image_gap_shuffled_calibrated"], abs=1e-6
    )
