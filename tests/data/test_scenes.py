import json
import time

from picovlm.data.scenes import (
    BACKGROUNDS,
    DEMO_QUESTION,
    extract_fields,
    make_demo_dataset,
    make_demo_row,
    make_scene,
    scene_answer,
)


def test_demo_rows_are_deterministic_by_seed():
    assert make_demo_row(0, 5, 64) == make_demo_row(0, 5, 64)
    assert make_demo_row(0, 5, 64)["images"][0]["bytes"] != make_demo_row(1, 5, 64)["images"][0]["bytes"]


def test_demo_answers_are_factual_and_parse_back(demo_dataset):
    for row in demo_dataset:
        turn = row["texts"][0]
        assert turn["user"] == DEMO_QUESTION
        assert 10 <= len(turn["assistant"].split()) <= 50
        facts = json.loads(row["fields"])
        assert extract_fields(turn["assistant"]) == facts
        assert facts["count"] == len(facts["objects"]) and 1 <= facts["count"] <= 3
        assert row["images"][0].size == (64, 64) and row["images"][0].mode == "RGB"


def test_drawn_pixels_match_the_facts():
    scene = make_scene(seed=3, index=7)
    row = make_demo_row(3, 7, 96)
    from io import BytesIO

    from PIL import Image

    image = Image.open(BytesIO(row["images"][0]["bytes"]))
    # a corner pixel of an empty area is the background colour, and the shapes add other colours
    colours = {colour for _, colour in image.getcolors(maxcolors=10_000)}
    assert BACKGROUNDS[scene["background"]] in colours and len(colours) >= 2
    assert scene_answer(scene) == row["texts"][0]["assistant"]


def test_extract_fields_keeps_partial_facts():
    text = "We can see two shapes on a gray background. A small red star is at the center. Garbage here."
    fields = extract_fields(text)
    assert fields == {
        "background": "gray",
        "count": 2,
        "objects": [{"shape": "star", "colour": "red", "size": "small", "position": "center"}],
    }
    assert extract_fields("nothing useful") == {"background": None, "count": None, "objects": []}


def test_demo_3000_scenes_generate_in_seconds():
    start = time.perf_counter()
    dataset = make_demo_dataset(n=3000, seed=0)
    assert len(dataset) == 3000
    assert time.perf_counter() - start < 20
    # combinatorial: most fact combinations are unique, so held-out scenes are new ones
    assert len(set(dataset["fields"])) > 2500
