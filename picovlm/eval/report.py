"""Evaluation reports: `metrics.json` for machines, `report.html` and `report.md` for people.

Input is a list of results as returned by `picovlm.eval.evaluate.evaluate` (one per model), each

    {"name": str, "model": str, "backend": "torch" | "onnx fp32" | "onnx int8", "data": str, "split": str,
     "metrics": {flat metrics, incl. "verdict_status" and "verdict"},
     "items": [{"image_key", "question", "reference", "answer", "token_f1", ...}],
     "baselines": {"nearest-pixels": {"metrics": {...}, "items": [...], "margin": {...}}, ...},  # optional
     "thumbnails": {image_key: "data:image/jpeg;base64,..."}}                    # optional

The HTML page is self-contained (thumbnails are inline data URIs), so it can be mailed or archived. It
shows the verdict in plain words, a summary table with one row per model and baseline, the facts
field by field (beside always stating the most common training value), the most repeated answers,
and one row per test item, worst first by token F1, with every model's answer side by side. All
files are written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from picovlm.errors import ConfigError
from picovlm.utils import atomic_write_text

# (metric key, column title, format) for the summary table, in reading order.
SUMMARY_COLUMNS = [
    ("loss", "loss", "{:.3f}"),
    ("perplexity", "ppl", "{:.2f}"),
    ("train_test_loss_gap", "test−train loss", "{:+.3f}"),
    ("image_gap_shuffled", "image gap (shuffled)", "{:+.3f}"),
    ("image_gap_shuffled_calibrated", "image gap (shuffled, calibrated)", "{:+.3f}"),
    ("calibrated_temperature", "calibrated temperature", "{:g}"),
    ("image_gap_blank", "image gap (blank)", "{:+.3f}"),
    ("answers_changed_share", "answers change with image", "{:.0%}"),
    ("token_f1", "token F1", "{:.3f}"),
    ("baseline_margin_token_f1", "token F1 over the best lookup", "{:+.3f}"),
    ("exact_match", "exact match", "{:.3f}"),
    ("rouge_l", "ROUGE-L", "{:.3f}"),
    ("bleu", "BLEU", "{:.1f}"),
    ("chrf", "chrF", "{:.1f}"),
    ("field_accuracy", "field acc.", "{:.3f}"),
    ("baseline_margin_field_accuracy", "field acc. over the best lookup", "{:+.3f}"),
    ("field_majority_accuracy", "field acc. of majority", "{:.3f}"),
    ("mc_accuracy", "MC acc.", "{:.3f}"),
    ("distinct_answer_share", "distinct answers / images", "{:.0%}"),
    ("top_answer_share", "top answer share", "{:.0%}"),
    ("copied_from_train_share", "copied from train", "{:.0%}"),
    ("distinct_2", "distinct-2", "{:.3f}"),
    ("length_ratio", "length / reference", "{:.2f}"),
]

VERDICT_COLOURS = {
    "healthy": "#1b7f3b",
    "collapsed": "#b00020",
    "ignores-image": "#b00020",
    "seen-in-training": "#b00020",
    "recalls-training": "#b35c00",
    "below-baseline": "#b35c00",
    "overfitting": "#b35c00",
}


def thumbnail_data_uri(image, size: int = 96, quality: int = 80) -> str:
    """A small JPEG of a PIL image as a data URI, for embedding in the self-contained HTML page."""
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _format(metrics: dict[str, Any], key: str, fmt: str) -> str:
    """The value as `fmt` writes it, with "± error" where eval measured its standard error (KEY_error)."""
    value, error = metrics.get(key), metrics.get(f"{key}_error")
    if value is None:
        return ""
    return fmt.format(value) + (f" ± {error:.3f}" if error is not None else "")


def summary_rows(results: list[dict]) -> list[tuple[str, dict[str, Any]]]:
    """(row name, metrics) for every model and every baseline, baselines once per data/split."""
    rows: list[tuple[str, dict[str, Any]]] = []
    seen_baselines: set[tuple[str, str, str]] = set()
    for result in results:
        rows.append((result["name"], result["metrics"]))
        for baseline_name, baseline in result.get("baselines", {}).items():
            key = (baseline_name, str(result.get("data")), str(result.get("split")))
            # A pixel-space baseline is the same for every model; a model-feature one is not.
            if baseline_name.endswith("pixels"):
                if key in seen_baselines:
                    continue
                seen_baselines.add(key)
                rows.append((f"baseline: {baseline_name}", baseline["metrics"]))
            else:
                rows.append((f"{result['name']} · baseline: {baseline_name}", baseline["metrics"]))
    return rows


MAJORITY_ROW = "always the most common training value"


def fact_rows(results: list[dict]) -> tuple[list[str], list[tuple[str, dict[str, float]]]]:
    """(fields, rows) for the field-by-field table: each model's and baseline's accuracy per fact field
    (`field_accuracy/<field>`), then what always stating each field's most common training value scores
    (`field_majority_accuracy/<field>`, once per data/split). No fields: ([], [])."""

    def per_field(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
        return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}

    rows = [
        (name, shares) for name, m in summary_rows(results) if (shares := per_field(m, "field_accuracy/"))
    ]
    seen_majority: set[tuple[str, str]] = set()
    for result in results:
        majority = per_field(result["metrics"], "field_majority_accuracy/")
        key = (str(result.get("data")), str(result.get("split")))
        if majority and key not in seen_majority:
            seen_majority.add(key)
            rows.append((MAJORITY_ROW, majority))
    fields = sorted({field for _, per_field in rows for field in per_field})
    return fields, rows


def _answer_columns(results: list[dict]) -> list[tuple[str, list[dict]]]:
    """(column title, items) for every model, then the first result's pixel baseline."""
    columns = [(result["name"], result["items"]) for result in results]
    for baseline_name, baseline in results[0].get("baselines", {}).items():
        if baseline_name.endswith("pixels"):
            columns.append((f"baseline: {baseline_name}", baseline["items"]))
    return columns


def worst_first(results: list[dict]) -> list[int]:
    """Item indices ordered by the models' mean token F1, lowest first (ties by index)."""
    n = len(results[0]["items"])
    mean_f1 = [sum(r["items"][i]["token_f1"] for r in results) / len(results) for i in range(n)]
    return sorted(range(n), key=lambda i: (mean_f1[i], i))


# --- HTML --------------------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { font-weight: 600; padding: 0.4em 0.6em; border-left: 5px solid; margin: 0.3em 0; }
.items td { max-width: 26em; }
.score { color: #666; font-size: 0.85em; }
.meta { color: #666; }
img.thumb { width: 96px; height: auto; image-rendering: auto; }
"""


def render_html(results: list[dict], title: str = "picovlm evaluation", max_items: int = 200) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    first = results[0]
    parts.append(
        f'<p class="meta">data: {esc(str(first.get("data", "")))} · split: {esc(str(first.get("split", "")))}'
        f" · {first['metrics'].get('n_items', 0)} items · {first['metrics'].get('n_images', 0)} images</p>"
    )

    parts.append("<h2>Verdict</h2>")
    for result in results:
        status = result["metrics"].get("verdict_status", "unknown")
        colour = VERDICT_COLOURS.get(status, "#555")
        parts.append(
            f'<div class="verdict" style="border-color:{colour};color:{colour}">'
            f"{esc(result['name'])} — {esc(result['metrics'].get('verdict', ''))}</div>"
        )

    parts.append("<h2>Summary</h2><table><tr><th>model</th>")
    rows = summary_rows(results)
    shown = [(k, t, f) for k, t, f in SUMMARY_COLUMNS if any(k in m for _, m in rows)]
    parts += [f"<th>{esc(title)}</th>" for _, title, _ in shown]
    parts.append("</tr>")
    for name, metrics in rows:
        cells = "".join(f'<td class="num">{_format(metrics, k, f)}</td>' for k, _, f in shown)
        parts.append(f"<tr><th>{esc(name)}</th>{cells}</tr>")
    parts.append("</table>")

    fields, fact_table = fact_rows(results)
    if fields:
        parts.append(
            "<h2>Facts, field by field</h2><p class='meta'>the share of each fact the answers state right; a "
            "field where no model beats the most common value is one the pictures may not show "
            "(<code>picovlm data facts</code>)</p><table><tr><th>model</th>"
        )
        parts += [f"<th>{esc(field)}</th>" for field in fields]
        parts.append("</tr>")
        for name, per_field in fact_table:
            cells = "".join(f'<td class="num">{_format(per_field, f, "{:.3f}")}</td>' for f in fields)
            parts.append(f"<tr><th>{esc(name)}</th>{cells}</tr>")
        parts.append("</table>")

    parts.append("<h2>Most repeated answers</h2>")
    for result in results:
        top = result["metrics"].get("top_answers", [])
        parts.append(f"<p><b>{esc(result['name'])}</b></p><table><tr><th>count</th><th>answer</th></tr>")
        parts += [f'<tr><td class="num">{count}</td><td>{esc(answer)}</td></tr>' for answer, count in top]
        parts.append("</table>")

    order = worst_first(results)
    columns = _answer_columns(results)
    thumbnails: dict[str, str] = {}
    for result in results:
        thumbnails.update(result.get("thumbnails", {}))
    shown_count = min(max_items, len(order))
    parts.append(
        f"<h2>Items, worst first</h2><p class='meta'>{shown_count} of {len(order)} items, ordered by "
        "token F1 (mean over models)</p>"
    )
    parts.append('<table class="items"><tr><th>#</th><th>image</th><th>question</th><th>reference</th>')
    parts += [f"<th>{esc(name)}</th>" for name, _ in columns]
    parts.append("</tr>")
    for i in order[:shown_count]:
        item = first["items"][i]
        uri = thumbnails.get(item.get("image_key", ""), "")
        image_cell = f'<img class="thumb" src="{uri}" alt="image {i}">' if uri else ""
        cells = [
            f"<td>{i}</td><td>{image_cell}</td><td>{esc(item['question'])}</td><td>{esc(item['reference'])}</td>"
        ]
        for _, items in columns:
            answer = items[i]
            cells.append(
                f"<td>{esc(answer['answer'])}<br><span class='score'>F1 {answer['token_f1']:.2f}"
                f" · ROUGE-L {answer.get('rouge_l', 0.0):.2f}</span></td>"
            )
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


# --- Markdown ----------------------------------------------------------------------------------------

MARKDOWN_COLUMNS = [
    "loss",
    "image_gap_shuffled",
    "token_f1",
    "baseline_margin_token_f1",
    "rouge_l",
    "bleu",
    "chrf",
]
MARKDOWN_COLUMNS += [
    "field_accuracy",
    "baseline_margin_field_accuracy",
    "distinct_answer_share",
    "top_answer_share",
]


def render_markdown(results: list[dict], title: str = "picovlm evaluation") -> str:
    lines = [f"# {title}", ""]
    lines += [f"- **{r['name']}**: {r['metrics'].get('verdict', '')}" for r in results]
    rows = summary_rows(results)
    shown = [
        (k, t, f) for k, t, f in SUMMARY_COLUMNS if k in MARKDOWN_COLUMNS and any(k in m for _, m in rows)
    ]
    lines += ["", "| model | " + " | ".join(t for _, t, _ in shown) + " |"]
    lines.append("|---" * (len(shown) + 1) + "|")
    for name, metrics in rows:
        lines.append(f"| {name} | " + " | ".join(_format(metrics, k, f) for k, _, f in shown) + " |")
    fields, fact_table = fact_rows(results)
    if fields:
        lines += ["", "Facts, field by field (share stated right):", ""]
        lines += ["| model | " + " | ".join(fields) + " |", "|---" * (len(fields) + 1) + "|"]
        for name, per_field in fact_table:
            lines.append(f"| {name} | " + " | ".join(_format(per_field, f, "{:.3f}") for f in fields) + " |")
    return "\n".join(lines) + "\n"


# --- All files ---------------------------------------------------------------------------------------


def metrics_document(results: list[dict]) -> dict[str, Any]:
    """What goes into metrics.json: everything but the per-item rows and the thumbnails."""
    return {
        "models": [
            {
                "name": r["name"],
                "model": r.get("model"),
                "backend": r.get("backend", "torch"),
                "data": r.get("data"),
                "split": r.get("split"),
                "generation": r.get("generation"),
                "metrics": r["metrics"],
                "baselines": {
                    name: {key: b[key] for key in ("metrics", "margin") if key in b}
                    for name, b in r.get("baselines", {}).items()
                },
            }
            for r in results
        ]
    }


def default_report_dir(models: list[str], split: str) -> Path:
    """Where `picovlm eval` writes without --out: RUN/eval-SPLIT, when every model is a folder of one
    `picovlm train` run (its model/ or best/, beside the run's summary.json or checkpoint.pt), so
    the report sits with the run it judges. Anything else (exported folders, several runs) has no
    one obvious home and needs --out."""
    from picovlm.train.checkpoint import has_checkpoint
    from picovlm.train.setup import SUMMARY_FILE

    runs = {Path(model).resolve().parent for model in models}
    run = Path(models[0]).parent
    if len(runs) == 1 and ((run / SUMMARY_FILE).is_file() or has_checkpoint(run)):
        return run / f"eval-{split}"
    raise ConfigError(
        f"name the report's folder with --out: {', '.join(models)} "
        f"{'is not a folder' if len(models) == 1 else 'are not folders'} of one `picovlm train` run "
        f"(its model/ or best/), the only case where eval writes to RUN/eval-{split} by itself."
    )


def write_report(
    results: list[dict], out_dir: str | Path, title: str = "picovlm evaluation"
) -> dict[str, Path]:
    """Write metrics.json, predictions.jsonl, report.md and report.html into out_dir; return their paths."""
    if not results:
        raise ValueError("write_report needs at least one result")
    out = Path(out_dir)
    paths = {name: out / name for name in ("metrics.json", "predictions.jsonl", "report.md", "report.html")}
    atomic_write_text(paths["metrics.json"], json.dumps(metrics_document(results), indent=2) + "\n")
    lines = []
    for result in results:
        for item in result["items"]:
            lines.append(json.dumps({"model": result["name"], **item}, ensure_ascii=False))
        for baseline_name, baseline in result.get("baselines", {}).items():
            for item in baseline["items"]:
                lines.append(
                    json.dumps({"model": f"{result['name']}/{baseline_name}", **item}, ensure_ascii=False)
                )
    atomic_write_text(paths["predictions.jsonl"], "\n".join(lines) + "\n")
    atomic_write_text(paths["report.md"], render_markdown(results, title))
    atomic_write_text(paths["report.html"], render_html(results, title))
    return paths
