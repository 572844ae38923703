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
    from picovlm.data.demo import make_demo_row
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
