"""Retrieval-augmented answers: the trainer builds the index, the model carries and uses it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from picovlm.data.cauldron import load_cauldron
from picovlm.errors import PicovlmError
from picovlm.model.vlm import VLM
from picovlm.retrieval import (
    INDEX_FILE,
    INDEX_META_FILE,
    PictureFeatures,
    RetrievalIndex,
    build_training_index,
    choose_weights,
    colour_histograms,
    gradient_histograms,
    picture_vectors,
    retrieval_prompt,
    thumbnail_vectors,
    with_neighbours,
)
from picovlm.train.loop import train


def _pictures(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(n)]


def test_neighbours_are_the_most_similar_pictures_and_skip_the_rows_own_object():
    pictures = _pictures(6)
    index = RetrievalIndex.build(
        pictures, [f"answer {i}" for i in range(6)], ["a", "a", "b", "c", "d", "e"], k=2
    )
    vectors = thumbnail_vectors(pictures)
    cosine = vectors @ vectors.T
    found = index.neighbours(vectors)
    assert [row[0] for row in found] == list(range(6))  # a picture's nearest is itself
    assert found[2][1] == int(np.argsort(-cosine[2])[1])
    excluded = index.neighbours(vectors, exclude_groups=["a", "a", "b", "c", "d", "e"])
    assert all(0 not in row and 1 not in row for row in excluded[:2])  # group "a" never answers itself
    assert all(i not in row for i, row in enumerate(excluded)) and all(len(row) == 2 for row in excluded)
    assert index.prompts(["Describe."], [pictures[3]]) == [
        retrieval_prompt("Describe.", ["answer 3", f"answer {found[3][1]}"])
    ]
    assert retrieval_prompt("Q?", ["x.", "y."]) == "Q?\nSimilar: x.\nSimilar: y."


LIGHT, DARK = (240, 200, 160), (120, 80, 50)  # two skin tones


def _figure(colour, shape: str = "disc", size: int = 64) -> Image.Image:
    """A figure on white: a disc, or a bar, in one colour (with a dark outline, as an emoji's)."""
    from PIL import ImageDraw

    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (12, 12, 52, 52) if shape == "disc" else (10, 24, 54, 40)
    (draw.ellipse if shape == "disc" else draw.rectangle)(box, fill=colour, outline=(40, 40, 40), width=2)
    return image


def test_colour_histograms_count_the_colours_a_picture_holds_not_where():
    histograms = colour_histograms(
        [_figure(LIGHT), _figure(LIGHT, "bar"), _figure(DARK), Image.new("RGB", (8, 8), "white")]
    )
    assert histograms.shape == (4, 512)
    assert np.allclose(np.linalg.norm(histograms[:3], axis=1), 1.0)
    similarity = histograms @ histograms.T
    assert similarity[0, 1] > 0.95  # one colour in two shapes: nearly the same colours
    assert similarity[0, 2] < 0.5  # one shape in two skin tones: other colours
    assert not histograms[3].any()  # a blank white picture holds no colour (background is not counted)


def test_the_colour_weight_finds_the_neighbour_of_the_same_colour_where_the_shape_alone_would_not():
    """A light figure of an unseen shape: by thumbnail its nearest training picture is the same disc in a
    dark tone; with the colours counted (retrieval_colour_weight) it is a light picture, as for emoji's
    skin tones (docs/recipes.md, finding 26)."""
    training = [_figure(DARK), _figure(LIGHT, "bar")]
    query = [_figure(LIGHT)]
    by_shape = RetrievalIndex.build(training, ["dark disc", "light bar"], ["a", "b"], k=1)
    by_colour = RetrievalIndex.build(training, ["dark disc", "light bar"], ["a", "b"], k=1, colour_weight=1.0)
    assert by_shape.neighbour_answers(query) == [["dark disc"]]
    assert by_colour.neighbour_answers(query) == [["light bar"]]
    # the dot product of two pictures' vectors is (thumbnail cosine + w x colour cosine) / (1 + w)
    both = picture_vectors(query + training, 1.0)
    thumbs, colours = thumbnail_vectors(query + training), colour_histograms(query + training)
    assert np.allclose(both @ both.T, (thumbs @ thumbs.T + colours @ colours.T) / 2, atol=1e-5)
    assert by_colour.vectors.shape[1] == 3 * 32 * 32 + 512


def _bar(colour, vertical: bool, offset: int = 0, size: int = 64) -> Image.Image:
    """A bar on white, standing or lying, moved by offset pixels along its length."""
    from PIL import ImageDraw

    image = Image.new("RGB", (size, size), "white")
    box = (28, 8 + offset, 36, 56 + offset) if vertical else (8 + offset, 28, 56 + offset, 36)
    ImageDraw.Draw(image).rectangle(box, fill=colour)
    return image


def test_gradient_histograms_say_which_way_the_strokes_run():
    standing, moved_other_colour, lying = _bar(DARK, True), _bar(LIGHT, True, offset=4), _bar(DARK, False)
    gradients = gradient_histograms([standing, moved_other_colour, lying, Image.new("RGB", (8, 8), "white")])
    assert gradients.shape == (4, 8 * 8 * 9)
    assert np.allclose(np.linalg.norm(gradients[:3], axis=1), 1.0)
    similarity = gradients @ gradients.T
    assert similarity[0, 1] > 0.75  # the same stroke, moved and recoloured
    assert similarity[0, 2] < 0.25  # a stroke the other way
    assert not gradients[3].any()  # a blank picture has no strokes
    pictures = [standing, moved_other_colour, lying]
    assert np.array_equal(
        gradient_histograms(pictures, chunk=2), gradients[:3]
    )  # a chunk at a time: the same
    # the index's vectors: (thumbnail cosine + c x colour cosine + g x stroke cosine) / (1 + c + g)
    vectors = picture_vectors(pictures, 1.0, 2.0)
    thumbs, colours = thumbnail_vectors(pictures), colour_histograms(pictures)
    expected = (thumbs @ thumbs.T + colours @ colours.T + 2 * gradients[:3] @ gradients[:3].T) / 4
    assert np.allclose(vectors @ vectors.T, expected, atol=1e-5)
    assert vectors.shape[1] == 3 * 32 * 32 + 512 + 576


@pytest.mark.parametrize("answers_follow", ["colour", "shape"])
def test_choose_weights_counts_colours_where_the_answers_follow_them(answers_follow):
    """Four objects: a disc and a bar, each in a light and a dark tone. By thumbnail, each one's nearest
    other object is the same shape in the other tone. When the answers name the tone, colours must count
    to find an object with the same answer; when they name the shape, counting colours can only pull in
    the wrong shape, and the choice is 0 (ties go to the lighter weights)."""
    objects = [(tone, shape) for tone in (LIGHT, DARK) for shape in ("disc", "bar")]
    images = [_figure(tone, shape) for tone, shape in objects]
    if answers_follow == "colour":
        answers = [f"a {'light' if tone == LIGHT else 'dark'} figure" for tone, _ in objects]
    else:
        answers = [f"a {shape} drawn here" for _, shape in objects]
    choice = choose_weights(PictureFeatures.of(images), answers, ["a", "b", "c", "d"])
    assert set(choice.scores) == {(c, g) for c in (0.0, 1.0, 2.0) for g in (0.0, 1.0)}
    best = max(choice.scores.values())
    assert choice.scores[(choice.colour_weight, choice.gradient_weight)] == best
    if answers_follow == "colour":
        assert choice.colour_weight > 0 and best > choice.scores[(0.0, 0.0)]
    else:
        assert choice.colour_weight == 0.0 and choice.scores[(0.0, 0.0)] == pytest.approx(1.0)
    assert "colour" in choice.describe() and "over 4 rows" in choice.describe()


def test_an_auto_index_takes_the_chosen_weights_and_keeps_them(tmp_path, demo_dir):
    train_ds = load_cauldron(demo_dir, split="train")
    said: list[str] = []
    index = build_training_index(train_ds, k=1, colour_weight="auto", gradient_weight=1.0, report=said.append)
    assert index.gradient_weight == 1.0 and index.colour_weight in (0.0, 1.0, 2.0)
    assert len(said) == 1 and "chosen on the training split" in said[0]
    assert index.vectors.shape[1] == picture_vectors(train_ds[0]["images"], index.colour_weight, 1.0).shape[1]
    index.save(tmp_path)
    loaded = RetrievalIndex.load(tmp_path)
    assert (loaded.colour_weight, loaded.gradient_weight) == (index.colour_weight, 1.0)
    query = [row["images"][0] for row in load_cauldron(demo_dir, split="test").select(range(3))]
    assert loaded.neighbour_rows(query) == index.neighbour_rows(query)


def test_an_index_keeps_its_colour_weight_and_older_indexes_compare_thumbnails(tmp_path):
    training, query = [_figure(DARK), _figure(LIGHT, "bar")], [_figure(LIGHT)]
    RetrievalIndex.build(training, ["dark disc", "light bar"], ["a", "b"], k=1, colour_weight=1.0).save(
        tmp_path
    )
    loaded = RetrievalIndex.load(tmp_path)
    assert loaded.colour_weight == 1.0 and loaded.neighbour_answers(query) == [["light bar"]]
    # an index saved before colours counted has no colour_weight: its thumbnails alone, as it was built
    old = tmp_path / "old"
    old.mkdir()
    RetrievalIndex.build(training, ["dark disc", "light bar"], ["a", "b"], k=1).save(old)
    meta = json.loads((old / INDEX_META_FILE).read_text())
    del meta["colour_weight"]
    (old / INDEX_META_FILE).write_text(json.dumps(meta))
    assert RetrievalIndex.load(old).colour_weight == 0.0
    assert RetrievalIndex.load(old).neighbour_answers(query) == [["dark disc"]]
    # vectors of the wrong width for the weight it says: a clear error, not a shape error deep inside
    (old / INDEX_FILE).write_bytes((tmp_path / INDEX_FILE).read_bytes())
    with pytest.raises(PicovlmError, match="3584 values and this picovlm compares 3072"):
        RetrievalIndex.load(old)


def test_training_rows_get_neighbours_from_other_groups(demo_dir):
    train_ds = load_cauldron(demo_dir, split="train")
    index = build_training_index(train_ds, k=2)
    assert len(index) == len(train_ds)
    rewritten = with_neighbours(train_ds, index, exclude_own_group=True)
    answer_group = dict(zip(index.answers, index.groups))
    for row, group in zip(rewritten["texts"], train_ds["group"]):
        lines = row[0]["user"].split("\n")
        assert lines[0] == "Describe the image." and len(lines) == 3
        assert all(answer_group[line.removeprefix("Similar: ")] != group for line in lines[1:])
    assert [t[0]["assistant"] for t in rewritten["texts"]] == [t[0]["assistant"] for t in train_ds["texts"]]


def test_a_retrieving_model_saves_its_index_and_answers_with_it(demo_dir, tmp_path, tiny_configs):
    model_cfg, train_cfg = tiny_configs(demo_dir, tmp_path / "run", gen_eval_interval=4)
    model_cfg.retrieval_k = 2
    model_cfg.lm_max_length = 160
    model_cfg.retrieval_colour_weight = model_cfg.retrieval_gradient_weight = "auto"  # as the presets
    result = train(model_cfg, train_cfg)
    model_dir = result.run_dir / "model"
    meta = json.loads((model_dir / INDEX_META_FILE).read_text())
    assert meta["k"] == 2
    model = VLM.from_pretrained(model_dir)
    # "auto" became the weights chosen on the training split: in the index, the saved config and the notes
    weights = (model.cfg.retrieval_colour_weight, model.cfg.retrieval_gradient_weight)
    assert weights == (meta["colour_weight"], meta["gradient_weight"])
    assert weights[0] in (0.0, 1.0, 2.0) and weights[1] in (0.0, 1.0)
    assert any(note.startswith("retrieval weights chosen") for note in result.notes)
    assert model.retrieval is not None and len(model.retrieval) == len(load_cauldron(demo_dir, split="train"))
    test = load_cauldron(demo_dir, split="test")
    image = test[0]["images"][0]
    (question,) = model.retrieval_questions(["Describe the image."], [[image]])
    assert question == model.retrieval.prompts(["Describe the image."], [image])[0]
    assert question.count("\nSimilar: ") == 2
    # the prompt the model answers from holds the neighbours: longer than without them
    with_index = model.prepare_prompts([image], ["Describe the image."])["input_ids"].shape[1]
    model.cfg.retrieval_k = 0
    assert model.prepare_prompts([image], ["Describe the image."])["input_ids"].shape[1] < with_index
    model.cfg.retrieval_k = 2
    assert isinstance(model.answer(image), str)
    # copy_bias may vote over more neighbours than the prompt holds: the prompt stays the same
    voting = model.prepare_prompts([image], ["Describe the image."], copy_neighbours=5)
    assert voting["input_ids"].shape[1] == with_index
    sources = voting["copy_sources"][0]
    assert len(sources) == 5
    nearest = model.retrieval.neighbour_answers([image], k=5)[0]
    assert [model.decode_answer(source) for source in sources] == nearest
    assert question == retrieval_prompt("Describe the image.", nearest[:2])  # the prompt: the two nearest
    (model_dir / INDEX_META_FILE).unlink()
    with pytest.raises(PicovlmError, match="retrieval_index.json"):
        VLM.from_pretrained(model_dir)


def test_the_fact_probes_are_saved_with_the_index_and_weigh_the_neighbours(demo_dir, tmp_path, tiny_configs):
    """A retrieving run with facts fits one probe per field over its index's picture vectors and saves
    them, with each training row's facts, beside the index (retrieval_facts.npz); copy_fact_weight then
    weighs each neighbour's vote by how likely the probes find its facts in the picture. Heads saved
    before finding 28 read the vision tower instead, and weigh the vote as the heads in torch say."""
    import torch

    from picovlm.errors import ConfigError
    from picovlm.generation import neighbour_weights
    from picovlm.retrieval import FACTS_FILE, READS_PICTURES, READS_VISION, FactReader
    from picovlm.train.checkpoint import load_checkpoint
    from picovlm.train.facts import FactHeads, FactVocabulary, fit_fact_probes

    model_cfg, train_cfg = tiny_configs(demo_dir, tmp_path / "run")
    model_cfg.retrieval_k = 2
    model_cfg.lm_max_length = 160
    result = train(model_cfg, train_cfg)
    assert (result.run_dir / "model" / FACTS_FILE).is_file()
    # the run notes which facts its validation pictures show (`picovlm data facts` on its own index)
    (shown,) = [note for note in result.notes if note.startswith("facts the validation pictures show")]
    assert " shown" in shown
    model = VLM.from_pretrained(result.run_dir / "model")
    facts, index = model.retrieval.facts, model.retrieval
    assert facts.reads == READS_PICTURES and index.facts_read_pictures
    train_ds = load_cauldron(demo_dir, split="train")
    vocabulary = FactVocabulary.from_rows(train_ds["fields"])
    assert len(vocabulary) > 0
    assert facts.classes.tolist() == [[max(c, -1) for c in vocabulary.encode(f)] for f in train_ds["fields"]]
    counts = [len(values) for values in vocabulary.values.values()]
    probes = fit_fact_probes(index.vectors.astype(np.float32), facts.classes, counts)
    for (weight, bias), saved_weight, saved_bias in zip(probes, facts.weights, facts.biases, strict=True):
        assert np.allclose(weight, saved_weight, atol=1e-4) and np.allclose(bias, saved_bias, atol=1e-4)
    # the probes read the training pictures' facts (the demo's colours and shapes)
    training_vectors = index.vectors.astype(np.float32)
    for field, (weight, bias) in enumerate(zip(facts.weights, facts.biases)):
        known = facts.classes[:, field] >= 0
        read = (training_vectors[known] @ weight.T + bias).argmax(axis=1)
        assert (read == facts.classes[known, field]).mean() > 0.9

    images = [row["images"][0] for row in load_cauldron(demo_dir, split="test").select(range(3))]
    rows = model.neighbour_rows([[im] for im in images], 4)

    def support_from(log_softmax):  # field -> (pictures, classes) log-probabilities
        return [
            [
                sum(float(log_softmax(f)[i, c]) for f, c in enumerate(facts.classes[j]) if c >= 0)
                for j in found
            ]
            for i, found in enumerate(rows)
        ]

    batch = model.prepare_prompts(
        images, ["Describe the image."] * 3, copy_neighbours=4, copy_fact_weight=2.0
    )
    vectors = index.vectors_of(images)  # the probes over the pictures' vectors, in numpy

    def probe_log_probs(field):
        logits = vectors @ facts.weights[field].T + facts.biases[field]
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    for i, support in enumerate(support_from(probe_log_probs)):
        assert batch["copy_weights"][i] == pytest.approx(neighbour_weights(4, support, 2.0), rel=1e-4)
    assert batch["copy_weights"] != [neighbour_weights(4)] * 3  # the probes moved some votes
    assert "vision_features" not in batch  # nothing of the vision tower is needed to weigh them
    assert isinstance(model.answer(images[0], copy_bias=8.0, copy_fact_weight=2.0), str)

    # the probes also name each picture's facts, their likeliest values, which probed_facts states
    assert facts.values == vocabulary.values
    read = index.read_facts(images)
    for field, name in enumerate(vocabulary.values):
        assert [r[name] for r in read] == [
            vocabulary.values[name][c] for c in probe_log_probs(field).argmax(1)
        ]
    fields = list(vocabulary.values)
    plain = model.answer(images, copy_bias=8.0)
    assert model.answer(images, copy_bias=8.0, probed_facts=fields) == [
        index.fact_matcher.restate(answer, facts_read) for answer, facts_read in zip(plain, read)
    ]
    references = [
        row["texts"][0]["assistant"] for row in load_cauldron(demo_dir, split="test").select(range(3))
    ]
    restated = [index.fact_matcher.restate(ref, r) for ref, r in zip(references, read)]
    assert restated != references  # the tiny model's probes get some fact wrong, and it is replaced
    # a fact stated once (the background) now reads as the probes read it; the three objects' colours
    # and shapes are found in the same words, so which object's the words are is unknown: left alone
    assert [index.fact_matcher(text)["background"] for text in restated] == [r["background"] for r in read]
    with pytest.raises(ConfigError, match="probed_facts names nope"):
        model.answer(images[0], probed_facts="nope")
    # a run saved before finding 37 kept no values: it still answers, and says what probed_facts needs
    old = tmp_path / "before-37"
    model.save_pretrained(old)
    with np.load(old / FACTS_FILE) as data:
        np.savez(old / FACTS_FILE, **{k: data[k] for k in data.files if k != "values"})
    before = VLM.from_pretrained(old)
    assert before.retrieval.facts.values is None
    assert before.answer(images, copy_bias=8.0) == plain
    with pytest.raises(PicovlmError, match="trained before finding 37"):
        before.answer(images[0], probed_facts=fields)

    # heads saved before finding 28 read the vision tower's pooled features: the training heads here
    heads = FactHeads(vocabulary, model.cfg.vit_hidden_dim)
    heads.load_state_dict(load_checkpoint(result.run_dir)["extra"])
    model.retrieval.facts = FactReader(facts.classes).with_heads(heads.numpy_heads(), READS_VISION)
    batch = model.prepare_prompts(
        images, ["Describe the image."] * 3, copy_neighbours=4, copy_fact_weight=2.0
    )
    with torch.no_grad():  # the heads in torch, over the pooled features of each picture
        pooled = model.vision_encoder(batch["pixel_values"]).mean(dim=1)
        log_probs = [torch.log_softmax(head(pooled), dim=-1) for head in heads.heads]
    for i, support in enumerate(support_from(lambda f: log_probs[f])):
        assert batch["copy_weights"][i] == pytest.approx(neighbour_weights(4, support, 2.0), rel=1e-4)
    # the vision tower ran once for both: generate embeds the pictures from the same features
    assert torch.equal(batch["vision_features"], model.vision_encoder(batch["pixel_values"]))
    options = {"copy_bias": 8.0, "copy_fact_weight": 2.0, "max_new_tokens": 12}
    without = {k: v for k, v in batch.items() if k != "vision_features"}
    assert torch.equal(model.generate(**batch, **options), model.generate(**without, **options))
    saved = tmp_path / "legacy"
    model.save_pretrained(saved)  # the reader says what it reads; a file without it reads the tower
    assert VLM.from_pretrained(saved).retrieval.facts.reads == READS_VISION
    with np.load(saved / FACTS_FILE) as data:
        np.savez(saved / FACTS_FILE, **{k: data[k] for k in data.files if k != "reads"})
    assert VLM.from_pretrained(saved).retrieval.facts.reads == READS_VISION
    with pytest.raises(ConfigError, match="probed_facts states"):  # heads over the tower name no facts here
        model.answer(images[0], probed_facts=fields)

    model.retrieval.facts = None  # e.g. a run saved before the heads were kept: a clear refusal
    with pytest.raises(ConfigError, match="copy_fact_weight"):
        model.answer(images[0], copy_bias=8.0, copy_fact_weight=2.0)
    assert isinstance(model.answer(images[0], copy_bias=8.0, copy_fact_weight=0.0), str)  # by rank alone


def test_training_chooses_how_the_model_answers_on_its_validation_rows(demo_dir, tmp_path, tiny_configs):
    """After the last step a retrieving run answers its validation rows greedily, with the neighbours'
    light vote and vote, and with the vote weighed by its fact heads, and keeps the best-scoring way as the folder's
    generation.json: what answer(), eval and export start from. `picovlm choose-generation` on the
    saved folder finds the same figures; rows whose references are one candidate's answers choose it."""
    from picovlm.cli import main
    from picovlm.eval.choose import CANDIDATES, choose_generation, choose_generation_for
    from picovlm.eval.evaluate import EvalItem, items_from_rows, pixel_baseline, training_answers
    from picovlm.eval.facts import fact_parser_for
    from picovlm.generation import GENERATION_FILE, GenerationConfig, load_generation
    from picovlm.train.evaluation import generation_metrics
    from picovlm.train.sweep import _run_figures

    model_cfg, train_cfg = tiny_configs(demo_dir, tmp_path / "run", max_steps=12)
    model_cfg.retrieval_k = 2
    model_cfg.lm_max_length = 160
    result = train(model_cfg, train_cfg)
    choice = result.generation
    candidates = choice["candidates"]
    assert [c["name"] for c in candidates] == [name for name, _ in CANDIDATES]
    assert choice["rows"] == len(load_cauldron(demo_dir, split="validation"))
    for c in candidates:
        assert c["score"] == pytest.approx(c["token_f1"] + c["field_accuracy"])
    scores = [c["score"] for c in candidates]
    # the earliest within one standard error of the best (0 for the best itself)
    best = max(scores)
    assert min(c["standard_error"] for c in candidates if c["score"] == best) == 0.0
    within = [c["name"] for c in candidates if c["score"] >= best - c["standard_error"]]
    assert choice["chosen"] == within[0]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["generation"]["chosen"] == choice["chosen"]

    model_dir = result.run_dir / "model"
    chosen = GenerationConfig.from_dict(choice["generation"])
    assert load_generation(model_dir) == chosen and (result.run_dir / "best" / GENERATION_FILE).is_file()
    model = VLM.from_pretrained(model_dir)
    assert model.generation == chosen
    # the summary's answer check is about the answers the saved model gives: checked again with the
    # chosen way when it votes (the last in-training check answered greedily)
    train_rows, val_rows = (load_cauldron(demo_dir, split=split) for split in ("train", "validation"))
    parser = fact_parser_for(train_rows, val_rows)
    rows = [val_rows[i] for i in range(len(val_rows))]
    check = generation_metrics(
        model, rows, parser, pixel_baseline(rows, train_rows, parser), training_answers(train_rows)
    )
    named = f" (answering with the {choice['chosen']}, generation.json)" if chosen.copy_bias else ""
    assert result.gen_verdict == summary["gen_verdict"] == check["gen_verdict"] + named
    assert summary["gen_verdict_status"] == check["gen_verdict_status"]
    assert _run_figures(result.run_dir)["answers check"] == check["gen_verdict_status"]  # sweep's table
    # the saved folder (same weights, same heads) chooses the same on the same rows, figure for figure
    again = choose_generation_for(model_dir, demo_dir, write=False)
    assert again.name == choice["chosen"]
    assert [c["score"] for c in again.candidates] == pytest.approx(scores)

    # rows whose references are the vote's own answers choose the simplest way that gives them
    items = items_from_rows(load_cauldron(demo_dir, split="test"))
    vote = dict(CANDIDATES)["vote"]
    greedy_answers = model.answer([i.images for i in items], generation=GenerationConfig())
    vote_answers = model.answer([i.images for i in items], generation=GenerationConfig(**vote))
    assert vote_answers != greedy_answers
    rigged = [EvalItem(i.images, i.question, a, i.image_key) for i, a in zip(items, vote_answers)]
    picked = choose_generation(model, rigged)
    # the simplest way that gives them: the light vote where it answers as the vote does (it does here)
    perfect = [c["name"] for c in picked.candidates if c["token_f1"] == pytest.approx(1.0)]
    assert "vote" in perfect and picked.name == perfect[0]
    assert picked.generation == GenerationConfig(**dict(CANDIDATES)[picked.name])
    assert [c["field_accuracy"] for c in picked.candidates] == [None] * 4  # no parser given: F1 alone
    assert max(c["token_f1"] for c in picked.candidates) == pytest.approx(1.0)

    # the command: --dry-run leaves the file, a run writes the winner
    (model_dir / GENERATION_FILE).write_text(json.dumps(GenerationConfig().to_dict()))
    args = ["choose-generation", "--model", str(model_dir), "--data", str(demo_dir), "--items", "6"]
    assert main([*args, "--dry-run"]) == 0
    assert load_generation(model_dir) == GenerationConfig()
    assert main(args) == 0
    expected = choose_generation_for(model_dir, demo_dir, max_items=6, write=False).generation
    assert load_generation(model_dir) == expected


def test_answer_ways_scores_every_way_as_the_choice_does(demo_dir, tmp_path, tiny_configs):
    """bench/recipes/answer_ways.py (findings 40-41) answers every validation row each way and scores
    the rows as the training-time choice does: its score of each way is the choice's, a run compared
    with itself differs by 0 ± 0 in every way, the answers are kept for the next call, and it refuses
    the test split."""
    import subprocess
    import sys
    from pathlib import Path

    model_cfg, train_cfg = tiny_configs(demo_dir, tmp_path / "run", max_steps=12)
    model_cfg.retrieval_k = 2
    model_cfg.lm_max_length = 160
    run = train(model_cfg, train_cfg).run_dir
    script = Path(__file__).parents[2] / "bench" / "recipes" / "answer_ways.py"

    def answer_ways(*args):
        return subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300
        )

    done = answer_ways("compare", str(run), str(run), str(demo_dir))
    assert done.returncode == 0, done.stderr
    for way in json.loads((run / "summary.json").read_text())["generation"]["candidates"]:
        assert f"{way['score']:.3f} - {way['score']:.3f} = +0.000 ± 0.000" in done.stdout, (way, done.stdout)
    kept = json.loads((run / "answer-ways-validation.json").read_text())
    assert len(kept["neighbours"]) == len(load_cauldron(demo_dir, split="validation"))
    consensus = answer_ways("consensus", str(run), str(demo_dir))  # from the kept answers
    assert consensus.returncode == 0 and "nearest answer" in consensus.stdout, consensus.stderr
    refused = answer_ways("compare", str(run), str(run), str(demo_dir), "--split", "test")
    assert refused.returncode == 2 and "--split test" in refused.stderr


def test_the_exported_runtime_retrieves_as_the_torch_model_does(demo_dir, tmp_path, tiny_configs):
    from picovlm.export.onnx import export_model
    from picovlm.generation import GenerationConfig
    from picovlm.runtime import Runtime

    model_cfg, train_cfg = tiny_configs(demo_dir, tmp_path / "run", max_steps=12)
    model_cfg.retrieval_k = 1
    model_cfg.retrieval_colour_weight = 2.0  # weights of its own: the runtime and eval follow the model
    model_cfg.retrieval_gradient_weight = 1.0
    model_cfg.lm_max_length = 128
    model_dir = train(model_cfg, train_cfg).run_dir / "model"
    export_model(model_dir, tmp_path / "exported")
    runtime = Runtime.load(tmp_path / "exported")
    model = VLM.from_pretrained(model_dir)
    assert runtime.retrieval is not None and runtime.retrieval.answers == model.retrieval.answers
    assert runtime.retrieval.colour_weight == model.retrieval.colour_weight == 2.0
    assert runtime.retrieval.gradient_weight == model.retrieval.gradient_weight == 1.0
    # eval's nearest-index lookup weighs the features as the model's index does, torch or exported;
    # for a model that retrieves nothing (or by thumbnails alone), as training would choose
    from picovlm.eval.evaluate import lookup_index, lookup_weights
    from picovlm.eval.exported import ExportedModel

    table = lookup_index(load_cauldron(demo_dir, split="train"))
    assert lookup_weights(model, table) == lookup_weights(ExportedModel(runtime), table) == (2.0, 1.0)
    chosen = choose_weights(table.features, [item.reference for item in table.items], table.groups)
    thumbnails_only = RetrievalIndex.build(_pictures(2), ["a", "b"], ["a", "b"], k=1)
    for other in (SimpleNamespace(retrieval=thumbnails_only), SimpleNamespace(retrieval=None)):
        assert lookup_weights(other, table) == (chosen.colour_weight, chosen.gradient_weight)
    assert runtime.generation == model.generation  # the manifest keeps the model's own generation.json
    flagged = export_model(model_dir, tmp_path / "flagged", max_new_tokens=20)["generation"]
    assert flagged == model.generation.replace(max_new_tokens=20).to_dict()  # flags go over it
    images = [row["images"][0] for row in load_cauldron(demo_dir, split="test").select(range(4))]
    assert [runtime.answer(image, max_new_tokens=24) for image in images] == model.answer(
        images, max_new_tokens=24
    )  # each with its own config: the same one
    greedy = GenerationConfig(max_new_tokens=24)  # from here each answer says how it is generated
    torch_answers = model.answer(images, generation=greedy)
    assert [runtime.answer(image, generation=greedy) for image in images] == torch_answers
    # with a lean towards copying the neighbours (copy_bias) the runtime still answers as torch does
    copying = model.answer(images, generation=greedy, copy_bias=50.0)
    assert [runtime.answer(image, generation=greedy, copy_bias=50.0) for image in images] == copying
    assert copying != torch_answers
    # int8 is held against fp32 answering as the export will be served: here, with that vote
    voting = export_model(
        model_dir, tmp_path / "voting-int8", quantize="int8", eval_items=4, eval_data=demo_dir, eval_split="test",
        copy_bias=50.0, copy_fact_weight=0.0,
    )["quantization"]["eval"]  # fmt: skip
    assert voting["answering"] == "greedy, copy_bias 50"
    from picovlm.eval.evaluate import generate_answers, items_from_rows, score_answers
    from picovlm.eval.exported import ExportedModel

    rows = items_from_rows(load_cauldron(demo_dir, split="test").select(range(4)))
    served = greedy.replace(max_new_tokens=voting["max_new_tokens"], copy_bias=50.0)  # no fact weight
    voted = generate_answers(ExportedModel(runtime), rows, generation=served)
    assert score_answers(rows, voted, None, None)[0]["token_f1"] == pytest.approx(voting["fp32"]["token_f1"])
    # and with the votes weighed by the fact heads, which the export carries beside the index
    weighed = dict(generation=greedy, copy_bias=50.0, copy_fact_weight=3.0)
    assert (
        runtime.retrieval.facts is not None
        and runtime.manifest["files"]["retrieval_facts"] == "retrieval_facts.npz"
    )
    assert [runtime.answer(image, **weighed) for image in images] == model.answer(images, **weighed)
    assert runtime.retrieval.facts_read_pictures
    # and with each fact the probes read restated in the answer (probed_facts), which a stream then
    # sends whole, once restated
    from picovlm.runtime.runtime import DEFAULT_QUESTION

    fields = list(runtime.retrieval.facts.values)
    probing = dict(generation=greedy, probed_facts=fields)
    probed = model.answer(images, **probing)
    assert [runtime.answer(image, **probing) for image in images] == probed
    assert [list(runtime.stream(image, DEFAULT_QUESTION, **probing)) for image in images] == [
        [a] for a in probed
    ]
    # (12 steps state no facts yet: the export restates answers that do as the torch model does)
    references = [
        row["texts"][0]["assistant"] for row in load_cauldron(demo_dir, split="test").select(range(4))
    ]
    restated = model.retrieval.restate_facts(references, images, fields)
    assert runtime.retrieval.restate_facts(references, images, fields) == restated != references
    # heads saved before finding 28 read the vision tower: the runtime reads its graph's pooled output
    from picovlm.retrieval import READS_VISION

    rng = np.random.default_rng(0)
    tower_heads = [
        (rng.normal(0, 1, (len(w), model.cfg.vit_hidden_dim)).astype(np.float32), b)
        for w, b in zip(model.retrieval.facts.weights, model.retrieval.facts.biases)
    ]
    legacy = model.retrieval.facts.with_heads(tower_heads, READS_VISION)
    model.retrieval.facts = runtime.retrieval.facts = legacy
    assert [runtime.answer(image, **weighed) for image in images] == model.answer(images, **weighed)
    # `picovlm eval` of the exported folder retrieves as the server does: the torch model's figures
    from picovlm.eval.evaluate import evaluate

    options = dict(split="test", swap_items=4, generation=greedy, thumbnails=False)
    torch_result = evaluate(model_dir, demo_dir, **options)
    onnx_result = evaluate(tmp_path / "exported", demo_dir, **options)
    assert onnx_result["backend"] == "onnx fp32" and torch_result["backend"] == "torch"
    assert [i["answer"] for i in onnx_result["items"]] == [i["answer"] for i in torch_result["items"]]
    for key in ("loss", "loss_shuffled_images", "loss_blank_images", "train_loss"):
        assert onnx_result["metrics"][key] == pytest.approx(torch_result["metrics"][key], abs=1e-3), key
    # the neighbours made the difference: the torch model without them scores another loss
    from picovlm.eval.evaluate import answer_loss, items_from_rows

    items = items_from_rows(load_cauldron(demo_dir, split="test"))
    model.cfg.retrieval_k = 0
    without = answer_loss(model, items) - onnx_result["metrics"]["loss"]
    with_them = torch_result["metrics"]["loss"] - onnx_result["metrics"]["loss"]
    assert abs(with_them) * 10 < abs(without)


@pytest.mark.parametrize(
    "name, lm_blocks, size, patch",
    [("picovlm-small-retrieval", 2, 56, 8), ("super-small-11-retrieval", 1, 112, 8)],
)
def test_the_retrieval_presets_train_from_the_command_line(demo_dir, tmp_path, name, lm_blocks, size, patch):
    """`picovlm train --preset picovlm-small-retrieval` (the default, measured on real data in
    docs/recipes.md) and the blog's iteration 11 with it: a run of two steps whose model carries its
    index and keeps its preset's shape, but for reading the 32 px pictures at their own size (224 px
    with 32- or 16-px patches halved while the pictures fit: the same 7x7 or 14x14 patch grid)."""
    from picovlm.cli import main

    args = ["train", "--preset", name, f"train.data_dir={demo_dir}",
            f"train.out_dir={tmp_path / 'run'}", "train.max_steps=2", "train.batch_size=4",
            "train.gen_eval_interval=0", "train.tokenizer_vocab_size=400", "train.threads=1"]  # fmt: skip
    assert main(args) == 0
    model = VLM.from_pretrained(tmp_path / "run" / "model")
    assert (model.cfg.retrieval_k, model.cfg.lm_n_blocks) == (2, lm_blocks)
    assert (model.cfg.vit_img_size, model.cfg.vit_patch_size) == (size, patch)
    assert model.retrieval is not None and model.retrieval.k == 2
    # the preset's "auto" weights are the numbers chosen on the training split, saved with the model
    assert model.cfg.retrieval_colour_weight == model.retrieval.colour_weight in (0.0, 1.0, 2.0)
    assert model.cfg.retrieval_gradient_weight == model.retrieval.gradient_weight in (0.0, 1.0)
