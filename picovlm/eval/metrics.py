"""Metrics for generated answers, and the collapse verdict built from them.

Pure Python + numpy (+ sacrebleu for BLEU/chrF): no torch, so the trainer, the evaluator and a notebook
can all call these on plain lists of strings.

Three families:
  * answer quality: exact match, token F1, ROUGE-L, BLEU, chrF, answer length, multiple-choice accuracy,
    accuracy of the factual fields of an answer;
  * collapse signals: how many distinct images got distinct answers, how often the single most common
    answer was given, distinct-1/2, how many answers are verbatim copies of training answers;
  * `collapse_verdict`, which turns those numbers (plus loss gaps from `evaluate`) into plain words.

Scales: everything is a share in [0, 1] except BLEU and chrF, which keep sacrebleu's 0-100 scale, and
losses, which are nats per answer token.
"""

from __future__ import annotations

import itertools
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

# --- Normalisation ---------------------------------------------------------------------------------

_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = set(string.punctuation) | {"“", "”", "‘", "’", "«", "»", "…", "–", "—"}


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze spaces: 'The Eiffel Tower.' -> 'eiffel tower'.

    The SQuAD convention, so "A red car." and "red car" count as the same answer.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in _PUNCTUATION else ch for ch in text)
    return " ".join(word for word in text.split() if word not in _ARTICLES)


def words_with_places(text: str) -> list[tuple[str, int, int]]:
    """normalize_answer's words of `text`, each with its first and one-past-last character in `text`:
    the same folding, done per character so each word keeps where it came from (what
    ValueMatcher.restate needs to replace a fact's words in the answer as written)."""
    words, current, start = [], [], 0
    for position, character in enumerate(text + " "):
        folded = unicodedata.normalize("NFKC", character).lower()
        if not folded or folded.isspace() or folded in _PUNCTUATION:
            if current:
                words.append(("".join(current), start, position))
                current = []
            continue
        if not current:
            start = position
        current.append(folded)
    return [word for word in words if word[0] not in _ARTICLES]


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


# --- Per-answer scores -----------------------------------------------------------------------------


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of precision and recall over the bag of normalised words (SQuAD token F1)."""
    pred, ref = answer_tokens(prediction), answer_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_tokens(text: str) -> list[str]:
    """ROUGE's own tokenisation: lower case, runs of letters/digits are words (no article removal)."""
    return re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).lower())


def longest_common_subsequence(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the LCS, by dynamic programming over one row at a time (O(len(a)*len(b)) time)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for item_a in a:
        current = [0]
        for j, item_b in enumerate(b):
            current.append(previous[j] + 1 if item_a == item_b else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: LCS-based precision and recall, combined with beta = 1."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not pred or not ref:
        return 0.0
    lcs = longest_common_subsequence(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


# --- Corpus scores (sacrebleu) ---------------------------------------------------------------------


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) with sacrebleu's defaults (13a tokenisation, one reference per item)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100): character n-gram F-score, kinder than BLEU to small wording changes."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)


# --- Multiple choice -------------------------------------------------------------------------------

_OPTION_LINE = re.compile(r"(?:^|\n|\s)\(?([A-Z])[\):.]\s*(.+?)(?=\s+\(?[A-Z][\):.]\s|\n|$)")
_EXPLICIT = re.compile(
    r"\b(?:answer|option|choice)\b(?:\s+(?:is|would be|should be))?\s*[:\-]?\s*"
    r"(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z])|([a-z])(?=[.):\]]|\s*$))"
)
_LEADING = re.compile(r"^\s*[\(\[]?([A-Za-z])[\)\].:](?:\s|$)")
_ALONE = re.compile(r"^\s*[\(\[]?([A-Za-z])[\)\]]?[.:]?\s*$")


def parse_options(question: str) -> dict[str, str]:
    """Find lettered options in a question ("A: cat\\nB: dog" or "(A) cat (B) dog"): {'A': 'cat', ...}.

    Returns {} when fewer than two consecutive letters from A are found.
    """
    options: dict[str, str] = {}
    for letter, text in _OPTION_LINE.findall(question):
        options.setdefault(letter, text.strip().rstrip(",;").strip())
    letters = sorted(options)
    expected = [chr(ord("A") + i) for i in range(len(letters))]
    return options if len(letters) >= 2 and letters == expected else {}


def parse_choice(text: str, options: dict[str, str] | None = None, n_choices: int = 26) -> str | None:
    """The letter a free-text answer picks, or None when it picks none or several.

    Understands "B", "(B)", "B.", "b) red car", "Answer: B.", "The answer is (b)", "Option C", and, when
    `options` are given, an answer that repeats exactly one option's text ("It is a red car").
    A lone capital "A" that starts a sentence ("A cat sits...") is read as an article, not a choice.
    """
    valid = {chr(ord("A") + i) for i in range(len(options) if options else n_choices)}

    def ok(letter: str | None) -> str | None:
        return letter.upper() if letter and letter.upper() in valid else None

    if match := _ALONE.match(text):
        return ok(match.group(1))
    if match := _EXPLICIT.search(text):
        return ok(next(g for g in match.groups() if g))
    if match := _LEADING.match(text):
        return ok(match.group(1))
    if options:
        said = f" {normalize_answer(text)} "
        hits = [letter for letter, option in options.items() if f" {normalize_answer(option)} " in said]
        # "red car" and "car" both match "a red car": keep the longest option, which contains the others.
        hits = [h for h in hits if not any(h != o and options[h] in options[o] for o in hits)]
        if len(hits) == 1:
            return hits[0]
    # Last resort: exactly one capital letter standing alone ("I'd say B, because ...").
    lone = {m for m in re.findall(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])", text) if m in valid}
    lone -= {"A"} if re.search(r"(?<![A-Za-z'])A [a-z]", text) else set()
    lone -= {"I"}  # the pronoun
    return lone.pop() if len(lone) == 1 else None


def reference_choice(reference: str) -> str | None:
    """The gold letter when a reference is a bare letter ("B", "(B)", "B."): marks a multiple-choice item."""
    match = _ALONE.match(reference)
    return match.group(1).upper() if match else None


def multiple_choice_accuracy(
    predictions: Sequence[str], gold_letters: Sequence[str], questions: Sequence[str] | None = None
) -> float:
    """Share of items whose parsed letter equals the gold letter (unparseable answers count as wrong)."""
    if not predictions:
        return 0.0
    correct = 0
    for i, (prediction, gold) in enumerate(zip(predictions, gold_letters)):
        options = parse_options(questions[i]) if questions else None
        correct += parse_choice(prediction, options or None) == gold.strip().upper()
    return correct / len(predictions)


# --- Collapse signals ------------------------------------------------------------------------------


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams, across all answers (Li et al. 2016). 1.0 = no repetition."""
    ngrams: list[tuple[str, ...]] = []
    for text in texts:
        words = answer_tokens(text)
        ngrams.extend(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def _one_answer_per_image(answers: Sequence[str], image_keys: Sequence[str] | None) -> list[str]:
    """Normalised answers, keeping the first answer for each distinct image (all of them without keys)."""
    if image_keys is None:
        return [normalize_answer(a) for a in answers]
    first: dict[str, str] = {}
    for key, answer in zip(image_keys, answers):
        first.setdefault(key, normalize_answer(answer))
    return list(first.values())


def distinct_answer_share(answers: Sequence[str], image_keys: Sequence[str] | None = None) -> float:
    """Distinct answers / distinct images: 1.0 = every image got its own answer, 1/N = one answer for all."""
    per_image = _one_answer_per_image(answers, image_keys)
    return len(set(per_image)) / len(per_image) if per_image else 0.0


def top_answer_share(answers: Sequence[str], image_keys: Sequence[str] | None = None) -> float:
    """Share of distinct images that got the single most common answer."""
    per_image = _one_answer_per_image(answers, image_keys)
    return Counter(per_image).most_common(1)[0][1] / len(per_image) if per_image else 0.0


def most_repeated_answers(answers: Sequence[str], k: int = 5) -> list[tuple[str, int]]:
    """The k most frequent answers (grouped after normalisation, shown as first written) with counts."""
    counts: Counter[str] = Counter()
    shown: dict[str, str] = {}
    for answer in answers:
        key = normalize_answer(answer)
        counts[key] += 1
        shown.setdefault(key, answer.strip())
    return [(shown[key], count) for key, count in counts.most_common(k)]


class TrainingAnswers:
    """Training answers read once for the metrics that compare with them: their normalised set (the
    verbatim-copy share) and, per fact parser, each fact's most common value (the majority baseline).
    The trainer's answer check reuses one at every check: read again each time, a 192k-row mix cost
    ~8 s a check. Every function that takes training answers takes a plain list too."""

    def __init__(self, answers: Sequence[str]):
        self.answers = list(answers)
        self.normalized = frozenset(normalize_answer(a) for a in self.answers)
        self._majority: tuple[ExtractFields, dict[str, str]] | None = None  # (parser, its majority)

    @classmethod
    def of(cls, answers: Sequence[str] | TrainingAnswers) -> TrainingAnswers:
        return answers if isinstance(answers, TrainingAnswers) else cls(answers)

    def majority(self, extract_fields: ExtractFields) -> dict[str, str]:
        """Each fact's most common value among the training answers, by field path."""
        if self._majority is None or self._majority[0] is not extract_fields:
            values: dict[str, Counter[str]] = {}
            for answer in self.answers:
                for path, value in flatten_fields(extract_fields(answer)).items():
                    values.setdefault(path, Counter())[value] += 1
            common = {path: counts.most_common(1)[0][0] for path, counts in values.items()}
            self._majority = (extract_fields, common)
        return self._majority[1]


def copied_from_train_share(answers: Sequence[str], train_answers: Sequence[str] | TrainingAnswers) -> float:
    """Share of answers that are, after normalisation, exactly some training answer (memorised text)."""
    if not answers:
        return 0.0
    train = TrainingAnswers.of(train_answers).normalized
    return sum(normalize_answer(a) in train for a in answers) / len(answers)


def train_test_loss_gap(train_loss: float, test_loss: float) -> float:
    """Test loss minus train loss, nats per token: large and growing = overfitting."""
    return test_loss - train_loss


# --- Factual fields --------------------------------------------------------------------------------

ExtractFields = Callable[[str], dict[str, Any]]


def flatten_fields(fields: Any, prefix: str = "") -> dict[str, str]:
    """Nested facts as flat normalised strings: {"objects": [{"colour": "Red"}]} -> {"objects.0.colour": "red"}.

    None (a fact the text does not state) is dropped.
    """
    if isinstance(fields, dict):
        items = fields.items()
    elif isinstance(fields, (list, tuple)):
        items = enumerate(fields)
    else:
        return {} if fields is None else {prefix: normalize_answer(str(fields))}
    flat: dict[str, str] = {}
    for key, value in items:
        flat.update(flatten_fields(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _field_name(path: str) -> str:
    """ "objects.2.colour" -> "objects.colour": per-field accuracy pools list positions."""
    return ".".join(part for part in path.split(".") if not part.isdigit())


def field_accuracy(
    predictions: Sequence[str], references: Sequence[str], extract_fields: ExtractFields
) -> dict[str, float]:
    """Share of the reference's facts that the prediction states with the same value.

    `extract_fields(text) -> {"background": "white", "objects": [{"colour": "red", ...}], ...}` reads the
    facts out of an answer (`picovlm.eval.facts.fact_parser_for` picks it for a dataset); nested facts are
    compared leaf by leaf. Returns {"all": overall share, "<field>": share per field}. A fact the
    prediction does not state counts as wrong.
    """
    stated = (flatten_fields(extract_fields(prediction)) for prediction in predictions)
    return _share_stated_right(stated, references, extract_fields)


def _share_stated_right(
    stated: Iterable[dict[str, str]], references: Sequence[str], extract_fields: ExtractFields
) -> dict[str, float]:
    """For each reference, the flat facts stated for its row: the share of the reference's facts stated
    with its value, overall ("all") and per field."""
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for said, reference in zip(stated, references):
        for name, stated_right in _facts_checked(said, reference, extract_fields):
            total[name] += 1
            right[name] += stated_right
    result = {name: right[name] / total[name] for name in sorted(total)}
    result["all"] = sum(right.values()) / sum(total.values()) if total else 0.0
    return result


def facts_right_per_row(
    predictions: Sequence[str], references: Sequence[str], extract_fields: ExtractFields
) -> list[tuple[int, int]]:
    """(facts stated right, facts in the reference) for each row: `field_accuracy`'s "all" is the sum
    of the first over the sum of the second."""
    rows = []
    for prediction, reference in zip(predictions, references):
        checked = _facts_checked(flatten_fields(extract_fields(prediction)), reference, extract_fields)
        rows.append((sum(stated_right for _, stated_right in checked), len(checked)))
    return rows


def fact_shares_per_row(
    predictions: Sequence[str], references: Sequence[str], extract_fields: ExtractFields
) -> list[float]:
    """Each row's part of the field accuracy: its facts stated right x rows / all facts, so that the
    mean over the rows is `field_accuracy`'s "all" (and a difference of two such lists, row by row, is
    a paired difference in field accuracy). All 0 when no reference has a fact."""
    hits = facts_right_per_row(predictions, references, extract_fields)
    total = sum(facts for _, facts in hits)
    return [right * len(hits) / total if total else 0.0 for right, _ in hits]


def _facts_checked(
    said: dict[str, str], reference: str, extract_fields: ExtractFields
) -> list[tuple[str, bool]]:
    """(field name, whether `said` states it with the reference's value) for each of the reference's facts."""
    facts = flatten_fields(extract_fields(reference))
    return [(_field_name(path), said.get(path) == value) for path, value in facts.items()]


def field_majority_accuracy(
    references: Sequence[str], train_answers: Sequence[str] | TrainingAnswers, extract_fields: ExtractFields
) -> float:
    """Field accuracy of a model that always states each fact's most common training value.

    A model whose field accuracy is no better than this has learned the answer template, not the image.
    """
    return field_majority_accuracies(references, train_answers, extract_fields)["all"]


def field_majority_accuracies(
    references: Sequence[str], train_answers: Sequence[str] | TrainingAnswers, extract_fields: ExtractFields
) -> dict[str, float]:
    """`field_majority_accuracy` per field as `field_accuracy` gives it ({"all": ..., "<field>": ...}): a
    field where the model is below this is one it states worse than a constant guess would."""
    majority = TrainingAnswers.of(train_answers).majority(extract_fields)
    return _share_stated_right(itertools.repeat(majority), references, extract_fields)


# --- How sure a figure is -------------------------------------------------------------------------


def clustered_standard_error(
    values: Sequence[float], clusters: Sequence[Any] | None = None, weights: Sequence[float] | None = None
) -> float:
    """The standard error of sum(values) / sum(weights) (the mean when `weights` is None), with the rows
    of one cluster summed before the spread is taken: rows of one object (its `group`) move together
    (a Wesnoth unit has ~11 pictures, which a model reads right or wrong together), so they are one
    piece of evidence, not eleven. The cluster-robust (linearised ratio) estimate with the small-sample
    factor k / (k - 1) for k clusters; every row its own cluster and no weights give the usual sample
    standard deviation / sqrt(n). 0 with fewer than two clusters or no weight."""
    n = len(values)
    weights = [1.0] * n if weights is None else weights
    total_weight = sum(weights)
    if not total_weight:  # nothing scored
        return 0.0
    ratio = sum(values) / total_weight
    sums: dict[Any, float] = {}
    for row, (value, weight) in enumerate(zip(values, weights)):
        key = clusters[row] if clusters is not None else row
        sums[key] = sums.get(key, 0.0) + value - ratio * weight
    k = len(sums)
    return math.sqrt(k / (k - 1) * sum(s * s for s in sums.values())) / total_weight if k > 1 else 0.0


def paired_standard_error(differences: Sequence[float], clusters: Sequence[Any] | None = None) -> float:
    """The standard error of the mean of paired differences (two ways of answering the same rows),
    cluster-robust over `clusters` (`clustered_standard_error`)."""
    return clustered_standard_error(differences, clusters)


# --- Everything at once ----------------------------------------------------------------------------


def item_scores(prediction: str, reference: str) -> dict[str, float]:
    """Scores for one answer, shown per row in the report."""
    return {
        "exact_match": exact_match(prediction, reference),
        "token_f1": token_f1(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
    }


def generation_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    questions: Sequence[str] | None = None,
    image_keys: Sequence[str] | None = None,
    train_answers: Sequence[str] | TrainingAnswers | None = None,
    extract_fields: ExtractFields | None = None,
    top_k: int = 5,
) -> dict[str, Any]:
    """All answer-quality and collapse metrics for one set of generated answers, as a flat dict.

    `image_keys` identify images (rows sharing an image share a key); `train_answers` enable the
    copy rate; `extract_fields` enables field accuracy. The only non-scalar value is "top_answers".
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    n = len(predictions)
    if n == 0:
        return {"n_items": 0}
    per_item = [item_scores(p, r) for p, r in zip(predictions, references)]
    pred_words = [len(p.split()) for p in predictions]
    ref_words = [len(r.split()) for r in references]
    metrics: dict[str, Any] = {
        "n_items": n,
        "n_images": len(set(image_keys)) if image_keys is not None else n,
        "exact_match": sum(s["exact_match"] for s in per_item) / n,
        "token_f1": sum(s["token_f1"] for s in per_item) / n,
        "rouge_l": sum(s["rouge_l"] for s in per_item) / n,
        "bleu": bleu(predictions, references),
        "chrf": chrf(predictions, references),
        "answer_words": sum(pred_words) / n,
        "reference_words": sum(ref_words) / n,
        "length_ratio": sum(pred_words) / max(1, sum(ref_words)),
        "distinct_1": distinct_n(predictions, 1),
        "distinct_2": distinct_n(predictions, 2),
        "distinct_answer_share": distinct_answer_share(predictions, image_keys),
        "reference_distinct_answer_share": distinct_answer_share(references, image_keys),
        "top_answer_share": top_answer_share(predictions, image_keys),
        "reference_top_answer_share": top_answer_share(references, image_keys),
        "top_answers": most_repeated_answers(predictions, top_k),
    }
    gold = [reference_choice(r) for r in references]
    mc_rows = [i for i, letter in enumerate(gold) if letter]
    if mc_rows:
        metrics["mc_items"] = len(mc_rows)
        metrics["mc_accuracy"] = multiple_choice_accuracy(
            [predictions[i] for i in mc_rows],
            [gold[i] for i in mc_rows],
            [questions[i] for i in mc_rows] if questions else None,
        )
    if train_answers is not None:
        train_answers = TrainingAnswers.of(train_answers)  # read once for the three uses below
        metrics["copied_from_train_share"] = copied_from_train_share(predictions, train_answers)
        metrics["reference_copied_from_train_share"] = copied_from_train_share(references, train_answers)
    if extract_fields is not None:
        fields = field_accuracy(predictions, references, extract_fields)
        metrics["field_accuracy"] = fields.pop("all")
        metrics.update({f"field_accuracy/{name}": value for name, value in fields.items()})
        if train_answers is not None:
            majority = field_majority_accuracies(references, train_answers, extract_fields)
            metrics["field_majority_accuracy"] = majority.pop("all")
            metrics.update({f"field_majority_accuracy/{name}": value for name, value in majority.items()})
    return metrics


# --- The verdict -----------------------------------------------------------------------------------

# Thresholds, tuned so that the failure from the blog (every test image given the same answer, loss
# unchanged when the images are shuffled) is named, while a model that merely makes mistakes is not.
THRESHOLDS = {
    # collapsed: the most common answer went to at least this share of images...
    "top_answer_share": 0.5,
    # ...and to this much more than in the references (a dataset may legitimately repeat answers).
    "top_answer_excess": 0.2,
    # collapsed: distinct answers per distinct image below this fraction of the references' own share.
    "distinct_ratio": 0.5,
    # ignores the image: shuffling images raises the loss by less than this (nats per answer token)...
    "image_gap_nats": 0.05,
    # ...or fewer than this share of answers change when each image is swapped for another (scaled by
    # the share of references that differ between the swapped rows).
    "answers_changed_share": 0.2,
    # overfitting: test loss above train loss by more than this (nats per token).
    "loss_gap_nats": 1.0,
    # recalls training answers: at least this share of answers are verbatim training answers...
    "copied_share": 0.5,
    # ...and this much more than the references (on a set whose answers repeat, copying is right).
    "copied_excess": 0.3,
    # seen in training: more than this share of the scored rows share a picture with the training split
    # (picovlm.data.leakage.LEAKAGE_THRESHOLD, the share above which training refuses to start).
    "leaked_image_share": 0.01,
}


def collapse_verdict(metrics: dict[str, Any], thresholds: dict[str, float] | None = None) -> tuple[str, str]:
    """(status, sentence) in plain words from a metrics dict; missing metrics are simply not judged.

    status is the most serious finding: "collapsed", "ignores-image", "seen-in-training",
    "recalls-training", "below-baseline", "overfitting", or "healthy" (or "unknown" when there is
    nothing to judge). The sentence lists every finding.
    """
    t = {**THRESHOLDS, **(thresholds or {})}
    findings = [(status, sentence) for status, check in _FINDINGS if (sentence := check(metrics, t))]
    if findings:
        return findings[0][0], "; ".join(sentence for _, sentence in findings)
    judged = {"top_answer_share", "image_gap_shuffled", "answers_changed_share", "train_test_loss_gap"}
    if not judged & metrics.keys():
        return "unknown", "unknown: no collapse signals were computed"
    return "healthy", "healthy: answers vary with the image and no collapse signal fired"


# Each check reads the metrics it needs (and passes when they are missing): its sentence, else None.


def _collapsed(m: dict[str, Any], t: dict[str, float]) -> str | None:
    if "top_answer_share" not in m:
        return None
    share, ref_share = m["top_answer_share"], m.get("reference_top_answer_share", 0.0)
    ratio = m["distinct_answer_share"] / max(m.get("reference_distinct_answer_share", 1.0), 1e-9)
    if share >= t["top_answer_share"] and share >= ref_share + t["top_answer_excess"]:
        return f"collapsed: {share:.0%} of test images got the same answer"
    if ratio < t["distinct_ratio"]:
        n_images = m.get("n_images", m.get("n_items", 0))
        n_distinct = round(m["distinct_answer_share"] * n_images)
        return (
            f"collapsed: only {n_distinct} distinct answers for {n_images} distinct images "
            f"(the references have {m.get('reference_distinct_answer_share', 1.0):.0%} distinct)"
        )
    return None


def _ignores_image(m: dict[str, Any], t: dict[str, float]) -> str | None:
    # with facts to score, the set may be one whose pictures do not show them (docs/recipes.md, 32)
    hint = "; `picovlm data facts` tells which facts the pictures show" if "field_accuracy" in m else ""
    if "image_gap_shuffled" in m and m["image_gap_shuffled"] < t["image_gap_nats"]:
        gap = m["image_gap_shuffled"]
        how_much = (
            f"only {gap:.2f} nats/token higher" if gap >= 0.005 else f"no higher ({gap:+.2f} nats/token)"
        )
        return f"ignores the image: loss with shuffled images is {how_much}{hint}"
    if "answers_changed_share" in m:  # else: answers that stay the same whatever the image
        changed, limit = m["answers_changed_share"], t["answers_changed_share"]
        if changed < limit * m.get("reference_answers_changed_share", 1.0):
            return f"ignores the image: only {changed:.0%} of answers change when the image is swapped{hint}"
    return None


def _seen_in_training(m: dict[str, Any], t: dict[str, float]) -> str | None:
    # Rows whose picture the model trained on measure memory: every score below is inflated (a lookup
    # finds the very picture), so this outranks what the scores say. Identical answers alone are only
    # reported (leakage_shared_answer_share): in a set of facts the same sentence fits many pictures.
    leaked = m.get("leakage_shared_image_share")
    if leaked is None or leaked <= t["leaked_image_share"]:
        return None
    answers = m.get("leakage_shared_answer_rows")
    return (
        f"seen in training: {m.get('leakage_shared_image_rows', 0)} of "
        f"{m.get('leakage_compared_rows', '?')} scored rows ({leaked:.0%}) share a picture with the "
        "training split"
        + (f", {answers} an identical answer" if answers is not None else "")
        + ": these scores measure memory; re-split with `picovlm data split`"
    )


def _recalls_training(m: dict[str, Any], t: dict[str, float]) -> str | None:
    # A model that answers unseen images with training answers word for word is a retrieval system:
    # no better than the nearest-image lookup at best, and it cannot describe a new object.
    copied, ref_copied = m.get("copied_from_train_share"), m.get("reference_copied_from_train_share", 0.0)
    if copied is None or copied < t["copied_share"] or copied < ref_copied + t["copied_excess"]:
        return None
    return (
        f"recalls training answers: {copied:.0%} of answers are verbatim training answers, "
        f"while {ref_copied:.0%} of the references are"
    )


def _below_baseline(m: dict[str, Any], t: dict[str, float]) -> str | None:
    # Against the lookup, facts decide when both sides have them: answers that share a template give a
    # lookup a high token F1 whatever the image (0.85 on fashion-mnist-pairs), so F1 alone can call a
    # model that states more facts right "below baseline".
    baseline_fields, baseline_f1 = m.get("baseline_field_accuracy"), m.get("baseline_token_f1")
    if baseline_fields is not None and "field_accuracy" in m:
        if m["field_accuracy"] < baseline_fields:
            return (
                f"below baseline: a nearest-image lookup states {baseline_fields:.0%} of the facts "
                f"right, the model {m['field_accuracy']:.0%}{_margin_note(m, 'field_accuracy')}"
            )
        return None
    if baseline_f1 is not None and "token_f1" in m and m["token_f1"] < baseline_f1:
        return (
            f"below baseline: a nearest-image lookup scores token-F1 {baseline_f1:.2f}, the model "
            f"{m['token_f1']:.2f}{_margin_note(m, 'token_f1')}"
        )
    return None


def _margin_note(m: dict[str, Any], metric: str) -> str:
    """How sure the split is of the model's margin over the lookup, where eval measured its error:
    a few dozen test objects cannot tell a lead of 0.01 from a run's luck."""
    margin, error = m.get(f"baseline_margin_{metric}"), m.get(f"baseline_margin_{metric}_error")
    if margin is None or not error:
        return ""
    objects = f" over {m['objects']} objects" if m.get("objects") else ""
    sure = "within" if abs(margin) <= error else "beyond"
    return f" ({margin:+.3f} ± {error:.3f}{objects}: {sure} one standard error)"


def _overfitting(m: dict[str, Any], t: dict[str, float]) -> str | None:
    if "train_test_loss_gap" in m and m["train_test_loss_gap"] > t["loss_gap_nats"]:
        return f"overfitting: test loss is {m['train_test_loss_gap']:.2f} nats/token above train loss"
    return None


# The findings from the most serious down: the verdict's status is the first that fires.
_FINDINGS = (
    ("collapsed", _collapsed),
    ("ignores-image", _ignores_image),
    ("seen-in-training", _seen_in_training),
    ("recalls-training", _recalls_training),
    ("below-baseline", _below_baseline),
    ("overfitting", _overfitting),
)
