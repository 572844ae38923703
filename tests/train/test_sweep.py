"""A two-run sweep on the tiny preset: Table 1 and Figures 1-2 written; a re-run skips finished runs."""

from __future__ import annotations

import csv

import yaml

from picovlm.cli import main
from picovlm.train.sweep import expand_sweep, run_sweep


def test_grid_crossed_with_runs_expands_to_named_runs():
    spec = {"runs": [{"name": "a", "preset": "tiny"}, {"name": "b"}], "grid": {"train.lr_mp": [1, 2]}}
    assert [r.name for r in expand_sweep(spec)] == ["a-lr_mp=1", "a-lr_mp=2", "b-lr_mp=1", "b-lr_mp=2"]
    assert expand_sweep(spec)[3].train == {"lr_mp": 2}


def test_sweep_writes_table_and_figures_and_skips_finished_runs(demo_dir, tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "preset": "tiny",
        "train": {"data_dir": str(demo_dir), "batch_size": 4, "max_steps": 6, "eval_interval": 3,
                  "tokenizer_vocab_size": 400},
        "runs": [{"name": "narrow", "model": {"lm_hidden_dim": 32}},
                 {"name": "wide", "model": {"lm_hidden_dim": 48, "lm_inter_dim": 96}}],
    }))  # fmt: skip
    out = tmp_path / "out"
    first = run_sweep(sweep_file, out)
    assert [r["status"] for r in first["runs"]] == ["trained", "trained"]
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["narrow", "wide"]
    assert [r["lm_hidden_dim"] for r in rows] == ["32", "48"] and [r["lm_inter_dim"] for r in rows] == [
        "64",
        "96",
    ]
    assert "lm_n_blocks" not in rows[0]  # unchanged fields stay out of the table
    assert int(rows[1]["LLM params"]) > int(rows[0]["LLM params"]) > 0
    assert rows[0]["ViT params"] == rows[1]["ViT params"]
    assert all(
        float(r["best val loss"]) > 0 and r["best step"] in ("3", "6") and float(r["mean tokens/s"]) > 0
        for r in rows
    )
    # the last answer check beside the val loss (the demo rows' facts give field accuracy too)
    statuses = ("collapsed", "ignores-image", "below-baseline", "overfitting", "healthy", "unknown")
    assert all(r["answers check"] in statuses for r in rows)
    assert all(0 <= float(r["answer F1"]) <= 1 and 0 <= float(r["field accuracy"]) <= 1 for r in rows)
    md = (out / "report.md").read_text()
    assert "| narrow |" in md and "figures/val_loss.svg" in md
    assert "<table>" in (out / "report.html").read_text()
    for stem in ("val_loss", "tokens_per_s"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000
        assert (out / "figures" / f"{stem}.svg").is_file()

    mtime = (out / "wide" / "summary.json").stat().st_mtime_ns
    assert main(["sweep", str(sweep_file), "--out", str(out)]) == 0  # the CLI, resumable
    assert (out / "wide" / "summary.json").stat().st_mtime_ns == mtime
