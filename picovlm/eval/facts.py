"""Reading an answer's facts back out of its words, for any dataset with a `fields` column.

Every dataset may state its rows' facts as JSON in a `fields` column ({"category": "animals & nature",
"level": "2"}); field accuracy then asks whether a generated answer states the same values. Two kinds
of reader turn an answer into facts:

  * a parser written for a set's own templates (the demo scenes', Fashion-MNIST's);
  * `ValueMatcher`, for any other data: it learns each fact's known values from the rows (and the words
    around each value in the reference answers) and finds them in an answer.

The registry is the seam between evaluation and the datasets: each dataset module declares, by the
`source` its rows' turns carry, how its answers are read (`register_fact_parser(source, parser)`, or
`register_fact_parser(source)` for "a ValueMatcher over my `fields`"), and `fact_parser_for(dataset,
...)` picks the reader for rows. Evaluation, training and export call only that, so they name no
dataset. The built-in sets register themselves when imported; picovlm/data/registry.py lists them, and
`fact_parser_for` imports that list once. Rows from `picovlm data import` (any source) and any source
nobody registered get the ValueMatcher when they have `fields`.

Pure Python: no torch, so the runtime and a notebook can use it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from picovlm.eval.metrics import normalize_answer

ExtractFields = Callable[[str], dict[str, Any]]

# source -> its parser; None: the set's facts are learned from its `fields` (a ValueMatcher)
_PARSERS: dict[str, ExtractFields | None] = {}


def register_fact_parser(source: str, parser: ExtractFields | None = None) -> None:
    """Read the facts of answers from rows whose turns carry `source` with `parser` (answer -> facts);
    without a parser, with a ValueMatcher learnt from the rows' `fields` (what unregistered sources get
    too: registering says so out loud, and lets a test check that every built-in set did)."""
    _PARSERS[source] = parser


def registered_parser(source: str | None) -> ExtractFields | None:
    """The parser registered for `source`, None when it has none (its facts are then learned)."""
    return registered_sources().get(source) if source else None


def registered_sources() -> dict[str, ExtractFields | None]:
    """Every registered source and its parser (None: learned from `fields`), built-in sets included."""
    from picovlm.data.registry import load_builtin_datasets

    load_builtin_datasets()  # they register on import; a no-op after the first call
    return dict(_PARSERS)


class ValueMatcher:
    """Facts found in an answer by their known values: a flat `fields` dict per row is all it needs.

    For each fact it keeps the values seen in the rows (longest first, so "face with tears of joy" is
    found before "face") and the words just before and after a value in the reference answers ("level"
    before "2", "strokes" after "12"), learnt from the answers that state the value once. In an answer
    a fact's value is the first known value that sits in such a context, else the first known value at
    all; None when no known value occurs.
    """

    def __init__(self, rows: Iterable[tuple[dict[str, Any], str]]):
        values: dict[str, set[str]] = {}
        before: dict[str, Counter[str]] = {}
        after: dict[str, Counter[str]] = {}
        for facts, answer in rows:
            words = normalize_answer(answer).split()
            for name, value in facts.items():
                if value is None or isinstance(value, (dict, list)):
                    continue
                value_words = normalize_answer(str(value)).split()
                if not value_words:
                    continue
                values.setdefault(name, set()).add(" ".join(value_words))
                starts = _occurrences(words, value_words)
                # an answer that has the value twice ("a European nation ... in European style") does
                # not tell which place is this fact's: only answers that state it once teach a context
                for start in starts if len(starts) == 1 else ():
                    if start > 0:
                        before.setdefault(name, Counter())[words[start - 1]] += 1
                    end = start + len(value_words)
                    if end < len(words):
                        after.setdefault(name, Counter())[words[end]] += 1
        self.names = sorted(values)
        # values by their first word, longest first: an answer is scanned once per fact
        self._by_first: dict[str, dict[str, list[list[str]]]] = {}
        for name, known in values.items():
            by_first = self._by_first[name] = {}
            for value in sorted(known, key=lambda v: (-len(v.split()), v)):
                by_first.setdefault(value.split()[0], []).append(value.split())
        # a context word counts when it came with at least a tenth of the fact's occurrences
        self._before = {name: _common(counts) for name, counts in before.items()}
        self._after = {name: _common(counts) for name, counts in after.items()}

    def __call__(self, answer: str) -> dict[str, str | None]:
        words = normalize_answer(answer).split()
        return {name: self._find(name, words) for name in self.names}

    def _find(self, name: str, words: list[str]) -> str | None:
        found: list[tuple[bool, int, str]] = []  # (not in context, position, value)
        by_first = self._by_first[name]
        for start, word in enumerate(words):
            for value_words in by_first.get(word, ()):
                end = start + len(value_words)
                if words[start:end] != value_words:
                    continue
                in_context = (start > 0 and words[start - 1] in self._before.get(name, ())) or (
                    end < len(words) and words[end] in self._after.get(name, ())
                )
                found.append((not in_context, start, " ".join(value_words)))
                break  # the longest value that starts here
        return min(found)[2] if found else None


def _occurrences(words: list[str], value_words: list[str]) -> list[int]:
    n = len(value_words)
    return [i for i in range(len(words) - n + 1) if words[i : i + n] == value_words]


def _common(counts: Counter[str]) -> set[str]:
    total = sum(counts.values())
    return {word for word, count in counts.items() if count * 10 >= total}


def row_facts(row: dict) -> dict[str, Any] | None:
    """A row's `fields` as a dict (it is stored as a JSON string), None when it has none."""
    raw = row.get("fields")
    if raw in (None, ""):
        return None
    facts = json.loads(raw) if isinstance(raw, str) else raw
    return facts if isinstance(facts, dict) and facts else None


def _first_answer(row: dict) -> str:
    texts = row.get("texts") or []
    return texts[0].get("assistant", "") if texts else ""


def fact_parser_for(*datasets) -> ExtractFields | None:
    """The reader of answers' facts for these datasets (e.g. the train and the test split): the parser
    registered for their rows' source, else a ValueMatcher over their `fields`, else None."""
    datasets = [d for d in datasets if d is not None and len(d) and "fields" in d.column_names]
    if not datasets:
        return None
    first = datasets[0].select_columns(["texts"])[0]["texts"]
    parser = registered_parser(first[0].get("source") if first else None)
    if parser is not None:
        return parser
    rows = []
    for dataset in datasets:
        for row in dataset.select_columns(["texts", "fields"]):
            facts = row_facts(row)
            if facts:
                rows.append((facts, _first_answer(row)))
    matcher = ValueMatcher(rows)
    return matcher if matcher.names else None
