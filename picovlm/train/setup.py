"""Everything a run sets up before its first step: processes and device, the run folder, data and
tokenizer, the model and its memory check, the data loaders, and the compiled / DDP wrapper."""

from __future__ import annotations

import os
import random
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from picovlm.config import TrainConfig, VLMConfig, replace
from picovlm.data.cauldron import largest_image_side
from picovlm.errors import ConfigError, DataError
from picovlm.train import checkpoint as ckpt
from picovlm.utils import ProgressFn

SUMMARY_FILE = "summary.json"


@dataclass
class Dist:
    """This process's place in the run: its rank of world_size processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    local_world_size: int = 1  # the run's processes on this machine (torchrun's LOCAL_WORLD_SIZE)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Sum numbers over ranks (one all-reduce for the whole list)."""
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()


def setup_distributed(device_name: str) -> Dist:
    """Join the torchrun process group if RANK/WORLD_SIZE say so, and choose this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device_name} but no CUDA GPU is visible: use device=cpu or device=auto.")
    device = torch.device(device_name)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    return Dist(rank, world_size, local_rank, device, local_world_size)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means plain fp32. auto: bf16 on CUDA; fp32 on CPU, where bf16 autocast was ~17x slower here."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def prepare_run_dir(run_dir: Path, resume: bool, dist_: Dist) -> None:
    """Refuse to overwrite a run, or to resume one that has no checkpoint; create the folder."""
    if not resume and (ckpt.has_checkpoint(run_dir) or (run_dir / SUMMARY_FILE).exists()):
        raise ConfigError(
            f"{run_dir} already holds a run: pass --resume to continue it, or choose another train.out_dir."
        )
    if resume and not ckpt.has_checkpoint(run_dir):
        raise ConfigError(f"--resume: {run_dir} has no {ckpt.CHECKPOINT_FILE} to resume from.")
    if dist_.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist_.barrier()


# --- Data and tokenizer ----------------------------------------------------------------------------


def load_data(train_cfg: TrainConfig, notes: list[str]) -> tuple[Any, Any | None]:
    """load_splits, refusing held-out rows that share a picture with training (they would make the
    val loss and eval measure memory) unless train.allow_leakage; what it finds goes into `notes`."""
    from picovlm.data.leakage import check_training_leakage

    train_ds, val_ds = load_splits(train_cfg)
    notes += check_training_leakage(
        train_cfg.data_dir, train_ds, train_cfg.train_split, train_cfg.allow_leakage
    )
    if val_ds is None:
        notes.append(
            f"no {train_cfg.val_split!r} split in {train_cfg.data_dir}: no val loss, no early stopping"
        )
    return train_ds, val_ds


def load_splits(train_cfg: TrainConfig) -> tuple[Any, Any | None]:
    """The training split and the validation split (None if the dataset has none)."""
    from picovlm.data.cauldron import load_cauldron

    if not train_cfg.data_dir:
        raise ConfigError(
            "train.data_dir is not set: point it at a cauldron-schema dataset folder, e.g. the demo set "
            "(`picovlm data demo --out data/demo`, then data_dir=data/demo)."
        )
    if not Path(train_cfg.data_dir).exists():
        raise DataError(f"train.data_dir={train_cfg.data_dir} does not exist.")
    train_ds = load_cauldron(train_cfg.data_dir, split=train_cfg.train_split)
    if len(train_ds) == 0:
        raise DataError(
            f"{train_cfg.data_dir} split {train_cfg.train_split!r} is empty: nothing to train on."
        )
    try:
        val_ds = load_cauldron(train_cfg.data_dir, split=train_cfg.val_split)
    except DataError:
        val_ds = None
    if val_ds is not None and train_cfg.val_max_items and len(val_ds) > train_cfg.val_max_items:
        val_ds = val_ds.select(range(train_cfg.val_max_items))
    if val_ds is not None and len(val_ds) == 0:
        val_ds = None
    return train_ds, val_ds


def training_texts(dataset):
    """Every question and answer of a split, for training the tokenizer (no image decoding)."""
    from picovlm.data.cauldron import iter_column_batches

    for _, batch in iter_column_batches(dataset, ["texts"]):
        for turns in batch["texts"]:
            for turn in turns or []:
                yield from (turn.get("user") or "", turn.get("assistant") or "")


def prepare_tokenizer(
    model_cfg, train_cfg, train_ds, run_dir: Path, dist_: Dist, resuming: bool, notes: list[str]
):
    """Load or train the tokenizer, save it in the run folder, and size the model's vocabulary to it."""
    from picovlm.data.tokenizer import TOKENIZER_FILE, load_tokenizer

    saved = run_dir / TOKENIZER_FILE
    if resuming and saved.is_file():
        # Continue with the vocabulary the run started with (a trained tokenizer may have resized it).
        import yaml

        tokenizer = load_tokenizer(saved)
        started = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
        return replace(model_cfg, lm_vocab_size=started["lm_vocab_size"]), tokenizer
    if not train_cfg.tokenizer:
        return _train_tokenizer(model_cfg, train_cfg, train_ds, saved, dist_, notes)
    tokenizer = load_tokenizer(train_cfg.tokenizer).add_image_wrap_tokens()  # a new model's layout
    if model_cfg.lm_vocab_size < len(tokenizer):
        notes.append(
            f"lm_vocab_size raised from {model_cfg.lm_vocab_size} to {len(tokenizer)} to fit the tokenizer"
        )
        model_cfg = replace(model_cfg, lm_vocab_size=len(tokenizer))
    if dist_.main:
        tokenizer.save(run_dir)
    return model_cfg, tokenizer


def _train_tokenizer(model_cfg, train_cfg, train_ds, saved: Path, dist_: Dist, notes: list[str]):
    """A BPE trained on the training texts; the model's vocabulary is exactly its size."""
    from picovlm.data.tokenizer import load_tokenizer, train_tokenizer

    if dist_.main:  # one rank trains and saves; the others read the very same file
        train_tokenizer(training_texts(train_ds), train_cfg.tokenizer_vocab_size).save(saved.parent)
    dist_.barrier()
    tokenizer = load_tokenizer(saved)
    if model_cfg.lm_vocab_size != len(tokenizer):
        notes.append(
            f"trained a {len(tokenizer)}-token BPE on the training texts; lm_vocab_size "
            f"{model_cfg.lm_vocab_size} -> {len(tokenizer)} (a domain vocabulary shrinks the tied embedding)"
        )
    return replace(model_cfg, lm_vocab_size=len(tokenizer)), tokenizer


# --- Model, memory, loaders ------------------------------------------------------------------------


SMALLEST_PATCH = 8  # fit_image_size halves patches no further than this


def fit_image_size(model_cfg: VLMConfig, train_ds, notes: list[str]) -> VLMConfig:
    """Read small pictures at their own size. Where every training picture is at most half the model's
    vit_img_size, halve the image size and the patch size together (again while that still holds):
    the patch grid, and so the image tokens, stay the same, and the patch embedding, the model's
    largest weight matrix (3 x P^2 inputs per patch), shrinks 4x per halving. Upscaling a picture
    adds no detail for the model to read, only work. A halving goes to notes."""
    size, patch = model_cfg.vit_img_size, model_cfg.vit_patch_size
    largest = largest_image_side(train_ds)
    while 0 < largest <= size // 2 and size % 2 == 0 and patch % 2 == 0 and patch // 2 >= SMALLEST_PATCH:
        size, patch = size // 2, patch // 2
    if size == model_cfg.vit_img_size:
        return model_cfg
    grid = size // patch
    notes.append(
        f"the training pictures are at most {largest} px: the model reads them at {size} px with "
        f"{patch}-px patches (the same {grid}x{grid} patches) instead of upscaling them to "
        f"{model_cfg.vit_img_size} px with {model_cfg.vit_patch_size}-px patches; "
        f"train.native_image_size=false keeps {model_cfg.vit_img_size} px"
    )
    return replace(model_cfg, vit_img_size=size, vit_patch_size=patch)


def build_model(
    model_cfg: VLMConfig,
    tokenizer,
    train_ds,
    val_ds,
    progress: ProgressFn,
    facts=None,
    notes: list[str] | None = None,
):
    """The model, and the rows it reads: with retrieval (model.retrieval_k), each row with its neighbours.
    facts: the fact loss's FactVocabulary; the index then keeps each training row's classes and a probe
    per field over its picture vectors, for the neighbours' vote (`fit_fact_probes`). Retrieval
    weights "auto" become the numbers chosen on train_ds (in model.cfg, so the saved model says them),
    and the choice goes to notes."""
    from picovlm.model.vlm import VisionLanguageModel
    from picovlm.retrieval import build_training_index, with_neighbours

    model = VisionLanguageModel(model_cfg, tokenizer=tokenizer)
    if not model.cfg.retrieval_k:
        return model, train_ds, val_ds
    progress(0, None, "indexing the training pictures for retrieval")
    cfg = model.cfg
    model.retrieval = build_training_index(
        train_ds,
        cfg.retrieval_k,
        facts.encode if facts else None,
        cfg.retrieval_colour_weight,
        cfg.retrieval_gradient_weight,
        report=notes.append if notes is not None else None,
    )
    cfg.retrieval_colour_weight = model.retrieval.colour_weight
    cfg.retrieval_gradient_weight = model.retrieval.gradient_weight
    if model.retrieval.facts is not None:
        from picovlm.train.facts import attach_fact_probes

        progress(0, None, "fitting the fact probes on the training pictures")
        attach_fact_probes(model.retrieval, facts)
        if notes is not None and val_ds is not None and "fields" in val_ds.column_names:
            from picovlm.eval.fact_visibility import read_held_out

            # which facts the pictures show, on rows the probes never saw: `picovlm data facts` in a line
            notes.append(read_held_out(model.retrieval, facts, val_ds, "validation").note())
    # a training row's neighbours come from other objects, as a test picture's do
    train_rows = with_neighbours(train_ds, model.retrieval, exclude_own_group=True)
    val_rows = with_neighbours(val_ds, model.retrieval, exclude_own_group=False) if val_ds else None
    return model, train_rows, val_rows


def estimate_memory_bytes(cfg: VLMConfig, train_cfg: TrainConfig, trainable: int, total: int) -> int:
    """A rough upper estimate of training memory: weights, grads, AdamW moments, the weight average
    (train.ema_decay), activations, head chunk.

    Activations: per LM token and block ~ 12 D + 4 inter + 2 heads x T floats are kept for backward;
    per image patch and ViT block ~ 12 D_vit + 2 inter_vit + heads x patches. Good to a factor ~2,
    which is what a "will this batch fit at all" check needs.
    """
    B, T = train_cfg.batch_size, cfg.lm_max_length
    lm = B * T * cfg.lm_n_blocks * (12 * cfg.lm_hidden_dim + 4 * cfg.lm_inter_dim + 2 * cfg.lm_n_heads * T)
    lm += B * T * cfg.lm_hidden_dim * 4  # embeddings, final norm, hidden states kept for the head
    patches = cfg.vit_n_patches
    vit = (
        B
        * patches
        * cfg.vit_n_blocks
        * (12 * cfg.vit_hidden_dim + 2 * cfg.vit_inter_dim + cfg.vit_n_heads * patches)
    )
    head = 3 * 2048 * cfg.lm_vocab_size  # one chunk of logits, its softmax and its gradient
    copies = 4 if train_cfg.ema_decay else 3  # grads, two AdamW moments (+ the weight average)
    return 4 * (total + copies * trainable + lm + vit + head)


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def sample_cache_bytes(cfg: VLMConfig, train_cfg: TrainConfig, rows: int) -> int:
    """What one split's sample cache (train.sample_cache_mb) can come to in host memory: its cap, or
    all `rows` cached if they hold less (a picture of vit_img_size as uint8 and the token ids, ~8
    bytes each, per row, as `pipeline.sample_bytes` counts them). 0 when it is off or the run
    augments its pictures (nothing is kept then)."""
    if train_cfg.image_augment or not train_cfg.sample_cache_mb:
        return 0
    per_row = 3 * cfg.vit_img_size**2 + 8 * 2 * cfg.lm_max_length
    return min(train_cfg.sample_cache_mb * 2**20, rows * per_row)


def check_memory(
    model,
    train_cfg: TrainConfig,
    total_params: int,
    device: torch.device,
    split_rows: Sequence[int] = (),
    processes_here: int = 1,
) -> None:
    """Fail before training when the batch clearly cannot fit (call after build_optimizer, which
    freezes towers whose learning rate is 0: frozen weights need no gradients or AdamW state).
    split_rows: the rows of each split the run caches (training, validation); their sample caches
    live in host memory: beside the weights on a CPU (or MPS) run, apart from them on a CUDA run.
    processes_here: the run's processes on this machine (torchrun's LOCAL_WORLD_SIZE). Each holds its
    own caches (its sampler visits every row over the epochs) and, on a CPU, its own weights, AdamW
    state and activations, all in this machine's memory; on CUDA each has its own GPU."""
    trainable = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
    needed = estimate_memory_bytes(model.cfg, train_cfg, trainable, total_params)
    cache = sum(sample_cache_bytes(model.cfg, train_cfg, rows) for rows in split_rows) * processes_here
    available = available_memory_bytes(device)
    shared = device.type != "cuda"  # the caches and the weights draw on the same memory (CPU, MPS)
    if shared:
        needed *= processes_here
    each = f" for its {processes_here} processes on this machine" if processes_here > 1 else ""
    if needed > available:
        raise ConfigError(
            f"batch_size={train_cfg.batch_size} needs about {needed / 2**30:.1f} GiB on {device.type}"
            f"{each if shared else ''} (weights, AdamW state, activations) but only "
            f"{available / 2**30:.1f} GiB is free: lower train.batch_size and raise "
            f"train.gradient_accumulation_steps to keep the same global batch."
        )
    room = available - needed if shared else available_memory_bytes(torch.device("cpu"))
    if cache > room:
        beside = f", beside the {needed / 2**30:.1f} GiB the training needs," if shared else " of host memory"
        raise ConfigError(
            f"the sample caches of the training and validation rows need about {cache / 2**30:.1f} GiB"
            f"{each}{beside} and only {room / 2**30:.1f} GiB is left: lower train.sample_cache_mb (now "
            f"{train_cfg.sample_cache_mb} per split and process; 0 turns the cache off, and the batches "
            f"stay the same)."
        )


def peak_memory_mb(device: torch.device) -> tuple[float, float | None]:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return rss, cuda


def make_loaders(model, train_rows, val_rows, train_cfg: TrainConfig, dist_: Dist, facts=None):
    """(train loader, val loader or None, optimizer steps per epoch). Every rank reads its own
    interleaved share of each global batch (batch_size x gradient_accumulation_steps x processes).
    facts: the FactVocabulary of the auxiliary fact loss; training samples then carry their classes."""
    from picovlm.data.image_jitter import jitter_image
    from picovlm.data.pipeline import CauldronTorchDataset, make_dataloader

    augment = jitter_image if train_cfg.image_augment else None
    # each worker process holds its own copy of the dataset, and so of its cache
    cache_bytes = train_cfg.sample_cache_mb * 2**20 // max(1, train_cfg.num_workers)
    train_set = CauldronTorchDataset(
        train_rows,
        model.processor,
        augment=augment,
        seed=train_cfg.seed,
        facts=facts,
        cache_bytes=cache_bytes,
    )
    micro, accum = train_cfg.batch_size, train_cfg.gradient_accumulation_steps
    steps_per_epoch = (len(train_set) // dist_.world_size) // (micro * accum)
    if steps_per_epoch == 0:
        raise DataError(
            f"{train_cfg.data_dir} split {train_cfg.train_split!r} has {len(train_set)} rows, fewer than one "
            f"global batch ({micro * accum * dist_.world_size} = batch_size x gradient_accumulation_steps "
            f"x processes): lower train.batch_size or add data."
        )
    # this rank's share of every batch, packed into fewer rows if asked
    shared = {"rank": dist_.rank, "world_size": dist_.world_size, "packing": train_cfg.packing}
    loader = make_dataloader(
        train_set,
        micro,
        shuffle=True,
        seed=train_cfg.seed,
        num_workers=train_cfg.num_workers,
        drop_last=True,
        group_by_length=train_cfg.group_by_length,
        accumulation_steps=accum,
        **shared,
    )
    if val_rows is None:
        return loader, None, steps_per_epoch
    val_set = CauldronTorchDataset(val_rows, model.processor, cache_bytes=cache_bytes)
    val_loader = make_dataloader(val_set, micro, shuffle=False, **shared)
    # a rank without a single validation row would have nothing to add to the others' sum
    return loader, val_loader if len(val_set) >= dist_.world_size else None, steps_per_epoch


def wrap_model(model, train_cfg: TrainConfig, dist_: Dist, fact_heads=None) -> torch.nn.Module:
    """What the steps call: the model (with the fact heads' loss beside it, when there are heads),
    compiled if asked, inside DDP under torchrun. The model itself stays unwrapped for evaluation and saving."""
    train_model: torch.nn.Module = model
    if fact_heads is not None:
        from picovlm.train.facts import FactSupervised

        train_model = FactSupervised(model, fact_heads, train_cfg.fact_loss_weight)
    if train_cfg.compile:
        train_model = torch.compile(train_model)
    if dist_.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        cuda = dist_.device.type == "cuda"
        train_model = DDP(train_model, device_ids=[dist_.device.index] if cuda else None)
    return train_model
