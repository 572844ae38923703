"""`picovlm <verb> --help` works for every verb and documents every option it has."""

from __future__ import annotations

import argparse

import pytest

from picovlm.cli import build_parser, main


def all_verbs(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(path, parser) for every verb and sub-verb, e.g. (("data", "import"), <parser>)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from all_verbs(sub, prefix + (name,))


VERBS = list(all_verbs(build_parser()))


def test_the_main_verbs_are_registered():
    names = {" ".join(path) for path, _ in VERBS}
    for verb in ["demo", "params", "data import", "data check", "data split", "augment", "similar", "train",
                 "sweep", "eval", "generate", "export", "serve"]:  # fmt: skip
        assert verb in names


@pytest.mark.parametrize("path,parser", VERBS, ids=[" ".join(p) for p, _ in VERBS])
def test_help_works_and_lists_every_option_with_an_explanation(path, parser, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: picovlm " + " ".join(path))
    assert (
        parser.description
        or parser.epilog
        or any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    ), f"picovlm {' '.join(path)} has no description"
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            shown = action.option_strings[0]
        elif action.metavar:
            shown = action.metavar
        elif action.choices:  # a positional with choices is shown as {a,b}
            shown = "{" + ",".join(map(str, action.choices)) + "}"
        else:
            shown = action.dest
        assert shown in text, f"picovlm {' '.join(path)} --help does not list {shown}"
        assert action.help and action.help != argparse.SUPPRESS, (
            f"picovlm {' '.join(path)}: {shown} has no help text"
        )
