"""Choosing how a model answers: the decoding that answers its own validation rows best.

A retrieving model can answer greedily, lean on its nearest training pictures' answers (copy_bias,
docs/recipes.md finding 23) or weigh that vote by its fact probes (copy_fact_weight, findings 24 and
28). Which is best depends on the data. On issue 14's real sets the weighed vote beat greedy on every
run; on the demo scenes, where the model already beats its lookup, it lost (validation token F1 0.736
greedy against 0.627). So a run decides on its own validation rows, once, after training, and keeps
the winner as the model's generation.json (finding 25):

    candidates   greedy (the base), the light vote (copy_bias=4), the vote (copy_bias=8), the
                 weighed vote (copy_bias=16, copy_fact_weight=0.5): those this model can do, from
                 the least to the most elaborate
    score        token F1 + field accuracy (the facts, on rows that have them), on the same rows
    winner       the earliest (simplest) candidate within one standard error of the best score: the
                 error of the paired difference, cluster-robust over the rows' objects (their
                 `group`; `one_standard_error_choice`), so a more elaborate way must win by more than
                 the objects behind 256 rows can tell apart (findings 35 and 37)

The candidates' settings were chosen on the suite's validation splits (findings 23, 24 and 28: the
weighed vote's 0.5 since the fact probes read the pictures; finding 36: the light vote, which keeps
more answers distinct), never on a test split. Training calls
`choose_generation` on its validation rows (train.choose_generation_items); `picovlm choose-generation`
does the same for a folder trained before, or on other rows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picovlm.errors import ConfigError, DataError
from picovlm.eval import metrics as M
from picovlm.eval.evaluate import generate_answers, load_items, load_train_split, row_figures, score_answers
from picovlm.generation import GenerationConfig, copy_options_check, save_generation
from picovlm.utils import ProgressFn, no_progress

# name -> the options set over the base; in order of preference when scores tie
CANDIDATES: tuple[tuple[str, dict[str, float]], ...] = (
    ("greedy", {}),
    ("light vote", {"copy_bias": 4.0}),
    ("vote", {"copy_bias": 8.0}),
    ("weighed vote", {"copy_bias": 16.0, "copy_fact_weight": 0.5}),
)
DEFAULT_ITEMS = 256  # validation rows answered per candidate: ~7 s each on a 2-core CPU


@dataclass
class GenerationChoice:
    """The winner and every candidate's figures ({"name", "options", "token_f1", "field_accuracy",
    "distinct_answer_share", "score", "standard_error", "seconds"}), in candidate order;
    "standard_error" is that of the best score's lead over the candidate's (0 for the best), over the
    rows' objects."""

    name: str
    generation: GenerationConfig
    candidates: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.name, "generation": self.generation.to_dict(), "rows": self.rows,
                "candidates": self.candidates}  # fmt: skip

    def table(self) -> str:
        return choice_table(self.to_dict())


def choice_table(choice: dict[str, Any]) -> str:
    """A GenerationChoice's dict (summary.json's "generation") as one line per candidate, the winner
    marked: what `picovlm train` and `picovlm choose-generation` print."""
    lines = []
    best = max((c["score"] for c in choice["candidates"]), default=0.0)
    for c in choice["candidates"]:
        facts = f" · facts {c['field_accuracy']:.3f}" if c["field_accuracy"] is not None else ""
        mark = "->" if c["name"] == choice["chosen"] else "  "
        behind = best - c["score"]
        error = f" ({behind:.3f} ± {c['standard_error']:.3f} behind)" if c.get("standard_error") else ""
        lines.append(
            f"{mark} {c['name']:<13} token F1 {c['token_f1']:.3f}{facts} · distinct "
            f"{c['distinct_answer_share']:.0%} · score {c['score']:.3f}{error}"
        )
    return "\n".join(lines)


def generation_candidates(model, base: GenerationConfig | None = None) -> list[tuple[str, GenerationConfig]]:
    """The candidates this model can answer with, over `base` (default: the model's own config with the
    copy options off, so its other settings, e.g. max_new_tokens, are kept)."""
    if base is None:
        base = model.generation.replace(copy_bias=0.0, copy_fact_weight=0.0, probed_facts=())
    found = []
    for name, options in CANDIDATES:
        config = base.replace(**options)
        try:
            copy_options_check(config, model.retrieval)
        except ConfigError:  # a model without retrieval or fact heads: not a candidate
            continue
        found.append((name, config))
    return found


def choose_generation(
    model,
    items,
    extract_fields: M.ExtractFields | None = None,
    base: GenerationConfig | None = None,
    batch_size: int = 16,
    progress: ProgressFn = no_progress,
) -> GenerationChoice:
    """Answer `items` (EvalItems) with every candidate and return the best-scoring one; the model is
    not changed. A model that does not retrieve has one candidate, greedy, and nothing is generated."""
    candidates = generation_candidates(model, base)
    if len(candidates) == 1:
        return GenerationChoice(candidates[0][0], candidates[0][1], [], len(items))
    if not items:
        raise DataError(
            "choosing how to answer needs validation rows with an image and a question/answer turn"
        )
    figures, per_row = [], []
    for done, (name, config) in enumerate(candidates):
        progress(done, len(candidates), f"answering {len(items)} rows: {name}")
        started = time.perf_counter()
        answers = generate_answers(model, items, batch_size, generation=config)
        metrics, scored = score_answers(items, answers, None, extract_fields)
        facts = metrics.get("field_accuracy")
        per_row.append(row_scores(scored, extract_fields))
        figures.append({
            "name": name,
            "options": {"copy_bias": config.copy_bias, "copy_fact_weight": config.copy_fact_weight},
            "token_f1": metrics["token_f1"],
            "field_accuracy": facts,
            "distinct_answer_share": metrics["distinct_answer_share"],
            "score": metrics["token_f1"] + (facts or 0.0),
            "seconds": round(time.perf_counter() - started, 2),
        })  # fmt: skip
    progress(len(candidates), len(candidates), "chosen")
    chosen, errors = one_standard_error_choice(per_row, [item.object_key for item in items])
    for figure, error in zip(figures, errors):
        figure["standard_error"] = error
    return GenerationChoice(candidates[chosen][0], candidates[chosen][1], figures, len(items))


def row_scores(scored: list[dict[str, Any]], extract_fields: M.ExtractFields | None) -> list[float]:
    """Each row's part of the score, from `score_answers`' rows: its token F1 plus its share of the
    facts (`row_figures`), so that the mean over the rows is the candidate's score (token F1 + field
    accuracy)."""
    return [sum(parts) for parts in zip(*row_figures(scored, extract_fields).values())]


def one_standard_error_choice(
    scores_by_candidate: list[list[float]], clusters: Sequence[str] | None = None
) -> tuple[int, list[float]]:
    """(the chosen candidate, each one's standard error behind the best): the earliest candidate
    whose mean score is at most one standard error of its paired difference to the best below the
    best's. Candidates are in order of preference, simplest first, all scored on the same rows.
    `clusters`: each row's object (its group); rows of one object are not independent evidence (a
    Wesnoth unit has ~11 pictures, which a way of answering gets right or wrong together), so the
    error is the cluster-robust one over the objects; None = every row its own."""
    means = [sum(s) / len(s) for s in scores_by_candidate]
    best = max(range(len(means)), key=lambda i: (means[i], -i))  # a tie: the earlier
    errors = [
        M.paired_standard_error([b - s for b, s in zip(scores_by_candidate[best], scores)], clusters)
        for scores in scores_by_candidate
    ]
    chosen = next(i for i in range(len(means)) if means[i] >= means[best] - errors[i])
    return chosen, errors


def choose_generation_for(
    model_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "validation",
    max_items: int | None = DEFAULT_ITEMS,
    train_split: str = "train",
    write: bool = True,
    device: str = "cpu",
    progress: ProgressFn = no_progress,
) -> GenerationChoice:
    """`picovlm choose-generation`: choose for a save_pretrained folder on the first `max_items` rows of
    data_dir/split (never its test split, unless you mean to tune on it) and, with `write`, save the
    winner as the folder's generation.json."""
    from picovlm.eval.facts import fact_parser_for
    from picovlm.model.vlm import VisionLanguageModel

    model = VisionLanguageModel.from_pretrained(model_dir, device=device)
    rows, items = load_items(data_dir, split, max_items, progress)
    extract_fields = fact_parser_for(rows, load_train_split(data_dir, train_split))
    choice = choose_generation(model, items, extract_fields, progress=progress)
    if write:
        save_generation(choice.generation, Path(model_dir))
    return choice
