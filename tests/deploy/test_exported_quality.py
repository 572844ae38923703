"""The deployed model's own quality: `picovlm eval` on exported folders (fp32 and int8) through the
torch-free runtime, and int8 compared with fp32 on the model's own validation data (issue 15, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from picovlm.cli import main


def _predictions(path: Path) -> dict[str, list[dict]]:
    by_model: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        by_model.setdefault(row["model"], []).append(row)
    return by_model


def test_eval_scores_exported_folders_beside_the_torch_model(run_exports, trained_run, tmp_path, capsys):
    _, data = trained_run
    out = tmp_path / "report"
    models = [str(run_exports[k]) for k in ("model", "fp32", "int8")]
    assert main(["eval", "--model", *models, "--data", str(data), "--split", "validation", "--max-items", "16",
                 "--swap-items", "8", "--baseline", "nearest", "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "fp32 (onnx fp32):" in printed and "int8 (onnx int8):" in printed

    document = json.loads((out / "metrics.json").read_text())
    torch_m, fp32, int8 = document["models"]
    assert [m["backend"] for m in document["models"]] == ["torch", "onnx fp32", "onnx int8"]
    for m in (fp32, int8):  # every figure a torch model gets, an exported folder gets too
        assert set(torch_m["metrics"]) == set(m["metrics"])
        assert set(m["baselines"]) == {"nearest-pixels", "nearest-index", "nearest-vision"}
        assert "field_accuracy" in m["metrics"] and m["metrics"]["verdict"]

    # fp32 through the runtime is the torch model: the same answers, the same losses
    predictions = _predictions(out / "predictions.jsonl")
    torch_answers = [row["answer"] for row in predictions[torch_m["name"]]]
    assert [row["answer"] for row in predictions[fp32["name"]]] == torch_answers
    assert len(set(torch_answers)) >= 3  # a model that reads its images, not one answer for all
    for key in (
        "loss",
        "loss_shuffled_images",
        "loss_blank_images",
        "train_loss",
        "image_gap_shuffled_calibrated",
        "image_gap_shuffled_error",
    ):
        assert fp32["metrics"][key] == pytest.approx(torch_m["metrics"][key], abs=1e-3), key
    assert fp32["metrics"]["calibrated_temperature"] == torch_m["metrics"]["calibrated_temperature"]
    for key in ("token_f1", "field_accuracy", "answers_changed_share"):
        assert fp32["metrics"][key] == pytest.approx(torch_m["metrics"][key], abs=1e-9), key
    assert fp32["metrics"]["image_gap_shuffled"] > 0.05  # the loss does depend on the picture
    # int8 is close to fp32 on the same rows
    assert int8["metrics"]["token_f1"] == pytest.approx(fp32["metrics"]["token_f1"], abs=0.05)
    assert int8["metrics"]["loss"] == pytest.approx(fp32["metrics"]["loss"], abs=0.05)


def test_int8_is_compared_with_fp32_on_the_models_own_validation_data(run_exports, trained_run):
    _, data = trained_run
    manifest = json.loads((run_exports["int8"] / "manifest.json").read_text())
    e = manifest["quantization"]["eval"]
    assert (e["data"], e["split"], e["items"]) == (str(data), "validation", 32)
    fp32, int8 = e["fp32"], e["int8"]
    assert fp32["distinct_answers"] >= 4  # the model reads its images: agreement is not trivial
    assert fp32["token_f1"] > 0.4 and fp32["field_accuracy"] > 0.15  # it learned the task
    # real agreement: most answers the same, or the same quality; the same facts stated
    assert e["identical_answers"] >= 0.8 or abs(int8["token_f1"] - fp32["token_f1"]) <= 0.05, e
    assert abs(int8["field_accuracy"] - fp32["field_accuracy"]) <= 0.05, e
    assert e["int8_vs_fp32_token_f1"] >= 0.75 and e["int8_vs_fp32_fields"] >= 0.6, e


def test_export_cli_prints_the_comparison(run_exports, trained_run):
    _, data = trained_run
    printed = run_exports["int8_printed"]
    assert f"int8 vs fp32 on 32 rows of {data} split 'validation'" in printed
    assert "identical answers" in printed and "field accuracy" in printed and "distinct answers" in printed


def test_int8_export_without_data_names_the_data_flag_before_any_work(trained_model_dir, tmp_path, capsys):
    """A bare save_pretrained folder has no run folder: no demo scenes are made up in its place."""
    out = tmp_path / "int8"
    assert main(["export", "--model", str(trained_model_dir), "--out", str(out), "--quantize", "int8"]) == 1
    error = capsys.readouterr().err
    assert "--data DIR" in error and "--eval-items 0" in error and str(trained_model_dir) in error
    assert not out.exists()
    assert main(["export", "--model", str(trained_model_dir), "--out", str(out), "--data", "x"]) == 1
    assert "--quantize int8" in capsys.readouterr().err


def test_eval_data_is_found_through_the_run_folder_or_given(trained_run, tmp_path):
    from picovlm.errors import DataError, PicovlmError
    from picovlm.export.quality import find_eval_data

    run_dir, data = trained_run
    assert find_eval_data(run_dir / "model") == (
        data,
        "validation",
        f"train.data_dir of {run_dir / 'config.yaml'}",
    )
    assert find_eval_data(run_dir / "best", split="test")[:2] == (data, "test")
    assert find_eval_data(tmp_path / "anything", data=data)[:2] == (data, "validation")
    with pytest.raises(DataError, match="--split"):
        find_eval_data(run_dir / "model", split="holdout")
    # a run folder whose data has moved away
    moved = tmp_path / "run"
    (moved / "model").mkdir(parents=True)
    (moved / "config.yaml").write_text(f"train:\n  data_dir: {tmp_path / 'gone'}\n")
    with pytest.raises(PicovlmError, match="--data DIR"):
        find_eval_data(moved / "model")


def test_eval_names_both_kinds_of_folder_when_given_neither(tmp_path, capsys):
    from picovlm.eval.evaluate import load_model

    with pytest.raises(Exception, match="manifest.json"):
        load_model(tmp_path)
