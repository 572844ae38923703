"""`picovlm augment`: grow a dataset with paraphrases from an LLM, keeping only those that keep the facts.

For each row and each turn, ask the LLM for `n_variants` paraphrases of the answer (and optionally of the
question), one request per variant with seed + k so the variants differ and each has its own cache key.
Then filter every reply against its original:

    empty        the model said nothing usable
    too_short    fewer words than min_ratio x the original
    too_long     more words than max_ratio x the original
    number       a number (digits or a number word up to twenty) was lost, changed or invented
    name         a proper name (a capitalised word inside a sentence) was lost
    key_term     a key term was lost (user-given terms, and tokens such as "H100", "iPhone", "COVID-19")
    off_topic    fewer than min_content_share of the original's content words are left (a reply about
                 something else that happens to keep the numbers: "This picture has three numbers...")
    same_as_original  word-sequence similarity to the original >= max_similarity
    duplicate    word-sequence similarity to an already kept variant >= max_similarity

Kept variants become new rows: same images, `source` = "synthetic:<backend>/<model>", and `group` =
the original's group (or "row-<index>" when it had none), so an original and its paraphrases always
land in the same split. The originals get that group too.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

from picovlm.errors import ConfigError
from picovlm.eval.metrics import distinct_n
from picovlm.grow.llm import ChatCache, GenerationParams, RequestFailedError, cache_key
from picovlm.utils import ProgressFn, no_progress

DEFAULT_ANSWER_PROMPT = (
    "Rewrite the following answer in different words. Keep every fact: every number, name, colour and "
    "place must stay exactly the same. Do not add anything. Reply with the rewritten answer only.\n\n"
    "{text}"
)
DEFAULT_QUESTION_PROMPT = (
    "Rewrite the following question in different words, asking for exactly the same thing. "
    "Reply with the rewritten question only.\n\n{text}"
)
DROP_REASONS = (
    "request_failed",
    "empty",
    "too_short",
    "too_long",
    "number",
    "name",
    "key_term",
    "off_topic",
    "same_as_original",
    "duplicate",
)


@dataclass
class AugmentConfig:
    n_variants: int = 5
    paraphrase_questions: bool = False
    answer_prompt: str = DEFAULT_ANSWER_PROMPT  # must contain {text}
    question_prompt: str = DEFAULT_QUESTION_PROMPT
    params: GenerationParams = field(default_factory=GenerationParams)
    concurrency: int = 4
    min_ratio: float = 0.5
    max_ratio: float = 2.0
    max_similarity: float = 0.9
    key_terms: tuple[str, ...] = ()
    min_content_share: float = 0.5
    keep_originals: bool = True
    n_examples: int = 5

    def __post_init__(self):
        for name in ("answer_prompt", "question_prompt"):
            if "{text}" not in getattr(self, name):
                raise ConfigError(f"the {name.replace('_', ' ')} template must contain {{text}}")
        if self.n_variants < 1:
            raise ConfigError(f"n_variants must be >= 1, got {self.n_variants}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}")


# ---------------------------------------------------------------------------------------------------
# Fact-keeping filters

NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
_WORD_RE = re.compile(r"[A-Za-z0-9][\w'-]*")
# tokens that look like identifiers: a digit next to a letter, or a capital after the first letter
_TECH_RE = re.compile(r"\b(?=[\w-]*[A-Za-z])(?=[\w-]*(?:\d|[a-z][A-Z]))[\w-]+\b")


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def numbers(text: str) -> Counter:
    """Numbers as digit strings, number words mapped to digits ("two" == "2"); thousands commas dropped."""
    found = Counter(match.replace(",", "") for match in _NUMBER_RE.findall(text))
    found.update(NUMBER_WORDS[w.lower()] for w in words(text) if w.lower() in NUMBER_WORDS)
    return found


def proper_names(text: str) -> set[str]:
    """Capitalised words that do not start a sentence: a cheap stand-in for named entities."""
    names = set()
    for sentence in re.split(r"(?<=[.!?:;])\s+|\n+", text):
        for w in words(sentence)[1:]:
            capitalised = w[0].isupper() and w != "I"
            if capitalised:
                names.add(w)
    return names


def key_terms(text: str, user_terms: tuple[str, ...]) -> set[str]:
    lower = text.lower()
    terms = {t for t in user_terms if re.search(rf"\b{re.escape(t.lower())}\b", lower)}
    return terms | set(_TECH_RE.findall(text))


# Function words a paraphrase may change freely; everything else of 3+ letters is content.
STOP_WORDS = set(
    "the and but for nor yet with from into onto over under about above below near than then that this "
    "these those there here its his her hers their theirs our ours your yours you she him they them what "
    "which who whom whose where when while was were are been being has have had having does did doing "
    "not can could will would shall should may might must also very just only each both all any some "
    "one more most other such own same too out off again once".split()
)


def content_stems(text: str) -> set[str]:
    """The content words of a text as 5-letter stems ("colleagues" and "colleague" agree), numbers and
    function words left out: what a paraphrase should still talk about."""
    return {
        w.lower()[:5] for w in words(text)
        if len(w) >= 3 and w.isalpha() and w.lower() not in STOP_WORDS and w.lower() not in NUMBER_WORDS
    }  # fmt: skip


def _contains(text: str, term: str) -> bool:
    return re.search(rf"\b{re.escape(term.lower())}\b", text.lower()) is not None


def similarity(a: str, b: str) -> float:
    """Word-sequence similarity in [0, 1] (difflib ratio on lower-cased words)."""
    return difflib.SequenceMatcher(None, [w.lower() for w in words(a)], [w.lower() for w in words(b)]).ratio()


def clean_reply(reply: str) -> str:
    """Strip what chat models wrap around an answer: quotes, and a 'Here is the rewritten text:' line."""
    text = reply.strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].rstrip().endswith(":"):
        text = "\n".join(lines[1:]).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def drop_reason(candidate: str, original: str, kept: list[str], config: AugmentConfig) -> str | None:
    """Why to drop `candidate` as a paraphrase of `original`, or None to keep it. Checks run in order."""
    if not candidate.strip():
        return "empty"
    n_words, n_original = len(words(candidate)), max(1, len(words(original)))
    if n_words < config.min_ratio * n_original:
        return "too_short"
    if n_words > config.max_ratio * n_original:
        return "too_long"
    if numbers(candidate) != numbers(original):
        return "number"
    if any(not _contains(candidate, name) for name in proper_names(original)):
        return "name"
    if any(not _contains(candidate, term) for term in key_terms(original, config.key_terms)):
        return "key_term"
    wanted = content_stems(original)
    if wanted and len(wanted & content_stems(candidate)) < config.min_content_share * len(wanted):
        return "off_topic"
    if similarity(candidate, original) >= config.max_similarity:
        return "same_as_original"
    if any(similarity(candidate, other) >= config.max_similarity for other in kept):
        return "duplicate"
    return None


# ---------------------------------------------------------------------------------------------------
# Requests: deduplicated by cache key, cached, run on a bounded thread pool


def run_requests(
    client,
    cache: ChatCache,
    requests: dict[str, list[dict]],
    params_by_key: dict[str, GenerationParams],
    concurrency: int,
    progress: ProgressFn = no_progress,
) -> tuple[dict[str, str | None], Counter]:
    """Answer every request (key -> messages) from the cache or the client. Returns replies (None for a
    request that failed after its retries) and counts: cache_hits, sent, failed.

    A server that is down or lacks the model raises at once (pending requests are cancelled); what was
    answered so far is already in the cache, so the rerun starts from there."""
    counts: Counter = Counter()
    replies: dict[str, str | None] = {}
    todo = []
    for key in requests:
        cached = cache.get(key)
        if cached is not None:
            replies[key] = cached
            counts["cache_hits"] += 1
        else:
            todo.append(key)
    total, done = len(requests), len(replies)
    progress(done, total, "paraphrase requests")

    def ask(key: str) -> str | None:
        try:
            reply = client.chat(requests[key], params_by_key[key])
        except RequestFailedError:
            return None
        cache.put(key, reply, backend=client.backend, model=client.model)
        return reply

    if not todo:
        return replies, counts
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(ask, key): key for key in todo}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()
                reply = future.result()
                replies[futures[future]] = reply
                counts["sent"] += 1
                counts["failed"] += reply is None
                done += 1
            progress(done, total, "paraphrase requests")
    return replies, counts


# ---------------------------------------------------------------------------------------------------
# The whole step: rows in, rows out, plus a report


def synthetic_source(client) -> str:
    return f"synthetic:{client.backend}/{client.model}"


Slot = tuple[int, int, str]  # (row, turn, "assistant" or "user"): one text to paraphrase


def augment_rows(
    rows: list[dict],
    client,
    cache: ChatCache,
    config: AugmentConfig,
    progress: ProgressFn = no_progress,
) -> tuple[list[dict], dict]:
    """Paraphrase `rows` (cauldron-schema dicts) and return (output rows, report dict).

    Output: the originals (if keep_originals) followed by the new rows, each tagged with `group`."""
    requests, params_by_key, slots = plan_requests(rows, client, config)
    replies, request_counts = run_requests(
        client, cache, requests, params_by_key, config.concurrency, progress
    )
    kept_by_slot, dropped, dropped_examples = keep_paraphrases(rows, slots, replies, config)
    originals, new_rows, examples = build_rows(
        rows, kept_by_slot, synthetic_source(client), config.n_examples
    )
    report = {
        "backend": client.backend,
        "model": client.model,
        "config": {k: v for k, v in asdict(config).items() if k not in ("answer_prompt", "question_prompt")},
        "rows_in": len(rows),
        "rows_new": len(new_rows),
        "rows_out": len(new_rows) + (len(originals) if config.keep_originals else 0),
        "paraphrases_requested": len(slots) * config.n_variants,
        "paraphrases_kept": sum(len(v) for v in kept_by_slot.values()),
        "dropped": {reason: dropped[reason] for reason in DROP_REASONS if dropped[reason]},
        "requests": {
            "unique": len(requests),
            "cache_hits": request_counts["cache_hits"],
            "sent": request_counts["sent"],
            "failed": request_counts["failed"],
        },
        "diversity": diversity_report(rows, kept_by_slot),
        "examples": examples,
        "dropped_examples": dropped_examples,
    }
    out_rows = (originals if config.keep_originals else []) + new_rows
    return out_rows, report


def plan_requests(rows: list[dict], client, config: AugmentConfig):
    """One request per (row, turn, field, variant); identical prompts share one key (and one request).
    Returns (key -> messages, key -> GenerationParams, slot -> its variants' keys)."""
    requests: dict[str, list[dict]] = {}
    params_by_key: dict[str, GenerationParams] = {}
    slots: dict[Slot, list[str]] = {}
    fields = ["assistant", "user"] if config.paraphrase_questions else ["assistant"]
    for r, row in enumerate(rows):
        for t, turn in enumerate(row["texts"]):
            for field_name in fields:
                template = config.answer_prompt if field_name == "assistant" else config.question_prompt
                messages = [{"role": "user", "content": template.replace("{text}", turn[field_name])}]
                keys = []
                for k in range(config.n_variants):
                    seed = None if config.params.seed is None else config.params.seed + k
                    params = GenerationParams(config.params.temperature, seed, config.params.max_tokens)
                    # the variant index is in the key, so seed=None still yields n distinct requests
                    key = cache_key(client.backend, client.model, messages + [{"variant": k}], params)
                    requests[key], params_by_key[key] = messages, params
                    keys.append(key)
                slots[(r, t, field_name)] = keys
    return requests, params_by_key, slots


def keep_paraphrases(rows: list[dict], slots: dict[Slot, list[str]], replies: dict, config: AugmentConfig):
    """Filter each slot's replies against the original, in variant order. Returns (slot -> kept
    paraphrases, drops by reason, up to n_examples dropped examples)."""
    dropped: Counter = Counter()
    kept_by_slot: dict[Slot, list[str]] = {}
    dropped_examples: list[dict] = []
    for (r, t, field_name), keys in slots.items():
        original = rows[r]["texts"][t][field_name]
        kept: list[str] = []
        for key in keys:
            reply = replies.get(key)
            if reply is None:
                dropped["request_failed"] += 1
                continue
            candidate = clean_reply(reply)
            reason = drop_reason(candidate, original, kept, config)
            if reason:
                dropped[reason] += 1
                if len(dropped_examples) < config.n_examples:
                    dropped_examples.append({"original": original, "paraphrase": candidate, "reason": reason})
            else:
                kept.append(candidate)
        kept_by_slot[(r, t, field_name)] = kept
    return kept_by_slot, dropped, dropped_examples


def build_rows(rows: list[dict], kept_by_slot: dict[Slot, list[str]], source: str, n_examples: int):
    """Variant k of a row uses the k-th kept answer of each turn (the original where none). Returns
    (the originals tagged with their group, the new rows, up to n_examples kept examples)."""
    originals, new_rows, examples = [], [], []
    for r, row in enumerate(rows):
        group = row.get("group") or f"row-{r}"
        originals.append({**row, "group": group})
        n_new = max(len(kept_by_slot[(r, t, "assistant")]) for t in range(len(row["texts"])))
        for k in range(n_new):
            texts = []
            for t, turn in enumerate(row["texts"]):
                answers = kept_by_slot[(r, t, "assistant")]
                questions = kept_by_slot.get((r, t, "user"), [])
                texts.append(
                    {
                        "user": questions[k % len(questions)] if questions else turn["user"],
                        "assistant": answers[k] if k < len(answers) else turn["assistant"],
                        "source": source,
                    }
                )
            new_rows.append({**row, "texts": texts, "group": group})
        if n_new and len(examples) < n_examples:
            examples.append(
                {"original": row["texts"][0]["assistant"], "paraphrases": kept_by_slot[(r, 0, "assistant")]}
            )
    return originals, new_rows, examples


# ---------------------------------------------------------------------------------------------------
# Diversity: did the paraphrases add new wording, or the same sentence ten times? (distinct-n is
# eval's: one definition of the measure, the one the collapse verdict reads)


def self_bleu(groups: list[list[str]]) -> float | None:
    """Mean sentence BLEU (0-100) of each text against the others of its group: lower = more diverse."""
    import sacrebleu

    scores = []
    for group in groups:
        for i, text in enumerate(group):
            others = group[:i] + group[i + 1 :]
            if others:
                scores.append(sacrebleu.sentence_bleu(text, others).score)
    return sum(scores) / len(scores) if scores else None


def diversity_report(rows: list[dict], kept_by_slot: dict) -> dict:
    answers_before = [turn["assistant"] for row in rows for turn in row["texts"]]
    answers_after = answers_before + [
        p for (_, _, f), kept in kept_by_slot.items() if f == "assistant" for p in kept
    ]
    groups = [
        [rows[r]["texts"][t]["assistant"], *kept]
        for (r, t, f), kept in kept_by_slot.items()
        if f == "assistant" and kept
    ]
    return {
        "distinct_1_before": round(distinct_n(answers_before, 1), 4),
        "distinct_1_after": round(distinct_n(answers_after, 1), 4),
        "distinct_2_before": round(distinct_n(answers_before, 2), 4),
        "distinct_2_after": round(distinct_n(answers_after, 2), 4),
        "self_bleu_within_groups": None if not groups else round(self_bleu(groups), 2),
        "mean_similarity_to_original": None
        if not groups
        else round(
            sum(similarity(g[0], p) for g in groups for p in g[1:]) / sum(len(g) - 1 for g in groups), 4
        ),
    }


def report_markdown(report: dict) -> str:
    """The report as a short Markdown page."""
    lines = [
        f"# Augment report: {report['backend']}/{report['model']}",
        "",
        f"- rows: {report['rows_in']} in, {report['rows_new']} new, {report['rows_out']} out",
        f"- paraphrases: {report['paraphrases_kept']} kept of {report['paraphrases_requested']} requested",
        f"- requests: {report['requests']['sent']} sent, {report['requests']['cache_hits']} from the cache, "
        f"{report['requests']['failed']} failed",
        "",
        "| dropped because | count |",
        "|---|---|",
        *[f"| {reason} | {count} |" for reason, count in report["dropped"].items()],
        "",
        "| diversity | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in report["diversity"].items()],
        "",
        "## Examples",
    ]
    for example in report["examples"]:
        lines += ["", f"**original:** {example['original']}", ""]
        lines += [f"- {p}" for p in example["paraphrases"]]
    if report["dropped_examples"]:
        lines += ["", "## Dropped", ""]
        lines += [f"- ({d['reason']}) {d['paraphrase']}" for d in report["dropped_examples"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Files: dataset folder in, dataset folder + report out


def augment_dataset(
    source: str,
    out_dir: str,
    client,
    config: AugmentConfig,
    cache_path: str | None = None,
    split: str | None = None,
    max_rows: int | None = None,
    overwrite: bool = False,
    progress: ProgressFn = no_progress,
) -> dict:
    """Load a cauldron-schema dataset, augment it, save it to out_dir with augment_report.{json,md}.

    The reply cache defaults to `<out_dir>.llm-cache.jsonl` beside the output, so rerunning the same
    command after an interruption resumes from it. Returns the report (with its file paths)."""
    import json
    from pathlib import Path

    from datasets import Dataset, Image, Sequence, Value

    from picovlm.data.cauldron import load_cauldron, save_cauldron
    from picovlm.errors import DataError

    out_path = Path(out_dir)
    if out_path.exists() and not overwrite:
        raise DataError(f"{out_path} already exists: choose another --out or pass --overwrite")
    dataset = load_cauldron(source, split=split, max_rows=max_rows)
    features = dataset.features.copy()
    # keep images as encoded bytes: nothing to decode, and they are written back unchanged
    dataset = dataset.cast_column("images", Sequence(Image(decode=False)))
    features["group"] = Value("string")
    cache = ChatCache(cache_path or f"{out_path}.llm-cache.jsonl")
    try:
        out_rows, report = augment_rows(list(dataset), client, cache, config, progress)
    finally:
        cache.close()
    # from_list cannot type an empty list (every paraphrase dropped, with --only-new): an empty table
    table = (
        Dataset.from_list(out_rows, features=features)
        if out_rows
        else Dataset.from_dict({name: [] for name in features}, features=features)
    )
    save_cauldron(table, out_path, overwrite=overwrite)
    report["source"], report["out"], report["cache"] = str(source), str(out_path), str(cache.path)
    (out_path / "augment_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out_path / "augment_report.md").write_text(report_markdown(report))
    return report
