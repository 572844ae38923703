"""Export a picovlm model as GGUF for llama.cpp: the language model plus an mmproj file (vision + projector).

    model.gguf    general.architecture "llama": picovlm's decoder is a Llama (RMSNorm, RoPE, GQA, SwiGLU),
                  with picovlm's byte-level BPE as a "gpt2" tokenizer (pre-tokenizer "gpt-2", the regex
                  tokenizers' ByteLevel pre-tokenizer uses), its merges, and its special tokens as control
                  tokens, so llama.cpp splits prompts on them as picovlm does. No BOS (picovlm adds none),
                  <|im_end|> ends an answer, the ChatML template of the transformers export.
    mmproj.gguf   general.architecture "clip", projector type "idefics3": llama.cpp's SmolVLM graph, which is
                  picovlm's: SigLIP-style ViT (biases, tanh GELU, final LayerNorm), pixel shuffle, one linear.

The tensor and metadata names are llama.cpp's (its converter, convert_hf_to_gguf.py, and tools/mtmd/clip.cpp
read them); the weights are picovlm's, float32 by default (exact; outtype="f16" or "q8_0" stores the language
model's matrices smaller, no longer exact), with two layout changes llama.cpp expects:
  - q_proj and k_proj rows are permuted per head from the half-split RoPE layout (picovlm and transformers
    rotate channel i with channel i + hd/2) to the interleaved one llama.cpp's "llama" rotates (2i with 2i+1);
  - the fused ViT qkv is split into attn_q, attn_k, attn_v; the position embedding loses its batch axis.

What stock llama.cpp does NOT do as picovlm: its Idefics3 image preprocessing always tiles. For a picture
of the model's own size it sends a 1x1 grid of tiles *and* the overview, so the prompt holds the image twice
(`<fake_token_around_image><row_1_col_1>` + tile, then `\\n\\n<fake_token_around_image><global-img>` +
overview + `<fake_token_around_image>`), where picovlm (and transformers' Idefics3Processor, which does not
split an image that fits one tile) writes it once; no metadata key turns the tiling off. And it looks that
`\\n\\n` up as a single token, which picovlm's small BPE lacks: the lookup fails and llama-mtmd-cli aborts.
bench/llama_cpp_idefics3_unsplit.patch fixes both (an image that fits one tile is sent once, as transformers
sends it); with it, llama-mtmd-cli's greedy answers equal picovlm's (tests/deploy/test_export_gguf.py, opt-in).
Until llama.cpp has that fix, `picovlm export` does not offer the format (docs/deploy.md).
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from picovlm.errors import PicovlmError
from picovlm.utils import ProgressFn, atomic_path, no_progress

MODEL_FILE = "model.gguf"
MMPROJ_FILE = "mmproj.gguf"
OUTTYPES = ("f32", "f16", "q8_0")
PRE_TOKENIZER = "gpt-2"  # llama.cpp's name for the GPT-2 split regex (tokenizers' ByteLevel, use_regex=True)


def export_gguf(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    outtype: str = "f32",
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Write `out_dir`/model.gguf and mmproj.gguf (atomically) from a save_pretrained folder; return a report.

    outtype: the language model's matrices in "f32" (exact), "f16" or "q8_0" (llama.cpp's 8-bit blocks:
    a quarter of the bytes, answers no longer guaranteed equal). Norms and the mmproj stay float32."""
    if outtype not in OUTTYPES:
        raise PicovlmError(f"outtype={outtype!r}: choose one of {', '.join(OUTTYPES)}.")
    try:
        import gguf  # noqa: F401  - llama.cpp's own writer package
    except ImportError:
        raise PicovlmError("GGUF export needs the gguf package: pip install gguf") from None
    from picovlm.export.transformers import CHAT_TEMPLATE, refuse_unexportable
    from picovlm.model.vlm import VisionLanguageModel

    started = time.perf_counter()
    progress(0, 3, "loading the model")
    model = VisionLanguageModel.from_pretrained(model_dir).float().eval()
    # the Idefics3 layout's limits (wrapper tokens, no CLS); llama.cpp gives patch i position i on any grid
    refuse_unexportable(model, model_dir, position_grid=False)
    if model.retrieval is not None:
        raise PicovlmError(
            f"{model_dir}: a retrieving model (retrieval_k > 0) builds 'Similar: ...' prompts that llama.cpp "
            "cannot look up; export it with `picovlm export` (ONNX) or --format transformers."
        )
    with atomic_path(out_dir) as out:
        out.mkdir(parents=True)
        progress(1, 3, "writing the language model")
        write_language_model(model, out / MODEL_FILE, CHAT_TEMPLATE, outtype)
        progress(2, 3, "writing the vision tower and projector")
        write_mmproj(model, out / MMPROJ_FILE)
    progress(3, 3, "done")
    return {
        "format": f"gguf (llama.cpp: llama {outtype} + clip/idefics3 f32)",
        "seconds": round(time.perf_counter() - started, 2),
        "file_sizes": {p.name: p.stat().st_size for p in sorted(Path(out_dir).iterdir()) if p.is_file()},
    }


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().contiguous().numpy()


def rope_interleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection reordered per head from half-split RoPE pairs (i, i + hd/2) to adjacent
    pairs (2i, 2i + 1), the order llama.cpp's "llama" architecture rotates; attention scores are unchanged
    because q and k get the same permutation."""
    out_features = w.shape[0]
    hd = out_features // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def write_language_model(model, path: Path, chat_template: str, outtype: str = "f32") -> None:
    import gguf

    cfg, lm = model.cfg, model.decoder
    writer = _new_writer(path, "llama", gguf.GGUFType.MODEL, "picovlm language model", outtype)
    matrix = functools.partial(_add_matrix, writer, outtype=outtype)
    hparams = {  # llama.<key> in the file
        writer.add_context_length: cfg.lm_max_position_embeddings,
        writer.add_embedding_length: cfg.lm_hidden_dim,
        writer.add_block_count: cfg.lm_n_blocks,
        writer.add_feed_forward_length: cfg.lm_inter_dim,
        writer.add_head_count: cfg.lm_n_heads,
        writer.add_head_count_kv: cfg.lm_n_kv_heads,
        writer.add_rope_dimension_count: cfg.lm_head_dim,
        writer.add_rope_freq_base: cfg.lm_re_base,
        writer.add_layer_norm_rms_eps: cfg.lm_rms_eps,
        writer.add_vocab_size: cfg.lm_vocab_size,
    }
    for add, value in hparams.items():
        add(value)
    write_tokenizer(writer, model.tokenizer, cfg, chat_template)

    state = lm.state_dict()
    matrix("token_embd.weight", state["embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", _f32(state["norm.weight"]))
    if not cfg.lm_tie_weights:  # tied: llama.cpp reads token_embd for the output when `output` is absent
        matrix("output.weight", state["lm_head.weight"])
    for i in range(cfg.lm_n_blocks):
        b = f"blocks.{i}."
        tensors = {
            "attn_norm": state[b + "attn_norm.weight"],
            "attn_q": rope_interleave(state[b + "attn.q_proj.weight"], cfg.lm_n_heads),
            "attn_k": rope_interleave(state[b + "attn.k_proj.weight"], cfg.lm_n_kv_heads),
            "attn_v": state[b + "attn.v_proj.weight"],
            "attn_output": state[b + "attn.o_proj.weight"],
            "ffn_norm": state[b + "mlp_norm.weight"],
            "ffn_gate": state[b + "mlp.gate_proj.weight"],
            "ffn_up": state[b + "mlp.up_proj.weight"],
            "ffn_down": state[b + "mlp.down_proj.weight"],
        }
        for name, tensor in tensors.items():
            if tensor.dim() == 1:  # the norms
                writer.add_tensor(f"blk.{i}.{name}.weight", _f32(tensor))
            else:
                matrix(f"blk.{i}.{name}.weight", tensor)
    _finish(writer)


def write_tokenizer(writer, tokenizer, cfg, chat_template: str) -> None:
    """picovlm's byte-level BPE as llama.cpp's "gpt2" tokenizer.

    The token strings stay in byte-level form ('Ġ' for a space), as llama.cpp's BPE expects; merges are
    "left right" strings in rank order; added tokens are CONTROL (special) or USER_DEFINED, so llama.cpp
    splits a prompt on them before the regex, as tokenizers does. Rows of the embedding beyond the tokenizer (a vocabulary
    rounded up) get unused placeholder tokens."""
    import gguf

    data = json.loads(tokenizer.tokenizer.to_str())
    refuse_other_tokenizers(data)
    vocab: dict[str, int] = data["model"]["vocab"]
    added = {t["content"]: t for t in data.get("added_tokens", [])}
    tokens = [""] * cfg.lm_vocab_size
    types = [gguf.TokenType.UNUSED] * cfg.lm_vocab_size
    for text, i in {**vocab, **{k: t["id"] for k, t in added.items()}}.items():
        if i >= cfg.lm_vocab_size:
            raise PicovlmError(f"token {text!r} has id {i}, outside the model's {cfg.lm_vocab_size} rows.")
        tokens[i] = text
        types[i] = gguf.TokenType.NORMAL
        if text in added:  # split out before the regex either way; special ones are skipped in decoding
            types[i] = gguf.TokenType.CONTROL if added[text].get("special") else gguf.TokenType.USER_DEFINED
    for i, text in enumerate(tokens):
        if not text:
            tokens[i] = f"[PAD{i}]"
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(cfg.eos_token_id)
    writer.add_pad_token_id(cfg.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template)


def refuse_other_tokenizers(data: dict[str, Any]) -> None:
    """Only picovlm's own tokenizer kind (byte-level BPE, GPT-2 regex, no normaliser) maps onto a llama.cpp
    pre-tokenizer here; another (e.g. SmolLM2's, which splits digits first) would tokenize differently."""
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    ok = (
        model.get("type") == "BPE"
        and not data.get("normalizer")
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space", False)
        and not model.get("ignore_merges", False)
    )
    if not ok:
        raise PicovlmError(
            "GGUF export supports picovlm's own byte-level BPE tokenizer (trained by `picovlm train`), whose "
            "GPT-2 pre-tokenizer llama.cpp reproduces; this model's tokenizer is another kind "
            f"(model {model.get('type')}, pre-tokenizer {json.dumps(pre)[:200]}). Export it with --format "
            "transformers or ONNX."
        )


def write_mmproj(model, path: Path) -> None:
    import gguf

    from picovlm.data.processor import IMAGE_MEAN, IMAGE_STD

    cfg = model.cfg
    writer = _new_writer(path, "clip", gguf.GGUFType.MMPROJ, "picovlm vision tower + projector")
    hparams = {  # clip.<key> in the file
        writer.add_clip_has_vision_encoder: True,
        writer.add_clip_projector_type: gguf.VisionProjectorType.IDEFICS3,
        writer.add_vision_projection_dim: cfg.lm_hidden_dim,
        writer.add_vision_image_size: cfg.vit_img_size,
        writer.add_vision_preproc_image_size: cfg.vit_img_size,  # longest edge: one tile, the model's size
        writer.add_vision_patch_size: cfg.vit_patch_size,
        writer.add_vision_embedding_length: cfg.vit_hidden_dim,
        writer.add_vision_feed_forward_length: cfg.vit_inter_dim,
        writer.add_vision_block_count: cfg.vit_n_blocks,
        writer.add_vision_head_count: cfg.vit_n_heads,
        writer.add_vision_attention_layernorm_eps: cfg.vit_ln_eps,
        writer.add_vision_image_mean: [IMAGE_MEAN] * 3,
        writer.add_vision_image_std: [IMAGE_STD] * 3,
        writer.add_vision_use_gelu: True,  # ggml's gelu is the tanh form, as picovlm's ViT
        writer.add_vision_projector_scale_factor: cfg.mp_pixel_shuffle_factor,
    }
    for add, value in hparams.items():
        add(value)

    vit = model.vision_encoder.state_dict()
    D = cfg.vit_hidden_dim
    writer.add_tensor("v.patch_embd.weight", _f32(vit["patch_embedding.conv.weight"]))
    writer.add_tensor("v.patch_embd.bias", _f32(vit["patch_embedding.conv.bias"]))
    writer.add_tensor("v.position_embd.weight", _f32(vit["patch_embedding.position_embedding"][0]))
    for i in range(cfg.vit_n_blocks):
        b = f"blocks.{i}."
        q, k, v = vit[b + "attn.qkv.weight"].split(D, dim=0)
        qb, kb, vb = vit[b + "attn.qkv.bias"].split(D, dim=0)
        tensors = {
            "ln1": (vit[b + "ln1.weight"], vit[b + "ln1.bias"]),
            "attn_q": (q, qb),
            "attn_k": (k, kb),
            "attn_v": (v, vb),
            "attn_out": (vit[b + "attn.out.weight"], vit[b + "attn.out.bias"]),
            "ln2": (vit[b + "ln2.weight"], vit[b + "ln2.bias"]),
            "ffn_up": (vit[b + "mlp.fc1.weight"], vit[b + "mlp.fc1.bias"]),
            "ffn_down": (vit[b + "mlp.fc2.weight"], vit[b + "mlp.fc2.bias"]),
        }
        for name, (weight, bias) in tensors.items():
            writer.add_tensor(f"v.blk.{i}.{name}.weight", _f32(weight))
            writer.add_tensor(f"v.blk.{i}.{name}.bias", _f32(bias))
    writer.add_tensor("v.post_ln.weight", _f32(vit["layer_norm.weight"]))
    writer.add_tensor("v.post_ln.bias", _f32(vit["layer_norm.bias"]))
    writer.add_tensor("mm.model.fc.weight", _f32(model.projector.state_dict()["proj.weight"]))
    _finish(writer)


# --- Running llama.cpp on the export (the opt-in test and bench/gguf_vs_onnx.py) -------------------------

# llama-mtmd-cli prints RESPONSE_MARKER before the answer (MTMD_TEST_RESPONSE_MARKER), and at -lv 4 its
# timings after it, LLAMA_CPP_LAST_LOG among them
RESPONSE_MARKER = "<<picovlm-answer>>"
LLAMA_CPP_LAST_LOG = "total time ="


def picture_for_llama_cpp(image, size: int):
    """The picture as picovlm sees it before normalising: RGB (transparency over white), one bicubic resize
    to size x size. llama.cpp leaves a picture of its tile size as it is and normalises it as picovlm
    (mean = std = 0.5), so the pixels agree; its own resize (Lanczos, aspect kept, then tiles) would not."""
    from PIL import Image

    from picovlm.data.processor import to_rgb

    image = to_rgb(image)
    return image if image.size == (size, size) else image.resize((size, size), Image.Resampling.BICUBIC)


def llama_mtmd_command(cli: str, gguf_dir, image_path, question: str, max_new_tokens: int, threads: int = 1):
    """llama-mtmd-cli's arguments for one greedy answer, as a user would type them."""
    gguf_dir = Path(gguf_dir)
    return [
        cli,
        "-m",
        str(gguf_dir / MODEL_FILE),
        "--mmproj",
        str(gguf_dir / MMPROJ_FILE),
        "--image",
        str(image_path),
        "-p",
        question,
        "--temp",
        "0",
        "-n",
        str(max_new_tokens),
        "-t",
        str(threads),
        "--seed",
        "0",
        "--no-warmup",
    ]


def llama_mtmd_answer(
    cli: str, gguf_dir, image_path, question: str, max_new_tokens: int, threads: int = 1, tries: int = 5
) -> str:
    """llama-mtmd-cli's greedy answer: the text it prints after the marker, newlines at either end dropped
    (it prints its own around the answer and at the end token, which an answer's own cannot be told from).

    llama.cpp logs through a queue that a worker thread drains, and does not drain it at exit: the printed
    answer is sometimes cut short (exit status 0; about every other run when the output is a pipe, 1 in 20
    into a file, so files here). At -lv 4 it logs its timings after the answer, through the same queue: a
    run whose timings came out printed all of its answer, and one whose timings did not is run again
    (greedy answers are deterministic)."""
    import subprocess
    import tempfile

    env = {**os.environ, "MTMD_TEST_RESPONSE_MARKER": RESPONSE_MARKER}
    command = llama_mtmd_command(cli, gguf_dir, image_path, question, max_new_tokens, threads) + ["-lv", "4"]
    for _ in range(tries):
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            code = subprocess.run(
                command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, timeout=600
            )
            out.seek(0), err.seek(0)
            stdout, stderr = out.read(), err.read()
        if code.returncode != 0:
            raise PicovlmError(f"llama-mtmd-cli failed (exit {code.returncode}): {stderr[-2000:]}")
        if RESPONSE_MARKER in stdout and LLAMA_CPP_LAST_LOG in stderr:
            return stdout.split(RESPONSE_MARKER, 1)[1].strip("\n")
    raise PicovlmError(f"llama-mtmd-cli's output was cut short {tries} times: {stdout[-500:]!r}")


def llama_cpp_tokenize(tool: str, gguf_dir, text: str) -> list[int]:
    """Token ids llama.cpp's tokenizer gives `text` (special tokens parsed, no BOS)."""
    import subprocess

    command = [
        tool,
        "-m",
        str(Path(gguf_dir) / MODEL_FILE),
        "-p",
        text,
        "--ids",
        "--no-bos",
        "--no-escape",
        "--log-disable",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise PicovlmError(f"llama-tokenize failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _new_writer(path: Path, arch: str, kind: str, name: str, outtype: str = "f32"):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(kind)
    writer.add_name(name)
    file_type = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}[outtype]
    writer.add_file_type(getattr(gguf.LlamaFileType, file_type))
    return writer


def _add_matrix(writer, name: str, t: torch.Tensor, outtype: str) -> None:
    """A weight matrix in `outtype`; q8_0 needs rows of a multiple of 32 (its block), else float16."""
    import gguf

    data = _f32(t)
    if outtype == "q8_0" and data.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    elif outtype in ("f16", "q8_0"):
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, data)


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
