"""bench/recipes/decoding_compare.py (finding 47): two evaluations of the same rows, paired."""

import importlib.util
import json
from pathlib import Path

import pytest

from picovlm.data.cauldron import load_cauldron
from picovlm.eval.metrics import token_f1

SCRIPT = Path(__file__).parents[2] / "bench" / "recipes" / "decoding_compare.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("decoding_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_predictions(folder: Path, answers: list[str], references: list[str]) -> Path:
    """predictions.jsonl as `picovlm eval --out` writes it: the model's rows, then a lookup's (ignored)."""
    folder.mkdir()
    rows = [
        {"model": "model", "answer": a, "reference": r, "token_f1": token_f1(a, r)}
        for a, r in zip(answers, references)
    ]
    rows += [{"model": "model/nearest-pixels", "answer": r, "reference": r} for r in references]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_made_up_words_are_those_no_training_answer_holds(compare):
    known = {"The", "square", "is", "red"}
    words, answers = compare.made_up(["The square is red.", "The sqare is redd."], known)
    assert words == pytest.approx(2 / 8) and answers == pytest.approx(1 / 2)


def test_a_way_that_misspells_every_answer_is_paired_against_the_references(
    compare, squares_dir, tmp_path, monkeypatch, capsys
):
    references = [row["texts"][0]["assistant"] for row in load_cauldron(squares_dir, split="test")]
    misspelt = [reference.replace("square", "sqare") for reference in references]
    a = write_predictions(tmp_path / "a", references, references)
    b = write_predictions(tmp_path / "b", misspelt, references)
    monkeypatch.setattr("sys.argv", ["decoding_compare.py", str(squares_dir), str(a), str(b)])
    compare.main()
    out = capsys.readouterr().out
    # token F1 drops the article: "square is red", one word of three wrong in every answer (2/3); made-up
    # words count every word: one of four
    assert "token F1   1.000 -> 0.667 (-0.333 ± 0.000)" in out
    assert "made-up    0.0% of words (0% of answers) -> 25.0% (100%)" in out
    assert f"changed    {len(references)} of {len(references)} answers" in out

    monkeypatch.setattr("sys.argv", ["decoding_compare.py", str(squares_dir), str(a), str(a)])
    compare.main()
    assert "(+0.000 ± 0.000)" in capsys.readouterr().out

    wrong_rows = write_predictions(tmp_path / "c", references[1:], references[1:])
    monkeypatch.setattr("sys.argv", ["decoding_compare.py", str(squares_dir), str(a), str(wrong_rows)])
    with pytest.raises(SystemExit, match="B's predictions do not answer the rows"):
        compare.main()
