"""A model on disk and on the Hub: the folder `save_pretrained` writes and `from_pretrained` reads.

    save_pretrained(model, "models/mine")        config.json, model.safetensors, tokenizer.json,
                                                 generation.json (how it answers unless told otherwise)
                                                 (+ retrieval_index.npz/.json for a retrieving model)
    load_pretrained("models/mine")               or a Hub repo id holding such a folder
    push_to_hub(model, "you/picovlm-shapes")     picovlm.hub: this folder plus a model card, uploaded

`VisionLanguageModel.save_pretrained` / `.from_pretrained` / `.push_to_hub` are one-line methods over
these. The checkpoint helpers below are shared with picovlm/model/hf.py, which reads and writes
Hugging Face towers the same way: one way to find a checkpoint (local folder or Hub download) and one
atomic safetensors write. Weights are read with safetensors only: loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from picovlm.errors import PicovlmError

if TYPE_CHECKING:  # torch is imported only by the functions that need it
    import torch

    from picovlm.model.vlm import VisionLanguageModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# What a Hub download fetches: configs, tokenizer and weights; *.npz is a retrieving model's index.
CHECKPOINT_PATTERNS = ("*.json", "*.safetensors")
MODEL_PATTERNS = (*CHECKPOINT_PATTERNS, "*.npz")


def resolve_checkpoint(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    patterns: Sequence[str] = CHECKPOINT_PATTERNS,
) -> Path:
    """A local folder as is; a Hub id downloaded (only the files matching `patterns`) into the HF cache."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise PicovlmError(f"{path} is a file: point at the folder holding config.json and *.safetensors.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=list(patterns)))
    except Exception as err:
        raise PicovlmError(
            f"{name_or_path!r} is not a local folder and the Hub could not provide it ({type(err).__name__}: {err}). "
            f"Check the id, or download it once with network access (HF_HUB_OFFLINE=1 blocks downloads)."
        ) from None


def write_safetensors(
    state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> Path:
    """Write `state` to `path` atomically: a temp file beside it, then os.replace (never half a file)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def save_pretrained(model: VisionLanguageModel, directory: str | os.PathLike) -> Path:
    """config.json + model.safetensors + generation.json (+ tokenizer.json, + the retrieval index): a
    folder `load_pretrained` reads back."""
    from picovlm.generation import save_generation
    from picovlm.utils import atomic_write_text

    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.cfg.lm_tie_weights:
        state.pop("decoder.lm_head.weight", None)  # the same tensor as the embedding
    write_safetensors(state, directory / WEIGHTS_FILE, {"format": "pt", "library": "picovlm"})
    atomic_write_text(directory / CONFIG_FILE, json.dumps(model.cfg.to_dict(), indent=2))
    save_generation(model.generation, directory)
    if model.tokenizer is not None:
        model.tokenizer.save(directory)
    if model.retrieval is not None:
        model.retrieval.save(directory)
    return directory


def load_pretrained(
    name_or_path: str | os.PathLike, device: str = "cpu", revision: str | None = None, cls=None
) -> VisionLanguageModel:
    """The model in a folder written by save_pretrained, or a Hugging Face Hub repo id with one inside,
    in eval mode on `device`. `cls`: the model class to build (default VisionLanguageModel)."""
    from picovlm.config import build_vlm_config
    from picovlm.generation import GENERATION_FILE, copy_options_check, load_generation

    if cls is None:
        from picovlm.model.vlm import VisionLanguageModel as cls
    directory = resolve_checkpoint(name_or_path, revision, MODEL_PATTERNS)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise PicovlmError(f"{directory} has no {CONFIG_FILE}: is it a folder written by save_pretrained?")
    cfg = build_vlm_config(json.loads(config_path.read_text()), str(config_path))
    model = cls(cfg)
    _load_weights(model, directory / WEIGHTS_FILE)
    model.generation = load_generation(directory)
    if (directory / "tokenizer.json").is_file():
        from picovlm.data.tokenizer import load_tokenizer

        model.attach_tokenizer(load_tokenizer(directory))
    if cfg.retrieval_k:
        from picovlm.retrieval import RetrievalIndex

        model.retrieval = RetrievalIndex.load(directory)
        if model.retrieval is None:
            raise PicovlmError(
                f"{directory}: the model retrieves (retrieval_k={cfg.retrieval_k}) but the folder has no "
                "retrieval_index.json: copy the whole folder that training wrote."
            )
    try:  # a generation.json asking for what this model cannot do fails here, naming the file
        copy_options_check(model.generation, model.retrieval)
    except PicovlmError as err:
        raise type(err)(
            f"{directory / GENERATION_FILE} asks for what this model cannot do: {err} Or delete that file: "
            "the model then answers greedily."
        ) from None
    return model.to(device).eval()


def _load_weights(model: VisionLanguageModel, weights: Path) -> None:
    """Every parameter from `weights` (tied heads from the embedding); unknown tensors warn."""
    from safetensors.torch import load_file

    if not weights.is_file():
        raise PicovlmError(f"{weights.parent} has no {weights.name}.")
    state = load_file(str(weights))
    if model.cfg.lm_tie_weights:
        state.setdefault("decoder.lm_head.weight", state["decoder.embed_tokens.weight"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise PicovlmError(f"{weights} lacks weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}.")
    if unexpected:
        warnings.warn(f"{weights}: ignoring unknown weights {unexpected[:5]}", stacklevel=3)
