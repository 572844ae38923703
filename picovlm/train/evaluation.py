"""The evaluation hook: what the loop does after a step when an evaluation is due.

    every eval_interval steps      val loss (+ the gap to the training loss since the last one)
    every gen_eval_interval steps  the answer check on gen_eval_items validation rows: eval's quick_eval
                                   (answers, collapse signals, image reliance, verbatim training
                                   answers, the lookup baseline)
    then, if best_metric was measured: save best/ when it improved; early_stopping_patience
                                   judgements without a new best end the run

With train.ema_decay both evaluate the weight average (train/average.py), which best/ then saves.
Both run on the last step too, and when the time budget runs out; after it, a model set to vote
(choose_answering) gets the answer check once more, answering that way. best_metric "auto" is settled
before training (`settle_best_metric`), as is a metric that could never be measured.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from picovlm.config import TrainConfig, replace
from picovlm.errors import ConfigError
from picovlm.eval import metrics as M
from picovlm.eval.choose import GenerationChoice, choose_generation
from picovlm.eval.evaluate import items_from_rows, pixel_baseline, quick_eval, training_answers
from picovlm.eval.facts import fact_parser_for
from picovlm.generation import save_generation
from picovlm.train.average import WeightAverage
from picovlm.train.checkpoint import save_model
from picovlm.train.setup import Dist
from picovlm.train.state import TrainState
from picovlm.train.step import autocast, to_device

GEN_BASELINE_TRAIN_ROWS = 5000  # training rows the in-training lookup baseline searches (eval: all)


def settle_best_metric(train_cfg: TrainConfig, train_ds, val_ds):
    """(train_cfg with best_metric "auto" resolved, the parser of the answers' facts or None).

    Fails before training, not silently after it, when best/ could never be chosen by best_metric.
    The parser is read once here (from the rows' source) and used by every answer check."""
    field_parser = fact_parser_for(train_ds, val_ds) if val_ds is not None else None
    if train_cfg.best_metric == "auto":
        train_cfg = replace(train_cfg, best_metric=resolve_best_metric(train_cfg, val_ds))
    metric = train_cfg.best_metric
    if metric != "val_loss" and val_ds is None:
        raise ConfigError(
            f"best_metric={metric} is measured on the {train_cfg.val_split!r} split, which "
            f"{train_cfg.data_dir} does not have: add one (picovlm data split) or use best_metric=val_loss."
        )
    if metric == "gen_field_accuracy" and field_parser is None:
        raise ConfigError(
            "best_metric=gen_field_accuracy needs rows with facts: a `fields` column (`picovlm data import` "
            "keeps a table's extra columns as facts); for data without facts use gen_token_f1."
        )
    return train_cfg, field_parser


def resolve_best_metric(train_cfg: TrainConfig, val_ds) -> str:
    """What best_metric="auto" means for this run: the answers' token F1 where the answer check runs on
    a validation split (it predicted the test answers; the val loss did not), else the val loss."""
    return "gen_token_f1" if val_ds is not None and train_cfg.gen_eval_interval else "val_loss"


@torch.no_grad()
def validation_loss(model, loader, amp_dtype: torch.dtype | None, dist_: Dist) -> float | None:
    """Mean cross-entropy per supervised token over this rank's share of the val set, summed over ranks."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0.0
    for batch in loader:
        if batch["n_samples"] == 0:
            continue
        with autocast(dist_.device, amp_dtype):
            out = model(**to_device(batch, dist_.device), reduction="sum")
        total += float(out.loss)
        tokens += out.n_tokens
    model.train(was_training)
    total, tokens = dist_.sum([total, tokens])
    return total / tokens if tokens else None


def generation_metrics(
    model,
    rows: list,
    field_parser,
    baseline: dict[str, Any] | None,
    train_answers: list[str] | M.TrainingAnswers | None = None,
) -> dict[str, Any]:
    """The evaluation area's quick check as flat gen_* metrics (numbers and strings only); with
    train_answers, the share of answers that are training answers word for word (and its verdict)."""
    metrics = quick_eval(
        model, rows, train_answers=train_answers, extract_fields=field_parser, baseline=baseline
    )
    return {
        f"gen_{k}": v
        for k, v in metrics.items()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool)
    }


class EvalHook:
    """Called after every step: evaluates when due, adds the figures to the step's metrics record,
    keeps best/ and the early-stopping count in the TrainState. The answer check runs on rank 0 only;
    every rank computes its share of the val loss."""

    def __init__(
        self,
        model,
        train_cfg: TrainConfig,
        train_ds,
        val_ds,
        val_loader,
        field_parser,
        run_dir: Path,
        dist_: Dist,
        amp_dtype: torch.dtype | None,
        average: WeightAverage | None = None,
    ):
        self.model, self.cfg, self.val_loader, self.field_parser = model, train_cfg, val_loader, field_parser
        self.average = average  # with ema_decay: what is evaluated and saved to best/ (average.py)
        self.best_dir, self.dist, self.amp_dtype = run_dir / "best", dist_, amp_dtype
        self.gen_rows = None
        if val_ds is not None and train_cfg.gen_eval_interval and dist_.main:
            self.gen_rows = [val_ds[i] for i in range(min(train_cfg.gen_eval_items, len(val_ds)))]
        # The nearest-pixels lookup on the answer-check rows does not change as the model trains: once
        # per run, over at most GEN_BASELINE_TRAIN_ROWS training rows, so a 200k-row mix starts in seconds.
        # The training answers, for the verbatim-copy share: a retrieving model's answers can be its
        # neighbours' answers word for word, and the check says so (issue 14, "recalls training").
        self.gen_baseline, self.train_answers = None, None
        if self.gen_rows:
            self.gen_baseline = pixel_baseline(
                self.gen_rows, train_ds, field_parser, max_train_rows=GEN_BASELINE_TRAIN_ROWS
            )
            self.train_answers = training_answers(train_ds)  # read once per run
        self.val_loss: float | None = None  # at the last evaluation
        self.gen_verdict: str | None = None  # of the last answer check
        self.gen_verdict_status: str | None = None  # its one-word status (collapsed, healthy, ...)

    def __call__(self, state: TrainState, record: dict[str, Any], final: bool) -> bool:
        """Evaluate after step state.step if due (always when `final`); return whether to stop early."""
        cfg, step = self.cfg, state.step
        val_due = self.val_loader is not None and (step % cfg.eval_interval == 0 or final)
        answers_due = bool(cfg.gen_eval_interval) and (step % cfg.gen_eval_interval == 0 or final)
        if not (val_due or answers_due):
            return False
        with self.average.swapped_in() if self.average is not None else nullcontext():
            judged = False  # whether this step measured best_metric
            if val_due:
                self._val_loss(state, record)
                judged = cfg.best_metric == "val_loss"
            if answers_due:
                if self.gen_rows:
                    record.update(self._answer_check())
                    self._keep_verdict(record)
                # an answer metric is judged here even without rows on this rank (settle_best_metric
                # made sure there is a validation split, so rank 0 has them)
                judged = judged or cfg.best_metric != "val_loss"
            return judged and self._keep_best(record.get(cfg.best_metric), state)

    def check_chosen_answers(self, choice: GenerationChoice | None) -> None:
        """After the choice of how the model answers (choose_answering): when the model now votes, run
        the answer check once more, so the verdict in the summary is about the answers the saved model
        gives; the last in-training check answered greedily (a lookup-level model read as "below
        baseline" while its vote recalls training answers, docs/recipes.md finding 25)."""
        if choice is None or not choice.generation.copy_bias or not self.gen_rows:
            return
        self._keep_verdict(self._answer_check(), f" (answering with the {choice.name}, generation.json)")

    def _keep_verdict(self, metrics: dict[str, Any], suffix: str = "") -> None:
        if "gen_verdict" in metrics:
            self.gen_verdict = metrics["gen_verdict"] + suffix
            self.gen_verdict_status = metrics["gen_verdict_status"]

    def _answer_check(self) -> dict[str, Any]:
        return generation_metrics(
            self.model, self.gen_rows, self.field_parser, self.gen_baseline, self.train_answers
        )

    def _val_loss(self, state: TrainState, record: dict[str, Any]) -> None:
        val_loss = validation_loss(self.model, self.val_loader, self.amp_dtype, self.dist)
        recent = state.train_losses_since_eval
        record["val_loss"] = val_loss
        record["train_val_gap"] = val_loss - sum(recent) / len(recent) if val_loss else None
        state.train_losses_since_eval = []
        if val_loss is not None and (state.best_val_loss is None or val_loss < state.best_val_loss):
            state.best_val_loss = val_loss
        self.val_loss = val_loss

    def _keep_best(self, score: float | None, state: TrainState) -> bool:
        """Record a judgement of best_metric: save best/ when it improved, count judgements without
        improvement, and return whether early stopping ends the run now. Every rank calls this at the
        same steps; an answer metric is measured on rank 0 only, so its verdict is shared from there."""
        lower_is_better = self.cfg.best_metric == "val_loss"
        improved = score is not None and (
            state.best_score is None
            or (score < state.best_score if lower_is_better else score > state.best_score)
        )
        if not lower_is_better and self.dist.world_size > 1:
            (improved_anywhere,) = self.dist.sum([float(improved)])
            improved = improved_anywhere > 0
        if improved:
            state.best_score, state.best_step, state.bad_evals = score, state.step, 0
            if self.dist.main:
                save_model(self.model, self.best_dir)
            return False
        state.bad_evals += 1
        patience = self.cfg.early_stopping_patience
        return patience is not None and state.bad_evals >= patience


def choose_answering(
    model,
    val_ds,
    field_parser,
    train_cfg: TrainConfig,
    state: TrainState,
    run_dir: Path,
    progress,
) -> GenerationChoice | None:
    """After the last step (rank 0): choose how the model answers on the first choose_generation_items
    validation rows (picovlm/eval/choose.py) and set it as model.generation, which model/ is saved with;
    best/ gets its own weights' choice (the same one when best/ is this step). None when there is
    nothing to choose: no validation split, choose_generation_items=0, or a model that does not retrieve
    (greedy is its only way)."""
    if val_ds is None or not len(val_ds) or not train_cfg.choose_generation_items or model.retrieval is None:
        return None
    items = items_from_rows(val_ds.select(range(min(train_cfg.choose_generation_items, len(val_ds)))))
    if not items:
        return None
    choice = choose_generation(model, items, field_parser, progress=progress)
    model.generation = choice.generation
    best = run_dir / "best"
    if (best / "config.json").is_file():
        best_choice = choice
        if state.best_step != state.step:  # best/ holds other weights: they choose for themselves
            from picovlm.model.vlm import VisionLanguageModel

            device = next(model.parameters()).device
            best_model = VisionLanguageModel.from_pretrained(best, device=str(device))
            best_choice = choose_generation(best_model, items, field_parser, progress=progress)
        save_generation(best_choice.generation, best)
    return choice
