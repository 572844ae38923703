"""The parameter report: how many parameters each tower has, and what memory they need.

Counts come from the real modules (built on the `meta` device, so even nanovlm-222m costs no memory),
so they can never drift from the architecture. Tied weights count once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from picovlm.config import VLMConfig


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


def format_report(name: str, report: ParamReport) -> str:
    """A plain-text table for the terminal."""
    rows = [
        ("ViT", report.vit),
        ("projector", report.projector),
        ("LM (total)", report.lm),
        ("  embedding", report.lm_embedding),
        ("  non-embedding", report.lm_non_embedding),
        ("total", report.total),
    ]
    lines = [f"{name}", f"{'tower':<16}{'parameters':>14}{'share':>8}"]
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
