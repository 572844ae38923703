"""`picovlm generate` and `picovlm eval` through the real CLI entry point, plus streaming."""

from __future__ import annotations

import json
import subprocess
import sys

from picovlm.cli import main
from picovlm.eval.generate import answer_files, stream_answer


def save_images(square_rows, tmp_path, n=3):
    paths = []
    for i, row in enumerate(square_rows(n, 7)):
        path = tmp_path / f"img{i}.png"
        row["images"][0].save(path)
        paths.append(str(path))
    return paths


def test_stream_answer_pieces_add_up_to_the_batched_answer(tiny_models, square_rows, tmp_path):
    from picovlm.model.vlm import VisionLanguageModel

    model = VisionLanguageModel.from_pretrained(tiny_models["grounded"])
    [path] = save_images(square_rows, tmp_path, 1)
    pieces: list[str] = []
    answer = stream_answer(
        model, path, "What colour is the square?", on_text=pieces.append, max_new_tokens=16
    )
    assert len(pieces) > 1 and "".join(pieces) == answer
    assert answer == answer_files(model, [path], "What colour is the square?", max_new_tokens=16)[0]
    assert answer.startswith("The square is")


def test_generate_cli_streams_one_and_batches_many(tiny_models, square_rows, tmp_path, capsys):
    paths = save_images(square_rows, tmp_path)
    model = str(tiny_models["grounded"])
    question = ["--question", "What colour is the square?", "--max-new-tokens", "16"]
    assert main(["generate", "--model", model, "--image", paths[0], *question]) == 0
    assert capsys.readouterr().out.startswith("The square is")
    assert main(["generate", "--model", model, "--image", *paths, *question, "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["image"] for a in answers] == paths and all(
        a["answer"].startswith("The square") for a in answers
    )
    # sampling flags are accepted and a seed makes sampling repeatable
    sampled = ["--temperature", "1.5", "--top-k", "5", "--top-p", "0.9", "--seed", "3"]
    main(["generate", "--model", model, "--image", *paths, *question, *sampled])
    first = capsys.readouterr().out
    main(["generate", "--model", model, "--image", *paths, *question, *sampled])
    assert capsys.readouterr().out == first


def test_generate_cli_names_a_missing_image(tiny_models, tmp_path, capsys):
    code = main(["generate", "--model", str(tiny_models["grounded"]), "--image", str(tmp_path / "nope.png")])
    assert code == 1
    assert "nope.png: no such image file" in capsys.readouterr().err


def test_eval_cli_writes_reports_and_prints_verdicts(tiny_models, squares_dir, tmp_path):
    out = tmp_path / "report"
    command = [
        sys.executable, "-m", "picovlm", "eval", "--model", str(tiny_models["grounded"]),
        str(tiny_models["collapsed"]), "--data", str(squares_dir), "--baseline", "nearest",
        "--max-new-tokens", "16", "--out", str(out), "--threads", "1",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "collapsed: collapsed: 100% of test images got the same answer" in done.stdout
    assert "baseline nearest-pixels: token F1" in done.stdout
    # each lookup line says how far ahead the model is, and how surely over the test objects
    assert "· the model's lead: token F1 " in done.stdout and "(over 24 objects)" in done.stdout
    # six colours: every test answer is a training answer, about new pictures (named, not blamed)
    assert (
        "overlap with 'train': 0 of 24 rows share a picture (0.0%), 24 an identical answer (100.0%)"
        in done.stdout
    )
    assert "seen in training" not in done.stdout
    for name in ("metrics.json", "predictions.jsonl", "report.md", "report.html"):
        assert (out / name).is_file()
    document = json.loads((out / "metrics.json").read_text())
    assert [m["metrics"]["verdict_status"] for m in document["models"]][1] == "collapsed"
