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
        for name in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed"):
            assert flags[name].default is None, (verb, name)  # left out: GenerationConfig's default
    assert "max_new_tokens_limit" in {a.dest for a in verbs["serve"]._actions}


def test_the_generation_module_imports_no_torch():
    code = "import sys, picovlm.generation; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
