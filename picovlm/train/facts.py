"""The auxiliary fact loss (`train.fact_loss_weight`): the vision tower also learns to name each row's facts.

On real data a few thousand answers are memorised, not generalised: the model learns which training
answer goes with which exact picture, and on an unseen object recalls a wrong one (docs/recipes.md).
The rows' `fields` (the facts an answer states: a unit's race, an emoji's group, a glyph's radical) are
a far stronger signal per picture than the words of an answer, and one that transfers: classes are
shared between objects, names are not. So beside the answer loss, one linear head per field reads the
vision tower's mean-pooled features of the row's first picture and predicts that field's value:

    features (B, D_vit) = mean over patches of ViT(first picture of each row)
    loss per token      = answer cross-entropy + fact_loss_weight x (mean over the row's fields of the
                          heads' cross-entropy), each row weighted by its answer tokens

The VLM does not use the heads to answer, and they are not saved with it: the checkpoint keeps them,
so a resumed run continues exactly. What weighs a retrieving model's neighbours' vote (copy_fact_weight)
is `fit_fact_probes`: one linear classifier per field over the index's picture vectors, fitted once when
the index is built and saved beside it (picovlm/retrieval.py, FactReader), because on the real sets
the pixels name the facts better than the tower does (docs/recipes.md, finding 28).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.errors import ConfigError, DataError
from picovlm.eval.facts import row_facts
from picovlm.eval.metrics import flatten_fields

IGNORE = -100
# A field whose values are mostly one-offs (a name, a free-text note) cannot be learned as classes
# that carry over to new objects: keep a field only when its values repeat, on average this often.
MIN_ROWS_PER_VALUE = 2.0


@dataclass
class FactVocabulary:
    """The classes of each fact field, read from the training rows' `fields`."""

    values: dict[str, list[str]]  # field path -> its values, in a fixed order

    def __post_init__(self) -> None:
        self._class_of = {path: {v: i for i, v in enumerate(vs)} for path, vs in self.values.items()}

    @classmethod
    def from_rows(cls, fields_column) -> FactVocabulary:
        values = {
            path: sorted(c)
            for path, c in sorted(cls.value_counts(fields_column).items())
            if len(c) >= 2 and c.total() / len(c) >= MIN_ROWS_PER_VALUE
        }
        return cls(values)

    @staticmethod
    def value_counts(fields_column) -> dict[str, Counter[str]]:
        """How often each value of each field path occurs in the rows' `fields`: what `from_rows` keeps
        fields by (and `picovlm data facts` says why it left one out)."""
        counts: dict[str, Counter[str]] = {}
        for raw in fields_column:
            for path, value in flatten_fields(row_facts({"fields": raw}) or {}).items():
                counts.setdefault(path, Counter())[str(value)] += 1
        return counts

    def __len__(self) -> int:
        return len(self.values)

    def encode(self, raw_fields) -> list[int]:
        """One class id per field (IGNORE where the row lacks the field or has a value never trained on)."""
        facts = flatten_fields(row_facts({"fields": raw_fields}) or {})
        return [
            self._class_of[path].get(facts[path], IGNORE) if path in facts else IGNORE for path in self.values
        ]


class FactHeads(nn.Module):
    """One linear classifier per fact field over the vision tower's pooled features."""

    def __init__(self, vocabulary: FactVocabulary, vision_dim: int):
        super().__init__()
        self.vocabulary = vocabulary
        self.heads = nn.ModuleList(nn.Linear(vision_dim, len(v)) for v in vocabulary.values.values())

    def numpy_heads(self) -> list[tuple]:
        """Each field's (weight (C, D), bias (C,)) as float32 numpy arrays: what the index keeps."""
        return [
            (head.weight.detach().float().cpu().numpy(), head.bias.detach().float().cpu().numpy())
            for head in self.heads
        ]

    def per_row_loss(self, features: torch.Tensor, fact_labels: torch.Tensor) -> torch.Tensor:
        """(B, D) features, (B, F) class ids -> (B,) mean cross-entropy over each row's known fields."""
        total = features.new_zeros(features.shape[0])
        known = (fact_labels != IGNORE).float()
        for j, head in enumerate(self.heads):
            ce = F.cross_entropy(
                head(features).float(), fact_labels[:, j], ignore_index=IGNORE, reduction="none"
            )
            total = total + ce * known[:, j]
        return total / known.sum(dim=1).clamp(min=1)


# Picture probes: how `fit_fact_probes` fits. The index's vectors are unit-length, so the logits are
# scaled up (PROBE_SCALE) for 300 full-batch Adam steps to fit; PROBE_L2 keeps ~15 pictures per class
# from being fitted exactly. Measured on the real sets' validation splits (docs/recipes.md, finding 28);
# no other L2 or scale read more facts on every set (finding 44).
PROBE_STEPS = 300
PROBE_LR = 0.05
PROBE_SCALE = 10.0
PROBE_L2 = 1e-3


def fit_fact_probes(
    vectors,
    classes,
    class_counts: list[int],
    steps: int = PROBE_STEPS,
    l2: float = PROBE_L2,
    scale: float = PROBE_SCALE,
):
    """One softmax classifier per fact field over the retrieval index's picture vectors, fitted on the
    training rows: (vectors (n, d), classes (n, fields) with -1 = unknown, each field's class count) ->
    each field's (weight (C, d), bias (C,)) as float32 numpy, what FactReader keeps.

    The vision tower learns the facts too (the fact loss), but from scratch on a few thousand pictures
    it reads them worse than the pixels do: on the real sets a linear probe on the index's vectors names
    a glyph's radical 59 % right against the tower's 21 %, a unit's race 76 % against 38 % (finding 28).
    All fields are fitted at once, one weight matrix whose rows are split by field; full-batch from
    zeros, so the fit is the same every time."""
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    y = torch.from_numpy(np.asarray(classes, dtype=np.int64).reshape(len(x), -1))
    if y.shape[1] != len(class_counts):
        raise ValueError(f"classes has {y.shape[1]} fields, class_counts {len(class_counts)}")
    weight = torch.zeros(sum(class_counts), x.shape[1], requires_grad=True)
    bias = torch.zeros(sum(class_counts), requires_grad=True)
    bounds = np.cumsum([0, *class_counts])
    optimizer = torch.optim.Adam([weight, bias], lr=PROBE_LR)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = (x @ weight.T + bias) * scale
        loss = l2 * weight.pow(2).sum()
        for field, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            known = y[:, field] >= 0
            if known.any():
                loss = loss + F.cross_entropy(logits[known, start:end], y[known, field])
        loss.backward()
        optimizer.step()
    weight = weight.detach().numpy() * scale
    bias = bias.detach().numpy() * scale
    return [
        (weight[a:b].astype(np.float32), bias[a:b].astype(np.float32))
        for a, b in zip(bounds[:-1], bounds[1:])
    ]


def attach_fact_probes(index, vocabulary: FactVocabulary) -> None:
    """Fit the fact probes on a retrieval index built with `vocabulary`'s classes (`index.facts`) and
    make them its FactReader's heads, reading the pictures: what a retrieving run with facts saves
    beside its index, and what `picovlm data facts` scores."""
    from picovlm.retrieval import READS_PICTURES

    counts = [len(values) for values in vocabulary.values.values()]
    probes = fit_fact_probes(index.table, index.facts.classes, counts)
    index.facts = index.facts.with_heads(probes, READS_PICTURES).with_values(vocabulary.values)


class FactSupervised(nn.Module):
    """What the training steps call when fact_loss_weight > 0: the VLM's forward, plus the fact loss
    as `aux_loss` on the same scale as the answer loss (a sum over answer tokens with reduction="sum")."""

    def __init__(self, model: nn.Module, heads: FactHeads, weight: float):
        super().__init__()
        self.model, self.heads, self.weight = model, heads, weight

    def forward(self, *, pixel_values, labels, fact_labels, first_image, reduction="mean", **batch):
        vision = self.model.vision_encoder(pixel_values)  # (n_images, N, D), computed once for both losses
        out = self.model(pixel_values=pixel_values, labels=labels, reduction=reduction, vision_features=vision,
                         **batch)  # fmt: skip
        has_image = first_image >= 0
        tokens = (labels[:, 1:] != IGNORE).sum(dim=1).float()  # each row's answer tokens
        per_row = self.heads.per_row_loss(vision.mean(dim=1)[first_image[has_image]], fact_labels[has_image])
        aux = self.weight * (per_row * tokens[has_image]).sum()
        out.aux_loss = aux if reduction == "sum" else aux / tokens.sum().clamp(min=1)
        return out


# What fact_loss_weight="auto" becomes on rows with facts: 1 beat 3 and 0.5 on the real sets
# (docs/recipes.md, findings 19-20).
AUTO_FACT_LOSS_WEIGHT = 1.0


def settle_fact_loss(train_cfg, train_ds, notes: list[str]):
    """(train_cfg with fact_loss_weight a number, the heads' FactVocabulary or None when it is 0).

    "auto" becomes AUTO_FACT_LOSS_WEIGHT where the training rows carry facts the heads can learn and
    packing is off, else 0 with a note saying why; a weight > 0 asked for there is a clear error."""
    weight = train_cfg.fact_loss_weight
    if not weight:
        return train_cfg, None
    where = f"{train_cfg.data_dir} split {train_cfg.train_split!r}"
    if train_cfg.packing:
        why = "train.packing=true puts several rows in one sequence"
        error = ConfigError("train.fact_loss_weight needs one row per sequence: set train.packing=false.")
    elif "fields" not in train_ds.column_names:
        why = "the training rows have no `fields`"
        error = DataError(
            f"train.fact_loss_weight={weight} but {where} has no `fields` column: `picovlm data import` keeps "
            "a table's extra columns (e.g. category, colour) as fields; or set train.fact_loss_weight=0."
        )
    else:
        vocabulary = FactVocabulary.from_rows(train_ds["fields"])
        if len(vocabulary):
            number = AUTO_FACT_LOSS_WEIGHT if weight == "auto" else weight
            return replace(train_cfg, fact_loss_weight=number), vocabulary
        why = "no field of `fields` repeats its values across rows"
        error = DataError(
            f"{where}: no field of `fields` has values shared by at least {MIN_ROWS_PER_VALUE:g} rows on "
            "average, so there are no classes to learn; set train.fact_loss_weight=0."
        )
    if weight != "auto":
        raise error
    notes.append(f"fact loss off: {why}")
    return replace(train_cfg, fact_loss_weight=0.0), None
