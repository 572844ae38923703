"""Export a picovlm model to ONNX for the torch-free runtime, check it, and optionally quantise it to int8.

An exported folder holds:

    manifest.json       config, file names, special token ids, graph input/output names, quantisation,
                        and the parity figures measured at export time
    vision.onnx         pixels (n, 3, H, W) float32 -> image embeddings (n, L, D): ViT + projector
    decoder.onnx        one decoder step; it serves prefill (T = prompt length, past 0) and decode (T = 1):
                          inputs_embeds (B, T, D), position_ids (B, T) int64,
                          attention_mask (B, P + T) int64 (1 real, 0 padding),
                          past_key.i / past_value.i (B, nkv, P, hd) for every layer i
                        -> logits (B, V) of the last position only, present_key.i / present_value.i (B, nkv, P + T, hd)
    embed_tokens.npy    the token embedding matrix (V, D) float32
    tokenizer.json      the tokenizer, with picovlm's special tokens

Why the embedding is a .npy file and not a graph: a lookup is `matrix[ids]`, which numpy does in
microseconds, and the runtime memory-maps the file, so only the rows of tokens actually used are ever
read into memory. As a graph it would be one more session holding all V x D weights in RAM (a second
copy of the tied LM head: 42 MB for super-small-11's 49,152 x 216).

The decoder graph takes the cache as plain inputs and returns it grown by T positions (a concat), so
the caller owns the cache and one graph handles any past length. The graphs come from the dynamo
exporter (`torch.onnx.export(..., dynamo=True)`): the TorchScript exporter cannot convert grouped-query
`scaled_dot_product_attention(enable_gqa=True)`, the dynamo one can, so the model code stays unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from picovlm.errors import PicovlmError
from picovlm.generation import GenerationConfig, copy_options_check, generation_config
from picovlm.retrieval import FACTS_FILE, INDEX_FILE, INDEX_META_FILE
from picovlm.utils import ProgressFn, atomic_path, atomic_write_text, no_progress

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
VISION_FILE = "vision.onnx"
DECODER_FILE = "decoder.onnx"
EMBED_FILE = "embed_tokens.npy"
OPSET = 18
# fp32 graphs must match torch to within this: the max abs difference on logits, cache and embeddings,
# divided by the reference's largest value when that is above 1 (rounding differences grow with the
# values: a trained vision tower's outputs reach the hundreds, and differed by 1.2e-3 absolute).
# The differences seen are ~1e-6 x the values' scale; 1e-3 leaves room for other kernels, not a bug.
FP32_TOLERANCE = 1e-3
VISION_OUTPUTS = ("image_embeds", "vision_pooled")


# --- The exported modules ---------------------------------------------------------------------------


class VisionEncoder(nn.Module):
    """ViT + projector: pixels (n, 3, H, W) -> image embeddings (n, L, D), and the ViT's features
    mean-pooled over patches (n, D_vit): eval's vision lookup, and what fact heads saved before finding 28
    read (copy_fact_weight, picovlm/retrieval.py)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision_encoder, self.projector = model.vision_encoder, model.projector

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.vision_encoder(pixels)
        return self.projector(features), features.mean(dim=1)


class ConcatCache:
    """Stands in for `KVCache` during export: the past comes in as tensors, the grown cache goes out.

    It has KVCache's interface (`length`, `update`), so the decoder's own forward runs unchanged.
    """

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]]):
        self.past = past
        self.length = past[0][0].shape[2]  # P: a symbolic size under torch.export
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        past_k, past_v = self.past[layer]
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, nkv, P + T, hd)
        self.present.append((k, v))
        return k, v


class DecoderStep(nn.Module):
    """One call of the language model with an explicit cache; logits of the last position only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, inputs_embeds, position_ids, attention_mask, *past: torch.Tensor):
        cache = ConcatCache([(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)])
        hidden = self.decoder(inputs_embeds, position_ids, key_padding=attention_mask, cache=cache)
        logits = self.decoder.lm_head(hidden[:, -1])  # (B, V): only the next token's logits are needed
        return (logits, *[t for pair in cache.present for t in pair])


def decoder_io_names(n_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_{kind}.{i}" for i in range(n_layers) for kind in ("key", "value")]
    present = [f"present_{kind}.{i}" for i in range(n_layers) for kind in ("key", "value")]
    return ["inputs_embeds", "position_ids", "attention_mask", *past], ["logits", *present]


# --- Sample inputs ---------------------------------------------------------------------------------


def sample_decoder_inputs(cfg, batch: int, new: int, past: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs for one decoder step: random embeddings and cache, row 0 left-padded by two positions."""
    g = torch.Generator().manual_seed(seed)
    total = past + new
    mask = torch.ones(batch, total, dtype=torch.int64)
    mask[0, : min(2, total - 1)] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, past:]
    kv_shape = (batch, cfg.lm_n_kv_heads, past, cfg.lm_head_dim)
    cache = [torch.randn(kv_shape, generator=g) for _ in range(2 * cfg.lm_n_blocks)]
    embeds = torch.randn(batch, new, cfg.lm_hidden_dim, generator=g)
    return (embeds, positions, mask, *cache)


# --- Export, parity, quantisation ------------------------------------------------------------------


def _onnx_export(
    module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes
) -> None:
    # The exporter reports its stages on stdout and warns about shape names it merged; library code
    # never prints, so both are swallowed (a failure still raises).
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def _session(path: Path, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _max_diff(outputs: list[np.ndarray], references) -> float:
    """Max abs difference, scaled down by the reference's largest magnitude where that exceeds 1."""
    worst = 0.0
    for output, reference in zip(outputs, references):
        if output.size:
            reference = reference.detach().numpy()
            scale = max(1.0, float(np.abs(reference).max()))
            diff = float(np.abs(output - reference).max()) / scale
            if not np.isfinite(diff):  # NaN or inf: max() below would silently drop a NaN
                return float("inf")
            worst = max(worst, diff)
    return worst


def check_vision(model, path: Path, n_images: int = 2) -> float:
    """Difference (see _max_diff) between the vision graph and torch on random pixels."""
    cfg = model.cfg
    pixels = torch.rand(
        n_images, 3, cfg.vit_img_size, cfg.vit_img_size, generator=torch.Generator().manual_seed(1)
    )
    pixels = pixels * 2 - 1
    with torch.no_grad():
        reference = VisionEncoder(model)(pixels)
    outputs = _session(path).run(None, {"pixel_values": pixels.numpy()})
    return _max_diff(outputs, list(reference))


def check_decoder(model, path: Path) -> dict[str, float]:
    """Difference (see _max_diff; logits and cache) for a left-padded prefill and a decode step with a cache."""
    step = DecoderStep(model)
    session = _session(path)
    names, _ = decoder_io_names(model.cfg.lm_n_blocks)
    diffs = {}
    for label, (batch, new, past) in {"prefill": (2, 9, 0), "decode": (2, 1, 11)}.items():
        inputs = sample_decoder_inputs(model.cfg, batch, new, past, seed=2)
        with torch.no_grad():
            reference = step(*inputs)
        outputs = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
        diffs[label] = _max_diff(outputs, reference)
    return diffs


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime dynamic quantisation: int8 weights for every MatMul, activations quantised per call.

    Only MatMul is quantised: the ViT's patch Conv runs once per image and ConvInteger is slow on CPU.
    Weights use 7 bits (reduce_range): on CPUs without VNNI, onnxruntime's u8 x s8 products saturate
    with full 8-bit weights (the decoder's outputs moved by 0.26 of their scale on an AVX2-only EPYC).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it logs a "consider pre-processing" hint on the root logger
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            per_channel=False,
            reduce_range=True,
        )
    finally:
        root.setLevel(level)


def export_model(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    quantize: str | None = None,
    tolerance: float = FP32_TOLERANCE,
    eval_items: int = 0,
    eval_data: str | os.PathLike | None = None,
    eval_split: str | None = None,
    progress: ProgressFn = no_progress,
    generation: GenerationConfig | None = None,
    **generation_options: Any,
) -> dict[str, Any]:
    """Export a save_pretrained folder to `out_dir` (written atomically); return the manifest.

    `generation` (default: the model's own, its generation.json) with keyword `generation_options` over
    it goes into the manifest: the runtime, `picovlm serve` and `picovlm eval` of the folder answer with
    it unless told otherwise.

    quantize="int8" writes int8 graphs; `eval_items` > 0 then also answers that many rows of the
    model's own validation data with the fp32 and the int8 graphs and records how they agree
    (`picovlm.export.quality`). The data is `eval_data`/`eval_split`, else the run folder's
    train.data_dir and train.val_split; none found is an error, raised before any export work.
    """
    from picovlm.model.vlm import VisionLanguageModel

    if quantize not in (None, "int8"):
        raise PicovlmError(f"--quantize {quantize!r} is not supported: use int8, or leave it out for fp32.")
    eval_on = None
    if quantize and eval_items > 0:
        from picovlm.export.quality import find_eval_data

        eval_on = find_eval_data(model_dir, eval_data, eval_split)
    model = VisionLanguageModel.from_pretrained(model_dir).float().eval()
    generation = generation_config(generation or model.generation, **generation_options)
    copy_options_check(generation, model.retrieval)
    if model.tokenizer is None:
        raise PicovlmError(
            f"{model_dir} has no tokenizer.json: the runtime needs it; save the model with its tokenizer."
        )
    in_names, out_names = decoder_io_names(model.cfg.lm_n_blocks)
    steps = 4 + (quantize is not None) + (eval_on is not None)
    started = time.perf_counter()

    with atomic_path(out_dir) as out, tempfile.TemporaryDirectory(prefix="picovlm-export-") as scratch:
        out.mkdir(parents=True)
        fp32 = Path(scratch) / "fp32" if quantize else out
        fp32.mkdir(exist_ok=True)

        parity = export_graphs(model, fp32, tolerance, progress, steps)

        progress(3, steps, "writing the embedding, tokenizer and manifest")
        np.save(out / EMBED_FILE, model.decoder.embed_tokens.weight.detach().float().numpy())
        model.tokenizer.save(out)
        if model.retrieval is not None:  # a retrieving model answers from its training pictures' index
            model.retrieval.save(out)
        manifest = build_manifest(model, in_names, out_names, parity)
        manifest["generation"] = generation.to_dict()
        if quantize:
            quantize_beside(model, fp32, out, manifest, progress, steps)
            if eval_on is not None:
                data_dir, split, _ = eval_on
                progress(
                    5, steps, f"answering {eval_items} rows of {data_dir} {split} with fp32 and int8 graphs"
                )
                from picovlm.export.quality import compare_on_data

                atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2))
                manifest["quantization"]["eval"] = compare_on_data(fp32, out, data_dir, split, eval_items)
        manifest["export_seconds"] = round(time.perf_counter() - started, 2)
        manifest["file_sizes"] = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
        atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2))
    progress(steps, steps, "done")
    return manifest


def export_graphs(model, out: Path, tolerance: float, progress: ProgressFn, steps: int) -> dict[str, float]:
    """The vision graph and the decoder-step graph in `out`, each checked against torch; returns the
    parity figures (relative differences), or raises when one is over `tolerance`."""
    cfg = model.cfg
    in_names, out_names = decoder_io_names(cfg.lm_n_blocks)
    progress(0, steps, "exporting the vision tower + projector")
    pixels = torch.zeros(2, 3, cfg.vit_img_size, cfg.vit_img_size)
    _onnx_export(
        VisionEncoder(model),
        (pixels,),
        out / VISION_FILE,
        ["pixel_values"],
        list(VISION_OUTPUTS),
        ({0: "images"},),
    )
    vision_diff = check_vision(model, out / VISION_FILE)

    progress(1, steps, "exporting the decoder step")
    cache_axes = tuple({0: "batch", 2: "past"} for _ in range(2 * cfg.lm_n_blocks))
    dynamic_axes = ({0: "batch", 1: "new"}, {0: "batch", 1: "new"}, {0: "batch", 1: "total"}, cache_axes)
    decoder_inputs = sample_decoder_inputs(cfg, 2, 3, 4)
    _onnx_export(DecoderStep(model), decoder_inputs, out / DECODER_FILE, in_names, out_names, dynamic_axes)
    decoder_diffs = check_decoder(model, out / DECODER_FILE)

    progress(2, steps, "checking parity with torch")
    parity = {"vision": vision_diff, **{f"decoder_{k}": v for k, v in decoder_diffs.items()}}
    worst = max(parity.values())
    if not worst <= tolerance:  # `not <=` also catches NaN
        raise PicovlmError(
            f"the ONNX graphs differ from the torch model by up to {worst:.3g} relative ({parity}), over the tolerance "
            f"{tolerance:g}: the export is wrong; report it with the model's config.json."
        )
    return parity


def quantize_beside(model, fp32: Path, out: Path, manifest: dict, progress: ProgressFn, steps: int) -> None:
    """int8 graphs in `out` from the fp32 ones in `fp32`, which becomes a complete fp32 folder too (for
    the comparison on data); the int8 graphs' parity with torch goes into `manifest`."""
    progress(4, steps, "quantising to int8")
    for name in (VISION_FILE, DECODER_FILE):
        quantize_int8(fp32 / name, out / name)
    shutil.copy(out / EMBED_FILE, fp32 / EMBED_FILE)
    shutil.copy(out / "tokenizer.json", fp32 / "tokenizer.json")
    if model.retrieval is not None:
        model.retrieval.save(fp32)
    atomic_write_text(fp32 / MANIFEST_FILE, json.dumps(manifest, indent=2))
    manifest["quantization"] = {"method": "onnxruntime dynamic", "weights": "int8", "ops": ["MatMul"]}
    manifest["parity"]["int8_vs_torch"] = {
        "vision": check_vision(model, out / VISION_FILE),
        **{f"decoder_{k}": v for k, v in check_decoder(model, out / DECODER_FILE).items()},
    }


def build_manifest(model, input_names: list[str], output_names: list[str], parity: dict) -> dict[str, Any]:
    cfg, tok = model.cfg, model.tokenizer
    return {
        "format": "picovlm-onnx",
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "image_size": cfg.vit_img_size,
        "image_token_length": cfg.mp_image_token_length,
        "n_layers": cfg.lm_n_blocks,
        "n_kv_heads": cfg.lm_n_kv_heads,
        "head_dim": cfg.lm_head_dim,
        "hidden_dim": cfg.lm_hidden_dim,
        "vocab_size": cfg.lm_vocab_size,
        "max_positions": cfg.lm_max_position_embeddings,
        "special_tokens": {
            "image": tok.image_token_id,
            "pad": tok.pad_token_id,
            "eos": tok.im_end_id,
            "im_start": tok.im_start_id,
            "endoftext": tok.eot_id,
        },
        "files": {
            "vision": VISION_FILE,
            "decoder": DECODER_FILE,
            "embed_tokens": EMBED_FILE,
            "tokenizer": "tokenizer.json",
            **(
                {"retrieval_index": INDEX_FILE, "retrieval_answers": INDEX_META_FILE}
                if model.retrieval
                else {}
            ),
            **({"retrieval_facts": FACTS_FILE} if model.retrieval and model.retrieval.facts else {}),
        },
        "vision_io": {"inputs": ["pixel_values"], "outputs": list(VISION_OUTPUTS)},
        "decoder_io": {"inputs": input_names, "outputs": output_names},
        "quantization": None,
        "opset": OPSET,
        "parity": {"tolerance": FP32_TOLERANCE, "fp32_vs_torch": parity},
        "torch_version": torch.__version__,
    }
