"""Which of a dataset's facts do its pictures show? Asked before training, answered in seconds.

A model can only read off a picture what the picture shows. On issue 14's real sets the recipe that
reads emoji and CJK glyphs well cannot name a Freeciv nation's region or era from its flag, nor a
Wesnoth unit's level from its sprite: no reader can (docs/recipes.md, findings 29 and 31). A user
should learn that from their data, not from a failed run. So for each fact field of the rows'
`fields`, this fits the same readers a retrieving run fits when it builds its index, on the training
split, and scores them on a held-out split whose objects training never saw:

    probe    one softmax classifier per field over the index's picture vectors (`fit_fact_probes`)
    nearest  the value of the nearest training picture (the index's own neighbour)
    guess    the field's most common training value, for every picture

and compares the better reader with the guess:

    margin  = 2 x sqrt(guess x (1 - guess) / rows)     two standard errors of the guess's accuracy
    shown   = best - guess > margin  and  (best - guess) / (1 - guess) >= 0.25  (a quarter of its errors gone)
    barely  = best - guess > margin, less than that
    no      = best - guess <= margin: the pictures say no more about the field than a guess does

A field the pictures do not show can still be learned as words, but the answers state it as often as
a guess, and the shuffled-image gap (`picovlm eval`) cannot grow from it. Fields whose values are
mostly one-offs (a name) are not classes a picture can be taught: they are listed, not scored (the
fact loss skips them for the same reason: `FactVocabulary`). A retrieving run with facts scores its
own index on its validation rows the same way (`read_held_out`) and notes the result.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from picovlm.errors import DataError, PicovlmError
from picovlm.eval.facts import row_facts
from picovlm.eval.metrics import flatten_fields
from picovlm.utils import ProgressFn, no_progress

SHOWN_ERROR_CUT = 0.25  # a field is shown when the better reader removes this share of the guess's errors
UNSHOWN, BARELY, SHOWN = "no", "barely", "shown"


@dataclass
class FieldVisibility:
    """How well the pictures name one fact field of held-out objects."""

    field: str
    values: int  # classes in training
    rows: int  # held-out rows that state the field
    unseen: int  # of them, rows whose value training never had (every reader gets them wrong)
    probe: float  # accuracy of the fact probe over the picture vectors
    nearest: float  # accuracy of the nearest training picture's value
    guess: float  # accuracy of always the most common training value
    guess_value: str

    @property
    def best(self) -> float:
        return max(self.probe, self.nearest)

    @property
    def margin(self) -> float:
        """Two standard errors of the guess's accuracy on this many rows."""
        return 2.0 * math.sqrt(self.guess * (1.0 - self.guess) / max(self.rows, 1))

    @property
    def errors_removed(self) -> float:
        """The share of the guess's errors the better reader gets right."""
        return (self.best - self.guess) / (1.0 - self.guess) if self.guess < 1.0 else 0.0

    @property
    def verdict(self) -> str:
        if self.best - self.guess <= self.margin:
            return UNSHOWN
        return SHOWN if self.errors_removed >= SHOWN_ERROR_CUT else BARELY


@dataclass
class FactVisibility:
    """Every fact field's FieldVisibility, and the fields left out with why."""

    fields: list[FieldVisibility]
    skipped: dict[str, str]  # field -> why it is not scored
    train_rows: int
    held_rows: int
    held_split: str
    index: str  # how the index compares pictures, as the training split chose

    def note(self) -> str:
        """One line for a run's notes: each field's probe / nearest picture / guess and its verdict."""
        scored = "; ".join(
            f"{f.field} {f.probe:.2f} / {f.nearest:.2f} / {f.guess:.2f} {f.verdict}" for f in self.fields
        )
        return (f"facts the {self.held_split} pictures show (probe / nearest picture / most common value; "
                f"`picovlm data facts`): {scored or 'none scored'}")  # fmt: skip

    def to_dict(self) -> dict:
        rows = [{**asdict(f), "best": f.best, "margin": f.margin, "errors_removed": f.errors_removed,
                 "verdict": f.verdict} for f in self.fields]  # fmt: skip
        return {"held_split": self.held_split, "train_rows": self.train_rows, "held_rows": self.held_rows,
                "index": self.index, "fields": rows, "skipped": self.skipped}  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def markdown(self) -> str:
        """The table, then one line on what follows for the fields the pictures do not show."""
        lines = [
            f"Facts of {self.held_rows} {self.held_split} rows, read by what {self.train_rows} training "
            "rows teach (objects unseen in training):",
            "",
            "| field | values | rows | probe | nearest picture | guess (most common) | shown |",
            "|---|---|---|---|---|---|---|",
        ]
        for f in self.fields:
            unseen = f" ({f.unseen} unseen)" if f.unseen else ""
            lines.append(
                f"| {f.field} | {f.values} | {f.rows}{unseen} | {f.probe:.3f} | {f.nearest:.3f} | "
                f"{f.guess:.3f} ({f.guess_value}) | {f.verdict} |"
            )
        for name, why in self.skipped.items():
            lines.append(f"| {name} | | | | | | not scored: {why} |")
        unshown = [f.field for f in self.fields if f.verdict == UNSHOWN]
        lines.append("")
        if unshown:
            lines.append(
                f"The pictures do not show {', '.join(unshown)}: no reader here names "
                f"{'it' if len(unshown) == 1 else 'them'} more often than the most common value does. A model "
                "trained on these pictures will state such facts as a guess, and the answers' words about "
                "them will not follow the picture (a small shuffled-image gap in `picovlm eval`)."
            )
        else:
            lines.append("The pictures show every scored field better than a guess.")
        return "\n".join(lines)


def fact_visibility(train, held, held_split: str = "validation", progress: ProgressFn = no_progress):
    """Score how well the training pictures teach each fact field of `train`'s `fields` to name the
    held-out rows' values (`held`: objects unseen in training). Returns a FactVisibility."""
    from picovlm.retrieval import build_training_index
    from picovlm.train.facts import FactVocabulary, attach_fact_probes

    for name, dataset in (("training", train), (held_split, held)):
        if "fields" not in dataset.column_names:
            raise DataError(
                f"the {name} split has no `fields` column: nothing to score. Give the rows their facts as "
                "JSON in `fields` (picovlm data import keeps the table's other columns as facts: "
                "--fact-columns)"
            )
    vocabulary = FactVocabulary.from_rows(train["fields"])
    counts = FactVocabulary.value_counts(train["fields"])
    skipped = {
        path: (f"one value ({next(iter(c))})" if len(c) == 1 else
               f"{len(c)} values over {c.total()} rows: mostly one-offs, not classes a picture can teach")
        for path, c in sorted(counts.items()) if path not in vocabulary.values
    }  # fmt: skip
    if not vocabulary.values:
        raise DataError(
            "no fact field of the training split has values that repeat"
            + (f" ({'; '.join(f'{p}: {w}' for p, w in skipped.items())})" if skipped else "")
            + ": nothing a picture could be taught to name"
        )
    notes: list[str] = []
    progress(0, None, "indexing the training pictures")
    index = build_training_index(train, 1, vocabulary.encode, "auto", "auto", report=notes.append)
    if len(index) < 2:
        raise DataError("the training split has fewer than two rows with a picture and an answer")
    progress(0, None, "fitting one probe per fact on the training pictures")
    attach_fact_probes(index, vocabulary)
    progress(0, None, f"reading the {held_split} pictures")
    result = read_held_out(index, vocabulary, held, held_split)
    if not result.held_rows:
        raise DataError(f"the {held_split} split has no pictures to score")
    result.skipped = {**skipped, **result.skipped}
    result.index = "; ".join(notes)
    return result


def read_held_out(index, vocabulary, held, held_split: str) -> FactVisibility:
    """How well a retrieval index's fact probes (`FactReader` reading the pictures) and its nearest
    picture name the facts of `held`'s rows, each against the most common training value: what
    `fact_visibility` reports, and what a training run notes about its validation rows."""
    from picovlm.retrieval import first_images

    if not index.facts_read_pictures:
        raise PicovlmError(
            "this index's fact heads read the vision tower, not the pictures: refit its probes"
        )
    rows, images = first_images(held)
    fields_column = held["fields"] if "fields" in held.column_names else [None] * len(held)
    held_facts = [flatten_fields(row_facts({"fields": fields_column[r]}) or {}) for r in rows]
    vectors = index.vectors_of(images)
    nearest = np.array([neighbours[0] for neighbours in index.neighbours(vectors, k=1)])
    reader = index.facts
    results, skipped = [], {}
    for j, (path, values) in enumerate(vocabulary.values.items()):
        class_of = {value: c for c, value in enumerate(values)}
        stated = [i for i, facts in enumerate(held_facts) if path in facts]
        if not stated:
            skipped[path] = f"no {held_split} row states it"
            continue
        truth = np.array([class_of.get(held_facts[i][path], -1) for i in stated])
        probe_says = (vectors[stated] @ reader.weights[j].T + reader.biases[j]).argmax(axis=1)
        nearest_says = reader.classes[nearest[stated], j]
        known = reader.classes[:, j][reader.classes[:, j] >= 0]
        guess = int(np.bincount(known, minlength=len(values)).argmax())
        results.append(
            FieldVisibility(
                field=path, values=len(values), rows=len(stated), unseen=int((truth < 0).sum()),
                probe=float((probe_says == truth).mean()), nearest=float((nearest_says == truth).mean()),
                guess=float((truth == guess).mean()), guess_value=values[guess],
            )
        )  # fmt: skip
    return FactVisibility(results, skipped, len(index), len(images), held_split, "")
