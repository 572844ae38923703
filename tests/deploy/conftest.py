"""Fixtures for the deployment tests: a tiny model trained for a few seconds on demo scenes, and its exports.

Trained rather than random so its greedy answers look like answers and end with <|im_end|> on their own:
the parity and stop tests then compare real generations, not noise.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TRAIN_ROWS, TRAIN_STEPS, BATCH = 256, 150, 16


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory) -> Path:
    import torch

    from picovlm.config import preset
    from picovlm.data.scenes import make_demo_row
    from picovlm.data.tokenizer import train_tokenizer
    from picovlm.model.vlm import VLM

    torch.manual_seed(0)
    rows = [make_demo_row(0, i, image_size=32) for i in range(TRAIN_ROWS)]
    tokenizer = train_tokenizer(
        [r["texts"][0]["assistant"] for r in rows] + ["Describe the image."], vocab_size=400
    )
    model = VLM(preset("tiny", lm_vocab_size=400, lm_max_length=128), tokenizer=tokenizer)
    examples = [
        model.processor.encode_example(
            {"images": [Image.open(io.BytesIO(r["images"][0]["bytes"]))], "texts": r["texts"]}
        )
        for r in rows
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pad = tokenizer.pad_token_id
    for step in range(TRAIN_STEPS):
        batch = [examples[(step * BATCH + j) % len(examples)] for j in range(BATCH)]
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch])
        labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch])
        mask = (
            torch.arange(width)[None] < torch.tensor([len(e["input_ids"]) for e in batch])[:, None]
        ).long()
        pixels = torch.from_numpy(np.concatenate([e["pixel_values"] for e in batch]))
        loss = model(ids, pixels, mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = tmp_path_factory.mktemp("model") / "tiny-trained"
    model.eval().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def exported_dir(trained_model_dir, tmp_path_factory) -> Path:
    from picovlm.export.onnx import export_model

    out = tmp_path_factory.mktemp("exported") / "tiny-onnx"
    export_model(trained_model_dir, out)
    return out


RUN_STEPS = 700


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, its dataset): `picovlm train` on 320 demo scenes (32 px), tiny preset, 500 steps.

    Long enough that the model reads its images (8 distinct answers for 32 validation scenes, against
    1 after 150 steps): agreement between int8 and fp32 measured on a collapsed model, which says the
    same thing to every image, would prove nothing. ~45 s on one core. The run folder is what
    `picovlm train` writes (config.yaml naming train.data_dir beside model/), so the export finds the
    model's own validation data through it.
    """
    from picovlm.config import load_config
    from picovlm.data.scenes import write_demo
    from picovlm.train.loop import train

    root = tmp_path_factory.mktemp("trained-run")
    data = write_demo(root / "data", n=320, seed=0, image_size=32)
    values = {
        "data_dir": data, "out_dir": root / "run", "max_steps": RUN_STEPS, "batch_size": 16, "threads": 1,
        "eval_interval": 1000, "gen_eval_interval": 0, "checkpoint_interval": 10_000,
        "tokenizer_vocab_size": 400, "lr_vision_backbone": 0.003, "lr_language_backbone": 0.003,
    }  # fmt: skip
    model_cfg, train_cfg = load_config(
        "tiny", overrides=[f"train.{k}={v}" for k, v in values.items()] + ["model.lm_max_length=128"]
    )
    return train(model_cfg, train_cfg).run_dir, data


@pytest.fixture(scope="session")
def run_exports(trained_run, tmp_path_factory) -> dict[str, Path]:
    """The trained run's model exported in fp32, and in int8 by `picovlm export --quantize int8` (its
    printed report under "int8_printed"), which compares int8 with fp32 on 32 rows of the run's
    validation split, found through the run folder."""
    import contextlib
    import io

    from picovlm.cli import main
    from picovlm.export.onnx import export_model

    run_dir, _ = trained_run
    out = tmp_path_factory.mktemp("run-exports")
    export_model(run_dir / "model", out / "fp32")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(
            ["export", "--model", str(run_dir / "model"), "--out", str(out / "int8"), "--quantize", "int8"]
        )
    assert code == 0, printed.getvalue()
    return {
        "model": run_dir / "model",
        "fp32": out / "fp32",
        "int8": out / "int8",
        "int8_printed": printed.getvalue(),
    }
