"""What int8 quantisation does to a model's answers, on the model's own task.

The fp32 and the int8 export answer the same rows of the model's own validation data (found through
its training run folder, or given), and both sets of answers are scored by the evaluation module
(`picovlm.eval.evaluate.score_answers`, the code `picovlm eval` scores with) against the references:
token F1, exact match and, where the rows carry `fields`, field accuracy. Then the two are compared
with each other: the share of identical answers, the token F1 of the int8 answer against the fp32
one, and the share of the facts the fp32 answer states that the int8 answer states alike.

Built-in demo scenes would say nothing about a model trained on other pictures (issue 15: "token F1
0.046 -> 0.046" on scenes it had never seen the like of), so no default data is made up: without a
run folder and without `--data` the export stops and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from picovlm.errors import DataError, PicovlmError

RUN_CONFIG = "config.yaml"  # what `picovlm train` writes into the run folder, beside model/ and best/


def find_eval_data(
    model_dir: str | Path, data: str | Path | None = None, split: str | None = None
) -> tuple[Path, str, str]:
    """(dataset folder, split, where they came from) for the int8-vs-fp32 comparison.

    `data` given: that folder (split: `split`, else "validation"). Otherwise the run folder that holds
    the model (runs/x/model or runs/x/best -> runs/x/config.yaml): its train.data_dir and
    train.val_split, the rows the run validated on. The split is checked here, before any export work.
    """
    from picovlm.data.cauldron import load_cauldron

    if data is not None:
        where = "--data"
    else:
        config = Path(model_dir).resolve().parent / RUN_CONFIG
        train = {}
        if config.is_file():
            import yaml

            train = (yaml.safe_load(config.read_text()) or {}).get("train") or {}
        if not train.get("data_dir"):
            raise PicovlmError(
                f"int8 is compared with fp32 on the model's own validation data, and none was found: {model_dir} "
                f"is not inside a training run folder whose {RUN_CONFIG} names train.data_dir. Pass --data DIR "
                f"(a dataset of the model's task; --split NAME for another split than 'validation'), or "
                f"--eval-items 0 to skip the comparison."
            )
        data, where = train["data_dir"], f"train.data_dir of {config}"
        split = split or train.get("val_split")
        if not Path(data).exists():
            raise PicovlmError(
                f"{config} names train.data_dir={data}, which is not here (a relative path is read from the "
                f"current folder): pass --data DIR with the model's dataset, or --eval-items 0 to skip the "
                f"int8-vs-fp32 comparison."
            )
    split = split or "validation"
    try:
        load_cauldron(data, split=split, max_rows=1)
    except DataError as err:
        raise DataError(
            f"{err} (the int8-vs-fp32 comparison reads {where}; --split NAME picks another split)"
        ) from None
    return Path(data), split, where


def compare_on_data(
    fp32_dir: str | Path,
    int8_dir: str | Path,
    data_dir: str | Path,
    split: str = "validation",
    n_items: int = 32,
    max_new_tokens: int | None = None,
    train_split: str | None = "train",
) -> dict[str, Any]:
    """Both exports' answers on the first n_items rows of data_dir/split, scored alike: as the fp32
    folder answers when served (its manifest's generation: a retrieving model's vote, say), greedy in
    place of any sampling, since sampled answers would differ by chance, not by int8.

    max_new_tokens None: the longest reference's token count plus a margin, so no right answer is cut.
    train_split: read (text only) for the facts' known values when the rows have `fields`.
    """
    from picovlm.data.cauldron import load_cauldron
    from picovlm.eval import metrics as M
    from picovlm.eval.evaluate import (
        answer_token_budget,
        generate_answers,
        items_from_rows,
        score_answers,
    )
    from picovlm.eval.exported import ExportedModel
    from picovlm.eval.facts import fact_parser_for

    dataset = load_cauldron(data_dir, split=split, max_rows=n_items)
    items = items_from_rows(dataset)
    if not items:
        raise DataError(f"{data_dir} split {split!r} has no rows with an image and a question/answer turn")
    train = None
    if train_split:
        try:
            train = load_cauldron(data_dir, split=train_split)
        except DataError:
            train = None
    extract_fields = fact_parser_for(dataset, train)
    models = {"fp32": ExportedModel.load(fp32_dir), "int8": ExportedModel.load(int8_dir)}
    budget = max_new_tokens or answer_token_budget(models["fp32"], items)
    served = models["fp32"].generation.replace(temperature=0.0, max_new_tokens=budget)
    answers = {label: generate_answers(m, items, generation=served) for label, m in models.items()}

    result: dict[str, Any] = {
        "data": str(data_dir),
        "split": split,
        "items": len(items),
        "max_new_tokens": budget,
        "answering": served.describe(),
    }
    for label in models:
        metrics, _ = score_answers(items, answers[label], None, extract_fields)
        result[label] = {
            key: metrics[key] for key in ("token_f1", "exact_match", "field_accuracy") if key in metrics
        }
        result[label]["distinct_answers"] = len(set(answers[label]))
    pairs = list(zip(answers["fp32"], answers["int8"]))
    result["identical_answers"] = sum(a == b for a, b in pairs) / len(pairs)
    result["int8_vs_fp32_token_f1"] = sum(M.token_f1(b, a) for a, b in pairs) / len(pairs)
    if extract_fields is not None:  # of the facts the fp32 answer states, the share int8 states alike
        alike = M.field_accuracy(answers["int8"], answers["fp32"], extract_fields)
        if len(alike) > 1:  # per-field shares besides "all": the fp32 answers did state facts
            result["int8_vs_fp32_fields"] = alike["all"]
    return result


def format_comparison(e: dict[str, Any]) -> str:
    """The comparison in one paragraph for the terminal."""
    lines = [f"int8 vs fp32 on {e['items']} rows of {e['data']} split {e['split']!r} "
             f"({e.get('answering', 'greedy')}, up to {e['max_new_tokens']} new tokens):",
             f"  identical answers {e['identical_answers']:.0%} · token F1 of int8 against fp32 "
             f"{e['int8_vs_fp32_token_f1']:.3f}"
             + (f" · facts of fp32 stated alike by int8 {e['int8_vs_fp32_fields']:.0%}"
                if "int8_vs_fp32_fields" in e else "")]  # fmt: skip
    for label in ("fp32", "int8"):
        s = e[label]
        facts = f" · field accuracy {s['field_accuracy']:.3f}" if "field_accuracy" in s else ""
        lines.append(f"  {label}: token F1 {s['token_f1']:.3f} · exact match {s['exact_match']:.3f}{facts} "
                     f"· {s['distinct_answers']} distinct answers")  # fmt: skip
    return "\n".join(lines)
