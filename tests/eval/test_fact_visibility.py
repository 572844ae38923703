"""`picovlm data facts`: which of a set's facts its pictures show, scored on objects unseen in training."""

from __future__ import annotations

import json
import random
import re

import pytest

from picovlm.cli import main
from picovlm.errors import DataError
from picovlm.eval.fact_visibility import BARELY, SHOWN, UNSHOWN, FieldVisibility, fact_visibility
from tests.eval.conftest import make_rows

MOODS = ("calm", "busy", "sleepy")


def with_facts(rows: list[dict], seed: int) -> list[dict]:
    """The squares with three facts: the colour (drawn), a mood drawn by chance (not in the picture) and
    a serial number (a one-off per row)."""
    rng = random.Random(seed)
    out = []
    for i, row in enumerate(rows):
        colour = row["texts"][0]["assistant"].split()[-1][:-1]
        facts = {"colour": colour, "mood": rng.choice(MOODS), "serial": f"{seed}-{i}"}
        out.append({**row, "fields": json.dumps(facts)})
    return out


@pytest.fixture(scope="module")
def squares_with_facts(tmp_path_factory):
    from datasets import DatasetDict

    from picovlm.data.cauldron import rows_to_dataset

    train = make_rows(120, 0)
    splits = {"train": with_facts(train, 0), "validation": with_facts(make_rows(60, 1, avoid=train), 1)}
    folder = tmp_path_factory.mktemp("facts") / "squares"
    DatasetDict(
        {name: rows_to_dataset(rows, ("images", "texts", "fields")) for name, rows in splits.items()}
    ).save_to_disk(str(folder))
    return folder


def test_the_drawn_fact_is_shown_the_chance_fact_is_not_and_one_offs_are_not_scored(squares_with_facts):
    from picovlm.data.cauldron import load_cauldron

    train = load_cauldron(squares_with_facts, split="train")
    held = load_cauldron(squares_with_facts, split="validation")
    result = fact_visibility(train, held)
    by_field = {f.field: f for f in result.fields}
    assert set(by_field) == {"colour", "mood"}
    colour, mood = by_field["colour"], by_field["mood"]
    assert colour.values == 6 and colour.rows == 60 and colour.unseen == 0
    assert colour.probe > 0.9 and colour.nearest > 0.9 and colour.guess < 0.3
    assert colour.verdict == SHOWN
    assert mood.values == 3 and mood.best - mood.guess <= mood.margin
    assert mood.verdict == UNSHOWN
    assert "serial" in result.skipped and "one-offs" in result.skipped["serial"]
    assert result.train_rows == 120 and result.held_rows == 60
    note = r"colour (0\.9\d|1\.00) / (0\.9\d|1\.00) / 0\.\d\d shown; mood [.\d /]+ no$"
    assert re.search(note, result.note())
    table = result.markdown()
    assert "| colour | 6 | 60 |" in table and "do not show mood" in table


def test_the_verdict_follows_the_margin_and_the_share_of_errors_removed():
    def field(best, guess, rows=400):
        return FieldVisibility("f", 4, rows, 0, best, best - 0.01, guess, "x")

    assert field(0.30, 0.28).verdict == UNSHOWN  # +0.02, under two standard errors (0.045)
    assert field(0.36, 0.28).verdict == BARELY  # +0.08: past the margin, 11 % of the errors gone
    assert field(0.60, 0.28).verdict == SHOWN  # 44 % of the errors gone
    assert field(0.36, 0.28, rows=40).verdict == UNSHOWN  # the same +0.08 on 40 rows is within chance


def test_the_command_prints_the_table_and_writes_json(squares_with_facts, tmp_path, capsys):
    out = tmp_path / "facts.json"
    assert main(["data", "facts", str(squares_with_facts), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| colour |" in printed and "validation" in printed
    document = json.loads(out.read_text())
    assert document["held_split"] == "validation"
    assert {row["field"]: row["verdict"] for row in document["fields"]} == {"colour": SHOWN, "mood": UNSHOWN}


def test_data_without_facts_or_without_a_held_out_split_is_told_what_to_do(
    squares_with_facts, tmp_path, capsys
):
    from datasets import DatasetDict

    from picovlm.data.cauldron import load_cauldron, rows_to_dataset

    plain = tmp_path / "plain"
    DatasetDict(
        {
            "train": rows_to_dataset(make_rows(12, 0), ("images", "texts")),
            "validation": rows_to_dataset(make_rows(6, 1), ("images", "texts")),
        }
    ).save_to_disk(str(plain))
    assert main(["data", "facts", str(plain)]) == 1
    assert re.search("training split has no `fields` column.*--fact-columns", capsys.readouterr().err)
    assert main(["data", "facts", str(squares_with_facts), "--train-split", "training"]) == 1
    said = capsys.readouterr().err
    assert "'train'" in said and "'validation'" in said and "picovlm data split" in said
    train = load_cauldron(squares_with_facts, split="train").remove_columns("fields")
    serials = [json.dumps({"serial": str(i)}) for i in range(len(train))]
    with pytest.raises(DataError, match="one-offs"):  # no field repeats: nothing a picture can teach
        fact_visibility(
            train.add_column("fields", serials), load_cauldron(squares_with_facts, split="validation")
        )
    held = load_cauldron(squares_with_facts, split="validation")
    without_pictures = held.map(lambda row: {"images": []})
    with pytest.raises(DataError, match="the validation split has no pictures to score"):
        fact_visibility(load_cauldron(squares_with_facts, split="train"), without_pictures)


def test_the_reader_sweep_scores_the_default_probe_and_the_nearest_picture_as_data_facts_does(
    squares_with_facts,
):
    """bench/recipes/reader_sweep.py (finding 44) rebuilds the index a run builds and scores readers
    against its default probe: that probe and its one-neighbour vote score as `picovlm data facts`
    scores the probe and the nearest picture (every row here has both fields, so a row's share of
    fields right averages to the fields' mean), and the default differs from itself by 0 ± 0. Its
    --features table scores the index's own vectors the same way, beside random features."""
    import importlib.util
    from pathlib import Path

    from picovlm.data.cauldron import load_cauldron

    script = Path(__file__).parents[2] / "bench" / "recipes" / "reader_sweep.py"
    spec = importlib.util.spec_from_file_location("reader_sweep", script)
    reader_sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reader_sweep)
    readers = reader_sweep.sweep(str(squares_with_facts))

    train = load_cauldron(squares_with_facts, split="train")
    held = load_cauldron(squares_with_facts, split="validation")
    by_field = {f.field: f for f in fact_visibility(train, held).fields}
    assert readers["probe l2=0.001 scale=10"] == pytest.approx(
        (sum(f.probe for f in by_field.values()) / 2, 0.0, 0.0), abs=1e-9
    )
    nearest = sum(f.nearest for f in by_field.values()) / 2
    for t in (0.01, 0.03, 0.1):
        assert readers[f"knn k=1 t={t:g}"][0] == pytest.approx(nearest, abs=1e-9)
    mixed = readers["mix k=20 t=0.1 a=0.5"]
    assert 0.0 < mixed[0] <= 1.0 and mixed[2] >= 0.0

    # --features: the index's own vectors score as data facts does; random features are another reader
    by_features = reader_sweep.compare_features(str(squares_with_facts))
    ours = by_features["the index's vectors"]
    assert ours["nearest facts"] == pytest.approx((nearest, 0.0, 0.0), abs=1e-9)
    assert ours["probe facts"] == pytest.approx(readers["probe l2=0.001 scale=10"], abs=1e-9)
    assert set(by_features) == {"the index's vectors", "random conv"} | {
        f"index + {w} x random conv" for w in ("0.5", "1", "2")
    }
    random_nearest_facts = by_features["random conv"]["nearest facts"][0]
    assert random_nearest_facts > 0.5  # the colour is drawn: any picture features find it

    # --per-field (finding 45): each field's probe and nearest picture score as data facts does, a vote
    # is kept only when it leads by more than its error, and the choice scored on a split reproduces
    # the figures it was chosen by there
    chosen = reader_sweep.per_field(str(squares_with_facts), test_split="validation")
    assert set(chosen["fields"]) == {"colour", "mood"}
    for field in ("colour", "mood"):
        f = chosen["fields"][field]
        assert (f["probe"], f["nearest"]) == pytest.approx((by_field[field].probe, by_field[field].nearest))
        assert (f["kept"] == f["vote"]) == (f["lead"] > f["error"]) and (f["kept"] in (f["vote"], "probe"))
        assert f["test probe"] == pytest.approx(f["probe"])
        assert f["test kept"] == pytest.approx(f["probe"] + (f["lead"] if f["kept"] != "probe" else 0.0))
    leads = [f["test kept"] - f["test probe"] for f in chosen["fields"].values()]
    assert chosen["test"][1] == pytest.approx(sum(leads) / 2)
