"""Typed configs: `VLMConfig` (the model's shape) and `TrainConfig` (how to train it).

Field names follow nanoVLM's `models/config.py`, so an edit a nanoVLM user made (`lm_n_blocks = 1`,
`vit_inter_dim = 768`, ...) carries over unchanged. Unlike nanoVLM, derived values (head dims, image
tokens per image) are computed in `__post_init__` from the fields they depend on, and an impossible
combination fails at construction with a message naming the field and the fix.

Configs come from four places, applied in this order: a named preset, a YAML/JSON file, then
`section.field=value` overrides (e.g. from the command line). `load_config` does all of it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from picovlm.errors import ConfigError
from picovlm.utils import atomic_write_text

# The question a row, a request or a command asks when it gives none: the built-in sets ask it too.
DEFAULT_QUESTION = "Describe the image."


@dataclass
class VLMConfig:
    # --- Vision tower: a SigLIP-style ViT --------------------------------------------------------
    vit_hidden_dim: int = 768
    vit_inter_dim: int = 3072
    vit_patch_size: int = 16
    vit_img_size: int = 224
    vit_n_heads: int = 12
    vit_n_blocks: int = 12
    vit_dropout: float = 0.0
    vit_ln_eps: float = 1e-6
    vit_cls_flag: bool = False

    # --- Language model: Llama-style (SmolLM2 geometry by default) -------------------------------
    lm_hidden_dim: int = 576
    lm_inter_dim: int = 1536
    lm_rms_eps: float = 1e-5
    lm_re_base: float = 100000.0
    lm_max_position_embeddings: int = 8192
    lm_vocab_size: int = 49152
    lm_n_heads: int = 9
    lm_n_kv_heads: int = 3
    lm_dropout: float = 0.0
    lm_n_blocks: int = 30
    lm_max_length: int = 256
    lm_tie_weights: bool = True

    # --- Modality projector ----------------------------------------------------------------------
    mp_pixel_shuffle_factor: int = 2

    # --- Retrieval-augmented answers (picovlm/retrieval.py) ----------------------------------------
    # The answers of this many most similar training pictures go into the prompt ("Similar: ..."), and
    # the model learns to edit them; the index travels with the model. 0 = off.
    retrieval_k: int = 0
    # How much the pictures' colours and strokes count beside their 32x32 thumbnails when the index finds
    # neighbours: similarity = thumbnail cosine + colour weight x colour-histogram cosine + gradient weight
    # x stroke-histogram cosine (picovlm.retrieval.PictureFeatures). 0 = not at all (models saved before
    # they existed); "auto" (the retrieval presets) = as the training split says works best
    # (picovlm.retrieval.choose_weights), written here as numbers when training builds the index.
    retrieval_colour_weight: float | str = 0.0
    retrieval_gradient_weight: float | str = 0.0

    # --- Token ids the model needs at run time (filled in from the tokenizer) --------------------
    image_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | None = None

    # --- Derived in __post_init__: never set these by hand ---------------------------------------
    vit_head_dim: int = field(init=False)
    vit_n_patches: int = field(init=False)
    lm_head_dim: int = field(init=False)
    mp_image_token_length: int = field(init=False)

    def __post_init__(self) -> None:
        _check_types(self)
        _check_positive(
            self,
            [f.name for f in fields(self) if f.type in ("int", int) and f.init and f.name != "retrieval_k"],
        )
        if self.retrieval_k < 0:
            raise ConfigError(f"retrieval_k={self.retrieval_k} is negative: use 0 (off) or a count (e.g. 2).")
        for name in ("retrieval_colour_weight", "retrieval_gradient_weight"):
            weight = getattr(self, name)
            if (isinstance(weight, str) and weight != "auto") or (not isinstance(weight, str) and weight < 0):
                raise ConfigError(f"{name}={weight!r}: use auto (chosen on the training split), 0 (thumbnails "
                                  "alone) or a weight (e.g. 1).")  # fmt: skip
        multiple = self.vit_img_size // self.vit_patch_size * self.vit_patch_size
        _check_divisible(
            self,
            "vit_img_size",
            "vit_patch_size",
            f"pick an image size that is a multiple of the patch size (e.g. {multiple})",
        )
        for tower in ("vit", "lm"):
            _check_divisible(
                self,
                f"{tower}_hidden_dim",
                f"{tower}_n_heads",
                "choose a head count that "
                f"divides the hidden size ({_divisors(getattr(self, f'{tower}_hidden_dim'))})",
            )
        _check_divisible(
            self,
            "lm_n_heads",
            "lm_n_kv_heads",
            "grouped-query attention shares each key/value "
            f"head among a whole number of query heads; use one of {_divisors(self.lm_n_heads)}",
        )
        self.vit_head_dim = self.vit_hidden_dim // self.vit_n_heads
        self.lm_head_dim = self.lm_hidden_dim // self.lm_n_heads
        if self.lm_head_dim % 2:
            raise ConfigError(
                f"lm_hidden_dim / lm_n_heads = {self.lm_head_dim} is odd: RoPE rotates pairs of channels, so "
                f"the head dim must be even; change lm_n_heads or lm_hidden_dim."
            )
        grid = self.vit_img_size // self.vit_patch_size
        if grid % self.mp_pixel_shuffle_factor:
            raise ConfigError(
                f"the patch grid is {grid}x{grid} (vit_img_size / vit_patch_size), which "
                f"mp_pixel_shuffle_factor={self.mp_pixel_shuffle_factor} does not divide: use a factor in "
                f"{_divisors(grid)} or change the image or patch size."
            )
        self.vit_n_patches = grid * grid
        self.mp_image_token_length = (grid // self.mp_pixel_shuffle_factor) ** 2
        if self.mp_image_token_length + 2 > self.lm_max_length:
            raise ConfigError(
                f"lm_max_length={self.lm_max_length} leaves no room for text after "
                f"{self.mp_image_token_length} image tokens: raise lm_max_length."
            )
        if self.lm_max_length > self.lm_max_position_embeddings:
            raise ConfigError(
                f"lm_max_length={self.lm_max_length} exceeds lm_max_position_embeddings="
                f"{self.lm_max_position_embeddings}: raise lm_max_position_embeddings."
            )
        for name in ("image_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.lm_vocab_size:
                raise ConfigError(
                    f"{name}={value} is outside the vocabulary (lm_vocab_size={self.lm_vocab_size}): "
                    f"the tokenizer has more tokens than the model; raise lm_vocab_size to at least {value + 1}."
                )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


# What TrainConfig.best_metric may follow: the val loss, or an answer metric of the in-training check
# (higher is better; gen_field_accuracy needs a dataset with a `fields` column of a built-in set).
# "auto" (the default) is gen_token_f1 where the answer check runs on a validation split, else val_loss:
# on real data best/ by val loss was far worse than the final model (emoji: token F1 0.41 vs 0.51;
# wesnoth: facts 0.26 vs 0.36), best/ by the answers' F1 within 0.015 of it (docs/recipes.md).
BEST_METRICS = (
    "auto", "val_loss", "gen_token_f1", "gen_rouge_l", "gen_field_accuracy", "gen_distinct_answer_share"
)  # fmt: skip


@dataclass
class TrainConfig:
    # Learning rates per parameter group; 0 freezes that tower. The defaults are picovlm's recipe for
    # super-small models trained from scratch (see docs/recipes.md), not nanoVLM's fine-tuning rates.
    lr_mp: float = 3e-3
    lr_vision_backbone: float = 1e-3  # 3e-3 was worse at 1,000 steps (docs/recipes.md)
    lr_language_backbone: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    batch_size: int = 16  # on a few thousand items, more updates beat bigger batches (docs/recipes.md)
    gradient_accumulation_steps: int = 1
    max_steps: int | None = None
    epochs: float = 20.0  # ~3,000 steps on 2,400 rows: answers only start to follow the image after ~1,000
    max_minutes: float | None = None
    seed: int = 0
    packing: bool = False
    group_by_length: bool = True  # batches of similar-length samples: less padding
    num_workers: int = 0
    # Encoded samples kept in memory after their first read, up to this many MB for the training and
    # again for the validation split, per process (split between workers): later epochs skip the image
    # decode and the tokeniser. 0: off. With image_augment nothing is kept (new pictures every visit).
    sample_cache_mb: int = 1024
    eval_interval: int = 100
    val_max_items: int | None = 256
    gen_eval_interval: int = 500  # answers + collapse + image-reliance check; ~1 s for 32 rows on a CPU
    gen_eval_items: int = 32
    early_stopping_patience: int | None = None
    # What best/ and early stopping follow: "val_loss" (lower is better) or an answer metric of the
    # gen_* check (higher is better): on long runs the val loss rises while the answers still improve
    # (docs/recipes.md, finding 8). Answer metrics are judged every gen_eval_interval steps. "auto":
    # gen_token_f1 when there is a validation split and gen_eval_interval > 0, else val_loss.
    best_metric: str = "auto"
    checkpoint_interval: int = 200
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU (bf16 on CPU is ~17x slower here)
    compile: bool = False
    device: str = "auto"
    # CPU threads for torch; 0 keeps torch's default (one per core). Set 1 when other jobs share the
    # CPU: oversubscribed threads made a step up to 15x slower on a busy 2-core machine (docs/recipes.md).
    threads: int = 0
    report_to: str = "none"
    data_dir: str | None = None
    train_split: str = "train"
    val_split: str = "validation"
    # Train even when held-out splits share images with the training split (picovlm/data/leakage.py);
    # without it training refuses to start above 1% of a split.
    allow_leakage: bool = False
    out_dir: str = "runs/picovlm"
    tokenizer: str | None = None
    tokenizer_vocab_size: int = 1024
    # Each training picture slightly shifted and scaled every time it is read (never flipped, rotated
    # or recoloured: those can change the facts). picovlm/data/image_jitter.py; measured in docs/recipes.md.
    image_augment: bool = False
    # Share of a uniform target mixed into each answer token's one-hot target: a model that memorises
    # its few thousand answers is kept from becoming certain of them. The logged train loss includes it.
    label_smoothing: float = 0.0
    # Weight averaging: evaluate, keep best/ and save model/ with an exponential moving average of the
    # weights over the last ~1 / (1 - ema_decay) steps (picovlm/train/average.py); 0 = off, the
    # trained weights as they are. Measured on real data: docs/recipes.md.
    ema_decay: float = 0.0
    # Weight of the auxiliary fact loss: linear heads on the vision tower's pooled features learn each
    # row's `fields` (picovlm/train/facts.py); 0 = off. "auto": 1 where the training rows carry facts the
    # heads can learn (a `fields` column, packing off), else off. Measured on real data: docs/recipes.md.
    fact_loss_weight: float | str = "auto"
    # After training, a retrieving model answers this many validation rows greedily, with the neighbours'
    # vote and with the vote weighed by its fact heads, and keeps the best as its generation.json
    # (picovlm/eval/choose.py; docs/recipes.md, finding 25); 0 = always greedy. ~20 s for 256 rows.
    choose_generation_items: int = 256
    # Pictures no larger than half the model's vit_img_size are read at their own size: the image size
    # and the patch size are halved together (the same patch grid, so the same image tokens; a 4x
    # smaller patch embedding) instead of upscaling every picture (picovlm/train/setup.py,
    # fit_image_size), down to 8-px patches; a resumed run keeps its shapes. On the real sets' 112 px
    # pictures: 7-32 % more steps in the same minutes (docs/recipes.md, finding 33).
    native_image_size: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        _check_types(self)
        for name in ("lr_mp", "lr_vision_backbone", "lr_language_backbone", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"{name}={getattr(self, name)} is negative: use 0 to freeze, or a positive rate."
                )
        _check_positive(
            self, ["batch_size", "gradient_accumulation_steps", "eval_interval", "checkpoint_interval"]
        )
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"max_steps={self.max_steps} must be positive (or null to train by epochs).")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision={self.precision!r}: use one of auto, fp32, bf16.")
        if self.report_to not in ("none", "wandb", "trackio", "tensorboard"):
            raise ConfigError(f"report_to={self.report_to!r}: use one of none, wandb, trackio, tensorboard.")
        if self.choose_generation_items < 0:
            raise ConfigError(
                f"choose_generation_items={self.choose_generation_items} is negative: use 0 (always greedy) "
                "or a number of validation rows (e.g. 256)."
            )
        if self.threads < 0:
            raise ConfigError(f"threads={self.threads} is negative: use 0 for torch's default, or a count.")
        if self.sample_cache_mb < 0:
            raise ConfigError(
                f"sample_cache_mb={self.sample_cache_mb} is negative: use 0 (off) or e.g. 1024."
            )
        if isinstance(self.fact_loss_weight, str) and self.fact_loss_weight != "auto":
            raise ConfigError(
                f"fact_loss_weight={self.fact_loss_weight!r}: use auto, 0 (off) or a weight (e.g. 1)."
            )
        if not isinstance(self.fact_loss_weight, str) and self.fact_loss_weight < 0:
            raise ConfigError(
                f"fact_loss_weight={self.fact_loss_weight} is negative: use 0 (off) or e.g. 0.5."
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing} must be in [0, 1) (e.g. 0.1).")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay={self.ema_decay} must be in [0, 1): 0 (off) or e.g. 0.998.")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1).")
        if self.best_metric not in BEST_METRICS:
            raise ConfigError(f"best_metric={self.best_metric!r}: use one of {', '.join(BEST_METRICS)}.")
        if self.best_metric not in ("auto", "val_loss") and not self.gen_eval_interval:
            raise ConfigError(
                f"best_metric={self.best_metric} is measured by the answer check, which "
                "gen_eval_interval=0 turns off: set gen_eval_interval (e.g. 500) or best_metric=val_loss."
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


# --- Presets --------------------------------------------------------------------------------------

# The blog's Table 1 ("super_small_xx"): vocab 49152, tied embeddings, 224 px, patch 16, ViT hidden 768,
# one ViT block with one head, one LM block. Only the columns that change are listed per iteration.
_SUPER_SMALL_BASE = dict(
    vit_hidden_dim=768, vit_patch_size=16, vit_img_size=224, vit_n_heads=1, vit_n_blocks=1,
    lm_n_blocks=1, lm_vocab_size=49152, lm_tie_weights=True, mp_pixel_shuffle_factor=2,
)  # fmt: skip
_SUPER_SMALL_TABLE = {
    # iteration: (lm_hidden_dim, lm_inter_dim, lm_n_heads, lm_n_kv_heads, vit_inter_dim)
    3: (72, 192, 4, 1, 3072),
    4: (72, 192, 6, 1, 3072),
    5: (72, 192, 6, 3, 3072),
    6: (144, 192, 6, 2, 3072),
    7: (108, 192, 6, 2, 3072),
    8: (108, 96, 6, 1, 3072),
    9: (144, 192, 6, 1, 1536),
    10: (144, 192, 6, 1, 768),
    11: (216, 192, 6, 1, 768),
}

PRESETS: dict[str, dict[str, Any]] = {
    # nanoVLM-222M: SigLIP-B/16-224 vision tower + SmolLM2-135M language model, VLMConfig's defaults.
    "nanovlm-222m": dict(),
    # A model small enough for a unit test: builds in milliseconds.
    "tiny": dict(
        vit_hidden_dim=32,
        vit_inter_dim=64,
        vit_patch_size=8,
        vit_img_size=32,
        vit_n_heads=2,
        vit_n_blocks=1,
        lm_hidden_dim=32,
        lm_inter_dim=64,
        lm_n_heads=4,
        lm_n_kv_heads=2,
        lm_n_blocks=2,
        lm_vocab_size=512,
        lm_max_length=64,
        mp_pixel_shuffle_factor=2,
    ),  # fmt: skip
}
for _it, (_h, _inter, _nh, _nkv, _vinter) in _SUPER_SMALL_TABLE.items():
    PRESETS[f"super-small-{_it:02d}"] = dict(
        _SUPER_SMALL_BASE, lm_hidden_dim=_h, lm_inter_dim=_inter, lm_n_heads=_nh, lm_n_kv_heads=_nkv,
        vit_inter_dim=_vinter,
    )  # fmt: skip

# The blog's iteration-11 language model (216 wide, one block, 6 heads, 1 kv head) with a cheaper
# vision stem (the default before retrieval, and the base of picovlm's default below): 32 px patches
# (7x7 = 49 image tokens without pixel shuffle) and a 384-wide ViT. A training step costs ~4x less
# than 224/16 with a 768-wide ViT, so the 10-minute CPU budget holds ~3,000 steps, and the model gets
# past "learned the templates" to "reads the image".
# Measured in docs/recipes.md.
PRESETS["picovlm-small"] = dict(
    PRESETS["super-small-11"], vit_patch_size=32, mp_pixel_shuffle_factor=1, vit_hidden_dim=384,
)  # fmt: skip
# picovlm's default: picovlm-small that edits its neighbours' answers instead of recalling its own
# (picovlm/retrieval.py): the answers of the 2 most similar training pictures in the prompt, a second
# LM block so it can copy from them word by word, room for the longer prompt. On real data (emoji, cjk,
# wesnoth; 10 minutes, two seeds) it beat picovlm-small on token F1 and facts, and with the fact loss
# (TrainConfig.fact_loss_weight "auto") never collapsed (docs/recipes.md, "Real data"). 4 neighbours
# instead of 2 did not help.
# Neighbours by thumbnail, colours and strokes, weighted as the training split says (auto): the colour
# histogram told emoji's skin tones and wesnoth's units apart where the thumbnail's shape did not
# (finding 26); strokes found CJK characters' look-alikes (finding 27).
_RETRIEVAL = dict(
    retrieval_k=2, lm_max_length=512, retrieval_colour_weight="auto", retrieval_gradient_weight="auto"
)
PRESETS["picovlm-small-retrieval"] = dict(PRESETS["picovlm-small"], **_RETRIEVAL, lm_n_blocks=2)
# The blog's iteration 11 unchanged (one LM block, 224/16 ViT; retrieval adds no parameters) with the
# default recipe's retrieval: on real data it got ~370 steps in 10 CPU minutes and collapsed without it
# (18 % distinct answers on cjk, broken words on wesnoth); with it, its answers stay apart
# (docs/recipes.md, finding 21).
PRESETS["super-small-11-retrieval"] = dict(PRESETS["super-small-11"], **_RETRIEVAL)
DEFAULT_PRESET = "picovlm-small-retrieval"


def base_model_fields(preset_name: str | None) -> dict[str, Any]:
    """The model fields a config starts from: the named preset, else picovlm's DEFAULT_PRESET (the
    recipe), so `picovlm train data_dir=...` with no preset trains the model the recipe was tuned for."""
    return preset(preset_name or DEFAULT_PRESET).to_dict()


def preset(name: str, **overrides: Any) -> VLMConfig:
    """The named preset as a VLMConfig, with field overrides applied on top."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(sorted(PRESETS))}.")
    return VLMConfig(**{**PRESETS[name], **overrides})


# --- Files and overrides --------------------------------------------------------------------------


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or JSON config file as a dict with optional sections `model` and `train`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # the parser's own message says where: pass it on with the file name
        raise ConfigError(f"{path}: cannot parse: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with sections 'model' and/or 'train'.")
    return data


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """`["model.lm_hidden_dim=216", "train.lr_mp=1e-3"]` -> {"model": {...}, "train": {...}}.

    A bare `field=value` goes to whichever section has that field. Values are parsed as YAML, so
    numbers, booleans, null and lists work as expected.
    """
    import yaml

    model_fields = {f.name for f in fields(VLMConfig) if f.init}
    train_fields = {f.name for f in fields(TrainConfig)}
    out: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form field=value (e.g. model.lm_n_blocks=2).")
        section, _, name = key.rpartition(".")
        section = section.lstrip("-")
        name = name.lstrip("-")
        if not section:
            section = "model" if name in model_fields else "train" if name in train_fields else ""
        if section not in out or name not in (model_fields if section == "model" else train_fields):
            raise ConfigError(
                f"override {item!r}: unknown field {key!r}; see `picovlm params --help` and docs/config.md."
            )
        out[section][name] = yaml.safe_load(raw)
    return out


# Model fields older versions wrote and nothing read: the Hub ids `picovlm init` started from and a
# tokenizer name (SmolLM2's, while training uses its own BPE). Files that hold them still load.
RETIRED_MODEL_FIELDS = frozenset({"vit_model_type", "lm_model_type", "lm_tokenizer"})


def build_vlm_config(values: dict[str, Any], source: str = "config") -> VLMConfig:
    """A VLMConfig from a dict, warning about (not failing on) keys this version does not know."""
    known = {f.name for f in fields(VLMConfig) if f.init}
    derived = {f.name for f in fields(VLMConfig) if not f.init}
    retired = sorted(set(values) & RETIRED_MODEL_FIELDS)
    if retired:
        logging.getLogger(__name__).debug("%s: ignoring retired model config keys %s", source, retired)
    unknown = sorted(set(values) - known - derived - RETIRED_MODEL_FIELDS)
    if unknown:
        import warnings

        warnings.warn(f"{source}: ignoring unknown model config keys {unknown}", stacklevel=2)
    try:
        return VLMConfig(**{k: v for k, v in values.items() if k in known})
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from None


def build_train_config(values: dict[str, Any], source: str = "config") -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown train config keys {unknown}; known keys are listed in docs/config.md."
        )
    return TrainConfig(**values)


def load_config(
    preset_name: str | None = None,
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
) -> tuple[VLMConfig, TrainConfig]:
    """Preset, then file, then overrides: the one way every command builds its configs."""
    train: dict[str, Any] = {}
    data = read_config_file(path) if path is not None else {}
    model = base_model_fields(preset_name or data.get("preset"))
    if path is not None:
        model.update(data.get("model") or {})
        train.update(data.get("train") or {})
    parsed = parse_overrides(overrides or [])
    model.update(parsed["model"])
    train.update(parsed["train"])
    return build_vlm_config(model, str(path or preset_name or "config")), build_train_config(train)


def save_config(path: str | os.PathLike, model: VLMConfig, train: TrainConfig | None = None) -> None:
    """Write a YAML (or .json) file that `load_config(path=...)` reads back to equal configs."""
    data: dict[str, Any] = {"model": model.to_dict()}
    if train is not None:
        data["train"] = train.to_dict()
    path = Path(path)
    if path.suffix == ".json":
        text = json.dumps(data, indent=2)
    else:
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    atomic_write_text(path, text)


_TYPE_NAMES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_types(obj: Any) -> None:
    """A value of the wrong type (e.g. the string "None" from an override) is a ConfigError, not a crash."""
    for f in fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        kinds = [k.strip() for k in str(f.type).split("|")]
        if value is None and "None" in kinds:
            continue
        if "float" in kinds and isinstance(value, str):
            # PyYAML (YAML 1.1) reads 6e-3, with no dot, as a string; Python, JSON and YAML 1.2 read a
            # number, and so should `train.lr_mp=6e-3` on the command line and `lr_mp: 6e-3` in a file.
            value = _float_or_same(value)
            if not isinstance(value, str):
                object.__setattr__(obj, f.name, value)
        allowed = tuple(t for k in kinds for t in _TYPE_NAMES.get(k, ()))
        if not allowed:
            continue  # tuples and other shapes are checked where they are used
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            hint = " (use null, not None, for no value)" if value == "None" else ""
            raise ConfigError(f"{f.name}={value!r} should be of type {f.type}{hint}.")


def _float_or_same(text: str) -> float | str:
    """`text` as a number where it is one in exponent notation ("6e-3", "1E+2"), else unchanged."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if any(c.isdigit() for c in text) else text  # "nan" and "inf" stay words


def _check_positive(obj: Any, names: list[str]) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int) and value <= 0:
            raise ConfigError(f"{name}={value} must be a positive integer.")


def _check_divisible(obj: Any, whole: str, part: str, fix: str) -> None:
    """A ConfigError naming both fields and the fix unless field `part` divides field `whole`."""
    if getattr(obj, whole) % getattr(obj, part):
        raise ConfigError(
            f"{whole}={getattr(obj, whole)} is not divisible by {part}={getattr(obj, part)}: {fix}."
        )


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0 and d <= 64)


def replace(config: VLMConfig, **changes: Any) -> VLMConfig:
    """A copy of `config` with fields changed and derived values recomputed."""
    return dataclasses.replace(config, **changes)
