import pytest

from picovlm.data.cauldron import load_cauldron, save_cauldron
from picovlm.data.importers import import_dataset, import_folder
from picovlm.errors import DataError


def test_import_csv_skips_bad_rows_with_row_numbers(image_folder):
    images, csv_path, _ = image_folder
    dataset, report = import_folder(images, csv_path, default_question="What is shown?")
    assert report.rows_read == 5 and report.rows_written == 3
    assert [s["row"] for s in report.skipped] == [4, 5]
    assert "missing.png" in report.skipped[0]["reason"] and "empty" in report.skipped[1]["reason"]
    assert dataset[0]["texts"] == [{"user": "What colour is it?", "assistant": "It is a red rectangle.",
                                    "source": "import:items.csv"}]  # fmt: skip
    assert dataset[1]["texts"][0]["user"] == "What is shown?"  # empty question -> the default
    assert dataset["group"] == ["g1", "g1", "g2"]
    assert [im.size for im in dataset[2]["images"]] == [(40, 30), (40, 30)]
    assert dataset[1]["images"][0].format == "JPEG"  # stored as is, not re-encoded
    assert dataset[0]["images"][0].getpixel((0, 0)) == (255, 0, 0)


def test_import_jsonl_keeps_multi_turn_and_multi_image(image_folder, tmp_path):
    images, _, jsonl_path = image_folder
    dataset, report = import_folder(images, jsonl_path, source="mine")
    assert [s["row"] for s in report.skipped] == [4, 5]
    assert len(dataset) == 3
    assert [t["assistant"] for t in dataset[1]["texts"]] == ["Blue.", "Gray."]
    assert len(dataset[1]["images"]) == 2
    assert {t["source"] for row in dataset["texts"] for t in row} == {"mine"}
    assert dataset["group"] == ["", "", "g9"]


def test_import_from_parquet_and_disk_with_cap(tmp_path, demo_dataset):
    parquet = save_cauldron(demo_dataset.select(range(12)), tmp_path / "pq", parquet=True)
    assert import_dataset(str(parquet), tmp_path / "from_pq", max_rows=5, streaming=True) == 5
    copy = load_cauldron(tmp_path / "from_pq")
    assert copy["texts"] == demo_dataset["texts"][:5]
    no_source = demo_dataset.select(range(3)).map(
        lambda texts: {"texts": [{**t, "source": ""} for t in texts]}, input_columns="texts"
    )
    disk = save_cauldron(no_source, tmp_path / "disk")
    import_dataset(str(disk), tmp_path / "from_disk", source_name="shapes")
    assert {t[0]["source"] for t in load_cauldron(tmp_path / "from_disk")["texts"]} == {"shapes"}


def test_import_errors_name_the_file(tmp_path, image_folder):
    images, _, _ = image_folder
    with pytest.raises(DataError, match="nothing.csv"):
        import_folder(images, tmp_path / "nothing.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown table format"):
        import_folder(images, tmp_path / "t.xlsx")
