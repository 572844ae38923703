"""evaluate() end to end on tiny trained models: the verdict tells grounded, blind and collapsed apart."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from picovlm.eval.evaluate import (
    CALIBRATION_TEMPERATURES,
    EvalItem,
    answer_loss,
    answer_losses,
    answer_nll_per_row,
    evaluate,
    evaluate_many,
    items_from_rows,
    margin_over_lookup,
    nearest_answers,
    pixel_baseline,
    pixel_features,
    quick_eval,
    row_figures,
    shuffled_sources,
)
from picovlm.eval.report import write_report


@pytest.fixture(scope="module")
def results(tiny_models, squares_dir):
    dirs = [tiny_models[name] for name in ("grounded", "shuffled", "collapsed")]
    return {r["name"]: r for r in evaluate_many(dirs, squares_dir, baseline="nearest", max_new_tokens=16)}


def test_grounded_model_is_not_flagged(results):
    m = results["grounded"]["metrics"]
    assert m["token_f1"] > 0.9
    assert m["image_gap_shuffled"] > 0.3 and m["image_gap_blank"] > 0.3
    assert m["answers_changed_share"] > 0.5
    assert m["verdict_status"] in ("healthy", "below-baseline"), m["verdict"]
    assert "collapsed" not in m["verdict"] and "ignores the image" not in m["verdict"]


def test_collapsed_model_is_flagged(results):
    m = results["collapsed"]["metrics"]
    assert m["verdict_status"] == "collapsed"
    assert m["verdict"].startswith("collapsed: 100% of test images got the same answer")
    assert m["top_answers"][0][1] == m["n_items"]
    assert m["copied_from_train_share"] == 0.0  # its one answer is not a training answer of this split


def test_model_trained_on_shuffled_images_is_flagged_as_ignoring_them(results):
    m = results["shuffled"]["metrics"]
    assert m["image_gap_shuffled"] < 0.05
    assert "ignores the image: loss with shuffled images is" in m["verdict"]


def test_nearest_baseline_and_loss_fields(results):
    m = results["grounded"]["metrics"]
    assert set(results["grounded"]["baselines"]) == {"nearest-pixels", "nearest-index", "nearest-vision"}
    pixels = results["grounded"]["baselines"]["nearest-pixels"]["metrics"]
    assert pixels["token_f1"] > 0.8  # colour squares: a pixel lookup is a strong baseline
    assert m["baseline_token_f1"] >= pixels["token_f1"]
    assert m["perplexity"] == pytest.approx(np.exp(m["loss"]))
    assert abs(m["train_test_loss_gap"] - (m["loss"] - m["train_loss"])) < 1e-9
    assert len(results["grounded"]["thumbnails"]) == m["n_images"] == 24


def test_the_margin_over_the_lookup_and_the_gap_carry_their_error_over_the_objects(results):
    """eval reports by how much the model leads the stronger lookup, row by row, and how sure the split
    is of that lead and of the image gap; the collapsed model's verdict says its deficit is no noise."""
    for name in ("grounded", "collapsed"):
        m = results[name]["metrics"]
        assert m["baseline_margin_token_f1"] == pytest.approx(
            m["token_f1"] - m["baseline_token_f1"], abs=1e-9
        )
        assert m["baseline_margin_token_f1_error"] >= 0.0
        assert m["objects"] == 24  # the squares have no `group`: each picture is its own object
        assert m["image_gap_shuffled_error"] > 0.0 and m["image_gap_shuffled_calibrated_error"] > 0.0
        for lookup in results[name]["baselines"].values():  # the lead over every lookup, not only the best
            assert lookup["margin"]["baseline_margin_token_f1"] == pytest.approx(
                m["token_f1"] - lookup["metrics"]["token_f1"], abs=1e-9
            )
        assert (
            results[name]["baselines"][m["baseline_name"]]["margin"]["baseline_margin_token_f1_error"]
            == (m["baseline_margin_token_f1_error"])
        )
    collapsed = results["collapsed"]["metrics"]
    assert collapsed["baseline_margin_token_f1"] < -collapsed["baseline_margin_token_f1_error"]
    assert "over 24 objects: beyond one standard error)" in collapsed["verdict"]


def test_margin_over_lookup_counts_objects_and_facts():
    """The margin is the paired difference of the two answers' scores, for token F1 and for the facts
    (their means are the metrics' differences); its error counts the rows of one object as one."""
    from picovlm.eval.evaluate import score_answers

    def extract(text):
        return {"colour": text.split()[0]}

    def rows_of(groups):
        return [EvalItem([], "q", f"{colour} thing number {i}", f"k{i}", group)
                for i, (colour, group) in enumerate(groups)]  # fmt: skip

    groups = [("red", "a")] * 4 + [("blue", "b")] * 4 + [("green", "c")] * 4 + [("grey", "d")] * 4
    items = rows_of(groups)
    ours = [
        f"{c} thing number {i}" if g in "ab" else f"pink thing number {i}" for i, (c, g) in enumerate(groups)
    ]
    theirs = [f"{c} thing" if g in "ac" else f"pink thing number {i}" for i, (c, g) in enumerate(groups)]
    model_m, model_rows = score_answers(items, ours, None, extract)
    lookup_m, lookup_rows = score_answers(items, theirs, None, extract)
    ours, theirs = row_figures(model_rows, extract), row_figures(lookup_rows, extract)
    margins = margin_over_lookup(items, ours, theirs)
    assert margins["baseline_margin_token_f1"] == pytest.approx(model_m["token_f1"] - lookup_m["token_f1"])
    assert margins["baseline_margin_field_accuracy"] == pytest.approx(
        model_m["field_accuracy"] - lookup_m["field_accuracy"]
    )
    one_per_row = [EvalItem([], "q", item.reference, item.image_key) for item in items]
    by_rows = margin_over_lookup(one_per_row, ours, theirs)
    assert (
        margins["baseline_margin_field_accuracy_error"]
        > 1.5 * by_rows["baseline_margin_field_accuracy_error"]
    )
    without_facts = margin_over_lookup(items, row_figures(model_rows, None), row_figures(lookup_rows, None))
    assert "baseline_margin_field_accuracy" not in without_facts


def test_report_for_several_models(results, tmp_path):
    paths = write_report(list(results.values()), tmp_path)
    document = json.loads(paths["metrics.json"].read_text())
    statuses = {m["name"]: m["metrics"]["verdict_status"] for m in document["models"]}
    assert statuses["collapsed"] == "collapsed"
    page = paths["report.html"].read_text()
    assert page.count("<th>shuffled</th>") == 2  # its summary row and its answer column
    assert "baseline: nearest-pixels" in page
    # metrics.json keeps each lookup's margin; the page shows the gap and the lead with their errors
    grounded = next(m for m in document["models"] if m["name"] == "grounded")
    assert set(grounded["baselines"]["nearest-vision"]["margin"]) >= {"baseline_margin_token_f1"}
    assert "token F1 over the best lookup" in page
    gap = grounded["metrics"]
    assert f"{gap['image_gap_shuffled']:+.3f} ± {gap['image_gap_shuffled_error']:.3f}" in page


def test_evaluate_max_items_and_no_train_split(tiny_models, squares_dir):
    result = evaluate(
        tiny_models["grounded"],
        squares_dir,
        max_items=6,
        train_split=None,
        max_new_tokens=8,
        thumbnails=False,
    )
    assert result["metrics"]["n_items"] == 6 and "train_loss" not in result["metrics"]
    assert result["thumbnails"] == {}


def test_the_training_time_baseline_is_evals_pixel_lookup(results, squares_dir):
    """pixel_baseline (computed once per training run) is the same lookup as eval's nearest-pixels, and
    quick_eval's verdict reads it: the collapsed model is told it is below the lookup."""
    from picovlm.data.cauldron import load_cauldron
    from picovlm.model.vlm import VisionLanguageModel

    test, train = load_cauldron(squares_dir, split="test"), load_cauldron(squares_dir, split="train")
    rows = [test[i] for i in range(len(test))]
    baseline = pixel_baseline(rows, train)
    pixels = results["grounded"]["baselines"]["nearest-pixels"]["metrics"]
    assert baseline == {"baseline_token_f1": pixels["token_f1"], "baseline_name": "nearest-pixels"}
    # a lookup among fewer training rows is a weaker one: the cap is real
    assert pixel_baseline(rows, train, max_train_rows=5)["baseline_token_f1"] < baseline["baseline_token_f1"]
    collapsed = VisionLanguageModel.from_pretrained(results["collapsed"]["model"])
    metrics = quick_eval(collapsed, rows, image_checks=False, baseline=baseline)
    assert metrics["baseline_token_f1"] == baseline["baseline_token_f1"]
    assert "below baseline: a nearest-image lookup scores token-F1" in metrics["verdict"]


def test_quick_eval_is_flat_and_keeps_training_mode(tiny_models, square_rows):
    from picovlm.model.vlm import VisionLanguageModel

    model = VisionLanguageModel.from_pretrained(tiny_models["collapsed"])
    model.train()
    metrics = quick_eval(model, square_rows(12, 5), max_new_tokens=12)
    assert model.training
    assert metrics["verdict_status"] == "collapsed"
    assert all(isinstance(v, (int, float, str)) for v in metrics.values())


def test_quick_eval_gives_answers_room_for_the_longest_reference(tiny_models, square_rows):
    """The default budget is the longest reference's tokens plus a margin: a model that says its one
    answer word for word matches references that are that answer, and a short fixed budget cuts it."""
    from picovlm.model.vlm import VisionLanguageModel

    model = VisionLanguageModel.from_pretrained(tiny_models["collapsed"])
    its_answer = quick_eval(model, square_rows(4, 2), image_checks=False, max_new_tokens=64)["top_answer"]
    assert len(its_answer.split()) > 3
    rows = [{**row, "texts": [{**row["texts"][0], "assistant": its_answer}]} for row in square_rows(4, 2)]
    assert quick_eval(model, rows, image_checks=False)["exact_match"] == 1.0
    assert quick_eval(model, rows, image_checks=False, max_new_tokens=3)["exact_match"] == 0.0


def test_shuffled_sources_never_keep_their_own_image():
    image = Image.new("RGB", (4, 4))
    items = [EvalItem([image] * (1 + i % 2), "q", "a", str(i)) for i in range(9)]
    source = shuffled_sources(items, seed=3)
    assert all(source[i] != i for i in range(9))
    assert all(len(items[source[i]].images) == len(items[i].images) for i in range(9))
    assert sorted(source) == list(range(9))  # a permutation: every image is shown exactly once


def test_nearest_answers_hand_made():
    train = [
        EvalItem([], "colour?", "red", "a"),
        EvalItem([], "colour?", "blue", "b"),
        EvalItem([], "size?", "big", "c"),
    ]
    test = [EvalItem([], "colour?", "", "x"), EvalItem([], "Size?", "", "y")]
    train_vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    test_vectors = np.array([[0.1, 0.9], [1.0, 0.0]])
    # test 0 is closest to "blue"; test 1 asks "size?", so only the "big" row is a candidate
    assert nearest_answers(test, train, test_vectors, train_vectors) == ["blue", "big"]


def test_items_keep_their_rows_group(square_rows):
    """A row's `group` (its object) goes with its EvalItem: choosing how to answer counts evidence by
    object (picovlm/eval/choose.py); a row without one has ""."""
    rows = square_rows(3, 0)
    texts = [{"user": "q", "assistant": "a"}]
    items = items_from_rows([{"images": rows[0]["images"], "texts": texts, "group": "g7"},
                             {"images": rows[1]["images"], "texts": texts}])  # fmt: skip
    assert [item.group for item in items] == ["g7", ""]


def test_pixel_features_are_unit_length_and_find_the_same_picture(square_rows):
    rows = square_rows(12, 0)
    items = [EvalItem(r["images"], "q", "a", str(i)) for i, r in enumerate(rows)]
    vectors = pixel_features(items)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert (vectors @ vectors.T).argmax(axis=1).tolist() == list(range(12))


def test_demo_set_gets_field_accuracy_automatically(tmp_path):
    """On `picovlm demo` data, evaluate finds the demo's field parser and reports facts right."""
    from picovlm.config import preset
    from picovlm.data.scenes import write_demo
    from picovlm.data.tokenizer import train_tokenizer
    from picovlm.model.vlm import VisionLanguageModel

    data = write_demo(tmp_path / "demo", n=40, image_size=32)
    tokenizer = train_tokenizer(
        ["The image shows two shapes on a white background. A large red circle is at the top left."] * 3,
        vocab_size=300,
    )
    model = VisionLanguageModel(preset("tiny"), tokenizer)  # untrained: its answers state no facts
    metrics = evaluate(model, data, max_items=4, max_new_tokens=4, thumbnails=False)["metrics"]
    assert metrics["field_accuracy"] == 0.0
    assert 0.0 < metrics["field_majority_accuracy"] < 1.0
    assert "field_accuracy/objects.colour" in metrics


def test_eval_reports_test_rows_seen_in_training_and_its_verdict_names_them(tmp_path, square_rows):
    """A test split that holds training pictures scores memory: eval counts them and its verdict says so;
    a clean split whose answers repeat the training answers (six colours) is not blamed."""
    from datasets import DatasetDict

    from picovlm.config import preset
    from picovlm.data.cauldron import rows_to_dataset
    from picovlm.data.tokenizer import train_tokenizer
    from picovlm.model.vlm import VisionLanguageModel

    def dataset(rows):
        return rows_to_dataset(rows, columns=("images", "texts"))

    train_rows = square_rows(24, 0)
    splits = {
        "train": dataset(train_rows),
        "test": dataset(train_rows[:6] + square_rows(2, 7)),  # 6 training pictures, 2 new
        "fresh": dataset(square_rows(8, 1)),
    }
    DatasetDict(splits).save_to_disk(str(tmp_path / "d"))
    tokenizer = train_tokenizer([t["assistant"] for r in train_rows for t in r["texts"]] * 3, vocab_size=300)
    model = VisionLanguageModel(preset("tiny"), tokenizer)
    options = dict(max_new_tokens=4, swap_items=4, thumbnails=False)

    leaky = evaluate(model, tmp_path / "d", split="test", **options)["metrics"]
    assert leaky["leakage_compared_rows"] == 8 and leaky["leakage_shared_image_rows"] == 6
    assert leaky["leakage_shared_image_share"] == 0.75 and leaky["leakage_shared_answer_rows"] == 8
    assert (
        "seen in training: 6 of 8 scored rows (75%) share a picture with the training split"
        in leaky["verdict"]
    )

    fresh = evaluate(model, tmp_path / "d", split="fresh", **options)["metrics"]
    assert fresh["leakage_shared_image_rows"] == 0 and fresh["leakage_shared_answer_share"] == 1.0
    assert "seen in training" not in fresh["verdict"]


def test_the_gap_by_parts_and_temperature_reproduces_evals_gap(results, tiny_models, squares_dir):
    """bench/recipes/image_gap_parts.py (finding 29) scores the same batches as `picovlm eval`
    (`loss_batches`): at temperature 1 its per-token losses average to eval's loss with the true and
    the shuffled pictures, and dividing the logits by 2 changes them."""
    import importlib.util
    from pathlib import Path

    from picovlm.data.cauldron import load_cauldron
    from picovlm.model.vlm import VisionLanguageModel

    script = Path(__file__).parents[2] / "bench" / "recipes" / "image_gap_parts.py"
    spec = importlib.util.spec_from_file_location("image_gap_parts", script)
    parts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parts)
    model = VisionLanguageModel.from_pretrained(tiny_models["grounded"])
    items = items_from_rows(load_cauldron(squares_dir, split="test"))
    m = results["grounded"]["metrics"]
    for source, expected in ((None, m["loss"]), (shuffled_sources(items, seed=0), m["loss_shuffled_images"])):
        rows = parts.token_losses(model, items, source, (1.0, 2.0))
        losses = np.concatenate([row_losses for _, row_losses in rows], axis=1)
        assert [len(ids) for ids, _ in rows] == [row_losses.shape[1] for _, row_losses in rows]
        assert losses[0].mean() == pytest.approx(expected, abs=1e-4)
        assert not np.allclose(losses[0], losses[1])
        # eval's own temperatures (the calibrated gap) are the script's: full logits over T, log-softmax
        assert answer_losses(model, items, (2.0,), image_source=source)[0] == pytest.approx(
            losses[1].mean(), abs=1e-4
        )
        # row by row (the gap's error over objects): each row's summed loss and its answer tokens
        nll, tokens = answer_nll_per_row(model, items, (1.0, 2.0), batch_size=5, image_source=source)
        assert list(tokens) == [len(ids) for ids, _ in rows]
        expected = np.array([row_losses.sum(axis=1) for _, row_losses in rows])
        np.testing.assert_allclose(nll, expected, rtol=1e-4, atol=1e-4)
    assert m["image_gap_shuffled"] > 0.3  # the grounded model's gap, which the parts split up


def test_the_calibrated_gap_is_the_gap_at_the_temperature_that_fits_best(results, tiny_models, squares_dir):
    """`calibrated_temperature` is the grid's temperature with the lowest loss on the scored rows' true
    images, and the calibrated gap is the shuffled-image gap there. The grounded model keeps a gap at
    its calibrated confidence; the model trained on shuffled pictures has none at any temperature."""
    from picovlm.data.cauldron import load_cauldron
    from picovlm.model.vlm import VisionLanguageModel

    items = items_from_rows(load_cauldron(squares_dir, split="test"))
    source = shuffled_sources(items, seed=0)
    for name in ("grounded", "shuffled"):
        m = results[name]["metrics"]
        model = VisionLanguageModel.from_pretrained(tiny_models[name])
        true = answer_losses(model, items, CALIBRATION_TEMPERATURES)
        shuffled = answer_losses(model, items, CALIBRATION_TEMPERATURES, image_source=source)
        best = int(np.argmin(true))
        assert m["calibrated_temperature"] == CALIBRATION_TEMPERATURES[best]
        assert m["image_gap_shuffled_calibrated"] == pytest.approx(shuffled[best] - true[best], abs=1e-6)
        assert true[CALIBRATION_TEMPERATURES.index(1.0)] == pytest.approx(m["loss"], abs=1e-6)
    assert results["grounded"]["metrics"]["image_gap_shuffled_calibrated"] > 0.3
    assert abs(results["shuffled"]["metrics"]["image_gap_shuffled_calibrated"]) < 0.05


def test_answer_losses_at_temperature_one_is_the_trainers_loss(tiny_models, squares_dir):
    """eval scores the answer from the decoder's hidden states; the trainer's forward pass gives the
    same mean loss on the same batches."""
    import torch

    from picovlm.data.cauldron import load_cauldron
    from picovlm.eval.evaluate import loss_batches
    from picovlm.model.vlm import VisionLanguageModel

    model = VisionLanguageModel.from_pretrained(tiny_models["grounded"]).eval()
    items = items_from_rows(load_cauldron(squares_dir, split="test"))
    total, n_tokens = 0.0, 0
    for batch in loss_batches(model, items, batch_size=5):
        with torch.no_grad():
            inputs = {key: batch[key] for key in ("input_ids", "pixel_values", "attention_mask", "labels")}
            out = model(**inputs, reduction="sum")
        total, n_tokens = total + float(out.loss), n_tokens + out.n_tokens
    assert answer_loss(model, items, batch_size=7) == pytest.approx(total / n_tokens, abs=1e-5)
