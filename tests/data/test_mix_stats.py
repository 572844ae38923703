import json
from collections import Counter

import pytest

from picovlm.data.cauldron import load_cauldron, save_cauldron
from picovlm.data.mix import MixInput, mix_datasets
from picovlm.data.scenes import make_demo_dataset
from picovlm.data.stats import dataset_stats, format_stats, plot_histograms
from picovlm.errors import DataError


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    a = save_cauldron(make_demo_dataset(60, seed=1, image_size=32), root / "a")
    b = make_demo_dataset(30, seed=2, image_size=32).remove_columns(["fields", "group"])
    b = b.map(lambda texts: {"texts": [{**t, "source": ""} for t in texts]}, input_columns="texts")
    return a, save_cauldron(b, root / "b")


def test_mix_with_caps_keeps_provenance_and_leaves_inputs_untouched(two_inputs):
    a, b = two_inputs
    files_before = sorted(p.name for p in a.iterdir())
    mixed = mix_datasets([MixInput.parse(f"{a}:cap=20"), MixInput.parse(f"{b}:name=web")], seed=0)
    assert len(mixed) == 50
    sources = Counter(row[0]["source"] for row in mixed["texts"])
    assert sources == {"picovlm-demo": 20, "web": 30}  # empty sources take the input's name
    groups = mixed["group"]
    assert sum(g.startswith("a:") for g in groups) == 20 and groups.count("") == 30
    assert sorted(p.name for p in a.iterdir()) == files_before
    assert mixed[0]["images"][0].size == (32, 32)


def test_mix_with_ratios(two_inputs):
    a, b = two_inputs
    mixed = mix_datasets([MixInput.parse(f"{a}:ratio=3"), MixInput.parse(f"{b}:ratio=1:name=web")], seed=0)
    counts = Counter(row[0]["source"] for row in mixed["texts"])
    assert counts == {"picovlm-demo": 60, "web": 20}  # the largest 3:1 mix without repeats
    upsampled = mix_datasets(
        [MixInput.parse(f"{a}:ratio=1"), MixInput.parse(f"{b}:ratio=1:name=web")], total=100
    )
    assert Counter(row[0]["source"] for row in upsampled["texts"]) == {"picovlm-demo": 50, "web": 50}
    with pytest.raises(DataError, match="ratio"):
        mix_datasets([MixInput.parse(f"{a}:ratio=1"), MixInput.parse(f"{b}")])
    with pytest.raises(DataError, match="unknown option"):
        MixInput.parse(f"{a}:weight=2")


def test_stats_counts_and_redundancy(tmp_path, demo_dataset):
    doubled = demo_dataset.select(list(range(40)) + list(range(10)))  # 10 rows repeated
    stats = dataset_stats(doubled)
    assert stats["rows"] == 50 and stats["images"] == 50
    assert stats["sources"] == {"picovlm-demo": 50}
    assert stats["redundancy"]["repeated_images"] >= 10 and stats["redundancy"]["duplicate_answers"] >= 10
    words = [len(t[0]["assistant"].split()) for t in doubled["texts"]]
    assert stats["answer_words"]["max"] == max(words) and stats["answer_words"]["min"] == min(words)
    assert sum(stats["answer_words"]["histogram"]["counts"]) == 50
    vocabulary = {w for t in doubled["texts"] for w in t[0]["assistant"].lower().split()}
    assert stats["vocabulary_size"] == len(vocabulary)
    assert "answer words" in format_stats(stats)
    png = plot_histograms(stats, tmp_path / "h.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    json.dumps(stats)


def test_stats_in_tokens(demo_dataset):
    from picovlm.data.tokenizer import train_tokenizer

    texts = [t[0]["assistant"] for t in demo_dataset["texts"]]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    stats = dataset_stats(demo_dataset, tokenizer=tokenizer)
    assert stats["answer_tokens"]["max"] == max(len(tokenizer.encode(t)) for t in texts)


def test_loaded_mix_roundtrips(tmp_path, two_inputs):
    a, b = two_inputs
    out = save_cauldron(mix_datasets([MixInput(str(a)), MixInput(str(b), cap=5)]), tmp_path / "m")
    assert len(load_cauldron(out)) == 65
