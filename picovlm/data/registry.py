"""The datasets picovlm ships, in one list: importing each module registers how its answers are read.

A dataset module declares its rows' fact reader where the rows are made, at the bottom of the module:

    register_fact_parser(DEMO_SOURCE, extract_fields)   # scenes.py: a parser for its own templates
    register_fact_parser(EMOJI_SOURCE)                  # emoji.py: facts learned from `fields`

Core code (evaluation, training's answer check, export's int8 comparison) names no dataset: it asks
`picovlm.eval.facts.fact_parser_for(rows)`, which imports the modules below once. The list lives here,
not in picovlm/data/__init__.py, because the torch-free runtime imports picovlm.data (tokenizer,
processor) and should not load every dataset's drawing and file readers; and it is a plain list
rather than package entry points, since the sets ship inside picovlm. A set of your own calls
register_fact_parser the same way before evaluating (or gets the ValueMatcher without it).
"""

from __future__ import annotations

import importlib

BUILTIN_DATASETS = (
    "picovlm.data.scenes",  # the demo set (`picovlm data demo`)
    "picovlm.data.realsets",  # fashion-mnist, fashion-mnist-pairs (`picovlm realset`)
    "picovlm.data.emoji",
    "picovlm.data.cjk",
    "picovlm.data.realsets_games",  # wesnoth, freeciv-flags
    "picovlm.data.freeorion",
)


def load_builtin_datasets() -> None:
    """Import every built-in dataset module, so each has registered its fact reader."""
    for module in BUILTIN_DATASETS:
        importlib.import_module(module)
