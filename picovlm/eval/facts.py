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
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from picovlm.eval.metrics import normalize_answer, words_with_places

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
        found = {name: self._locate(name, words) for name in self.names}
        return {name: place[2] if place else None for name, place in found.items()}

    def restate(self, answer: str, facts: dict[str, str]) -> str:
        """`answer` with the value it states of each fact in `facts` replaced by the value given there
        (found as `__call__` finds it; facts it does not state, or states rightly, are left alone). The
        new value takes the case of the words it replaces, and an "a"/"an" before it is made to fit it:
        "an Oceanian nation" -> "a European nation". What `GenerationConfig.probed_facts` does
        to an answer with the values its fact probes read (picovlm/retrieval.py)."""
        words = words_with_places(answer)
        normalized = [word for word, _, _ in words]
        if normalized != normalize_answer(answer).split():  # a character whose folding spans words
            return answer
        edits = []
        for name, value in facts.items():
            place = self._locate(name, normalized) if name in self._by_first else None
            if place is None or place[2] == normalize_answer(str(value)):
                continue
            start, end = words[place[0]][1], words[place[1] - 1][2]
            edits.append((start, end, str(value)))
        # two facts found in the same words (e.g. the colours of a picture's three objects): which one
        # the words state is not known, so they stay as written
        alone = [
            (start, end, value)
            for i, (start, end, value) in enumerate(edits)
            if not any(j != i and start < e and s < end for j, (s, e, _) in enumerate(edits))
        ]
        for start, end, value in sorted(alone, reverse=True):  # from the end, so places stay true
            answer = (
                _with_article(answer[:start], value) + _cased_like(answer[start:end], value) + answer[end:]
            )
        return answer

    def _locate(self, name: str, words: list[str]) -> tuple[int, int, str] | None:
        """(first word, one past the last, value) of the fact's value in the normalised words, or None."""
        found: list[tuple[bool, int, int, str]] = []  # (not in context, start, end, value)
        by_first = self._by_first[name]
        for start, word in enumerate(words):
            for value_words in by_first.get(word, ()):
                end = start + len(value_words)
                if words[start:end] != value_words:
                    continue
                in_context = (start > 0 and words[start - 1] in self._before.get(name, ())) or (
                    end < len(words) and words[end] in self._after.get(name, ())
                )
                found.append((not in_context, start, end, " ".join(value_words)))
                break  # the longest value that starts here
        return min(found)[1:] if found else None


def _cased_like(written: str, value: str) -> str:
    """`value` in the case of the words it replaces: capitalised where they were ("Classical style")."""
    old, new = written.split(), value.split()
    capitalised = [w[:1].isupper() for w in old] or [False]
    return " ".join(
        w[:1].upper() + w[1:] if capitalised[min(i, len(capitalised) - 1)] else w for i, w in enumerate(new)
    )


def _with_article(before: str, value: str) -> str:
    """The text before a replaced value, its trailing "a"/"an" made to fit the value: "an" before a
    vowel letter, but "a European", "a unit", "a one-horned" (English by spelling, so not always right)."""
    match = re.search(r"\b(an?)(\s+)$", before, flags=re.IGNORECASE)
    if match is None:
        return before
    sounds_vowel = value[:1].lower() in "aeiou" and not value.lower().startswith(
        ("eu", "uni", "one", "use", "usu")
    )
    article = "an" if sounds_vowel else "a"
    if match.group(1)[0].isupper():
        article = article.capitalize()
    return before[: match.start(1)] + article + match.group(2)


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
