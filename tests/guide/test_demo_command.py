"""`picovlm demo` end to end on a tiny budget: every artefact is written and the runtime answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from picovlm.cli import main
from picovlm.demo import run_demo
from picovlm.eval.metrics import THRESHOLDS


def test_run_demo_writes_every_artefact_and_the_runtime_answers(tmp_path):
    stages = []
    result = run_demo(
        tmp_path / "demo", minutes=0.2, seed=0, n=120, preset="tiny", eval_items=12, max_new_tokens=24,
        samples=3, progress=lambda done, total, message: stages.append(message) if total is None else None,
    )  # fmt: skip
    p = result.paths
    assert [s[:5] for s in stages if s.startswith("[")] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    for split in ("train", "validation", "test"):
        assert (p["data"] / split).is_dir()
    for key in ("metrics", "report_html", "report_md", "eval_metrics"):
        assert p[key].is_file() and p[key].stat().st_size > 0, key
    assert (p["model"] / "model.safetensors").is_file() and (p["run"] / "config.yaml").is_file()
    assert any(p["plots"].glob("loss.*"))
    manifest = json.loads((p["exported"] / "manifest.json").read_text())
    assert manifest["quantization"]["weights"] == "int8"
    assert len(result.answers) == 3
    saved = json.loads((p["samples"] / "answers.json").read_text())
    assert saved == result.answers
    for item in result.answers:
        assert Path(item["image"]).parent == p["samples"] and Path(item["image"]).is_file()
        assert item["reference"] and any(c.isalpha() for c in item["answer"]), item  # an answer, not ""
    eval_metrics = json.loads(p["eval_metrics"].read_text())
    model_metrics = eval_metrics["models"][0]["metrics"]
    f = result.figures
    assert f["n_images"] == 12 and 1 <= f["distinct_answers"] <= 12
    assert model_metrics["token_f1"] == f["token_f1"] and model_metrics["verdict"] == f["verdict"]
    # The lookup is real: the answer of the nearest training image states ~40 % of a scene's facts.
    # The demo reports the strongest of the three lookups; which one wins on 12 items varies by machine.
    baselines = eval_metrics["models"][0]["baselines"]
    assert set(baselines) == {"nearest-pixels", "nearest-index", "nearest-vision"}
    stronger = max(baselines, key=lambda name: baselines[name]["metrics"]["token_f1"])
    assert f["baseline_name"] == stronger
    assert f["baseline_token_f1"] == baselines[stronger]["metrics"]["token_f1"] > 0.4
    assert f["baseline_field_accuracy"] > 0.2
    # What the demo prints is the truth about its model, in both directions. ~12 s of the tiny preset
    # (~140 steps) is far from a model that beats the lookup (token F1 0.12 vs 0.57, facts 0 % vs 38 %,
    # collapsed); even 1,000 steps (~1 min here) beat it on one seed of three. The 5-minute demo of the
    # default preset beats it (README: F1 0.76 vs 0.66, facts 0.65 vs 0.43) and is too long for a test.
    below = f["field_accuracy"] < f["baseline_field_accuracy"]
    assert ("below baseline" in f["verdict"]) == below, f
    # fewer distinct answers than half the references' distinct share is a collapse (THRESHOLDS; exactly
    # half, 6 of 12, is not: a run of ~12 s lands on either side, as the machine's speed has it)
    distinct_ratio = model_metrics["distinct_answer_share"] / model_metrics["reference_distinct_answer_share"]
    if below or distinct_ratio < THRESHOLDS["distinct_ratio"]:
        assert f["verdict_status"] != "healthy", f
    assert set(result.stage_seconds) == {"data", "train", "eval", "export", "runtime"}


def test_demo_refuses_a_folder_in_use(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path / "demo"), "--preset", "tiny", "--n", "60"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "demo" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~6 minutes on an idle 2-core machine; steps, not minutes, decide the model
def test_the_default_demo_beats_its_lookup(tmp_path, torch_default_threads):
    """What `picovlm demo` promises: the default preset and recipe, held-out scenes answered better than
    by the nearest training image, in words and in facts. 1,000 steps are about what its 5 minutes give
    the default (picovlm-small-retrieval with the fact loss) on an idle 2-core machine (983 on an AMD
    EPYC, 1,467 on an Intel Xeon: README, token F1 0.74 vs 0.66, facts 0.59 vs 0.41); steps, not
    minutes, so the model is the same on a busy machine. ~6-8 minutes."""
    result = run_demo(tmp_path / "demo", seed=0, max_steps=1000)
    import yaml

    config = yaml.safe_load((tmp_path / "demo" / "run" / "config.yaml").read_text())
    assert config["model"]["retrieval_k"] == 2 and config["train"]["fact_loss_weight"] == 1.0
    choice = result.train["generation"]  # how the model answers, chosen on validation: what eval used
    assert [c["name"] for c in choice["candidates"]] == ["greedy", "light vote", "vote", "weighed vote"]
    evaluated = json.loads((tmp_path / "demo" / "eval" / "metrics.json").read_text())["models"][0]
    assert evaluated["generation"] == choice["generation"]
    f = result.figures
    assert f["token_f1"] > f["baseline_token_f1"], f
    assert f["field_accuracy"] > f["baseline_field_accuracy"], f
    assert "below baseline" not in f["verdict"] and f["verdict_status"] != "collapsed", f
    assert all(any(c.isalpha() for c in item["answer"]) for item in result.answers)
