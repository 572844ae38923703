"""Training on a folder of several splits reads the training split only, and refuses held-out splits
that share pictures with it (issue 15: a Hub-layout folder trained on its validation and test rows)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import PngImagePlugin

from picovlm.cli import main
from picovlm.data.cauldron import load_cauldron
from picovlm.errors import DataError
from picovlm.train.loop import train


@pytest.fixture(scope="module")
def demo_splits(demo_dir):
    return {name: load_cauldron(demo_dir, split=name) for name in ("train", "validation", "test")}


def test_a_hub_layout_folder_trains_on_its_train_split_only(
    demo_splits, split_layout_writer, tmp_path, tiny_args, capsys
):
    data = split_layout_writer(
        demo_splits, tmp_path / "hub", "hub-data"
    )  # data/train-00000-of-00002.parquet ...
    n_train, n_val = len(demo_splits["train"]), len(demo_splits["validation"])
    run = tmp_path / "run"
    args = tiny_args(data, run, max_steps=2, eval_interval=2, checkpoint_interval=2, gen_eval_interval=0)
    assert main(["train", "--preset", "tiny", *args]) == 0
    out = capsys.readouterr().out
    assert f"{n_train} rows of split 'train', {n_val} of 'validation'" in out
    assert (
        f"next           picovlm eval --model {run / 'model'} --data {data} --split test --baseline nearest"
        in out
    )
    assert n_train < sum(len(split) for split in demo_splits.values())  # not every row of the folder
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["train_rows"], summary["val_rows"]) == (n_train, n_val)


def test_a_missing_training_split_is_an_error_listing_the_splits_found(
    demo_splits, split_layout_writer, tmp_path, tiny_configs
):
    data = split_layout_writer(demo_splits, tmp_path / "hub", "hub")
    model_cfg, train_cfg = tiny_configs(data, tmp_path / "run", train_split="trn")
    with pytest.raises(DataError, match=r"no split 'trn'; it holds \['train', 'validation', 'test'\]"):
        train(model_cfg, train_cfg)


def reencoded(dataset):
    """The same pictures saved again with a text chunk: other bytes, the same pixels."""

    def resave(row):
        images = []
        for image in row["images"]:
            info = PngImagePlugin.PngInfo()
            info.add_text("comment", "copied")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", pnginfo=info)
            images.append({"bytes": buffer.getvalue(), "path": None})
        return {"images": images}

    return dataset.map(resave, features=dataset.features)


def test_training_refuses_held_out_rows_that_share_pictures_unless_allowed(
    demo_splits, split_layout_writer, tmp_path, tiny_configs
):
    from datasets import concatenate_datasets

    copies = reencoded(demo_splits["train"].select(range(8)))
    original = demo_splits["train"].select_columns(["images"]).with_format("arrow")[:8]["images"].to_pylist()
    assert copies.select_columns(["images"]).with_format("arrow")[:8]["images"].to_pylist() != original
    validation = concatenate_datasets([demo_splits["validation"], copies])
    data = split_layout_writer({**demo_splits, "validation": validation}, tmp_path / "leaky", "split-files")
    n_val = len(validation)

    model_cfg, train_cfg = tiny_configs(
        data, tmp_path / "refused", max_steps=2, eval_interval=2, gen_eval_interval=0
    )
    with pytest.raises(DataError) as refused:
        train(model_cfg, train_cfg)
    message = str(refused.value)
    assert (
        f"validation: 8 of {n_val} rows ({8 / n_val:.1%}) share an image with 'train' (compared by pixels)"
        in message
    )
    assert "picovlm data split" in message and "train.allow_leakage=true" in message
    assert not (tmp_path / "refused" / "metrics.jsonl").exists()  # refused before the first step

    model_cfg, train_cfg = tiny_configs(
        data, tmp_path / "allowed", max_steps=2, eval_interval=2, gen_eval_interval=0, allow_leakage=True
    )
    result = train(model_cfg, train_cfg)
    assert result.steps == 2 and result.val_rows == n_val
    leak_notes = [note for note in result.notes if note.startswith("leakage check: validation: 8 of")]
    assert leak_notes and leak_notes[0].endswith("(allowed by train.allow_leakage)")
