"""Report files: content, atomic writing, and a real headless-Chromium render of the HTML page."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from PIL import Image

from picovlm.eval import metrics as M
from picovlm.eval.report import (
    MAJORITY_ROW,
    fact_rows,
    render_html,
    thumbnail_data_uri,
    worst_first,
    write_report,
)

COLOURS = ["red", "blue", "green", "yellow"]


def make_result(name: str, answers: list[str]) -> dict:
    references = [f"A large {c} circle is at the center." for c in COLOURS]
    keys = [f"img{i}" for i in range(len(COLOURS))]
    metrics = M.generation_metrics(answers, references, image_keys=keys, train_answers=references[:2])
    metrics["verdict_status"], metrics["verdict"] = M.collapse_verdict(metrics)
    items = [
        {
            "index": i,
            "image_key": keys[i],
            "question": "Describe the image.",
            "reference": references[i],
            "answer": answers[i],
            **M.item_scores(answers[i], references[i]),
        }
        for i in range(len(COLOURS))
    ]
    thumbs = {keys[i]: thumbnail_data_uri(Image.new("RGB", (224, 224), c)) for i, c in enumerate(COLOURS)}
    return {
        "name": name,
        "model": f"runs/{name}",
        "data": "demo",
        "split": "test",
        "metrics": metrics,
        "items": items,
        "thumbnails": thumbs,
    }


@pytest.fixture
def two_results():
    good = make_result(
        "good", [f"A large {c} circle is at the center." for c in COLOURS[:3]] + ["A small <b>pink</b> star."]
    )
    collapsed = make_result("collapsed", ["A large red circle is at the center."] * 4)
    return [good, collapsed]


def test_write_report_files(tmp_path, two_results):
    paths = write_report(two_results, tmp_path / "out")
    document = json.loads(paths["metrics.json"].read_text())
    assert [m["name"] for m in document["models"]] == ["good", "collapsed"]
    assert document["models"][1]["metrics"]["verdict_status"] == "collapsed"
    assert document["models"][0]["metrics"]["verdict_status"] == "healthy"
    page = paths["report.html"].read_text()
    assert "collapsed: 100% of test images got the same answer" in page
    assert page.count("data:image/jpeg;base64,") == 4  # one thumbnail per item row
    assert "&lt;b&gt;pink&lt;/b&gt;" in page and "<b>pink</b>" not in page  # answers are escaped
    markdown = paths["report.md"].read_text()
    assert "| good |" in markdown and "| collapsed |" in markdown
    assert len(paths["predictions.jsonl"].read_text().splitlines()) == 8
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_the_facts_field_by_field_sit_beside_the_most_common_value(tmp_path):
    """Every model and baseline gets its accuracy per fact field, and one row says what always stating
    each field's most common training value scores: a field where nobody beats it stands out."""

    def extract(answer):  # "A large red circle ..." -> size and colour
        words = answer.split()
        return {"size": words[1], "colour": words[2]}

    references = [f"A large {c} circle is at the center." for c in COLOURS]
    train = ["A large red circle.", "A large red square.", "A small blue circle."]  # most common: large, red
    keys = [f"img{i}" for i in range(len(COLOURS))]

    def metrics(answers):
        return M.generation_metrics(
            answers, references, image_keys=keys, train_answers=train, extract_fields=extract
        )

    result = make_result("model", references)
    result["metrics"] = metrics(["A small " + c + " circle." for c in COLOURS])  # colours right, size wrong
    lookup = ["A large red circle."] * 4
    result["baselines"] = {
        "nearest-pixels": {"metrics": metrics(lookup), "items": make_result("b", lookup)["items"]}
    }
    assert result["metrics"]["field_majority_accuracy/size"] == 1.0
    assert result["metrics"]["field_majority_accuracy/colour"] == 0.25

    fields, rows = fact_rows([result])
    assert fields == ["colour", "size"]
    assert rows == [
        ("model", {"colour": 1.0, "size": 0.0}),
        ("baseline: nearest-pixels", {"colour": 0.25, "size": 1.0}),
        (MAJORITY_ROW, {"colour": 0.25, "size": 1.0}),
    ]
    paths = write_report([result], tmp_path / "out")
    markdown = paths["report.md"].read_text()
    assert "| model | colour | size |" in markdown
    assert f"| {MAJORITY_ROW} | 0.250 | 1.000 |" in markdown
    page = paths["report.html"].read_text()
    assert "Facts, field by field" in page and MAJORITY_ROW in page
    # without facts there is no such table
    assert fact_rows([make_result("plain", references)]) == ([], [])


def test_items_worst_first(two_results):
    order = worst_first(two_results)
    # item 3 is wrong for both models; item 0 is right for both
    assert order[0] == 3 and order[-1] == 0
    page = render_html(two_results)
    assert page.index('alt="image 3"') < page.index('alt="image 0"')


@pytest.mark.integration
def test_html_report_renders_in_headless_chromium(chromium, tmp_path, two_results):
    paths = write_report(two_results, tmp_path / "out")
    screenshot = tmp_path / "report.png"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1000",
        "--hide-scrollbars",
        f"--screenshot={screenshot}",
        paths["report.html"].resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=90)
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1400, 1000)
    # The page really rendered: the verdict's red text and the thumbnails' colours are on screen.
    colours = {colour for _, colour in image.getcolors(maxcolors=1_000_000)}
    assert any(r > 150 and g < 60 and b < 60 for r, g, b in colours)  # red verdict / red thumbnail
    assert any(b > 180 and r < 60 for r, g, b in colours)  # blue thumbnail
    if os.environ.get("PICOVLM_KEEP_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["PICOVLM_KEEP_SCREENSHOT"])
