"""Hugging Face checkpoints in and out: SigLIP / SigLIP2 vision towers and Llama-family LMs (SmolLM2).

One key map per external format says which of our tensors is which of theirs. Loading, exporting
back to Hugging Face layout, and the parity tests all read the same map, so they cannot disagree.

    SigLIP vision tower  (SiglipVisionModel, SiglipModel, SigLIP2, or a VLM that embeds one)
        embeddings.patch_embedding        -> patch_embedding.conv
        embeddings.position_embedding     -> patch_embedding.position_embedding   (N, D) -> (1, N, D)
        encoder.layers.{i}.self_attn.q/k/v -> blocks.{i}.attn.qkv                 concatenated q, k, v
        encoder.layers.{i}.self_attn.out_proj, layer_norm1/2, mlp.fc1/fc2 -> attn.out, ln1/2, mlp.fc1/fc2
        post_layernorm                    -> layer_norm
    Llama-family LM      (LlamaForCausalLM: SmolLM2, or the text model inside a VLM)
        model.embed_tokens                -> embed_tokens
        model.layers.{i}.input_layernorm / post_attention_layernorm -> blocks.{i}.attn_norm / mlp_norm
        model.layers.{i}.self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj -> same names under blocks.{i}
        model.norm, lm_head               -> norm, lm_head (absent from tied checkpoints)

    Idefics3 (out only: the whole VLM, as SmolVLM in transformers; picovlm/export/transformers.py)
        the SigLIP names under `model.`, the Llama names with `model.` -> `model.text_model.`,
        projector.proj                    -> model.connector.modality_projection.proj

Checkpoints nest these names under a prefix (`vision_model.`, `vision_tower.vision_model.`,
`model.text_model.`, ...): it is found from where the patch or token embedding sits.

Truncation: a config with fewer blocks than the checkpoint keeps its first n blocks. A config that
disagrees with the checkpoint in any width, head count, epsilon or RoPE base is an error naming both
values; a larger vocabulary than the checkpoint's keeps the pretrained rows and starts the extra rows
(picovlm's added special tokens) at the mean embedding. Weights are read with safetensors only.

transformers is never imported here: these functions read config.json and safetensors files directly.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.config import VLMConfig
from picovlm.errors import PicovlmError
from picovlm.pretrained import resolve_checkpoint, write_safetensors

# --- The key maps: our name -> the checkpoint's name(s); several names are concatenated on dim 0 ---

SIGLIP_KEYS: dict[str, tuple[str, ...]] = {
    "patch_embedding.conv.weight": ("embeddings.patch_embedding.weight",),
    "patch_embedding.conv.bias": ("embeddings.patch_embedding.bias",),
    "patch_embedding.position_embedding": ("embeddings.position_embedding.weight",),
    "layer_norm.weight": ("post_layernorm.weight",),
    "layer_norm.bias": ("post_layernorm.bias",),
}
SIGLIP_BLOCK_KEYS: dict[str, tuple[str, ...]] = {
    "ln1.weight": ("layer_norm1.weight",),
    "ln1.bias": ("layer_norm1.bias",),
    "attn.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.qkv.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "attn.out.weight": ("self_attn.out_proj.weight",),
    "attn.out.bias": ("self_attn.out_proj.bias",),
    "ln2.weight": ("layer_norm2.weight",),
    "ln2.bias": ("layer_norm2.bias",),
    "mlp.fc1.weight": ("mlp.fc1.weight",),
    "mlp.fc1.bias": ("mlp.fc1.bias",),
    "mlp.fc2.weight": ("mlp.fc2.weight",),
    "mlp.fc2.bias": ("mlp.fc2.bias",),
}
SIGLIP_BLOCK_PREFIX = "encoder.layers.{i}."
SIGLIP_ANCHOR = "embeddings.patch_embedding.weight"  # where it sits in a checkpoint gives the prefix

LLAMA_KEYS: dict[str, tuple[str, ...]] = {
    "embed_tokens.weight": ("model.embed_tokens.weight",),
    "norm.weight": ("model.norm.weight",),
    "lm_head.weight": ("lm_head.weight",),  # the checkpoint's top level, whatever the text model's prefix
}
LLAMA_BLOCK_KEYS: dict[str, tuple[str, ...]] = {
    "attn_norm.weight": ("input_layernorm.weight",),
    "attn.q_proj.weight": ("self_attn.q_proj.weight",),
    "attn.k_proj.weight": ("self_attn.k_proj.weight",),
    "attn.v_proj.weight": ("self_attn.v_proj.weight",),
    "attn.o_proj.weight": ("self_attn.o_proj.weight",),
    "mlp_norm.weight": ("post_attention_layernorm.weight",),
    "mlp.gate_proj.weight": ("mlp.gate_proj.weight",),
    "mlp.up_proj.weight": ("mlp.up_proj.weight",),
    "mlp.down_proj.weight": ("mlp.down_proj.weight",),
}
LLAMA_BLOCK_PREFIX = "model.layers.{i}."
LLAMA_ANCHOR = "embed_tokens.weight"


def key_map(fmt: str, n_blocks: int) -> dict[str, tuple[str, ...]]:
    """Our tensor name -> checkpoint tensor name(s) for `fmt` ("siglip" or "llama") with n blocks."""
    top, block, prefix = {
        "siglip": (SIGLIP_KEYS, SIGLIP_BLOCK_KEYS, SIGLIP_BLOCK_PREFIX),
        "llama": (LLAMA_KEYS, LLAMA_BLOCK_KEYS, LLAMA_BLOCK_PREFIX),
    }[fmt]
    out = dict(top)
    for i in range(n_blocks):
        for ours, theirs in block.items():
            out[f"blocks.{i}.{ours}"] = tuple(prefix.format(i=i) + t for t in theirs)
    return out


@dataclass
class LoadReport:
    """What a load took from a checkpoint, for the user to read."""

    source: str
    fmt: str
    blocks_loaded: int
    blocks_available: int
    tensors: int = 0
    parameters: int = 0
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = (
            f"{self.fmt} from {self.source}: {self.tensors} tensors, {self.parameters:,} parameters, "
            f"blocks {self.blocks_loaded} of {self.blocks_available}"
        )
        return "\n".join([head, *(f"  - {n}" for n in self.notes)])


# --- Reading checkpoints (found by picovlm.pretrained.resolve_checkpoint: a folder or a Hub id) ----


# transformers' defaults: Hub config.json files list only what differs from them (SigLIP's often
# says no more than {"model_type": "siglip_vision_model"}), so a missing key means this value.
HF_DEFAULTS = {
    "vision": dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
        patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
    ),
    "text": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000,
        rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=2048, tie_word_embeddings=False,
        hidden_act="silu",
    ),
}  # fmt: skip


def read_hf_config(directory: Path, part: str) -> dict[str, Any]:
    """config.json's settings for `part` ("vision" or "text"), unwrapping composite model configs."""
    path = directory / "config.json"
    if not path.is_file():
        return {}  # the tensor shapes alone still catch a mismatch, with less friendly messages
    cfg = json.loads(path.read_text())
    nested = cfg.get(f"{part}_config")
    cfg = nested if isinstance(nested, dict) else cfg
    if "rope_parameters" in cfg and "rope_theta" not in cfg:  # transformers >= 5 nests rope_theta
        cfg = {**cfg, "rope_theta": (cfg["rope_parameters"] or {}).get("rope_theta")}
    if part == "vision" and "num_patches" in cfg and "image_size" not in cfg:  # SigLIP2 counts patches
        cfg = {**cfg, "image_size": math.isqrt(cfg["num_patches"]) * cfg.get("patch_size", 16)}
    return {**HF_DEFAULTS[part], **{k: v for k, v in cfg.items() if v is not None}}


def _shard_files(directory: Path) -> list[Path]:
    """The shard files a sharded checkpoint's index names (none without an index); an index that names
    a missing shard is an incomplete download, said as such."""
    indexes = sorted(directory.glob("*.safetensors.index.json"))
    if not indexes:
        return []
    try:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise PicovlmError(f"{indexes[0]}: not a safetensors index (no readable weight_map: {err}).") from err
    files = [directory / name for name in sorted(set(weight_map.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise PicovlmError(
            f"{indexes[0]} lists {len(files)} shards, but {', '.join(missing)} is not in {directory}: "
            "the download is incomplete; download the checkpoint again."
        )
    return files


class Checkpoint:
    """The tensors of a folder's safetensors weights, read one at a time on demand: the shards its
    `*.safetensors.index.json` lists (how save_pretrained writes a large model), else every
    *.safetensors file in it."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        files = _shard_files(directory) or sorted(directory.glob("*.safetensors"))
        if not files:
            pickled = [p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
            hint = (
                f" It has {pickled}: picovlm never unpickles weights; pick a revision with safetensors."
                if pickled
                else ""
            )
            raise PicovlmError(f"{directory} has no *.safetensors file.{hint}")
        self.directory = directory
        self.file_of: dict[str, Path] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                self.file_of.update(dict.fromkeys(f.keys(), file))

    def __contains__(self, key: str) -> bool:
        return key in self.file_of

    def keys(self) -> list[str]:
        return list(self.file_of)

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.file_of[key]), framework="pt") as f:
            return f.get_tensor(key)

    def prefix_of(self, anchor: str, what: str) -> str:
        """The prefix before `anchor` (the shortest, if a checkpoint holds several)."""
        found = sorted((k[: -len(anchor)] for k in self.file_of if k.endswith(anchor)), key=len)
        if not found:
            raise PicovlmError(f"{self.directory} has no {what} (no tensor named *{anchor}).")
        return found[0]


def _check_fields(source: str, pairs: list[tuple[str, Any, str, Any]]) -> None:
    """Raise one error listing every (our field, our value, their field, their value) that disagrees."""
    bad = [
        f"{ours}={ov!r} but the checkpoint's {theirs}={tv!r}"
        for ours, ov, theirs, tv in pairs
        if tv is not None and not (math.isclose(ov, tv, rel_tol=1e-6) if isinstance(tv, float) else ov == tv)
    ]
    if bad:
        raise PicovlmError(
            f"{source}: the config does not match the checkpoint: {'; '.join(bad)}. Set those fields to the "
            f"checkpoint's values (picovlm.model.hf.config_from_hf builds a matching config)."
        )


def _unwrap(module: nn.Module, attr: str) -> nn.Module:
    """Accept a whole VLM or just one of its towers."""
    return getattr(module, attr, module)


def _open_checkpoint(
    model_or_tower: nn.Module, attr: str, name_or_path: str | os.PathLike, revision: str | None
) -> tuple[nn.Module, VLMConfig, str, dict[str, Any], Checkpoint]:
    """(our tower, its config, the checkpoint's name for messages, its config.json settings, its tensors)
    for loading the checkpoint into the tower `attr` ("vision_encoder" or "decoder") of a VLM, or into
    that tower alone."""
    tower = _unwrap(model_or_tower, attr)
    directory = resolve_checkpoint(name_or_path, revision)
    hf = read_hf_config(directory, "vision" if attr == "vision_encoder" else "text")
    return tower, tower.cfg, str(name_or_path), hf, Checkpoint(directory)


# --- Vision tower --------------------------------------------------------------------------------


def load_vision_weights(
    model_or_vit: nn.Module, name_or_path: str | os.PathLike, revision: str | None = None
) -> LoadReport:
    """Copy a SigLIP / SigLIP2 vision tower's weights into our ViT (or a VLM's), keeping its first n blocks."""
    vit, cfg, source, hf, ckpt = _open_checkpoint(model_or_vit, "vision_encoder", name_or_path, revision)
    prefix = ckpt.prefix_of(SIGLIP_ANCHOR, "SigLIP vision tower")
    available = _count_blocks(ckpt, prefix + SIGLIP_BLOCK_PREFIX)
    if cfg.vit_cls_flag:
        raise PicovlmError(f"{source}: SigLIP has no CLS token; set vit_cls_flag=False to load it.")
    if hf.get("hidden_act", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_new"):
        raise PicovlmError(f"{source}: hidden_act={hf['hidden_act']!r}; picovlm's ViT uses GELU with tanh.")
    _check_fields(
        source,
        [
            ("vit_hidden_dim", cfg.vit_hidden_dim, "hidden_size", hf.get("hidden_size")),
            ("vit_inter_dim", cfg.vit_inter_dim, "intermediate_size", hf.get("intermediate_size")),
            ("vit_n_heads", cfg.vit_n_heads, "num_attention_heads", hf.get("num_attention_heads")),
            ("vit_patch_size", cfg.vit_patch_size, "patch_size", hf.get("patch_size")),
            ("vit_ln_eps", cfg.vit_ln_eps, "layer_norm_eps", hf.get("layer_norm_eps")),
        ],
    )
    _check_depth(source, "vit_n_blocks", cfg.vit_n_blocks, available)
    report = LoadReport(source, "siglip", cfg.vit_n_blocks, available)
    if prefix:
        report.notes.append(f"read tensors under the prefix {prefix!r}")

    state = {}
    for ours, theirs in key_map("siglip", cfg.vit_n_blocks).items():
        state[ours] = torch.cat([ckpt.get(prefix + t) for t in theirs], dim=0)
    patch = state["patch_embedding.conv.weight"]
    if patch.ndim == 2:  # SigLIP2: a Linear over patches flattened as (row, col, channel)
        P = cfg.vit_patch_size
        state["patch_embedding.conv.weight"] = patch.view(patch.shape[0], P, P, 3).permute(0, 3, 1, 2)
        report.fmt = "siglip2"
    state["patch_embedding.position_embedding"] = _fit_positions(
        state["patch_embedding.position_embedding"], cfg, bicubic=report.fmt == "siglip", report=report
    )
    _load_state(vit, state, source, report)
    if any(k.startswith(prefix + "head.") for k in ckpt.keys()):
        report.notes.append("skipped the attention-pooling head (picovlm's VLM reads every patch)")
    return report


def _fit_positions(pos: torch.Tensor, cfg: VLMConfig, bicubic: bool, report: LoadReport) -> torch.Tensor:
    """(N_ckpt, D) learned positions -> (1, N, D) for our patch grid, resized if the grids differ."""
    side, grid = math.isqrt(pos.shape[0]), cfg.vit_img_size // cfg.vit_patch_size
    if side * side != pos.shape[0]:
        raise PicovlmError(
            f"the checkpoint has {pos.shape[0]} positions, not a square grid: cannot map them."
        )
    if side != grid:
        image = pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, side, side)
        # SigLIP resizes bicubically (transformers' interpolate_pos_encoding), SigLIP2 bilinearly with antialias
        mode = dict(mode="bicubic") if bicubic else dict(mode="bilinear", antialias=True)
        image = F.interpolate(image, size=(grid, grid), align_corners=False, **mode)
        pos = image.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(pos.dtype)
        report.notes.append(
            f"resized learned positions from a {side}x{side} grid to {grid}x{grid} "
            f"(vit_img_size={cfg.vit_img_size}, the checkpoint's {side * cfg.vit_patch_size})"
        )
    return pos.unsqueeze(0)


# --- Language model ------------------------------------------------------------------------------


def load_language_weights(
    model_or_lm: nn.Module, name_or_path: str | os.PathLike, revision: str | None = None
) -> LoadReport:
    """Copy a Llama-family LM's weights into our LanguageModel (or a VLM's), keeping its first n blocks."""
    lm, cfg, source, hf, ckpt = _open_checkpoint(model_or_lm, "decoder", name_or_path, revision)
    base = ckpt.prefix_of(LLAMA_ANCHOR, "Llama-style language model")  # "model." in LlamaForCausalLM
    available = _count_blocks(ckpt, base + "layers.{i}.")
    _check_llama_config(source, cfg, hf)
    known = {base + "layers.0." + t for names in LLAMA_BLOCK_KEYS.values() for t in names}
    unknown = sorted(k for k in ckpt.keys() if k.startswith(base + "layers.0.") and k not in known)
    if unknown:  # e.g. Qwen2's q/k/v biases: loading without them would silently change the model
        raise PicovlmError(f"{source}: block tensors picovlm's Llama-style block lacks: {unknown[:4]}.")
    _check_depth(source, "lm_n_blocks", cfg.lm_n_blocks, available)
    report = LoadReport(source, "llama", cfg.lm_n_blocks, available)
    if base != "model.":
        report.notes.append(f"read the text model under the prefix {base!r}")

    def theirs_name(name: str) -> str:
        return base + name[len("model.") :] if name.startswith("model.") else name

    state = {}
    for ours, theirs in key_map("llama", cfg.lm_n_blocks).items():
        names = [theirs_name(t) for t in theirs]
        if all(n in ckpt for n in names):
            state[ours] = torch.cat([ckpt.get(n) for n in names], dim=0)
    embed = state["embed_tokens.weight"]
    head = state.pop("lm_head.weight", None)
    checkpoint_tied = head is None or torch.equal(head, embed)
    if cfg.lm_tie_weights and not checkpoint_tied:
        raise PicovlmError(
            f"{source}: the checkpoint has an lm_head separate from its embeddings but lm_tie_weights=True: "
            f"set lm_tie_weights=False to load both."
        )
    hf_vocab = embed.shape[0]
    if cfg.lm_vocab_size < hf_vocab:
        raise PicovlmError(
            f"{source}: lm_vocab_size={cfg.lm_vocab_size} but the checkpoint's vocab_size={hf_vocab}: use the "
            f"checkpoint's tokenizer and set lm_vocab_size to at least {hf_vocab}."
        )
    state["embed_tokens.weight"] = _grow_rows(embed, cfg.lm_vocab_size, report, "embedding")
    if not cfg.lm_tie_weights:
        state["lm_head.weight"] = _grow_rows(
            embed if head is None else head, cfg.lm_vocab_size, report, "lm_head"
        )
    _load_state(lm, state, source, report)
    return report


def _check_llama_config(source: str, cfg: VLMConfig, hf: dict[str, Any]) -> None:
    rope_theta = hf.get("rope_theta")
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise PicovlmError(f"{source}: RoPE scaling {scaling} is not supported; picovlm uses plain RoPE.")
    if hf.get("attention_bias") or hf.get("mlp_bias") or hf.get("hidden_act", "silu") != "silu":
        raise PicovlmError(
            f"{source}: attention/MLP biases or a non-SiLU activation: not a Llama-style block."
        )
    heads = hf.get("num_attention_heads")
    if hf.get("head_dim") and heads and hf["head_dim"] * heads != hf.get("hidden_size"):
        raise PicovlmError(
            f"{source}: head_dim={hf['head_dim']} x heads != hidden_size; picovlm needs them equal."
        )
    _check_fields(
        source,
        [
            ("lm_hidden_dim", cfg.lm_hidden_dim, "hidden_size", hf.get("hidden_size")),
            ("lm_inter_dim", cfg.lm_inter_dim, "intermediate_size", hf.get("intermediate_size")),
            ("lm_n_heads", cfg.lm_n_heads, "num_attention_heads", heads),
            ("lm_n_kv_heads", cfg.lm_n_kv_heads, "num_key_value_heads", hf.get("num_key_value_heads", heads)),
            ("lm_rms_eps", cfg.lm_rms_eps, "rms_norm_eps", hf.get("rms_norm_eps")),
            ("lm_re_base", cfg.lm_re_base, "rope_theta", None if rope_theta is None else float(rope_theta)),
        ],
    )


def _grow_rows(weight: torch.Tensor, rows: int, report: LoadReport, what: str) -> torch.Tensor:
    """Pretrained rows first; the extra rows (tokens the checkpoint never saw) start at the mean row."""
    extra = rows - weight.shape[0]
    if extra == 0:
        return weight
    report.notes.append(
        f"{what}: copied {weight.shape[0]} pretrained rows, set {extra} new rows to their mean"
    )
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(extra, -1)], dim=0)


# --- Shared helpers ------------------------------------------------------------------------------


def _count_blocks(ckpt: Checkpoint, block_prefix: str) -> int:
    n = 0
    while any(k.startswith(block_prefix.format(i=n)) for k in ckpt.keys()):
        n += 1
    return n


def _check_depth(source: str, field_name: str, ours: int, available: int) -> None:
    if ours > available:
        raise PicovlmError(
            f"{source}: {field_name}={ours} but the checkpoint has only {available} blocks: set "
            f"{field_name} to at most {available} (fewer keeps the first blocks)."
        )


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str, report: LoadReport) -> None:
    """Copy every tensor (shape-checked, cast to the module's dtype); every parameter must be covered."""
    own = module.state_dict()
    for name, tensor in state.items():
        if own[name].shape != tensor.shape:
            raise PicovlmError(
                f"{source}: tensor for {name} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(own[name].shape)}: the config does not match the checkpoint."
            )
    missing = [
        k for k in own if k not in state and not (k == "lm_head.weight" and "embed_tokens.weight" in state)
    ]
    if missing:
        raise PicovlmError(f"{source}: the checkpoint lacks {missing[:5]}.")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)
    report.tensors = len(state)
    report.parameters = sum(t.numel() for t in state.values())
    if report.blocks_loaded < report.blocks_available:
        report.notes.append(
            f"truncated: kept the first {report.blocks_loaded} of {report.blocks_available} blocks"
        )


# --- Configs from Hugging Face config.json files -----------------------------------------------


def config_from_hf(
    vision: str | os.PathLike | None = None,
    lm: str | os.PathLike | None = None,
    revision: str | None = None,
    **overrides: Any,
) -> VLMConfig:
    """A VLMConfig whose towers match these checkpoints' config.json; `overrides` win (e.g. n_blocks).

    Pass `vit_n_blocks` / `lm_n_blocks` smaller than the checkpoint's depth to truncate, and
    `lm_vocab_size` larger than its vocabulary to make room for picovlm's special tokens.
    """
    values: dict[str, Any] = {}
    if vision is not None:
        hf = _required_config(vision, revision, "vision")
        values.update(
            vit_hidden_dim=hf["hidden_size"],
            vit_inter_dim=hf["intermediate_size"],
            vit_n_heads=hf["num_attention_heads"],
            vit_n_blocks=hf["num_hidden_layers"],
            vit_patch_size=hf["patch_size"],
            vit_ln_eps=hf["layer_norm_eps"],
            vit_img_size=hf["image_size"],
            vit_cls_flag=False,
        )
    if lm is not None:
        hf = _required_config(lm, revision, "text")
        values.update(
            lm_hidden_dim=hf["hidden_size"],
            lm_inter_dim=hf["intermediate_size"],
            lm_n_heads=hf["num_attention_heads"],
            lm_n_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
            lm_n_blocks=hf["num_hidden_layers"],
            lm_vocab_size=hf["vocab_size"],
            lm_rms_eps=hf["rms_norm_eps"],
            lm_re_base=float(hf["rope_theta"]),
            lm_max_position_embeddings=hf["max_position_embeddings"],
            lm_tie_weights=bool(hf["tie_word_embeddings"]),
        )
    values.update(overrides)
    return VLMConfig(**values)


def _required_config(name_or_path: str | os.PathLike, revision: str | None, part: str) -> dict[str, Any]:
    directory = resolve_checkpoint(name_or_path, revision, patterns=["*.json"])
    if not (directory / "config.json").is_file():
        raise PicovlmError(f"{name_or_path}: no config.json, so the {part} tower's shape is unknown.")
    return read_hf_config(directory, part)


def vlm_from_pretrained_towers(
    vision: str | os.PathLike,
    lm: str | os.PathLike,
    vit_n_blocks: int | None = None,
    lm_n_blocks: int | None = None,
    revision: str | None = None,
    **overrides: Any,
):
    """A new VLM with a pretrained SigLIP tower and LM (first n blocks of each), the LM's tokenizer
    attached when its folder has tokenizer.json, and a freshly initialised projector.

    Returns (model, [vision LoadReport, language LoadReport]).
    """
    from picovlm.model.vlm import VisionLanguageModel

    lm_dir = resolve_checkpoint(lm, revision)
    tokenizer = None
    if (lm_dir / "tokenizer.json").is_file():
        from picovlm.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(lm_dir).add_image_wrap_tokens()  # a new model: Idefics3's image layout
    depth = {k: v for k, v in (("vit_n_blocks", vit_n_blocks), ("lm_n_blocks", lm_n_blocks)) if v is not None}
    cfg = config_from_hf(vision, lm, revision, **depth, **overrides)
    if tokenizer is not None and len(tokenizer) > cfg.lm_vocab_size and "lm_vocab_size" not in overrides:
        cfg = config_from_hf(vision, lm, revision, **depth, **overrides, lm_vocab_size=len(tokenizer))
    model = VisionLanguageModel(cfg)
    reports = [load_vision_weights(model, vision, revision), load_language_weights(model, lm_dir)]
    if tokenizer is not None:
        model.attach_tokenizer(tokenizer)
    return model, reports


# --- Export back to Hugging Face layout ----------------------------------------------------------


def vision_to_hf(model_or_vit: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Our ViT as a transformers SiglipVisionModel: (config.json dict, state dict)."""
    vit = _unwrap(model_or_vit, "vision_encoder")
    cfg: VLMConfig = vit.cfg
    if cfg.vit_cls_flag:
        raise PicovlmError("a ViT with vit_cls_flag=True has no SigLIP equivalent (SigLIP has no CLS token).")
    own = vit.state_dict()
    state: dict[str, torch.Tensor] = {}
    for ours, theirs in key_map("siglip", cfg.vit_n_blocks).items():
        tensor = own[ours].detach().cpu()
        if ours == "patch_embedding.position_embedding":
            tensor = tensor[0]  # (1, N, D) -> (N, D): an nn.Embedding table there
        for name, part in zip(theirs, tensor.chunk(len(theirs), dim=0)):
            state["vision_model." + name] = part.contiguous()
    config = {
        "architectures": ["SiglipVisionModel"],
        "model_type": "siglip_vision_model",
        "hidden_size": cfg.vit_hidden_dim,
        "intermediate_size": cfg.vit_inter_dim,
        "num_attention_heads": cfg.vit_n_heads,
        "num_hidden_layers": cfg.vit_n_blocks,
        "patch_size": cfg.vit_patch_size,
        "image_size": cfg.vit_img_size,
        "num_channels": 3,
        "layer_norm_eps": cfg.vit_ln_eps,
        "hidden_act": "gelu_pytorch_tanh",
        "vision_use_head": False,
    }
    return config, state


def language_to_hf(model_or_lm: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Our LM as a transformers LlamaForCausalLM: (config.json dict, state dict)."""
    lm = _unwrap(model_or_lm, "decoder")
    cfg: VLMConfig = lm.cfg
    own = lm.state_dict()
    state = {}
    for ours, (theirs,) in key_map("llama", cfg.lm_n_blocks).items():
        if not (ours == "lm_head.weight" and cfg.lm_tie_weights):
            state[theirs] = own[ours].detach().cpu().contiguous()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.lm_hidden_dim,
        "intermediate_size": cfg.lm_inter_dim,
        "num_attention_heads": cfg.lm_n_heads,
        "num_key_value_heads": cfg.lm_n_kv_heads,
        "num_hidden_layers": cfg.lm_n_blocks,
        "vocab_size": cfg.lm_vocab_size,
        "rms_norm_eps": cfg.lm_rms_eps,
        "rope_theta": cfg.lm_re_base,
        "max_position_embeddings": cfg.lm_max_position_embeddings,
        "tie_word_embeddings": cfg.lm_tie_weights,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": None,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }
    return config, state


def save_hf(exported: tuple[dict[str, Any], dict[str, torch.Tensor]], directory: str | os.PathLike) -> Path:
    """Write (config, state) from vision_to_hf / language_to_hf as a folder transformers can load."""
    from picovlm.utils import atomic_write_text

    config, state = exported
    directory = Path(directory)
    write_safetensors(state, directory / "model.safetensors", {"format": "pt"})
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2))
    return directory


# Idefics3 (SmolVLM's architecture in transformers): the SigLIP map under `model.`, the Llama map with its
# `model.` moved to `model.text_model.`, and the projector's one matrix. Idefics3's connector shuffles
# pixels exactly as projector.py does (each f x f block's patches, row-major, side by side in the
# channels), so the matrix carries over unchanged.
IDEFICS3_VISION_PREFIX = "model."  # + "vision_model.embeddings...", as vision_to_hf names them
IDEFICS3_TEXT_PREFIX = "model.text_model."  # replaces the "model." of language_to_hf's names
IDEFICS3_PROJECTOR_KEYS = {"proj.weight": "model.connector.modality_projection.proj.weight"}


def vlm_to_idefics3(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A whole VLM as a transformers Idefics3ForConditionalGeneration: (config.json dict, state dict).

    The image token id, pad and end tokens come from the model's config (set by its tokenizer)."""
    cfg: VLMConfig = model.cfg
    vision_config, vision_state = vision_to_hf(model)
    text_config, text_state = language_to_hf(model)
    state = {IDEFICS3_VISION_PREFIX + k: v for k, v in vision_state.items()}
    for name, tensor in text_state.items():
        state[IDEFICS3_TEXT_PREFIX + name[len("model.") :] if name.startswith("model.") else name] = tensor
    projector = model.projector.state_dict()
    for ours, theirs in IDEFICS3_PROJECTOR_KEYS.items():
        state[theirs] = projector[ours].detach().cpu().contiguous()
    for config in (vision_config, text_config):
        config.pop("architectures")
    vision_config.pop("vision_use_head")
    vision_config["model_type"] = "idefics3_vision"
    config = {
        "architectures": ["Idefics3ForConditionalGeneration"],
        "model_type": "idefics3",
        "vision_config": vision_config,
        "text_config": text_config,
        "scale_factor": cfg.mp_pixel_shuffle_factor,
        "image_token_id": cfg.image_token_id,
        "pad_token_id": cfg.pad_token_id,
        "tie_word_embeddings": cfg.lm_tie_weights,
        "use_cache": True,
        "dtype": "float32",
    }
    return config, state
