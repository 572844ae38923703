"""The auxiliary fact loss (train.fact_loss_weight): classes from `fields`, the loss, the loop, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from picovlm.config import preset
from picovlm.data.collate import pad_collate
from picovlm.errors import ConfigError, DataError, PicovlmError
from picovlm.model.vlm import VLM
from picovlm.train.checkpoint import load_checkpoint
from picovlm.train.facts import IGNORE, FactHeads, FactSupervised, FactVocabulary, fit_fact_probes
from picovlm.train.loop import train
from picovlm.train.tracking import read_metrics


def test_vocabulary_keeps_repeated_fields_and_drops_one_off_values():
    rows = [json.dumps({"race": race, "name": f"unit {i}", "stats": {"level": str(i % 2)}})
            for i, race in enumerate(["elf", "orc", "elf", "human", "orc", "elf"])]  # fmt: skip
    vocabulary = FactVocabulary.from_rows(rows)
    # names are one per row: no class carries over to a new object, so the field is left out
    assert vocabulary.values == {"race": ["elf", "human", "orc"], "stats.level": ["0", "1"]}
    assert vocabulary.encode(json.dumps({"race": "orc", "stats": {"level": "1"}})) == [2, 1]
    # a value never trained on, a missing field and a row without facts are ignored by the loss
    assert vocabulary.encode({"race": "dwarf"}) == [IGNORE, IGNORE]
    assert vocabulary.encode(None) == [IGNORE, IGNORE]


def test_fact_probes_learn_each_field_from_the_picture_vectors_and_skip_unknown_facts():
    """fit_fact_probes: one softmax classifier per field over unit vectors. Field 0 follows which of
    three directions a vector points to, field 1 the sign of another coordinate; rows whose class is
    unknown (-1) teach nothing, even when their label would contradict; new vectors are read right."""
    rng = np.random.default_rng(0)

    def pictures(n):
        kind, sign = rng.integers(0, 3, n), rng.integers(0, 2, n)
        vectors = rng.normal(0, 0.15, (n, 16))
        vectors[np.arange(n), kind] += 1.0
        vectors[:, 5] += np.where(sign == 1, 0.8, -0.8)
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), kind, sign

    vectors, kind, sign = pictures(300)
    classes = np.stack([kind, sign], axis=1)
    classes[:40, 0] = -1  # unknown: these rows say nothing about field 0
    probes = fit_fact_probes(vectors, classes, [3, 2])
    assert [w.shape for w, _ in probes] == [(3, 16), (2, 16)] and [b.shape for _, b in probes] == [(3,), (2,)]
    new, new_kind, new_sign = pictures(200)
    for (weight, bias), truth in zip(probes, (new_kind, new_sign)):
        assert ((new @ weight.T + bias).argmax(axis=1) == truth).mean() > 0.95
    again = fit_fact_probes(vectors, classes, [3, 2])  # full-batch from zeros: the same fit every time
    assert all(np.allclose(a, b, atol=1e-5) for (a, _), (b, _) in zip(probes, again))
    with pytest.raises(ValueError, match="fields"):
        fit_fact_probes(vectors, classes, [3])


def test_collate_points_each_row_at_its_first_image():
    def sample(n_images, facts):
        return {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "fact_labels": facts,
                "pixel_values": np.zeros((n_images, 3, 4, 4), np.float32)}  # fmt: skip

    batch = pad_collate([sample(2, [0, 1]), sample(0, [1, IGNORE]), sample(1, [2, 0])], pad_token_id=0)
    assert batch["first_image"].tolist() == [0, -1, 2]
    assert batch["fact_labels"].tolist() == [[0, 1], [1, IGNORE], [2, 0]]


def test_fact_loss_is_the_heads_cross_entropy_weighted_by_answer_tokens():
    torch.manual_seed(0)
    cfg = preset("tiny", image_token_id=5, pad_token_id=0, eos_token_id=1)
    model = VLM(cfg)
    heads = FactHeads(FactVocabulary({"colour": ["red", "blue", "green"], "shape": ["circle", "square"]}), 32)
    wrapped = FactSupervised(model, heads, weight=0.5)
    n_image_tokens = cfg.mp_image_token_length
    ids = torch.tensor([[5] * n_image_tokens + [7, 8, 9, 10], [5] * n_image_tokens + [7, 8, 11, 0]])
    labels = ids.clone()
    labels[:, : n_image_tokens + 1] = -100
    labels[1, -1] = -100  # row 0 has 3 answer tokens to predict, row 1 has 2
    pixels = torch.randn(2, 3, 32, 32)
    facts = torch.tensor([[2, 0], [1, IGNORE]])
    out = wrapped(input_ids=ids, pixel_values=pixels, labels=labels, fact_labels=facts,
                  first_image=torch.tensor([0, 1]), reduction="sum")  # fmt: skip
    # the answer loss is the model's own, unchanged
    plain = model(ids, pixels, labels=labels, reduction="sum")
    torch.testing.assert_close(out.loss, plain.loss)
    features = model.vision_encoder(pixels).mean(dim=1)
    ce = [
        (F.cross_entropy(heads.heads[0](features[:1]), facts[:1, 0]) + F.cross_entropy(heads.heads[1](features[:1]), facts[:1, 1])) / 2,
        F.cross_entropy(heads.heads[0](features[1:]), facts[1:, 0]),  # its shape is unknown: one field only
    ]  # fmt: skip
    torch.testing.assert_close(out.aux_loss, 0.5 * (3 * ce[0] + 2 * ce[1]))
    mean = wrapped(input_ids=ids, pixel_values=pixels, labels=labels, fact_labels=facts,
                   first_image=torch.tensor([0, 1]))  # fmt: skip
    torch.testing.assert_close(mean.aux_loss, out.aux_loss / 5)
    # the fact loss trains the vision tower, not the language model's head
    out.aux_loss.backward()
    assert model.vision_encoder.patch_embedding.conv.weight.grad.abs().sum() > 0
    assert model.decoder.lm_head.weight.grad is None or model.decoder.lm_head.weight.grad.abs().sum() == 0


def test_a_run_keeps_the_heads_in_its_checkpoint_only_and_resumes_exactly(
    demo_dir, tmp_path, tiny_configs, crash_run
):
    model_cfg, full_cfg = tiny_configs(
        demo_dir, tmp_path / "full", max_steps=8, checkpoint_interval=4, fact_loss_weight=1.0
    )
    train(model_cfg, full_cfg)
    saved = load_checkpoint(tmp_path / "full")
    assert {"model", "optimizer", "extra"} <= set(saved)
    # the heads cover the scenes' facts, and model/ holds the VLM alone
    assert any(key.startswith("heads.") for key in saved["extra"])
    assert not any("heads" in key for key in VLM.from_pretrained(tmp_path / "full" / "model").state_dict())

    _, cut_cfg = tiny_configs(
        demo_dir, tmp_path / "cut", max_steps=8, checkpoint_interval=4, fact_loss_weight=1.0
    )
    crash_run(model_cfg, cut_cfg, 6)
    train(model_cfg, cut_cfg, resume=True)
    full, cut = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert [r["loss"] for r in cut] == pytest.approx([r["loss"] for r in full], rel=1e-6, abs=1e-7)
    assert [r["fact_loss"] for r in cut] == pytest.approx([r["fact_loss"] for r in full], rel=1e-6)
    assert 0 < full[-1]["fact_loss"] < full[0]["fact_loss"]  # the heads learn the scenes' facts
    # resuming with the fact loss switched off is refused with a message, not a key error
    with pytest.raises(PicovlmError, match="fact_loss_weight"):
        _, off_cfg = tiny_configs(
            demo_dir, tmp_path / "cut", max_steps=10, checkpoint_interval=4, fact_loss_weight=0
        )
        train(model_cfg, off_cfg, resume=True)


def test_auto_weight_is_on_where_rows_have_facts_and_off_where_they_cannot(demo_dir, tmp_path, tiny_configs):
    """The default ("auto") trains the heads on the scenes' facts and records the weight it chose, so
    a resume reads it back; rows without `fields`, or packed rows, train without them and say why."""
    import yaml

    model_cfg, cfg = tiny_configs(demo_dir, tmp_path / "auto", max_steps=2)
    assert cfg.fact_loss_weight == "auto"
    train(model_cfg, cfg)
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["train"]["fact_loss_weight"] == 1.0
    assert "extra" in load_checkpoint(tmp_path / "auto")
    assert all(r["fact_loss"] > 0 for r in read_metrics(tmp_path / "auto"))

    from datasets import load_from_disk

    load_from_disk(str(demo_dir)).remove_columns("fields").save_to_disk(str(tmp_path / "nofacts"))
    model_cfg, cfg = tiny_configs(tmp_path / "nofacts", tmp_path / "plain", max_steps=2)
    result = train(model_cfg, cfg)
    assert "fact loss off: the training rows have no `fields`" in result.notes
    assert "extra" not in load_checkpoint(tmp_path / "plain")
    assert not any("fact_loss" in r for r in read_metrics(tmp_path / "plain"))
    model_cfg, cfg = tiny_configs(demo_dir, tmp_path / "packed", max_steps=2, packing=True)
    assert any(note.startswith("fact loss off: train.packing=true") for note in train(model_cfg, cfg).notes)


def test_fact_loss_needs_facts(tmp_path, tiny_configs):
    from picovlm.data.scenes import write_demo

    data = write_demo(tmp_path / "data", n=40, seed=0, image_size=32)
    from datasets import load_from_disk

    stripped = load_from_disk(str(data)).remove_columns("fields")
    stripped.save_to_disk(str(tmp_path / "nofacts"))
    model_cfg, cfg = tiny_configs(tmp_path / "nofacts", tmp_path / "run", fact_loss_weight=1.0)
    with pytest.raises(DataError, match=r"no `fields` column.*picovlm data import"):
        train(model_cfg, cfg)
    model_cfg, packed = tiny_configs(data, tmp_path / "packed", fact_loss_weight=1.0, packing=True)
    with pytest.raises(ConfigError, match="packing=false"):
        train(model_cfg, packed)
