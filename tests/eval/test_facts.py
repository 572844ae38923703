"""The fact-parser registry: datasets declare how their answers are read; core code names no dataset."""

from __future__ import annotations

import json
import re
from pathlib import Path

from datasets import Dataset

import picovlm
from picovlm.data.realsets import REAL_SETS
from picovlm.data.scenes import DEMO_SOURCE
from picovlm.data.scenes import extract_fields as scene_fields
from picovlm.eval import facts
from picovlm.eval.facts import ValueMatcher, fact_parser_for, register_fact_parser, registered_sources


def rows(source: str, fields: list[dict] | None, answers: list[str]) -> Dataset:
    columns = {"texts": [[{"user": "Q?", "assistant": a, "source": source}] for a in answers]}
    if fields is not None:
        columns["fields"] = [json.dumps(f) for f in fields]
    return Dataset.from_dict(columns)


def test_every_builtin_set_declares_its_fact_reader():
    """The demo scenes and every `picovlm realset` name registered a reader when imported."""
    sources = registered_sources()
    assert {DEMO_SOURCE, *REAL_SETS} <= set(sources)
    assert sources[DEMO_SOURCE] is scene_fields
    assert sources["fashion-mnist"] is not None and sources["emoji"] is None  # None: learned from `fields`


def test_registered_parser_wins_and_other_sources_learn_from_fields(monkeypatch):
    monkeypatch.setattr(facts, "_PARSERS", dict(facts._PARSERS))  # leave the real registry as it was

    def parse_colour(answer: str) -> dict:
        return {"colour": answer.split()[-1]}

    register_fact_parser("my-set", parse_colour)
    assert fact_parser_for(rows("my-set", [{"colour": "red"}], ["It is red"])) is parse_colour
    # an imported table's rows (any source nobody registered) and a set registered without a parser
    register_fact_parser("my-learned-set")
    for source in ("import:table.csv", "my-learned-set"):
        reader = fact_parser_for(
            rows(source, [{"colour": "red"}, {"colour": "blue"}], ["A red box", "A blue box"])
        )
        assert isinstance(reader, ValueMatcher)
        assert reader("a blue one") == {"colour": "blue"}
    assert fact_parser_for(rows("my-set", None, ["It is red"])) is None  # no `fields`: nothing to score


def test_core_code_names_no_dataset():
    """Evaluation, training and export find parsers through the registry, never by a set's module."""
    package = Path(picovlm.__file__).parent
    sets = "scenes|realsets|realsets_games|emoji|cjk"
    dataset_module = re.compile(
        rf"^\s*(from|import) picovlm\.data(\.({sets})\b| import .*\b({sets})\b)", re.M
    )
    for folder in ("eval", "train", "export", "runtime", "serve", "model"):
        for path in (package / folder).glob("*.py"):
            assert not dataset_module.search(path.read_text()), f"{path} imports a dataset module by name"


def test_restate_replaces_the_stated_value_in_the_words_case_and_article():
    """ValueMatcher.restate (what probed_facts does to an answer): the value the answer states of a
    fact gives way to the value asked for, in the case of the words it replaces, with "a"/"an" made to
    fit; what the answer does not state, or states rightly, is left as written."""
    flags = [
        ({"region": "oceanian", "era": "modern", "city style": "european"},
         "The flag of the Australians, an Oceanian nation of the modern era, whose cities are built in European style."),
        ({"region": "african", "era": "ancient", "city style": "classical"},
         "The flag of the Numidians, an African nation of the ancient era, whose cities are built in Classical style."),
        ({"region": "european", "era": "medieval", "city style": "european"},
         "The flag of the Franks, a European nation of the medieval era, whose cities are built in European style."),
    ]  # fmt: skip
    matcher = ValueMatcher(flags)
    answer = flags[0][1]
    asked = {"region": "european", "era": "ancient", "city style": "classical"}
    restated = matcher.restate(answer, asked)
    assert restated == (
        "The flag of the Australians, a European nation of the ancient era, whose cities are built in "
        "Classical style."
    )
    assert matcher(restated) == asked  # the facts read back are the ones asked for
    assert matcher.restate(restated, {"region": "african"}).startswith(
        "The flag of the Australians, an African"
    )
    assert matcher.restate(answer, flags[0][0]) == answer  # stated rightly: untouched
    assert matcher.restate(answer, {"colour": "red"}) == answer  # a fact the matcher does not know
    unstated = "The flag of a nation, whose cities are built in European style."
    assert (
        matcher.restate(unstated, asked) == "The flag of a nation, whose cities are built in Classical style."
    )
    # numbers found by the words around them, punctuation and the rest of the answer kept
    units = [
        ({"level": str(n), "race": r}, f"A level {n} {r} unit.")
        for n, r in [(1, "wolf"), (2, "elf"), (3, "orc")]
    ]
    matcher = ValueMatcher(units)
    assert matcher.restate("Grr! A level 1 wolf unit; fast.", {"level": "3", "race": "elf"}) == (
        "Grr! A level 3 elf unit; fast."
    )
