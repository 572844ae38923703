"""How an answer is generated: one set of options, with one set of defaults, for every way picovlm answers.

    GenerationConfig(max_new_tokens=96, temperature=0.0, top_k=None, top_p=None,
                     repetition_penalty=1.0, copy_bias=0.0, copy_neighbours=8, copy_fact_weight=0.0,
                     probed_facts=(), seed=0, stop_at_eos=True)

The torch model (`VisionLanguageModel.generate` / `.answer`), evaluation (`picovlm eval`, quick_eval),
the torch-free runtime, the HTTP server (a request's fields override the server's config) and the CLI
(`add_generation_arguments` / `generation_from_args`) all take this one dataclass, so a served model
answers exactly as it was evaluated with the same config. The default is greedy decoding, which the
seed does not touch; with temperature > 0 the fixed seed makes a run repeatable (seed=None: fresh
randomness each call). The runtime's sampler draws with numpy and the torch model's with torch, so
sampled answers agree only in distribution; greedy answers (repetition penalty included) agree exactly.

Plain Python and numpy on purpose: the runtime and the server import this and never import torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from picovlm.errors import ConfigError


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 96  # the longest answer, in tokens (the end token not counted)
    temperature: float = 0.0  # 0 = greedy: always the most likely token
    top_k: int | None = None  # sample only from the k most likely tokens (None or 0: all)
    top_p: float | None = None  # sample only from the smallest set holding this much probability (None: all)
    # > 1 makes tokens already seen (prompt and answer so far) less likely: positive logits divided by it,
    # negative ones multiplied (the CTRL paper's rule, as transformers applies it). 1.0 = off.
    repetition_penalty: float = 1.0
    # A retrieving model only: each token that would continue one of the `copy_neighbours` nearest
    # training pictures' answers word for word, from where the answer stands, gains copy_bias x its vote
    # (1 from the nearest, 1/2 from the second, 1/r from the r-th, summed: `copy_continuations`). The
    # neighbours vote; the model's own logits can overrule them. 0 = off.
    copy_bias: float = 0.0
    copy_neighbours: int = 8
    # With copy_bias, a model trained on rows with facts: each neighbour's vote is also multiplied by
    # P^copy_fact_weight, P = how likely its fact probes find that neighbour's facts in this picture
    # (`neighbour_weights`), so the neighbours the picture agrees with count more. 0 = by rank alone.
    copy_fact_weight: float = 0.0
    # A retrieving model with fact probes only: the fact fields whose value, where the answer states one,
    # is replaced by the value the probes find likeliest in the picture (RetrievalIndex.restate_facts),
    # after the answer is generated: for a field that `picovlm data facts` finds the probes read better
    # than the model's words state it. Opt-in: on issue 14's suite it raised no test figure
    # (docs/recipes.md, finding 37). () = off.
    probed_facts: tuple[str, ...] = ()
    seed: int | None = 0  # the sampler's seed; None: a fresh draw each call
    stop_at_eos: bool = True  # False only for benchmarks that need exactly max_new_tokens tokens

    def __post_init__(self):
        if self.repetition_penalty is None:  # older callers said None for "off"
            object.__setattr__(self, "repetition_penalty", 1.0)
        fields = (
            self.probed_facts.split(",") if isinstance(self.probed_facts, str) else self.probed_facts or ()
        )
        # "region, era" from a command line or a form, a list from JSON: a tuple of names either way
        object.__setattr__(self, "probed_facts", tuple(f.strip() for f in fields if f.strip()))
        bad = []
        if self.max_new_tokens < 1:
            bad.append(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            bad.append(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            bad.append(f"top_k must be 0 (off) or more, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            bad.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            bad.append(f"repetition_penalty must be above 0 (1 = off), got {self.repetition_penalty}")
        if self.copy_bias < 0:
            bad.append(f"copy_bias must be 0 (off) or more, got {self.copy_bias}")
        if self.copy_neighbours < 1:
            bad.append(f"copy_neighbours must be at least 1, got {self.copy_neighbours}")
        if self.copy_fact_weight < 0:
            bad.append(f"copy_fact_weight must be 0 (off) or more, got {self.copy_fact_weight}")
        if bad:
            raise ConfigError("; ".join(bad) + ".")

    @property
    def penalises_repetition(self) -> bool:
        return self.repetition_penalty != 1.0

    @property
    def copy_source_count(self) -> int:
        """How many neighbours' answers generation needs as copy sources: 0 with copy_bias off."""
        return self.copy_neighbours if self.copy_bias else 0

    def describe(self) -> str:
        """How it picks tokens, in a few words for a report line: "greedy, copy_bias 8, copy_fact_weight
        0.5" (the options that change answers, where they are on; the length limit left out)."""
        picking = "greedy" if self.temperature == 0 else f"sampled at temperature {self.temperature:g}"
        options = [
            f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
            for name, value, on in (
                ("top_k", self.top_k, self.temperature and self.top_k),
                ("top_p", self.top_p, self.temperature and self.top_p is not None),
                ("repetition_penalty", self.repetition_penalty, self.penalises_repetition),
                ("copy_bias", self.copy_bias, self.copy_bias),
                ("copy_fact_weight", self.copy_fact_weight, self.copy_bias and self.copy_fact_weight),
            )
            if on
        ]
        if self.probed_facts:
            options.append(f"probed_facts {','.join(self.probed_facts)}")
        return ", ".join([picking, *options])

    def replace(self, **options: Any) -> GenerationConfig:
        """This config with `options` changed; an unknown option name is an error that lists the known ones."""
        unknown = sorted(set(options) - FIELDS)
        if unknown:
            raise ConfigError(
                f"unknown generation option(s) {', '.join(unknown)}: the options are {', '.join(sorted(FIELDS))}."
            )
        return dataclasses.replace(self, **options) if options else self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerationConfig:
        """From a saved dict (a manifest's "generation"); keys a newer picovlm added are ignored."""
        return cls(**{k: v for k, v in values.items() if k in FIELDS})

    def to_dict(self) -> dict[str, Any]:
        """As JSON writes it (probed_facts a list)."""
        return {**dataclasses.asdict(self), "probed_facts": list(self.probed_facts)}


FIELDS = frozenset(f.name for f in dataclasses.fields(GenerationConfig))

# A model folder's own way of answering (save_pretrained writes it; `picovlm train` and `picovlm
# choose-generation` pick it on validation): what answer(), eval, generate and export start from.
GENERATION_FILE = "generation.json"


def save_generation(generation: GenerationConfig, directory: str | os.PathLike) -> None:
    from picovlm.utils import atomic_write_text

    atomic_write_text(Path(directory) / GENERATION_FILE, json.dumps(generation.to_dict(), indent=2))


def load_generation(directory: str | os.PathLike) -> GenerationConfig:
    """The folder's generation.json; GenerationConfig() (greedy) for a folder saved without one."""
    path = Path(directory) / GENERATION_FILE
    if not path.is_file():
        return GenerationConfig()
    try:
        return GenerationConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ConfigError) as err:
        raise ConfigError(f"{path}: {err}; delete the file to answer greedily, or write it again.") from None


def generation_config(generation: GenerationConfig | None = None, **options: Any) -> GenerationConfig:
    """`generation` (default: GenerationConfig()) with keyword `options` set: how every entry point
    takes both a config and the old keyword arguments, e.g. model.generate(..., max_new_tokens=16)."""
    if generation is not None and not isinstance(generation, GenerationConfig):
        raise ConfigError(f"generation must be a GenerationConfig, got {type(generation).__name__}.")
    return (generation or GenerationConfig()).replace(**options)


COPY_MATCH = 3  # the longest run of the answer's last tokens that copy_bias looks up in the sources


COPY_BIAS_NEEDS_RETRIEVAL = (
    "copy_bias leans towards the neighbours' answers of a retrieving model, and this model does not retrieve "
    "(retrieval_k=0): leave copy_bias at 0, or train with model.retrieval_k=2."
)
PROBED_FACTS_NEED_VALUES = (
    "probed_facts states what the model's fact probes read in the picture, and this model has no probes "
    "over its pictures (it does not retrieve, was trained without the fact loss or on rows without "
    "`fields`, or before finding 28): leave probed_facts empty, or train again with "
    "train.fact_loss_weight=auto on rows with fields."
)
PROBED_FACTS_NEED_VALUES_SAVED = (
    "probed_facts states what the model's fact probes read in the picture, and this model's probes do not "
    "know their fields' values (it was trained before finding 37): train it again, or leave probed_facts empty."
)
COPY_FACTS_NEED_HEADS = (
    "copy_fact_weight weighs the neighbours by the model's fact heads, and this model has none (it was "
    "trained without the fact loss, on rows without `fields`, or saved before the heads were kept): leave "
    "copy_fact_weight at 0, or train again with train.fact_loss_weight=auto on rows with fields."
)


def copy_options_check(generation: GenerationConfig, retrieval) -> None:
    """The ConfigError a model gets for copy options it cannot honour (`retrieval`: its index or None)."""
    if generation.copy_bias and retrieval is None:
        raise ConfigError(COPY_BIAS_NEEDS_RETRIEVAL)
    if generation.copy_bias and generation.copy_fact_weight and getattr(retrieval, "facts", None) is None:
        raise ConfigError(COPY_FACTS_NEED_HEADS)
    if generation.probed_facts:
        if retrieval is None or not retrieval.facts_read_pictures:
            raise ConfigError(PROBED_FACTS_NEED_VALUES)
        if retrieval.facts.values is None:
            raise ConfigError(PROBED_FACTS_NEED_VALUES_SAVED)
        known = list(retrieval.facts.values)
        unknown = [name for name in generation.probed_facts if name not in known]
        if unknown:
            raise ConfigError(f"probed_facts names {', '.join(unknown)}, and this model's fact probes read "
                              f"{', '.join(known)}: name some of those, or leave probed_facts empty.")  # fmt: skip


def neighbour_weights(count: int, support=None, fact_weight: float = 0.0) -> list[float]:
    """Each of `count` neighbours' vote, nearest first: 1/r for the r-th; with the fact heads' support
    (log-probabilities of each neighbour's facts, `FactReader.support`) and fact_weight a > 0,
    (1/r) x P^a scaled so that the strongest neighbour's vote is 1 (a = 0: exactly 1/r)."""
    scores = -np.log1p(np.arange(count, dtype=np.float64))
    if fact_weight and support is not None:
        scores = scores + fact_weight * np.asarray(support, np.float64)[:count]
    return [float(w) for w in np.exp(scores - scores.max())] if count else []


class CopyVotes:
    """`copy_continuations` for one row's sources, with every run of up to `longest` tokens looked up in
    a table built once: generation asks before every token, and scanning the sources each time is
    work a 60-token answer would repeat 60 times."""

    def __init__(
        self, sources: list[list[int]], longest: int = COPY_MATCH, weights: list[float] | None = None
    ):
        self.longest = longest
        weights = weights if weights is not None else neighbour_weights(len(sources))
        self.first = _votes(((rank, source[0]) for rank, source in enumerate(sources) if source), weights)
        followers: dict[tuple[int, ...], list[tuple[int, int]]] = {}  # run -> (rank, the token after it)
        for rank, source in enumerate(sources):
            for n in range(1, longest + 1):
                for i in range(len(source) - n):
                    followers.setdefault(tuple(source[i : i + n]), []).append((rank, source[i + n]))
        self.after = {run: _votes(pairs, weights) for run, pairs in followers.items()}

    def __call__(self, answer: list[int]) -> dict[int, float]:
        if not answer:
            return self.first
        for n in range(min(self.longest, len(answer)), 0, -1):
            found = self.after.get(tuple(answer[-n:]))
            if found:
                return found
        return {}


def copy_continuations(
    sources: list[list[int]], answer: list[int], longest: int = COPY_MATCH
) -> dict[int, float]:
    """The tokens that would continue the answer by copying one of `sources` (token sequences, the
    nearest neighbour's answer first, each with its end token), each with its vote: the sum, over the
    sources that say it, of 1 for the first source, 1/2 for the second, 1/r for the r-th. Before the
    first token, the sources' first tokens; after it, the tokens that follow the longest run of the
    answer's last tokens (up to `longest`) found in a source. Empty when not even the last token
    occurs in one. (Generation builds a `CopyVotes` once per answer instead.)"""
    return CopyVotes(sources, longest)(answer)


def _votes(ranked_tokens, weights: list[float]) -> dict[int, float]:
    """{token: sum of weights[rank] over the sources that say it (once per source)}, tokens ascending."""
    voters: dict[int, set[int]] = {}
    for rank, token in ranked_tokens:
        voters.setdefault(token, set()).add(rank)
    return {token: sum(weights[rank] for rank in voters[token]) for token in sorted(voters)}


# --- The CLI's flags -----------------------------------------------------------------------------------

CLI_FLAGS = {  # option -> (type, help); each help ends with the default, from GenerationConfig
    "max_new_tokens": (int, "longest answer in tokens"),
    "temperature": (float, "0 = greedy; e.g. 0.7 to sample"),
    "top_k": (int, "sample only from the k most likely tokens (0: all)"),
    "top_p": (float, "sample only from the smallest set with this much probability"),
    "repetition_penalty": (float, "e.g. 1.2: make tokens already seen less likely (1 = off)"),
    "copy_bias": (float, "retrieving models: e.g. 8 to lean towards the neighbours' answers (0 = off)"),
    "copy_neighbours": (int, "how many nearest training answers copy_bias votes over"),
    "copy_fact_weight": (
        float,
        "with copy_bias, models with fact probes: e.g. 0.5 to weigh neighbours by them",
    ),
    "probed_facts": (
        str,
        'models with fact probes: e.g. "region,era" to state those facts as the probes read them ("" = off)',
    ),
    "seed": (int, "random seed for sampling"),
}


def add_generation_arguments(parser: argparse.ArgumentParser, note: str = "") -> None:
    """The generation flags (--max-new-tokens, --temperature, --top-k, --top-p, --repetition-penalty,
    --seed) as one group; `generation_from_args` turns them into a GenerationConfig. A flag left out
    keeps the base config's value, so each command shares GenerationConfig's defaults."""
    group = parser.add_argument_group(
        "generation (default: the model's generation.json, else greedy)", note or None
    )
    defaults = GenerationConfig()
    for name, (kind, text) in CLI_FLAGS.items():
        default = getattr(defaults, name)
        group.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=None,
            help=f"{text} (default {'none' if default in (None, ()) else default})",
        )


def generation_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The generation options the command line gave (flags left out are absent), checked."""
    given = {name: getattr(args, name) for name in CLI_FLAGS if getattr(args, name, None) is not None}
    generation_config(None, **given)  # a bad value fails here, before any model is loaded
    return given


def generation_from_args(args: argparse.Namespace, base: GenerationConfig | None = None) -> GenerationConfig:
    """The GenerationConfig the flags of `add_generation_arguments` ask for, over `base` (default:
    GenerationConfig()); a ConfigError names a bad value."""
    return generation_config(base, **generation_flags(args))
