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
