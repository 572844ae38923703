import hashlib
import io

import numpy as np
from datasets import Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage

from picovlm.data.cauldron import load_cauldron, save_cauldron
from picovlm.data.check import ISSUE_KINDS, check_dataset, count_tokens, fix_dataset, near_duplicate_pairs


def test_check_finds_every_kind_of_bad_input(bad_dataset):
    dataset, expected = bad_dataset
    report = check_dataset(dataset, max_answer_tokens=50)
    found = {kind: {entry["row"] for entry in entries} for kind, entries in report.issues.items()}
    for kind in ISSUE_KINDS:
        assert found[kind] == expected.get(kind, set()), kind
    # every kind but non-string texts (which Arrow cannot mix with strings) is in the one fixture
    assert set(expected) == set(ISSUE_KINDS) - {"non_string_text"}
    markdown = report.to_markdown()
    assert "| decompression_bomb | 1 |" in markdown and "| truncated_image | 1 |" in markdown


def test_progress_starts_at_zero_before_the_first_batch(bad_dataset):
    """A bar whose first call already counts a batch shows an absurd first rate (rows / microseconds)."""
    dataset, _ = bad_dataset
    calls = []
    check_dataset(dataset, progress=lambda done, total, message="": calls.append((done, total)))
    assert calls[0] == (0, len(dataset)) and calls[-1] == (len(dataset), len(dataset))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_non_string_texts_are_reported_per_row():
    features = Features({"images": Sequence(Image()),
                         "texts": [{"user": Value("string"), "assistant": Value("int64"), "source": Value("string")}]})  # fmt: skip
    png = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(png, format="PNG")
    rows = {"images": [[{"bytes": png.getvalue(), "path": None}]] * 2,
            "texts": [[{"user": "q", "assistant": 42, "source": "s"}], [{"user": "q", "assistant": None, "source": "s"}]]}  # fmt: skip
    report = check_dataset(Dataset.from_dict(rows, features=features))
    assert [e["row"] for e in report.issues["non_string_text"]] == [0]
    assert [e["row"] for e in report.issues["missing_text"]] == [1]


def test_fix_writes_a_clean_copy_and_never_touches_the_input(tmp_path, bad_dataset):
    dataset, expected = bad_dataset
    source = save_cauldron(dataset, tmp_path / "in")
    digest_before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.iterdir()}
    loaded = load_cauldron(source)
    report = check_dataset(loaded, max_answer_tokens=50)
    summary = fix_dataset(loaded, report, tmp_path / "out")
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.iterdir()} == digest_before
    dropped = {1, 2, 3, 4, 5, 10, 11, 12, 13, 17}
    assert summary["rows_out"] == len(dataset) - len(dropped)
    cleaned = load_cauldron(tmp_path / "out")
    assert all(image.mode == "RGB" for row in cleaned for image in row["images"])
    again = check_dataset(cleaned, max_answer_tokens=50)
    assert again.counts()["non_rgb_image"] == 0 and again.counts()["decompression_bomb"] == 0
    assert (tmp_path / "out" / "check-report.json").exists() and (
        tmp_path / "out" / "check-report.md"
    ).exists()
    # the 16-bit grey image (40000 of 65535) is scaled, not clipped to white
    kept_rows = [r for r in range(len(dataset)) if r not in dropped]
    grey = cleaned[kept_rows.index(9)]["images"][0]
    assert abs(int(np.asarray(grey)[0, 0, 0]) - 40000 * 255 // 65535) <= 1


def test_near_duplicates_found_and_unrelated_texts_not():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(words, 40)) for _ in range(2000)]
    copies = []
    for source in range(0, 100):
        changed = texts[source].split()
        changed[20] = "zzz"
        copies.append(" ".join(changed))
    pairs = {(row, earlier) for row, earlier, _ in near_duplicate_pairs(texts + copies, threshold=0.7)}
    planted = {(2000 + k, k) for k in range(100)}
    assert len(pairs & planted) >= 95  # MinHash estimates Jaccard (~0.85 here), so recall is near 1
    assert pairs <= planted  # and random texts are never paired


def test_token_counts_use_the_tokenizer():
    from picovlm.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["a red circle is at the top left"] * 20, vocab_size=300)
    texts = ["a red circle", "antidisestablishmentarianism"]
    assert count_tokens(texts) == [3, 1]
    assert count_tokens(texts, tokenizer) == [len(tokenizer.encode(t)) for t in texts]
    assert count_tokens(texts, tokenizer)[1] > 1
