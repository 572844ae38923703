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


def test_import_keeps_extra_columns_as_facts_that_eval_reads_back(tmp_path):
    """A user's own table columns become `fields`, and the generic reader finds them in answers."""
    import json

    from PIL import Image

    from picovlm.eval.facts import fact_parser_for
    from picovlm.eval.metrics import field_accuracy

    images = tmp_path / "images"
    images.mkdir()
    lines = ["image,answer,category,colour"]
    for i, (category, colour) in enumerate([("fruit", "red"), ("tool", "dark blue"), ("fruit", "blue")]):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(images / f"{i}.png")
        lines.append(f"{i}.png,This {category} is painted {colour} all over.,{category},{colour}")
    lines.append("3.png,No image here.,fruit,red")  # skipped: its image is missing
    (tmp_path / "items.csv").write_text("\n".join(lines) + "\n")
    dataset, report = import_folder(images, tmp_path / "items.csv")
    assert report.rows_written == 3
    assert [json.loads(f) for f in dataset["fields"]] == [
        {"category": "fruit", "colour": "red"},
        {"category": "tool", "colour": "dark blue"},
        {"category": "fruit", "colour": "blue"},
    ]
    parser = fact_parser_for(dataset)
    # the longest known value wins where values share words ("dark blue" over "blue")
    assert parser("A tool, painted dark blue.") == {"category": "tool", "colour": "dark blue"}
    assert parser("Something else entirely.") == {"category": None, "colour": None}
    references = [t[0]["assistant"] for t in dataset["texts"]]
    answers = ["This fruit is painted red all over.", "This fruit is painted blue all over.", "A fruit."]
    assert field_accuracy(answers, references, parser) == {"category": 2 / 3, "colour": 1 / 3, "all": 0.5}
    no_facts, _ = import_folder(images, tmp_path / "items.csv", fact_columns=[])
    assert "fields" not in no_facts.column_names


def test_value_matcher_reads_numbers_by_the_words_around_them():
    """Numeric facts share values ('1' is a level and a stroke count): the context words decide."""
    from picovlm.eval.facts import ValueMatcher

    rows = [
        (
            {"level": str(level), "strokes": str(strokes)},
            f"A level {level} sign drawn with {strokes} strokes.",
        )
        for level, strokes in [(1, 12), (2, 1), (12, 2), (3, 7)]
    ]
    matcher = ValueMatcher(rows)
    assert matcher("Drawn with 1 strokes, this is a level 12 sign.") == {"level": "12", "strokes": "1"}
    assert matcher("A level 7 sign.") == {"level": None, "strokes": "7"}  # 7 is no known level
