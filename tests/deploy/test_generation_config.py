"""One GenerationConfig from evaluation to serving: a served model answers exactly as it was evaluated."""

from __future__ import annotations

import json
import shutil

import pytest
from deploy_helpers import png_bytes

from picovlm.generation import GenerationConfig

# Not the defaults: a shorter answer and a repetition penalty, so agreement is not agreement by default.
CONFIG = GenerationConfig(max_new_tokens=40, repetition_penalty=1.3)
EVAL = dict(split="test", train_split=None, max_items=6, swap_items=2, thumbnails=False)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from picovlm.data.scenes import write_demo

    return write_demo(tmp_path_factory.mktemp("gen-data") / "data", n=60, seed=3, image_size=32)


def served_answers(runtime, items, generation=None, **fields) -> list[str]:
    from starlette.testclient import TestClient

    from picovlm.serve.app import build_app

    answers = []
    with TestClient(build_app(runtime, generation=generation)) as client:
        for item in items:
            files = {"image": ("x.png", png_bytes(item.images[0]), "image/png")}
            data = {"question": item.question, **fields}
            r = client.post("/v1/answer", files=files, data=data)
            assert r.status_code == 200, r.text
            answers.append(r.json()["answer"])
    return answers


def test_eval_runtime_and_server_give_the_same_answers_for_one_config(
    trained_model_dir, exported_dir, demo_data
):
    from picovlm.data.cauldron import load_cauldron
    from picovlm.eval.evaluate import evaluate, items_from_rows
    from picovlm.runtime import Runtime

    torch_eval = evaluate(trained_model_dir, demo_data, generation=CONFIG, **EVAL)
    exported_eval = evaluate(exported_dir, demo_data, generation=CONFIG, **EVAL)
    answers = [row["answer"] for row in torch_eval["items"]]
    assert [row["answer"] for row in exported_eval["items"]] == answers
    assert torch_eval["generation"] == exported_eval["generation"] == CONFIG.to_dict()

    items = items_from_rows(load_cauldron(demo_data, split="test", max_rows=6))
    runtime = Runtime.load(exported_dir)
    assert [runtime.answer(item.images, item.question, CONFIG) for item in items] == answers
    assert served_answers(runtime, items, generation=CONFIG) == answers  # the server's config
    assert (
        served_answers(runtime, items, max_new_tokens="40", repetition_penalty="1.3") == answers
    )  # a request's
    plain = [runtime.answer(item.images, item.question, max_new_tokens=40) for item in items]
    assert plain != answers  # the penalty did change some answer: the agreement above is not trivial


def test_an_exported_folder_carries_its_config_to_eval_and_serve(exported_dir, demo_data, tmp_path):
    from picovlm.data.cauldron import load_cauldron
    from picovlm.eval.evaluate import evaluate, items_from_rows
    from picovlm.runtime import Runtime

    manifest = json.loads((exported_dir / "manifest.json").read_text())
    assert manifest["generation"] == GenerationConfig().to_dict()
    folder = shutil.copytree(
        exported_dir, tmp_path / "exported"
    )  # as `picovlm export --max-new-tokens 40 ...`
    manifest["generation"] = CONFIG.to_dict()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    runtime = Runtime.load(folder)
    assert runtime.generation == CONFIG
    evaluated = evaluate(folder, demo_data, **EVAL)  # no generation options: the folder's
    assert evaluated["generation"] == CONFIG.to_dict()
    items = items_from_rows(load_cauldron(demo_data, split="test", max_rows=6))
    assert served_answers(runtime, items) == [row["answer"] for row in evaluated["items"]]


def test_the_server_reports_its_config_and_refuses_bad_fields(exported_dir, trained_model_dir, tmp_path):
    from deploy_helpers import demo_image
    from starlette.testclient import TestClient

    from picovlm.errors import ConfigError
    from picovlm.runtime import Runtime
    from picovlm.serve.app import ServeLimits, build_app

    runtime = Runtime.load(exported_dir)
    with TestClient(build_app(runtime, generation=CONFIG)) as client:
        assert client.get("/health").json()["generation"] == CONFIG.to_dict()
        files = {"image": ("x.png", png_bytes(demo_image(0)), "image/png")}
        for field, value in [("repetition_penalty", "0"), ("top_p", "0")]:
            r = client.post("/v1/answer", files=files, data={field: value})
            assert r.status_code == 400 and field in r.json()["error"]["message"], r.text
    with pytest.raises(ConfigError, match="max-new-tokens-limit"):
        build_app(runtime, ServeLimits(max_new_tokens=20), CONFIG)
    # copy_bias leans towards a retrieving model's neighbours; this model has none: refused at start
    with pytest.raises(ConfigError, match="retrieval_k"):
        build_app(runtime, generation=CONFIG.replace(copy_bias=8.0))
    with pytest.raises(ConfigError, match="retrieval_k"):
        runtime.answer(demo_image(0), "Describe the image.", copy_bias=8.0)
    from picovlm.export.onnx import export_model

    with pytest.raises(ConfigError, match="retrieval_k"):
        export_model(trained_model_dir, tmp_path / "exported", generation=CONFIG.replace(copy_bias=8.0))
    assert not (tmp_path / "exported").exists()
