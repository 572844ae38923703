"""GGUF for llama.cpp (picovlm/export/gguf.py): the files read back, and, opt-in, llama.cpp itself.

Default CI: the two files are read back with gguf.GGUFReader and checked against the model (names, shapes,
values, tokenizer, metadata), and the q/k row permutation is checked to keep attention scores.

Opt-in (marked llama_cpp; deselected unless PICOVLM_LLAMA_CPP names the bin folder bench/build_llama_cpp.sh
builds): llama-tokenize tokenizes as picovlm does; llama-mtmd-cli, and llama-server through its OpenAI API,
answer 32 held-out pictures greedily as picovlm does. Those two need the --patched build: stock llama.cpp
(0.3.36's tree) aborts on these models (its Idefics3 prompt wants a "\\n\\n" token picovlm's small BPE
lacks) and, where it runs, shows each picture twice (a 1x1 tile plus the overview). docs/deploy.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_helpers import demo_image

QUESTION = "Describe the image."
N_IMAGES = 32
MAX_NEW_TOKENS = 50


@pytest.fixture(scope="module")
def gguf_dir(trained_model_dir, tmp_path_factory) -> Path:
    from picovlm.export.gguf import export_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny-gguf"
    export_gguf(trained_model_dir, out)
    return out


def read(path: Path):
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    return fields, tensors


def test_the_language_model_gguf_is_a_llama_with_picovlms_weights_and_tokenizer(trained_model_dir, gguf_dir):
    from picovlm.export.gguf import rope_interleave
    from picovlm.model.vlm import VLM

    model = VLM.from_pretrained(trained_model_dir)
    cfg, state = model.cfg, model.decoder.state_dict()
    fields, tensors = read(gguf_dir / "model.gguf")
    assert fields["general.architecture"] == "llama"
    expected = {
        "llama.embedding_length": cfg.lm_hidden_dim,
        "llama.block_count": cfg.lm_n_blocks,
        "llama.attention.head_count": cfg.lm_n_heads,
        "llama.attention.head_count_kv": cfg.lm_n_kv_heads,
        "llama.feed_forward_length": cfg.lm_inter_dim,
        "llama.rope.dimension_count": cfg.lm_head_dim,
        "llama.rope.freq_base": cfg.lm_re_base,
        "tokenizer.ggml.eos_token_id": cfg.eos_token_id,
        "tokenizer.ggml.padding_token_id": cfg.pad_token_id,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.add_bos_token": False,
    }
    assert {k: fields[k] for k in expected} == pytest.approx(expected)
    vocab = model.tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    assert fields["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)  # every id, in byte-level form
    types = fields["tokenizer.ggml.token_type"]
    assert [types[i] for i in sorted(model.tokenizer.special_ids)] == [3] * len(model.tokenizer.special_ids)
    assert types.count(1) == len(vocab) - len(model.tokenizer.special_ids)  # the rest are normal tokens
    assert "<|im_start|>" in fields["tokenizer.chat_template"]
    assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd
    np.testing.assert_array_equal(tensors["token_embd.weight"], state["embed_tokens.weight"].numpy())
    for i in range(cfg.lm_n_blocks):
        q = rope_interleave(state[f"blocks.{i}.attn.q_proj.weight"], cfg.lm_n_heads)
        k = rope_interleave(state[f"blocks.{i}.attn.k_proj.weight"], cfg.lm_n_kv_heads)
        np.testing.assert_array_equal(tensors[f"blk.{i}.attn_q.weight"], q.numpy())
        np.testing.assert_array_equal(tensors[f"blk.{i}.attn_k.weight"], k.numpy())
        np.testing.assert_array_equal(
            tensors[f"blk.{i}.ffn_down.weight"], state[f"blocks.{i}.mlp.down_proj.weight"].numpy()
        )
    assert len(tensors) == 2 + 9 * cfg.lm_n_blocks


def test_the_mmproj_gguf_is_llama_cpps_idefics3_projector_with_picovlms_vision_weights(
    trained_model_dir, gguf_dir
):
    from picovlm.model.vlm import VLM

    model = VLM.from_pretrained(trained_model_dir)
    cfg, vit = model.cfg, model.vision_encoder.state_dict()
    fields, tensors = read(gguf_dir / "mmproj.gguf")
    assert fields["general.architecture"] == "clip" and fields["clip.projector_type"] == "idefics3"
    expected = {
        "clip.vision.image_size": cfg.vit_img_size,
        "clip.vision.patch_size": cfg.vit_patch_size,
        "clip.vision.embedding_length": cfg.vit_hidden_dim,
        "clip.vision.block_count": cfg.vit_n_blocks,
        "clip.vision.projector.scale_factor": cfg.mp_pixel_shuffle_factor,
        "clip.use_gelu": True,
        "clip.vision.projection_dim": cfg.lm_hidden_dim,
        "clip.vision.image_mean": [0.5] * 3,
    }
    assert {k: fields[k] for k in expected} == expected
    D = cfg.vit_hidden_dim
    q, k, v = vit["blocks.0.attn.qkv.weight"].split(D)
    for name, tensor in {
        "v.blk.0.attn_q.weight": q,
        "v.blk.0.attn_k.weight": k,
        "v.blk.0.attn_v.weight": v,
        "v.patch_embd.weight": vit["patch_embedding.conv.weight"],
        "v.position_embd.weight": vit["patch_embedding.position_embedding"][0],
        "v.blk.0.ffn_up.weight": vit["blocks.0.mlp.fc1.weight"],
        "v.post_ln.bias": vit["layer_norm.bias"],
        "mm.model.fc.weight": model.projector.proj.weight,
    }.items():
        np.testing.assert_array_equal(tensors[name], tensor.detach().numpy(), err_msg=name)
    assert len(tensors) == 3 + 16 * cfg.vit_n_blocks + 2 + 1


def test_q8_0_stores_the_language_models_matrices_in_8_bit_blocks(trained_model_dir, gguf_dir, tmp_path):
    import gguf

    from picovlm.export.gguf import export_gguf
    from picovlm.model.vlm import VLM

    export_gguf(trained_model_dir, tmp_path / "q8", outtype="q8_0")
    state = VLM.from_pretrained(trained_model_dir).decoder.state_dict()
    reader = gguf.GGUFReader(tmp_path / "q8" / "model.gguf")
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.ffn_up.weight"] == types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay exact
    up = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    weight = state["blocks.0.mlp.up_proj.weight"].numpy()
    back = gguf.quants.dequantize(up.data, up.tensor_type).reshape(weight.shape)
    assert np.abs(back - weight).max() <= np.abs(weight).max() / 127  # half a step of the largest block
    assert (tmp_path / "q8" / "model.gguf").stat().st_size < 0.6 * (gguf_dir / "model.gguf").stat().st_size


def test_interleaved_q_k_rows_give_llama_cpps_rope_the_same_attention_scores():
    """picovlm rotates channel i with i + hd/2; llama.cpp's "llama" rotates 2i with 2i+1. The permuted
    weights under llama.cpp's rotation must give the scores the originals give under picovlm's."""
    from picovlm.export.gguf import rope_interleave
    from picovlm.model.language import apply_rope

    torch.manual_seed(0)
    heads, hd, D, T, base = 3, 8, 12, 5, 10000.0
    wq, wk, x = torch.randn(heads * hd, D), torch.randn(heads * hd, D), torch.randn(T, D)
    angles = torch.arange(T)[:, None] / base ** (torch.arange(0, hd, 2) / hd)  # (T, hd/2)

    def ours(w):  # half-split, as picovlm
        y = (x @ w.T).view(T, heads, hd).transpose(0, 1)  # (heads, T, hd)
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        return apply_rope(y[None], cos[None], sin[None])[0]

    def llama_cpp(w):  # adjacent pairs, on the permuted rows
        y = (x @ rope_interleave(w, heads).T).view(T, heads, hd // 2, 2).transpose(0, 1)
        a, b = y[..., 0], y[..., 1]
        cos, sin = angles.cos(), angles.sin()
        return torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)

    torch.testing.assert_close(
        ours(wq) @ ours(wk).transpose(1, 2), llama_cpp(wq) @ llama_cpp(wk).transpose(1, 2)
    )


def test_a_tokenizer_llama_cpp_would_split_otherwise_is_refused(trained_model_dir, tmp_path):
    import json

    from tokenizers import Tokenizer

    from picovlm.data.tokenizer import TextTokenizer
    from picovlm.errors import PicovlmError
    from picovlm.export.gguf import export_gguf
    from picovlm.model.vlm import VLM

    model = VLM.from_pretrained(trained_model_dir)
    data = json.loads(model.tokenizer.tokenizer.to_str())
    data["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, data["pre_tokenizer"]],
    }
    model.attach_tokenizer(TextTokenizer(Tokenizer.from_str(json.dumps(data))))
    model.save_pretrained(tmp_path / "digits")
    with pytest.raises(PicovlmError, match="pre-tokenizer"):
        export_gguf(tmp_path / "digits", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- Opt-in: llama.cpp itself -------------------------------------------------------------------------------

LLAMA_CPP = os.environ.get("PICOVLM_LLAMA_CPP")


def llama_cpp_tool(name: str) -> str:
    path = Path(LLAMA_CPP) / name
    assert path.is_file(), f"{path} is missing: build it with bench/build_llama_cpp.sh"
    return str(path)


@pytest.mark.llama_cpp
def test_llama_cpp_tokenizes_prompts_and_answers_as_picovlm(trained_model_dir, gguf_dir):
    from picovlm.export.gguf import llama_cpp_tokenize
    from picovlm.model.vlm import VLM

    model = VLM.from_pretrained(trained_model_dir)
    texts = [
        model.decode_answer(row)
        for row in model.generate(
            **model.prepare_prompts([demo_image(i) for i in range(8)], [QUESTION] * 8), max_new_tokens=64
        ).tolist()
    ]
    texts += [
        "<|im_start|>user\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n",
        "  two  spaces, 42 digits",
        "Ünïcode — and émoji 🙂\n\n\ttabs",
        "don't they'll WE'RE",
        "<global-img><|image|>x<|im_end|>",
    ]
    for text in texts:
        assert (
            llama_cpp_tokenize(llama_cpp_tool("llama-tokenize"), gguf_dir, text)
            == model.tokenizer.tokenizer.encode(text, add_special_tokens=False).ids
        ), text


@pytest.fixture(scope="module")
def pictures_and_answers(trained_model_dir, tmp_path_factory):
    """32 held-out pictures saved at the model's size (as llama.cpp is to get them), and picovlm's greedy
    answers to them: (model, paths, answer texts, answer ids without the end token)."""
    from picovlm.export.gguf import picture_for_llama_cpp
    from picovlm.model.vlm import VLM

    model = VLM.from_pretrained(trained_model_dir)
    images = [demo_image(i) for i in range(N_IMAGES)]  # seed 1: scenes the model never trained on
    rows = model.generate(
        **model.prepare_prompts(images, [QUESTION] * N_IMAGES), max_new_tokens=MAX_NEW_TOKENS
    ).tolist()
    eos = model.cfg.eos_token_id
    assert sum(eos in row for row in rows) >= N_IMAGES // 2  # most answers end on their own
    ids = [_until_eos(row, eos) for row in rows]
    texts = [model.tokenizer.decode(row, skip_special_tokens=False).strip("\n") for row in ids]
    assert len(set(texts)) >= 3  # the model reads its pictures: agreement on one answer would prove little
    folder = tmp_path_factory.mktemp("pictures")
    paths = [folder / f"{i}.png" for i in range(N_IMAGES)]
    for image, path in zip(images, paths):
        picture_for_llama_cpp(image, model.cfg.vit_img_size).save(path)
    return model, paths, texts, ids


@pytest.mark.llama_cpp
def test_llama_mtmd_cli_answers_equal_picovlms_on_32_held_out_pictures(gguf_dir, pictures_and_answers):
    from picovlm.export.gguf import llama_mtmd_answer

    model, paths, texts, ids = pictures_and_answers
    for index, path in enumerate(paths):
        got = llama_mtmd_answer(llama_cpp_tool("llama-mtmd-cli"), gguf_dir, path, QUESTION, MAX_NEW_TOKENS)
        assert got == texts[index], f"picture {index}"
        # the same text, and that text encodes to picovlm's very tokens: llama.cpp picked those tokens
        assert model.tokenizer.tokenizer.encode(got, add_special_tokens=False).ids == ids[index]


@pytest.mark.llama_cpp
def test_llama_server_answers_the_same_through_its_openai_api(gguf_dir, pictures_and_answers):
    """llama-server (when built beside llama-mtmd-cli): /v1/chat/completions with the picture as a data
    URL, temperature 0, as an OpenAI client sends it."""
    import base64
    import subprocess
    import time

    import httpx
    from deploy_helpers import free_port

    server = llama_cpp_tool("llama-server")  # missing: the test fails and names the build script
    _, paths, texts, _ = pictures_and_answers
    port = free_port()
    command = [
        str(server),
        "-m",
        str(gguf_dir / "model.gguf"),
        "--mmproj",
        str(gguf_dir / "mmproj.gguf"),
        "--port",
        str(port),
        "-t",
        "1",
        "--no-warmup",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        for index, path in enumerate(paths):
            picture = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
            content = [
                {"type": "image_url", "image_url": {"url": picture}},
                {"type": "text", "text": QUESTION},
            ]
            body = {
                "messages": [{"role": "user", "content": content}],
                "temperature": 0,
                "max_tokens": MAX_NEW_TOKENS,
            }
            answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
            assert answer["choices"][0]["message"]["content"] == texts[index], f"picture {index}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens
