"""The training loop on the tiny preset and tiny demo data: run folder, resume, errors, accumulation."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from picovlm.config import replace
from picovlm.errors import ConfigError, DataError
from picovlm.model.vlm import VLM
from picovlm.train.checkpoint import load_checkpoint
from picovlm.train.loop import train
from picovlm.train.tracking import read_metrics


def test_run_folder_metrics_plots_and_falling_val_loss(demo_dir, tmp_path, tiny_configs):
    model_cfg, train_cfg = tiny_configs(demo_dir, tmp_path / "run", max_steps=24, eval_interval=8)
    calls = []
    result = train(model_cfg, train_cfg, progress=lambda d, t, m: calls.append((d, t, m)))
    run = tmp_path / "run"
    for name in ("config.yaml", "tokenizer.json", "metrics.jsonl", "checkpoint.pt", "summary.json"):
        assert (run / name).is_file(), name
    for stem in ("loss", "tokens_per_s"):
        assert (run / "plots" / f"{stem}.png").stat().st_size > 1000
        assert (run / "plots" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 25))
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [8, 16, 24]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]  # it learns
    assert all(r["train_val_gap"] is not None for r in evals)
    assert all(r["tokens_per_s"] >= r["tokens_per_s_wall"] > 0 for r in records)
    assert all(0 <= r["padding_share"] < 0.5 and r["peak_rss_mb"] > 50 for r in records)
    # the trained tokenizer sized the vocabulary, and both saved models load back and agree with it
    assert result.params["lm_embedding"] == 400 * model_cfg.lm_hidden_dim
    best, final = VLM.from_pretrained(run / "best"), VLM.from_pretrained(run / "model")
    assert best.cfg.lm_vocab_size == final.cfg.lm_vocab_size == len(final.tokenizer) == 400
    assert result.best_step == 24 and result.best_val_loss == pytest.approx(evals[-1]["val_loss"])
    assert calls[-1][0] == 24 and "tok/s" in calls[-1][2]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == 24


def test_eval_without_out_writes_beside_the_run_it_judges(demo_dir, tmp_path, tiny_configs, capsys):
    from picovlm.cli import main

    train(*tiny_configs(demo_dir, tmp_path / "run"))
    run = tmp_path / "run"
    flags = ["--data", str(demo_dir), "--max-items", "4", "--swap-items", "2", "--max-new-tokens", "8"]
    assert main(["eval", "--model", str(run / "model"), str(run / "best"), *flags]) == 0
    document = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert len(document["models"]) == 2 and str(run / "eval-test" / "report.html") in capsys.readouterr().out
    # a folder outside a run, or models of two runs: no one obvious home, so --out is asked for
    other = tmp_path / "copied-model"
    other.mkdir()
    for file in (run / "model").iterdir():
        (other / file.name).write_bytes(file.read_bytes())
    for models in ([str(other)], [str(run / "model"), str(other)]):
        assert main(["eval", "--model", *models, *flags, "--split", "validation"]) != 0
        assert "name the report's folder with --out" in capsys.readouterr().err
    assert not (tmp_path / "eval-validation").exists() and not (run / "eval-validation").exists()


def test_resume_continues_exactly(demo_dir, tmp_path, tiny_configs, crash_run):
    """A run interrupted after its step-4 checkpoint and resumed matches an uninterrupted run."""
    model_cfg, full_cfg = tiny_configs(demo_dir, tmp_path / "full", max_steps=10, checkpoint_interval=4)
    train(model_cfg, full_cfg)
    _, cut_cfg = tiny_configs(demo_dir, tmp_path / "cut", max_steps=10, checkpoint_interval=4)

    crash_run(model_cfg, cut_cfg, 6)
    assert load_checkpoint(tmp_path / "cut")["step"] == 4
    with pytest.raises(ConfigError, match="--resume"):
        train(model_cfg, cut_cfg)  # refuses to overwrite a run silently
    result = train(model_cfg, cut_cfg, resume=True)
    assert "resumed from step 4" in result.notes
    full, cut = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert [r["step"] for r in cut] == list(range(1, 11))  # the lines of the lost steps 5-6 were cut
    for a, b in zip(full, cut):
        assert a["lr"] == b["lr"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
    assert full[-1]["val_loss"] == pytest.approx(cut[-1]["val_loss"], rel=1e-6)


def _rewrite_as_before_train_state(run_dir) -> None:
    """Rewrite run_dir/checkpoint.pt the way picovlm wrote it before TrainState: the state as a
    string-keyed "trainer" dict beside "step", and (before best_metric existed) no "best_score"."""
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    trainer = saved.pop("train_state")
    del trainer["step"], trainer["best_score"]
    torch.save({**saved, "trainer": trainer}, run_dir / "checkpoint.pt")


def test_a_checkpoint_from_before_train_state_resumes_exactly(demo_dir, tmp_path, tiny_configs, crash_run):
    """Old run folders keep resuming: the old dict is converted on load, and the run goes on as an
    uninterrupted one did."""
    fields = dict(max_steps=10, checkpoint_interval=4, best_metric="val_loss", gen_eval_interval=0)
    model_cfg, full_cfg = tiny_configs(demo_dir, tmp_path / "full", **fields)
    full_result = train(model_cfg, full_cfg)
    _, old_cfg = tiny_configs(demo_dir, tmp_path / "old", **fields)

    crash_run(model_cfg, old_cfg, 6)
    _rewrite_as_before_train_state(tmp_path / "old")
    result = train(model_cfg, old_cfg, resume=True)
    assert "resumed from step 4" in result.notes
    full, old = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "old")
    assert [r["step"] for r in old] == list(range(1, 11))
    for a, b in zip(full, old):
        assert a["lr"] == b["lr"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
    assert (result.best_step, result.best_score) == (
        full_result.best_step,
        pytest.approx(full_result.best_score),
    )
    assert result.tokens_per_s_wall and result.wall_time_s > 0  # running totals carried over
    assert "train_state" in load_checkpoint(tmp_path / "old")  # written back in the new layout


def test_train_state_from_an_old_checkpoint_dict():
    from picovlm.errors import PicovlmError
    from picovlm.train.state import TrainState

    trainer = {
        "best_val_loss": 2.5,
        "best_step": 40,
        "bad_evals": 1,
        "tokens": 900,
        "wall_time_s": 12.0,
        "step_time_s": 9.0,
        "skipped_rows": 3,
        "train_losses_since_eval": [2.7, 2.6],
    }
    old = {"step": 44, "trainer": trainer}  # before best_metric: best/ followed the val loss
    state = TrainState.from_checkpoint(old, best_metric="val_loss")
    assert state == TrainState(step=44, best_score=2.5, **trainer)
    assert TrainState.from_checkpoint(old, best_metric="gen_token_f1").best_score is None
    with_score = {"step": 44, "trainer": {**trainer, "best_score": 0.4}}
    assert TrainState.from_checkpoint(with_score, best_metric="val_loss").best_score == 0.4
    assert TrainState.from_checkpoint({"step": 44, "train_state": state.to_dict()}, "val_loss") == state
    with pytest.raises(PicovlmError, match="newer picovlm"):
        TrainState.from_dict({**state.to_dict(), "ema": 0.9})


def test_gradient_accumulation_matches_a_big_batch(demo_dir, tmp_path, tiny_configs):
    """Loss is normalised by the whole step's supervised tokens, so 2 x 4 == 1 x 8 (up to float error)."""
    model_cfg, big = tiny_configs(demo_dir, tmp_path / "big", batch_size=8, max_steps=5)
    _, accum = tiny_configs(
        demo_dir, tmp_path / "acc", batch_size=4, gradient_accumulation_steps=2, max_steps=5
    )
    train(model_cfg, big)
    train(model_cfg, accum)
    a, b = read_metrics(tmp_path / "big"), read_metrics(tmp_path / "acc")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)


def test_the_sample_cache_changes_no_step_of_training(demo_dir, tmp_path, tiny_configs):
    """Samples read back from the cache are those encoded afresh: three epochs of 77 rows at batch 16
    give the same losses, step for step, with the cache on (the default) and off."""
    model_cfg, cached = tiny_configs(demo_dir, tmp_path / "cached", batch_size=16, max_steps=12)
    _, fresh = tiny_configs(demo_dir, tmp_path / "fresh", batch_size=16, max_steps=12, sample_cache_mb=0)
    assert cached.sample_cache_mb > 0
    train(model_cfg, cached)
    train(model_cfg, fresh)
    a, b = read_metrics(tmp_path / "cached"), read_metrics(tmp_path / "fresh")
    assert [r["epoch"] for r in a][-1] > 2  # the later epochs read the cache
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_image_augment_jitters_the_training_pictures_only(demo_dir, tmp_path, tiny_configs):
    """train.image_augment changes what the model sees in training (the first step's loss differs from a
    plain run with the same seed), and repeats itself with the same seed."""
    runs = {}
    for name, augment in (("plain", False), ("jitter", True), ("jitter_again", True)):
        model_cfg, train_cfg = tiny_configs(
            demo_dir, tmp_path / name, max_steps=4, eval_interval=4, image_augment=augment
        )
        train(model_cfg, train_cfg)
        runs[name] = read_metrics(tmp_path / name)
    losses = {name: [r["loss"] for r in records] for name, records in runs.items()}
    assert losses["jitter"] == losses["jitter_again"]
    assert losses["jitter"][0] != losses["plain"][0]
    assert all(loss == loss and loss > 0 for loss in losses["jitter"])  # finite, trains


def test_label_smoothing_reaches_the_training_loss(demo_dir, tmp_path, tiny_configs):
    """At initialisation the smoothing term equals the loss (both are about log V); once the model grows
    confident, the uniform share of the target costs more and more, so the smoothed run logs a higher
    training loss than the plain one with the same seed."""
    losses = {}
    for name, smoothing in (("plain", 0.0), ("smoothed", 0.3)):
        model_cfg, train_cfg = tiny_configs(demo_dir, tmp_path / name, max_steps=8, label_smoothing=smoothing)
        train(model_cfg, train_cfg)
        losses[name] = [r["loss"] for r in read_metrics(tmp_path / name)]
    assert losses["smoothed"][0] == pytest.approx(losses["plain"][0], abs=0.01)
    assert sum(losses["smoothed"][-4:]) > sum(losses["plain"][-4:]) + 0.1  # 0.25 here


def test_zero_lr_keeps_the_vision_tower_fixed_and_a_given_tokenizer_resizes_the_vocab(
    demo_dir, tmp_path, tiny_configs
):
    from picovlm.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["a red circle at the top left"] * 50, vocab_size=300)
    tokenizer.save(tmp_path)
    model_cfg, train_cfg = tiny_configs(
        demo_dir, tmp_path / "run", lr_vision_backbone=0.0, max_steps=3, tokenizer=str(tmp_path)
    )
    model_cfg = replace(model_cfg, lm_vocab_size=260)  # smaller than the tokenizer
    result = train(model_cfg, train_cfg)
    assert any("lm_vocab_size raised from 260" in n for n in result.notes)
    torch.manual_seed(train_cfg.seed)
    fresh = VLM(replace(model_cfg, lm_vocab_size=len(tokenizer)))
    trained = VLM.from_pretrained(tmp_path / "run" / "model")
    for (name, p), q in zip(fresh.vision_encoder.named_parameters(), trained.vision_encoder.parameters()):
        assert torch.equal(p, q), name
    assert not torch.equal(fresh.projector.proj.weight, trained.projector.proj.weight)


def test_clear_errors_before_training(demo_dir, tmp_path, tiny_configs):
    model_cfg, cfg = tiny_configs(demo_dir, tmp_path / "a", batch_size=500)
    with pytest.raises(DataError, match="fewer than one global batch"):
        train(model_cfg, cfg)
    model_cfg, cfg = tiny_configs(demo_dir, tmp_path / "b", batch_size=10**7)
    with pytest.raises(ConfigError, match="GiB"):
        train(model_cfg, cfg)
    model_cfg, cfg = tiny_configs(tmp_path / "missing", tmp_path / "c")
    with pytest.raises(DataError, match="does not exist"):
        train(model_cfg, cfg)
    assert not (tmp_path / "a" / "checkpoint.pt").exists()


def test_early_stopping_stops_when_val_loss_stops_improving(demo_dir, tmp_path, tiny_configs):
    # A learning rate of 1 wrecks a model after a few steps: the val loss soon stops improving.
    model_cfg, cfg = tiny_configs(
        demo_dir, tmp_path / "run", max_steps=40, eval_interval=1, early_stopping_patience=2, best_metric="val_loss",
        lr_mp=1.0, lr_vision_backbone=1.0, lr_language_backbone=1.0, warmup_ratio=0.0, max_grad_norm=100.0,
    )  # fmt: skip
    result = train(model_cfg, cfg)
    assert result.stop_reason == "early_stopping" and result.steps < 40
    vals = [r["val_loss"] for r in read_metrics(tmp_path / "run")]
    assert min(vals[-2:]) >= result.best_val_loss and result.steps - result.best_step == 2


def test_best_can_follow_an_answer_metric_instead_of_the_val_loss(demo_dir, tmp_path, tiny_configs):
    model_cfg, cfg = tiny_configs(
        demo_dir, tmp_path / "run", max_steps=40, eval_interval=5, gen_eval_interval=10, gen_eval_items=4,
        best_metric="gen_token_f1", early_stopping_patience=10,
    )  # fmt: skip
    result = train(model_cfg, cfg)
    judged = [
        (r["step"], r["gen_field_accuracy"]) for r in read_metrics(tmp_path / "run") if "gen_n_items" in r
    ]
    assert [step for step, _ in judged] == [10, 20, 30, 40]  # at the answer checks, not every val loss
    best_score = max(score for _, score in judged)
    assert result.best_score == best_score and result.best_metric == "gen_token_f1"
    assert result.best_step == next(step for step, score in judged if score == best_score)  # first of ties
    vals = {r["step"]: r["val_loss"] for r in read_metrics(tmp_path / "run") if "val_loss" in r}
    assert result.best_val_loss == min(vals.values())  # still reported, though best/ follows the answers
    best = VLM.from_pretrained(tmp_path / "run" / "best").state_dict()
    final = VLM.from_pretrained(tmp_path / "run" / "model").state_dict()
    same = all(torch.equal(best[k], final[k]) for k in final)
    assert same == (result.best_step == 40)  # best/ holds the weights of the chosen step


def test_best_metric_auto_follows_the_answers_where_they_are_checked(demo_dir, tmp_path, tiny_configs):
    """The default: best/ by the answers' token F1 when the answer check runs on a validation split (on
    real data best/ by val loss was far worse than the final model), else by the val loss."""
    import yaml

    model_cfg, cfg = tiny_configs(demo_dir, tmp_path / "checked", gen_eval_interval=4, gen_eval_items=4)
    assert cfg.best_metric == "auto"
    result = train(model_cfg, cfg)
    assert result.best_metric == "gen_token_f1" and result.best_step in (4, 8)
    saved = yaml.safe_load((tmp_path / "checked" / "config.yaml").read_text())["train"]
    assert saved["best_metric"] == "gen_token_f1"  # a resumed run keeps what this run chose
    model_cfg, cfg = tiny_configs(demo_dir, tmp_path / "unchecked", gen_eval_interval=0)
    assert train(model_cfg, cfg).best_metric == "val_loss"


def test_an_answer_metric_that_can_never_be_measured_fails_before_training(demo_dir, tmp_path, tiny_configs):
    with pytest.raises(ConfigError, match="best_metric='bleu'"):
        tiny_configs(demo_dir, tmp_path / "a", best_metric="bleu")
    with pytest.raises(ConfigError, match="gen_eval_interval=0"):
        tiny_configs(demo_dir, tmp_path / "b", best_metric="gen_token_f1", gen_eval_interval=0)
    from datasets import load_from_disk

    plain = tmp_path / "no-fields"  # the same rows without the facts column: nothing to parse facts from
    load_from_disk(str(demo_dir)).remove_columns("fields").save_to_disk(str(plain))
    model_cfg, cfg = tiny_configs(plain, tmp_path / "c", best_metric="gen_field_accuracy")
    with pytest.raises(ConfigError, match="use gen_token_f1"):
        train(model_cfg, cfg)
    assert not (tmp_path / "c" / "checkpoint.pt").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_missing_tracker_extra_is_a_clear_error(demo_dir, tmp_path, tiny_configs):
    model_cfg, cfg = tiny_configs(demo_dir, tmp_path / "run", report_to="tensorboard", max_steps=1)
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        train(model_cfg, cfg)


def test_generation_check_metrics_are_logged(demo_dir, tmp_path, tiny_configs):
    model_cfg, cfg = tiny_configs(
        demo_dir, tmp_path / "run", max_steps=2, eval_interval=2, gen_eval_interval=2, gen_eval_items=3
    )
    result = train(model_cfg, cfg)
    last = read_metrics(tmp_path / "run")[-1]
    assert last["gen_n_items"] == 3 and result.gen_verdict == last["gen_verdict"]
    assert last["gen_verdict_status"] in (
        "collapsed",
        "ignores-image",
        "below-baseline",
        "overfitting",
        "healthy",
        "unknown",
    )
    assert "gen_image_gap_shuffled" in last and "gen_token_f1" in last
    # the verbatim-copy share against the training answers, and the references' own (held out: none)
    assert (
        0 <= last["gen_copied_from_train_share"] <= 1 and last["gen_reference_copied_from_train_share"] == 0
    )
    # the nearest-pixels lookup, computed once, is logged with every check and read by its verdict
    assert last["gen_baseline_name"] == "nearest-pixels" and 0 < last["gen_baseline_token_f1"] <= 1
    assert 0 <= last["gen_baseline_field_accuracy"] <= 1  # demo rows: facts parsed
    assert "below baseline" in last["gen_verdict"]  # a 2-step model answers worse than the lookup
    # the checks are plotted beside the loss: the answers against the lookup's, and the image gap
    for stem in ("answers", "image_gap"):
        assert (tmp_path / "run" / "plots" / f"{stem}.png").stat().st_size > 1000


def test_a_run_without_the_answer_check_plots_only_its_loss_and_throughput(tmp_path):
    from picovlm.train.tracking import plot_run

    records = [{"step": step, "loss": 5.0 - step, "tokens_per_s": 100.0, "tokens_per_s_wall": 90.0}
               for step in (1, 2, 3)]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert sorted(path.name for path in plot_run(tmp_path)) == [
        "loss.png", "loss.svg", "tokens_per_s.png", "tokens_per_s.svg"
    ]  # fmt: skip
    records[-1].update(gen_token_f1=0.4, gen_image_gap_shuffled=0.1)  # one check: both plots
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert {path.stem for path in plot_run(tmp_path)} == {"loss", "tokens_per_s", "answers", "image_gap"}


def test_a_time_budget_fits_the_schedule_so_the_learning_rate_decays_in_time(
    demo_dir, tmp_path, tiny_configs
):
    # Far more epochs than 4 seconds allow: without fitting, the run would stop near peak learning rate.
    model_cfg, train_cfg = tiny_configs(
        demo_dir, tmp_path / "run", max_steps="null", epochs=10_000, max_minutes=4 / 60, eval_interval=1000
    )
    result = train(model_cfg, train_cfg)
    records = read_metrics(tmp_path / "run")
    assert 5 < result.total_steps and result.steps == result.total_steps
    assert any("schedule fitted" in note for note in result.notes)
    assert records[-1]["lr"] == pytest.approx(train_cfg.lr_mp * train_cfg.min_lr_ratio, rel=0.05)
    assert max(r["lr"] for r in records) == pytest.approx(train_cfg.lr_mp, rel=0.05)


def test_threads_sets_torchs_cpu_threads_for_the_run(demo_dir, tmp_path, tiny_configs):
    before = torch.get_num_threads()
    seen = []
    try:
        model_cfg, cfg = tiny_configs(demo_dir, tmp_path / "run", max_steps=2, threads=1)
        train(model_cfg, cfg, progress=lambda done, total, message: seen.append(torch.get_num_threads()))
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}


def test_refitting_the_schedule_fills_the_budget_and_never_restarts_warmup():
    from picovlm.config import TrainConfig
    from picovlm.train.budget import fit_schedule_to_time

    cfg = TrainConfig(max_minutes=10, warmup_ratio=0.05)
    # 5 slow first steps took 10 s (2 s/step): ~280 steps fit, warmup 5% of them.
    assert fit_schedule_to_time(cfg, 5, 10.0, 2.0, 10_000, 500) == (5 + int(560 / 2), 15)
    # Later steps are faster: the refit grows the run; warmup is over, so it stays as it was.
    assert fit_schedule_to_time(cfg, 200, 100.0, 0.2, 10_000, 15) == (200 + int(470 / 0.2), 15)
    # Never more than max_steps, never less than one more step when the clock has run out.
    assert fit_schedule_to_time(cfg, 200, 100.0, 0.01, 3_000, 15)[0] == 3_000
    assert fit_schedule_to_time(cfg, 200, 900.0, 0.2, 3_000, 15)[0] == 201
    # Without max_steps the clock alone decides (epochs was only the first guess).
    assert fit_schedule_to_time(cfg, 200, 100.0, 0.01, None, 15)[0] == 200 + int(470 / 0.01)


def test_budget_keeps_a_fitted_plan_on_resume_and_notes_a_changed_fixed_one():
    from picovlm.config import TrainConfig
    from picovlm.train.budget import Budget

    fixed = Budget(TrainConfig(max_steps=100, warmup_ratio=0.1), steps_per_epoch=10)
    assert (fixed.total_steps, fixed.warmup_steps) == (100, 10)
    assert fixed.load_state_dict({"total_steps": 100, "warmup_steps": 10}) is None
    assert "schedule changed" in fixed.load_state_dict({"total_steps": 80, "warmup_steps": 8})
    assert fixed.total_steps == 100  # a fixed plan follows the config
    assert (
        fixed.stop_reason(False, False) == "max_steps" and fixed.stop_reason(True, False) == "early_stopping"
    )
    timed = Budget(TrainConfig(max_steps=None, max_minutes=10, epochs=2), steps_per_epoch=10)
    assert timed.total_steps == 20 and timed.state_dict()["fitted_to_time"]  # epochs: the first guess
    assert timed.load_state_dict({"total_steps": 731, "warmup_steps": 37, "fitted_to_time": True}) is None
    assert (timed.total_steps, timed.warmup_steps) == (731, 37)  # the clock's fit goes on
    assert timed.stop_reason(False, False) == "max_minutes"


def test_with_a_time_budget_the_clock_not_epochs_ends_the_run(demo_dir, tmp_path, tiny_configs):
    # issue 14: `epochs: 20` ended a 10-minute run at 74% of its budget. One epoch here is 19 steps.
    model_cfg, train_cfg = tiny_configs(
        demo_dir, tmp_path / "run", max_steps="null", epochs=1, max_minutes=3 / 60, eval_interval=1000
    )
    result = train(model_cfg, train_cfg)
    assert result.steps > 77 // 4 and result.stop_reason == "max_minutes"
    assert result.wall_time_s >= 0.8 * 3


def test_small_pictures_are_read_at_their_own_size_not_upscaled(demo_dir, tmp_path, tiny_configs):
    """32 px pictures and a model of 64 px with 16-px patches: the run halves both (the same 4x4 patch
    grid), says so, and saves the model it trained; with train.native_image_size=false it keeps 64 px."""
    model_cfg, train_cfg = tiny_configs(demo_dir, tmp_path / "native", max_steps=2)
    model_cfg = replace(model_cfg, vit_img_size=64, vit_patch_size=16)
    native = train(model_cfg, train_cfg)
    note = next(n for n in native.notes if "at most 32 px" in n)
    assert "32 px with 8-px patches (the same 4x4 patches)" in note and "native_image_size=false" in note
    saved = VLM.from_pretrained(tmp_path / "native" / "model")
    assert (saved.cfg.vit_img_size, saved.cfg.vit_patch_size, saved.cfg.vit_n_patches) == (32, 8, 16)
    assert saved.vision_encoder.patch_embedding.conv.weight.shape[1:] == (3, 8, 8)

    _, kept_cfg = tiny_configs(demo_dir, tmp_path / "kept", max_steps=2, native_image_size=False)
    kept = train(model_cfg, kept_cfg)
    assert not any("at most 32 px" in n for n in kept.notes)
    assert (VLM.from_pretrained(tmp_path / "kept" / "model").cfg.vit_img_size) == 64
    # the patch embedding is 4x smaller: 3 x 8 x 8 inputs per patch instead of 3 x 16 x 16
    assert kept.params["vit"] - native.params["vit"] == 3 * (16 * 16 - 8 * 8) * model_cfg.vit_hidden_dim


def test_fit_image_size_halves_only_while_the_pictures_fit_and_patches_stay_8_px(tmp_path, tiny_configs):
    from picovlm.data.cauldron import load_cauldron
    from picovlm.data.scenes import write_demo
    from picovlm.train.setup import fit_image_size

    pictures_16 = load_cauldron(write_demo(tmp_path / "d16", n=40, seed=0, image_size=16), split="train")
    pictures_40 = load_cauldron(write_demo(tmp_path / "d40", n=40, seed=0, image_size=40), split="train")
    model_cfg, _ = tiny_configs(tmp_path, tmp_path / "unused")
    notes = []
    halved_twice = fit_image_size(replace(model_cfg, vit_img_size=128, vit_patch_size=32), pictures_16, notes)
    # 16 px pictures fit 32 px; a third halving would give 4-px patches
    assert (halved_twice.vit_img_size, halved_twice.vit_patch_size) == (32, 8)
    assert notes and "at most 16 px" in notes[0]
    for size, patch, pictures in ((32, 8, pictures_16), (64, 16, pictures_40)):
        cfg = replace(model_cfg, vit_img_size=size, vit_patch_size=patch)
        assert fit_image_size(cfg, pictures, notes) is cfg  # 8-px patches already; 40 px > 64 / 2
    assert len(notes) == 1
