"""The parameter report: how many parameters each tower has, and what memory they need.

Counts come from the real modules (built on the `meta` device, so even nanovlm-222m costs no memory),
so they can never drift from the architecture. Tied weights count once.

`trained_vocab_size` says which vocabulary `picovlm train` gives a config: the presets carry SmolLM2's
49,152 rows (the blog's Table 1), but the trainer sizes the embedding to the tokenizer it trains on the
data (`train.tokenizer_vocab_size`, 1,024 by default), so `picovlm params` reports that model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from picovlm.config import TrainConfig, VLMConfig


@dataclass
class ParamReport:
    vit: int
    projector: int
    lm: int  # embedding included (the blog's "LLM SIZE")
    lm_embedding: int
    lm_non_embedding: int
    total: int

    def memory_bytes(self, bytes_per_param: float) -> int:
        return int(self.total * bytes_per_param)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def param_report(cfg: VLMConfig) -> ParamReport:
    from picovlm.model.language import LanguageModel
    from picovlm.model.projector import ModalityProjector
    from picovlm.model.vision import ViT

    with torch.device("meta"):
        vit, projector, lm = ViT(cfg), ModalityProjector(cfg), LanguageModel(cfg)
    n_vit, n_proj, n_lm = count(vit), count(projector), count(lm)
    n_emb = lm.embed_tokens.weight.numel()
    return ParamReport(
        vit=n_vit,
        projector=n_proj,
        lm=n_lm,
        lm_embedding=n_emb,
        lm_non_embedding=n_lm - n_emb,
        total=n_vit + n_proj + n_lm,
    )


def trained_vocab_size(model_cfg: VLMConfig, train_cfg: TrainConfig) -> tuple[int, str]:
    """(vocabulary, where it comes from) of the model `picovlm train` builds from these configs.

    The same rules as the trainer's `prepare_tokenizer`: a given `train.tokenizer` raises lm_vocab_size
    to its size if needed; otherwise the trainer trains a BPE of at most `train.tokenizer_vocab_size`
    tokens on the training texts and sizes the embedding to it (fewer tokens when the texts have fewer
    merges to learn: 415 on the demo scenes). With `train.data_dir` that BPE is trained here too, so the
    figure is exact; without it, the cap is the figure.
    """
    if train_cfg.tokenizer:
        from picovlm.data.tokenizer import load_tokenizer

        n = len(load_tokenizer(train_cfg.tokenizer).add_image_wrap_tokens())  # as prepare_tokenizer
        return max(n, model_cfg.lm_vocab_size), f"train.tokenizer {train_cfg.tokenizer} ({n:,} tokens)"
    cap = train_cfg.tokenizer_vocab_size
    if not train_cfg.data_dir:
        return (
            cap,
            f"the trainer's BPE, at most train.tokenizer_vocab_size={cap:,} (fewer on texts with fewer merges)",
        )
    from picovlm.data.cauldron import load_cauldron
    from picovlm.data.tokenizer import train_tokenizer
    from picovlm.train.loop import training_texts

    texts = training_texts(load_cauldron(train_cfg.data_dir, split=train_cfg.train_split))
    n = len(train_tokenizer(texts, cap))
    return n, f"the trainer's BPE on {train_cfg.data_dir} split {train_cfg.train_split!r} (cap {cap:,})"


def format_report(name: str, report: ParamReport, vocabulary: str | None = None) -> str:
    """A plain-text table for the terminal; `vocabulary` is a line saying where the vocabulary comes from."""
    rows = [
        ("ViT", report.vit),
        ("projector", report.projector),
        ("LM (total)", report.lm),
        ("  embedding", report.lm_embedding),
        ("  non-embedding", report.lm_non_embedding),
        ("total", report.total),
    ]
    lines = [f"{name}"] + ([f"vocabulary: {vocabulary}"] if vocabulary else [])
    lines.append(f"{'tower':<16}{'parameters':>14}{'share':>8}")
    for label, n in rows:
        lines.append(f"{label:<16}{n:>14,}{n / report.total:>8.1%}")
    lines.append("")
    lines.append(f"{'weights in':<16}{'memory':>14}")
    for dtype, nbytes in (("fp32", 4), ("bf16", 2), ("int8", 1)):
        lines.append(f"{dtype:<16}{_human(report.memory_bytes(nbytes)):>14}")
    return "\n".join(lines)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)
