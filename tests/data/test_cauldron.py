import pytest
from datasets import Dataset, Features, Image, Sequence, Value

from picovlm.data.cauldron import load_cauldron, save_cauldron, validate_schema
from picovlm.errors import DataError


def test_save_and_load_disk_and_parquet_roundtrip(tmp_path, demo_dataset):
    small = demo_dataset.select(range(10))
    disk = save_cauldron(small, tmp_path / "disk")
    parquet = save_cauldron(small, tmp_path / "pq", parquet=True, num_shards=2)
    assert sorted(p.name for p in (parquet / "train").iterdir()) == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]  # fmt: skip
    for path in (disk, parquet):
        loaded = load_cauldron(path)
        assert loaded["texts"] == small["texts"] and loaded["group"] == small["group"]
        assert loaded[3]["images"][0].tobytes() == small[3]["images"][0].tobytes()
    streamed = list(load_cauldron(parquet, streaming=True, max_rows=4))
    assert [r["texts"] for r in streamed] == small["texts"][:4]
    assert len(load_cauldron(disk, max_rows=3)) == 3
    assert not list(tmp_path.glob(".*tmp*")), "atomic save leaves no temporary folder behind"


def test_save_refuses_to_overwrite_unless_asked(tmp_path, demo_dataset):
    out = save_cauldron(demo_dataset.select(range(2)), tmp_path / "d")
    with pytest.raises(DataError, match="already exists"):
        save_cauldron(demo_dataset.select(range(3)), out)
    save_cauldron(demo_dataset.select(range(3)), out, overwrite=True)
    assert len(load_cauldron(out)) == 3


def test_datasetdict_needs_a_split(demo_dir):
    with pytest.raises(DataError, match="--split"):
        load_cauldron(demo_dir)
    with pytest.raises(DataError, match=r"no split 'holdout'; it holds \['train', 'validation', 'test'\]"):
        load_cauldron(demo_dir, split="holdout")
    assert len(load_cauldron(demo_dir, split="test")) > 0
    # the names `datasets` uses for the same split mean it here too
    assert len(load_cauldron(demo_dir, split="dev")) == len(load_cauldron(demo_dir, split="validation"))


@pytest.mark.parametrize(
    "features, message",
    [
        ({"pictures": Sequence(Image()), "texts": [{"user": Value("string"), "assistant": Value("string"),
                                                    "source": Value("string")}]}, "missing column 'images'"),
        ({"images": Sequence(Image()), "texts": [{"user": Value("string"), "answer": Value("string"),
                                                  "source": Value("string")}]}, "'texts\\[\\].assistant' is missing"),
        ({"images": Sequence(Image()), "texts": [{"user": Value("string"), "assistant": Value("int64"),
                                                  "source": Value("string")}]}, "must be Value\\('string'\\)"),
        ({"images": Value("string"), "texts": [{"user": Value("string"), "assistant": Value("string"),
                                                "source": Value("string")}]}, "list of Image"),
    ],
)  # fmt: skip
def test_wrong_schema_names_the_field_and_prints_the_expected_schema(tmp_path, features, message):
    def value(feature):  # one valid value of each feature type, to build a one-row dataset
        if isinstance(feature, list):
            return [{key: 1 if sub.dtype == "int64" else "x" for key, sub in feature[0].items()}]
        return "x" if isinstance(feature, Value) else []

    one_row = {name: [value(feature)] for name, feature in features.items()}
    dataset = Dataset.from_dict(one_row, features=Features(features))
    with pytest.raises(DataError, match=message) as info:
        validate_schema(dataset, "my.parquet")
    assert "my.parquet" in str(info.value) and '"images": Sequence(Image())' in str(info.value)
    # the same error, not a datasets traceback, when loading from disk
    dataset.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=message):
        load_cauldron(tmp_path / "bad")


def test_unreadable_path_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no dataset here"):
        load_cauldron(tmp_path / "empty")
