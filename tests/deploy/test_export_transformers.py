"""`picovlm export --format transformers`: transformers loads the folder offline and, greedy, answers what
picovlm answers, token for token, on held-out pictures of a trained model.

transformers is imported here only (a dev extra: these tests fail, never skip, without it).
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers  # noqa: F401  - missing it is a collection error naming the package
from deploy_helpers import demo_image

from picovlm.errors import PicovlmError

QUESTION = "Describe the image."
N_IMAGES = 32


@pytest.fixture(scope="module")
def transformers_dir(trained_model_dir, tmp_path_factory):
    """The trained tiny model exported through the CLI (which checks it against picovlm after writing)."""
    from picovlm.cli import main

    out = tmp_path_factory.mktemp("hf") / "tiny-transformers"
    assert (
        main(["export", "--model", str(trained_model_dir), "--out", str(out), "--format", "transformers"])
        == 0
    )
    return out


@pytest.fixture(scope="module")
def loaded(transformers_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(transformers_dir).eval()
    processor = AutoProcessor.from_pretrained(transformers_dir, backend="pil")
    return model, processor


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def hf_generate(model, processor, images, questions, **generation) -> list[list[int]]:
    from picovlm.export.transformers import transformers_inputs

    inputs = transformers_inputs(processor, images, questions)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, **generation)
    return out[:, inputs["input_ids"].shape[1] :].tolist()


def test_greedy_answers_equal_picovlms_token_for_token_on_32_held_out_pictures(trained_model_dir, loaded):
    from picovlm.model.vlm import VLM

    hf_model, processor = loaded
    ours = VLM.from_pretrained(trained_model_dir)
    eos = ours.cfg.eos_token_id
    images = [demo_image(i) for i in range(N_IMAGES)]  # seed 1: scenes the model never trained on
    expected = ours.generate(
        **ours.prepare_prompts(images, [QUESTION] * N_IMAGES), max_new_tokens=64
    ).tolist()
    got = hf_generate(
        hf_model, processor, images, [QUESTION] * N_IMAGES
    )  # 64 new tokens: the folder's default
    for index, (e, g) in enumerate(zip(expected, got)):
        assert until_eos(g, eos) == until_eos(e, eos), f"picture {index}"
    answers = [ours.decode_answer(row) for row in expected]
    assert sum(eos in row for row in expected) >= N_IMAGES // 2  # most answers end on their own
    assert len(set(answers)) >= 3 and all(
        a.startswith(("The image", "We can see", "This picture")) for a in answers
    )
    decoded = processor.batch_decode(
        [until_eos(g, eos)[:-1] if eos in g else g for g in got], skip_special_tokens=True
    )
    assert [d.strip() for d in decoded] == answers


def test_left_padded_prompts_of_different_lengths_answer_alike(trained_model_dir, loaded):
    from picovlm.model.vlm import VLM

    hf_model, processor = loaded
    ours = VLM.from_pretrained(trained_model_dir)
    images = [demo_image(40 + i) for i in range(3)]
    questions = [QUESTION, "What is in this picture? Describe the image.", "Describe"]
    batch = ours.prepare_prompts(images, questions)
    assert (batch["attention_mask"] == 0).any()  # the rows really are padded
    expected = ours.generate(**batch, max_new_tokens=24).tolist()
    got = hf_generate(hf_model, processor, images, questions, max_new_tokens=24)
    eos = ours.cfg.eos_token_id
    assert [until_eos(g, eos) for g in got] == [until_eos(e, eos) for e in expected]


def test_the_folder_is_idefics3_with_picovlms_prompt_ids_and_pixels(
    trained_model_dir, transformers_dir, loaded
):
    import numpy as np
    from PIL import Image

    from picovlm.model.vlm import VLM

    config = json.loads((transformers_dir / "config.json").read_text())
    assert config["model_type"] == "idefics3" and config["scale_factor"] == 2
    assert config["vision_config"]["image_size"] == 32 and config["text_config"]["model_type"] == "llama"
    hf_model, processor = loaded
    assert type(hf_model).__name__ == "Idefics3ForConditionalGeneration"
    assert type(processor).__name__ == "Idefics3Processor"
    ours = VLM.from_pretrained(trained_model_dir)
    see_through = demo_image(2).convert("RGBA").resize((50, 20))
    see_through.putalpha(Image.linear_gradient("L").resize((50, 20)))  # transparency goes over white in both
    images = [demo_image(i) for i in range(2)] + [see_through]
    from picovlm.export.transformers import transformers_inputs

    theirs = transformers_inputs(processor, images, [QUESTION] * 3)
    mine = ours.prepare_prompts(images, [QUESTION] * 3)
    assert theirs["input_ids"].tolist() == mine["input_ids"].tolist()
    np.testing.assert_array_equal(theirs["pixel_values"][:, 0].numpy(), mine["pixel_values"].numpy())
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image"}]}],
        add_generation_prompt=True,
    )
    assert text == f"<|im_start|>user\n<image>{QUESTION}<|im_end|>\n<|im_start|>assistant\n"  # images first


def test_a_model_trained_before_the_image_wrapper_is_refused_with_the_reason(trained_model_dir, tmp_path):
    from tokenizers import Tokenizer

    from picovlm.data.tokenizer import FAKE_IMAGE, GLOBAL_IMAGE, TextTokenizer
    from picovlm.export.transformers import export_transformers
    from picovlm.model.vlm import VLM

    model = VLM.from_pretrained(trained_model_dir)
    data = json.loads(model.tokenizer.tokenizer.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in (FAKE_IMAGE, GLOBAL_IMAGE)]
    for token in (FAKE_IMAGE, GLOBAL_IMAGE):
        del data["model"]["vocab"][token]
    model.attach_tokenizer(TextTokenizer(Tokenizer.from_str(json.dumps(data))))
    model.save_pretrained(tmp_path / "old")
    with pytest.raises(PicovlmError, match="trained before picovlm's prompts wrapped each image"):
        export_transformers(tmp_path / "old", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_retrieving_model_exports_with_its_index_and_answers_alike_from_the_built_prompt(
    trained_model_dir, tmp_path
):
    from picovlm.export.transformers import export_transformers
    from picovlm.model.vlm import VLM
    from picovlm.retrieval import RetrievalIndex

    model = VLM.from_pretrained(trained_model_dir)
    pictures = [demo_image(i, seed=0) for i in range(8)]
    model.cfg.retrieval_k = 1
    model.retrieval = RetrievalIndex.build(
        pictures, [f"answer {i}" for i in range(8)], [str(i) for i in range(8)], 1
    )
    model.save_pretrained(tmp_path / "retrieving")
    report = export_transformers(
        tmp_path / "retrieving", tmp_path / "out"
    )  # its check uses retrieval prompts
    assert report["checked"]["same_greedy_tokens"]

    from transformers import AutoModelForImageTextToText, AutoProcessor

    hf_model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out", backend="pil")
    images = [demo_image(50 + i) for i in range(2)]
    prompts = RetrievalIndex.load(tmp_path / "out").prompts([QUESTION] * 2, images)  # what the caller builds
    assert all("\nSimilar: answer " in p for p in prompts)
    eos = model.cfg.eos_token_id
    expected = model.generate(**model.prepare_prompts(images, [QUESTION] * 2), max_new_tokens=24).tolist()
    got = hf_generate(hf_model, processor, images, prompts, max_new_tokens=24)
    assert [until_eos(g, eos) for g in got] == [until_eos(e, eos) for e in expected]


@pytest.mark.parametrize(
    "image_size,factor", [(56, 1), (64, 2)]
)  # picovlm-small's 7x7 grid unshuffled; 8x8 by 2
def test_other_grids_and_shuffle_factors_export_exactly(tmp_path, image_size, factor):
    """Random weights, so this checks the mapping, not the training: the export's own check compares
    prompt ids, pixels, logits and a greedy answer with picovlm's and raises on any difference."""
    from picovlm.config import preset
    from picovlm.data.tokenizer import train_tokenizer
    from picovlm.export.transformers import export_transformers
    from picovlm.model.vlm import VLM

    torch.manual_seed(0)
    tokenizer = train_tokenizer(["a red circle at the top left", QUESTION] * 20, vocab_size=300)
    cfg = preset("tiny", lm_vocab_size=len(tokenizer), vit_img_size=image_size, mp_pixel_shuffle_factor=factor,
                 lm_max_length=128)  # fmt: skip
    VLM(cfg, tokenizer=tokenizer).save_pretrained(tmp_path / "model")
    report = export_transformers(tmp_path / "model", tmp_path / "out")
    assert report["checked"]["logits_max_diff"] < 1e-5 and report["checked"]["same_greedy_tokens"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["scale_factor"] == factor
    processor_config = json.loads((tmp_path / "out" / "processor_config.json").read_text())
    assert processor_config["image_seq_len"] == (image_size // 8 // factor) ** 2


@pytest.mark.parametrize("grid", [4, 7, 14, 19, 25, 32])
def test_the_position_mirror_matches_transformers_and_odd_grids_are_refused(grid, tmp_path):
    """export's mirror of Idefics3's patch-position arithmetic equals what transformers computes (read
    back through an embedding whose row i holds i), and a grid it gets wrong is refused."""
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.modeling_idefics3 import Idefics3VisionEmbeddings

    from picovlm.export.transformers import idefics3_position_buckets

    embeddings = Idefics3VisionEmbeddings(
        Idefics3VisionConfig(hidden_size=1, image_size=grid * 2, patch_size=2)
    )
    with torch.no_grad():
        embeddings.patch_embedding.weight.zero_()
        embeddings.patch_embedding.bias.zero_()
        embeddings.position_embedding.weight.copy_(torch.arange(grid * grid, dtype=torch.float32)[:, None])
        mask = torch.ones(1, grid, grid, dtype=torch.bool)
        positions = embeddings(torch.zeros(1, 3, grid * 2, grid * 2), mask)[0, :, 0].long().view(grid, grid)
    rows = positions[:, 0] // grid
    assert rows.tolist() == idefics3_position_buckets(grid)
    assert (rows.tolist() == list(range(grid))) == (grid not in (19, 25))
    if grid == 19:
        from picovlm.config import preset
        from picovlm.data.tokenizer import train_tokenizer
        from picovlm.export.transformers import export_transformers
        from picovlm.model.vlm import VLM

        tokenizer = train_tokenizer([QUESTION] * 20, vocab_size=300)
        cfg = preset("tiny", lm_vocab_size=len(tokenizer), vit_img_size=19 * 8, mp_pixel_shuffle_factor=1,
                     lm_max_length=512)  # fmt: skip
        VLM(cfg, tokenizer=tokenizer).save_pretrained(tmp_path / "model")
        with pytest.raises(PicovlmError, match="19x19 patch grid"):
            export_transformers(tmp_path / "model", tmp_path / "out")
