"""Print bench/recipes/results.jsonl as the markdown table of docs/recipes.md.

python bench/recipes/table.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).with_name("results.jsonl")
# Every run set these to today's defaults (1,024-token BPE, LM 1e-3, projector 3e-3): not repeated.
HIDDEN = {"tokenizer_vocab_size=1024", "lr_language_backbone=0.001", "lr_mp=0.003"}
SHORT = {"vit_patch_size": "patch", "mp_pixel_shuffle_factor": "shuffle", "vit_hidden_dim": "vit_width",
         "vit_img_size": "img", "batch_size": "batch", "lr_vision_backbone": "lr_vision",
         "lm_n_blocks": "lm_blocks"}  # fmt: skip


def changes(row: dict) -> str:
    """The run's settings as differences from its base: super-small-11, or another preset's defaults."""
    default_recipe = row["preset"] != "super-small-11"
    out = [f"preset {row['preset']}, TrainConfig defaults"] if default_recipe else []
    for override in row["overrides"]:
        name, _, value = override.split(".", 1)[-1].partition("=")
        if default_recipe or f"{name}={value}" not in HIDDEN:
            out.append(f"{SHORT.get(name, name)}={value}")
    return " ".join(out) or "-"


COLUMNS = [
    ("run", lambda r: r["name"]),
    ("data", lambda r: Path(r["data"]).name),
    ("changes vs super-small-11", changes),
    ("min", lambda r: f"{r['minutes']:g}"),
    ("steps", lambda r: f"{r['steps']}"),
    ("s/step*", lambda r: f"{r['train_s'] / max(r['steps'], 1):.2f}"),
    ("load", lambda r: f"{r['load_before']:.1f}-{r['load_after']:.1f}"),
    ("val loss", lambda r: _f(r["final_val_loss"])),
    ("shuffled gap", lambda r: _f(r["test_image_gap_shuffled"])),
    ("token F1", lambda r: _f(r["test_token_f1"])),
    ("field acc", lambda r: _f(r["test_field_accuracy"])),
    ("distinct", lambda r: _f(r["test_distinct_answer_share"])),
    ("changed on swap", lambda r: _f(r["test_answers_changed_share"])),
    ("NN-pixels F1 / field", lambda r: f"{_f(r['nearest-pixels_token_f1'])} / {_f(r['nearest-pixels_field_accuracy'])}"),
    ("NN-vision F1 / field", lambda r: f"{_f(r['nearest-vision_token_f1'])} / {_f(r['nearest-vision_field_accuracy'])}"),
    ("verdict", lambda r: r["test_verdict_status"]),
]  # fmt: skip


def _f(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    print("| " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(cell(row) for _, cell in COLUMNS) + " |")


if __name__ == "__main__":
    main()
