"""GenerationConfig: one set of options and defaults for the model, eval, the runtime, serve and the CLI."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest

from picovlm.errors import ConfigError
from picovlm.generation import (
    CopyVotes,
    GenerationConfig,
    add_generation_arguments,
    copy_continuations,
    copy_options_check,
    generation_config,
    generation_flags,
    generation_from_args,
    neighbour_weights,
)


def test_the_defaults_are_greedy_and_checked():
    config = GenerationConfig()
    assert (config.temperature, config.repetition_penalty, config.penalises_repetition) == (0.0, 1.0, False)
    assert GenerationConfig(repetition_penalty=None).repetition_penalty == 1.0  # older callers' "off"
    for bad, words in [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-1), "temperature"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(copy_bias=-1), "copy_bias"),
        (dict(copy_neighbours=0), "copy_neighbours"),
        (dict(copy_fact_weight=-0.5), "copy_fact_weight"),
    ]:
        with pytest.raises(ConfigError, match=words):
            GenerationConfig(**bad)


def test_options_over_a_config_and_unknown_names():
    base = GenerationConfig(max_new_tokens=10, seed=3)
    assert generation_config(base, temperature=0.5) == GenerationConfig(
        max_new_tokens=10, seed=3, temperature=0.5
    )
    assert generation_config(None, max_new_tokens=7) == GenerationConfig(max_new_tokens=7)
    with pytest.raises(ConfigError, match="max_tokens.*the options are"):
        generation_config(base, max_tokens=5)
    assert GenerationConfig.from_dict({**base.to_dict(), "from_a_newer_version": 1}) == base


def test_copy_continuations_are_the_neighbours_vote_after_the_longest_run_found():
    sources = [
        [7, 1, 2, 3, 9],
        [2, 3, 4, 2, 5],
    ]  # the nearest neighbour's answer first: a vote of 1, then 1/2
    assert copy_continuations(sources, []) == {2: 0.5, 7: 1.0}  # nothing said yet: the first tokens
    assert copy_continuations(sources, [8]) == {}  # the last token is in no source
    assert copy_continuations(sources, [2]) == {3: 1.5, 5: 0.5}  # both sources say 3 after a 2
    assert copy_continuations(sources, [1, 2]) == {3: 1.0}  # the longer run decides
    assert copy_continuations(sources, [9, 4, 2]) == {5: 0.5}  # [4, 2] is in the second source only
    assert copy_continuations(sources, [6, 2, 3]) == {4: 0.5, 9: 1.0}  # [6, 2, 3] is nowhere, [2, 3] twice
    assert copy_continuations(sources, [1, 2, 3], longest=1) == {4: 0.5, 9: 1.0}  # the last token only
    assert copy_continuations(sources, [5]) == {}  # a source's last token has no continuation
    assert copy_continuations([[2, 3, 2, 3]], [2]) == {3: 1.0}  # a source votes once
    assert copy_continuations([], []) == {}


def test_the_fact_heads_reweigh_the_neighbours_votes():
    """copy_fact_weight a: the r-th neighbour's vote is (1/r) x P^a, P = the heads' probability of its
    facts (support = log P), scaled so the strongest vote is 1; a = 0 or no support: exactly 1/r."""
    assert neighbour_weights(3) == pytest.approx([1.0, 1 / 2, 1 / 3])
    assert neighbour_weights(3, [-5.0, 0.0, -1.0], 0.0) == pytest.approx([1.0, 1 / 2, 1 / 3])
    # the second neighbour's facts are e^5 times likelier than the first's: with a = 1 it leads
    unscaled = [1.0 * math.exp(-5.0), 0.5 * 1.0, (1 / 3) * math.exp(-1.0)]
    expected = [w / max(unscaled) for w in unscaled]
    assert neighbour_weights(3, [-5.0, 0.0, -1.0], 1.0) == pytest.approx(expected)
    assert neighbour_weights(0) == []
    # the votes are sums of those weights over the sources that say a token
    sources = [[7, 1, 2, 3, 9], [2, 3, 4, 2, 5]]
    weights = neighbour_weights(2, [-3.0, 0.0], 1.0)  # the second source now outvotes the first
    assert weights[1] == 1.0 and weights[0] == pytest.approx(2 * math.exp(-3.0))
    votes = CopyVotes(sources, weights=weights)
    assert votes([]) == pytest.approx({2: 1.0, 7: weights[0]})
    assert votes([2]) == pytest.approx({3: 1.0 + weights[0], 5: 1.0})
    assert CopyVotes(sources)([2]) == copy_continuations(sources, [2])  # no weights: 1/r


def test_copy_options_a_model_cannot_honour_are_refused():
    """The one check the runtime, export and serve make (`copy_options_check`)."""

    class Index:  # a retrieving model's index, with or without the fact heads
        def __init__(self, facts):
            self.facts = facts

    voting = GenerationConfig(copy_bias=8.0, copy_fact_weight=0.2)
    with pytest.raises(ConfigError, match="retrieval_k"):
        copy_options_check(voting, None)
    with pytest.raises(ConfigError, match="copy_fact_weight.*fact_loss_weight"):
        copy_options_check(voting, Index(facts=None))
    copy_options_check(voting, Index(facts=object()))
    copy_options_check(GenerationConfig(copy_fact_weight=0.2), None)  # no vote, nothing to weigh
    copy_options_check(GenerationConfig(copy_bias=8.0), Index(facts=None))

    # probed_facts: probes over the pictures, and only the fields they read
    probing = GenerationConfig(probed_facts="region, era")  # a command line's or a form's list
    assert (
        probing.probed_facts
        == ("region", "era")
        == GenerationConfig.from_dict(probing.to_dict()).probed_facts
    )
    assert GenerationConfig.from_dict({"probed_facts": ["era"]}).probed_facts == ("era",)  # JSON's list
    reading = SimpleNamespace(
        facts_read_pictures=True, facts=SimpleNamespace(values={"region": [], "era": []})
    )
    copy_options_check(probing, reading)
    for retrieval in (None, SimpleNamespace(facts_read_pictures=False, facts=None)):
        with pytest.raises(ConfigError, match="probed_facts states.*fact_loss_weight"):
            copy_options_check(probing, retrieval)
    before_37 = SimpleNamespace(facts_read_pictures=True, facts=SimpleNamespace(values=None))
    with pytest.raises(ConfigError, match="trained before finding 37"):
        copy_options_check(probing, before_37)
    with pytest.raises(ConfigError, match="probed_facts names colour.*read region, era"):
        copy_options_check(GenerationConfig(probed_facts=("colour", "era")), reading)


def test_the_cli_flags_left_out_keep_the_base_config():
    parser = argparse.ArgumentParser()
    add_generation_arguments(parser)
    base = GenerationConfig(max_new_tokens=40, repetition_penalty=1.2)
    args = parser.parse_args(["--temperature", "0.7", "--seed", "5"])
    assert generation_flags(args) == {"temperature": 0.7, "seed": 5}
    assert generation_from_args(args, base) == GenerationConfig(
        max_new_tokens=40, repetition_penalty=1.2, temperature=0.7, seed=5
    )
    assert generation_from_args(parser.parse_args([])) == GenerationConfig()
    with pytest.raises(ConfigError, match="top_p"):
        generation_flags(parser.parse_args(["--top-p", "2"]))
    assert f"(default {GenerationConfig().max_new_tokens})" in parser.format_help()


def test_every_answering_command_shares_the_flags_and_defaults():
    from picovlm.cli import build_parser

    verbs = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            verbs = action.choices
    for verb in ("generate", "eval", "serve", "export"):
        flags = {a.dest: a for a in verbs[verb]._actions}
        for name in GenerationConfig().to_dict():
            if name == "stop_at_eos":  # for benchmarks only, no flag
                continue
            assert flags[name].default is None, (verb, name)  # left out: GenerationConfig's default
    assert "max_new_tokens_limit" in {a.dest for a in verbs["serve"]._actions}


def test_the_generation_module_imports_no_torch():
    code = "import sys, picovlm.generation; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_config_describes_how_it_picks_tokens_in_a_few_words():
    assert GenerationConfig().describe() == "greedy"
    assert GenerationConfig(copy_fact_weight=0.5).describe() == "greedy"  # no vote for it to weigh
    weighed = GenerationConfig(copy_bias=16.0, copy_fact_weight=0.5, probed_facts="race,level")
    assert weighed.describe() == "greedy, copy_bias 16, copy_fact_weight 0.5, probed_facts race,level"
    sampled = GenerationConfig(temperature=0.7, top_k=5, repetition_penalty=1.2, max_new_tokens=9)
    assert sampled.describe() == "sampled at temperature 0.7, top_k 5, repetition_penalty 1.2"
    assert GenerationConfig(top_k=5).describe() == "greedy"  # top-k only narrows a sample
