"""GenerationConfig: one set of options and defaults for the model, eval, the runtime, serve and the CLI."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from picovlm.errors import ConfigError
from picovlm.generation import (
    GenerationConfig,
    add_generation_arguments,
    copy_continuations,
    generation_config,
    generation_flags,
    generation_from_args,
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
