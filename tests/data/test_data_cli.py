"""Every `picovlm data` verb through the real command line entry point."""

import json

import pytest

from picovlm.cli import main
from picovlm.data.cauldron import load_cauldron, save_cauldron


def test_demo_then_stats_check_split_mix(tmp_path, capsys):
    demo = tmp_path / "demo"
    assert (
        main(
            [
                "data",
                "demo",
                "--out",
                str(demo),
                "--n",
                "60",
                "--seed",
                "1",
                "--image-size",
                "48",
                "--no-split",
            ]
        )
        == 0
    )
    assert len(load_cauldron(demo)) == 60
    assert (
        main(
            [
                "data",
                "stats",
                str(demo),
                "--json",
                str(tmp_path / "s.json"),
                "--plot",
                str(tmp_path / "h.png"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "s.json").read_text())["rows"] == 60 and (tmp_path / "h.png").exists()
    assert (
        main(["data", "check", str(demo), "--max-answer-tokens", "20", "--report", str(tmp_path / "r")]) == 0
    )
    report = json.loads((tmp_path / "r" / "check-report.json").read_text())
    long_rows = [e["row"] for e in report["issues"]["answer_too_long"]]
    texts = load_cauldron(demo)["texts"]
    assert long_rows == [i for i, t in enumerate(texts) if len(t[0]["assistant"].split()) > 20]
    assert main(["data", "split", str(demo), "--out", str(tmp_path / "split"), "--seed", "2"]) == 0
    assert "train:" in capsys.readouterr().out
    assert sum(len(load_cauldron(tmp_path / "split", split=s)) for s in ("train", "validation", "test")) == 60
    spec = f"{tmp_path / 'split'}:split=test:name=heldout"
    assert (
        main(["data", "mix", str(demo) + ":cap=10", spec, "--out", str(tmp_path / "mix"), "--parquet"]) == 0
    )
    mixed = load_cauldron(tmp_path / "mix")
    assert len(mixed) == 10 + len(load_cauldron(tmp_path / "split", split="test"))


def test_import_check_fix_on_real_image_files(tmp_path, image_folder, capsys):
    images, csv_path, _ = image_folder
    out = tmp_path / "imported"
    assert main(["data", "import", "--images", str(images), "--table", str(csv_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped row 4" in printed and "skipped row 5" in printed
    assert main(["data", "check", str(out), "--fix", str(tmp_path / "fixed")]) == 0
    assert len(load_cauldron(tmp_path / "fixed")) == 3
    assert (
        main(
            [
                "data",
                "split",
                str(out),
                "--out",
                str(tmp_path / "split"),
                "--fractions",
                "0.5",
                "0.25",
                "0.25",
            ]
        )
        == 0
    )


def test_bad_dataset_check_and_fix_through_cli(tmp_path, bad_dataset, capsys):
    dataset, expected = bad_dataset
    source = save_cauldron(dataset, tmp_path / "bad")
    assert (
        main(["data", "check", str(source), "--max-answer-tokens", "50", "--fix", str(tmp_path / "clean")])
        == 0
    )
    printed = capsys.readouterr().out
    counts = {line.split()[0]: int(line.split()[1]) for line in printed.splitlines() if line.startswith("  ")}
    assert {kind: n for kind, n in counts.items() if n} == {
        kind: len(rows) for kind, rows in expected.items()
    }
    assert len(load_cauldron(tmp_path / "clean")) == len(dataset) - 10


def test_user_errors_print_a_message_not_a_traceback(tmp_path, capsys):
    (tmp_path / "notdata").mkdir()
    assert main(["data", "stats", str(tmp_path / "notdata")]) == 1
    assert "no dataset here" in capsys.readouterr().err
    assert main(["data", "import", "--out", str(tmp_path / "x")]) == 1
    assert (
        main(
            [
                "data",
                "split",
                str(tmp_path / "notdata"),
                "--out",
                str(tmp_path / "s"),
                "--fractions",
                "1",
                "1",
                "1",
            ]
        )
        == 1
    )


@pytest.mark.parametrize("verb", ["import", "check", "stats", "split", "mix", "demo"])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: picovlm data " + verb in capsys.readouterr().out


def test_check_and_stats_report_each_split_of_a_hub_folder(tmp_path, demo_dir, split_layout_writer, capsys):
    from datasets import concatenate_datasets

    splits = {name: load_cauldron(demo_dir, split=name) for name in ("train", "validation", "test")}
    splits["test"] = concatenate_datasets([splits["test"], splits["train"].select(range(3))])  # 3 copies
    data = split_layout_writer(splits, tmp_path / "hub", "hub-data")
    sizes = {name: len(split) for name, split in splits.items()}
    capsys.readouterr()

    assert (
        main(["data", "check", str(data), "--report", str(tmp_path / "r"), "--fix", str(tmp_path / "fixed")])
        == 0
    )
    out = capsys.readouterr().out
    for name, n in sizes.items():
        assert f"split {name!r}: {n} rows, {n} images" in out
        report = json.loads((tmp_path / "r" / name / "check-report.json").read_text())
        assert report["rows"] == n and report["source"] == f"{data} (split {name!r})"
        assert len(load_cauldron(tmp_path / "fixed", split=name)) == n  # the cleaned copy keeps its splits
    test_line = next(line for line in out.splitlines() if line.startswith("  test:"))
    assert test_line.startswith(f"  test: 3 of {sizes['test']} rows") and "LEAK" in test_line
    assert "picovlm data split" in test_line
    validation_line = next(line for line in out.splitlines() if line.startswith("  validation:"))
    assert (
        validation_line.startswith(f"  validation: 0 of {sizes['validation']} rows")
        and "LEAK" not in validation_line
    )
    leakage = {o["split"]: o for o in json.loads((tmp_path / "r" / "leakage.json").read_text())}
    assert leakage["test"]["shared_image_rows"] == 3 and leakage["test"]["leaks"]
    assert not leakage["validation"]["leaks"]

    stats_json, plot = tmp_path / "s.json", tmp_path / "h.png"
    assert main(["data", "stats", str(data), "--json", str(stats_json), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("==")] == [
        "== split 'train' ==",
        "== split 'validation' ==",
        "== split 'test' ==",
    ]
    per_split = json.loads(stats_json.read_text())["splits"]
    assert {name: s["rows"] for name, s in per_split.items()} == sizes
    assert all((tmp_path / f"h-{name}.png").stat().st_size > 1000 for name in sizes)
    # one split asked for: as before, that split's statistics alone
    assert main(["data", "stats", str(data), "--split", "val", "--json", str(stats_json)]) == 0
    assert json.loads(stats_json.read_text())["rows"] == sizes["validation"]
