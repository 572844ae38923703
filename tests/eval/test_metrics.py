"""Metric functions against hand-computed values and, where one exists, the reference package."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from picovlm.eval import metrics as M


def test_normalize_answer_drops_case_punctuation_and_articles():
    assert M.normalize_answer("The Eiffel  Tower!") == "eiffel tower"
    assert M.normalize_answer("A red car, an apple.") == "red car apple"
    assert M.answer_tokens("“Hello”, world…") == ["hello", "world"]


def test_exact_match():
    assert M.exact_match("The cat.", "cat") == 1.0
    assert M.exact_match("cats", "cat") == 0.0


def test_token_f1_hand_computed():
    # pred -> cat sat on mat (4), ref -> cat on mat (3); overlap 3: P=3/4, R=1, F1=6/7
    assert M.token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    # repeated words count only as often as the reference has them: pred red red red, ref red blue
    # overlap 1: P=1/3, R=1/2, F1 = 2*(1/6)/(5/6) = 0.4
    assert M.token_f1("red red red", "red blue") == pytest.approx(0.4)
    assert M.token_f1("dog", "cat") == 0.0
    assert M.token_f1("", "") == 1.0
    assert M.token_f1("", "cat") == 0.0


def test_longest_common_subsequence():
    assert M.longest_common_subsequence(list("ABCBDAB"), list("BDCABA")) == 4
    assert M.longest_common_subsequence([], ["a"]) == 0


def test_rouge_l_hand_computed():
    # pred 6 tokens, ref 5, LCS 5: P=5/6, R=1, F=10/11
    assert M.rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    assert M.rouge_l("x y", "z") == 0.0


def test_rouge_l_matches_rouge_score_package():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(0)
    vocab = "the red blue small large circle square is at top left center of a on background".split()
    for _ in range(200):
        pred = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 25)))
        ref = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 25)))
        if rng.random() < 0.3:
            pred = pred.capitalize() + "."
        expected = scorer.score(ref, pred)["rougeL"].fmeasure
        assert M.rouge_l(pred, ref) == pytest.approx(expected, abs=1e-12), (pred, ref)


def test_bleu_and_chrf_match_sacrebleu_and_extremes():
    import sacrebleu

    preds = ["a large red circle is at the top left", "two shapes on a black background"]
    refs = ["a small red circle is at the top left", "three shapes on a white background"]
    assert M.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert M.chrf(preds, refs) == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert M.bleu(refs, refs) == pytest.approx(100.0)
    assert M.chrf(refs, refs) == pytest.approx(100.0)
    assert M.bleu(["zzz qqq"], ["a b c d"]) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("b", "B"),
        ("Answer: B.", "B"),
        ("answer: c", "C"),
        ("The answer is B", "B"),
        ("The answer is (b).", "B"),
        ("b) a blue car", "B"),
        ("(C) dog", "C"),
        ("Option C", "C"),
        ("It is a blue car.", "B"),  # option text
        ("The red car.", "A"),  # option text; "red car" would also match "blue car"? no: whole words
        ("I think C is right", "C"),
        ("A cat sits on the mat", None),  # article, not a choice
        ("answer is a cat", None),
        ("E", None),  # not one of the options
        ("something else entirely", None),
        ("car", None),  # ambiguous: in no option as a whole option text
    ],
)
def test_parse_choice(text, expected):
    options = {"A": "red car", "B": "blue car", "C": "dog", "D": "bird"}
    assert M.parse_choice(text, options) == expected


def test_parse_choice_prefers_the_longest_matching_option():
    assert M.parse_choice("a big dog", {"A": "dog", "B": "big dog"}) == "B"


def test_parse_options_formats():
    mmstar = "What is shown?\nOptions: A: a red car, B: a blue car, C: a dog, D: nothing"
    assert M.parse_options(mmstar) == {"A": "a red car", "B": "a blue car", "C": "a dog", "D": "nothing"}
    assert M.parse_options("Pick\n(A) cat\n(B) dog") == {"A": "cat", "B": "dog"}
    assert M.parse_options("Describe the image. A good one.") == {}


def test_multiple_choice_accuracy():
    questions = ["Q\nA: red\nB: blue"] * 4
    preds = ["B", "Answer: A", "it is blue", "no idea"]
    gold = ["B", "B", "B", "A"]
    assert M.multiple_choice_accuracy(preds, gold, questions) == pytest.approx(2 / 4)
    assert M.reference_choice("(C)") == "C" and M.reference_choice("a red car") is None


def test_distinct_n_hand_computed():
    texts = ["red blue green", "red blue pink"]
    assert M.distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert M.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert M.distinct_n([], 2) == 0.0


def test_distinct_and_top_answer_share_count_images_not_rows():
    answers = ["red", "Red.", "blue", "red", "green"]
    keys = ["i1", "i2", "i3", "i4", "i1"]  # i1 appears twice: only its first answer counts
    assert M.distinct_answer_share(answers, keys) == pytest.approx(2 / 4)  # {red, blue} over 4 images
    assert M.top_answer_share(answers, keys) == pytest.approx(3 / 4)
    assert M.distinct_answer_share(answers) == pytest.approx(3 / 5)


def test_most_repeated_answers_groups_by_normalised_text():
    answers = ["A red car.", "red car", "blue car", "Red car", "blue car", "dog"]
    assert M.most_repeated_answers(answers, k=2) == [("A red car.", 3), ("blue car", 2)]


def test_copied_from_train_share_and_loss_gap():
    assert M.copied_from_train_share(["The cat.", "a dog", "new"], ["cat", "bird"]) == pytest.approx(1 / 3)
    assert M.train_test_loss_gap(1.25, 2.0) == pytest.approx(0.75)


def test_field_accuracy_with_demo_extractor():
    from picovlm.data.scenes import extract_fields

    ref = "The image shows two shapes on a white background. A large red circle is at the top left. A small blue star is at the center."
    # right: count, background, object 1 (4 facts); wrong: object 2 colour -> 6 + 3 of 4 = 9/10
    pred = "We can see two shapes on a white background. A large red circle is at the top left. At the center there is a small green star."
    result = M.field_accuracy([pred], [ref], extract_fields)
    assert result["all"] == pytest.approx(9 / 10)
    assert result["objects.colour"] == pytest.approx(1 / 2)
    assert result["background"] == 1.0 and result["count"] == 1.0
    # a prediction stating nothing gets nothing
    assert M.field_accuracy(["hello"], [ref], extract_fields)["all"] == 0.0


def _three_facts(text):
    """A toy fact parser: up to three facts, the answer's words in order."""
    return dict(zip(("colour", "shape", "size"), text.split()))


THREE_FACT_REFERENCES = ["red circle big", "blue star", "green square small"]
THREE_FACT_ANSWERS = ["red square big", "blue star", "nothing"]


def test_facts_right_per_row_add_up_to_the_field_accuracy():
    refs, preds, extract = THREE_FACT_REFERENCES, THREE_FACT_ANSWERS, _three_facts
    rows = M.facts_right_per_row(preds, refs, extract)
    assert rows == [(2, 3), (2, 2), (0, 3)]
    assert sum(r for r, _ in rows) / sum(n for _, n in rows) == M.field_accuracy(preds, refs, extract)["all"]


def test_fact_shares_per_row_average_to_the_field_accuracy():
    refs, preds, extract = THREE_FACT_REFERENCES, THREE_FACT_ANSWERS, _three_facts
    shares = M.fact_shares_per_row(preds, refs, extract)
    assert shares == pytest.approx([2 * 3 / 8, 2 * 3 / 8, 0.0])
    assert sum(shares) / len(shares) == pytest.approx(M.field_accuracy(preds, refs, extract)["all"])
    assert M.fact_shares_per_row(["a"], ["b"], lambda text: {}) == [0.0]  # no facts: nothing to share


def test_the_clustered_error_of_a_ratio_is_the_spread_of_that_ratio_over_repeated_samples():
    """A loss gap is a ratio (summed nats over summed answer tokens) over rows that come in objects. Its
    clustered error has to predict how much the ratio moves when a fresh set of objects is drawn: 600
    simulated test splits of 30 objects, each object with its own true gap and 2-12 rows of 5-40 tokens."""
    rng = random.Random(7)

    def one_split():
        values, weights, clusters = [], [], []
        for obj in range(30):
            object_gap = rng.gauss(0.2, 0.3)  # some objects show their facts, others nothing
            for _ in range(rng.randint(2, 12)):
                tokens = rng.randint(5, 40)
                values.append(tokens * (object_gap + rng.gauss(0.0, 0.1)))
                weights.append(tokens)
                clusters.append(obj)
        return (
            sum(values) / sum(weights),
            M.clustered_standard_error(values, clusters, weights),
            (values, weights, clusters),
        )

    splits = [one_split() for _ in range(600)]
    spread = statistics.stdev(ratio for ratio, _, _ in splits)
    predicted = statistics.mean(error for _, error, _ in splits)
    assert predicted == pytest.approx(spread, rel=0.15)
    # counting every row as its own evidence would claim several times the certainty
    values, weights, _ = splits[0][2]
    assert M.clustered_standard_error(values, None, weights) < splits[0][1] / 2
    # every object with the same gap: nothing to be unsure of
    assert M.clustered_standard_error([2.0, 4.0, 6.0], ["a", "b", "c"], [1.0, 2.0, 3.0]) == pytest.approx(0.0)
    assert M.clustered_standard_error([1.0, 3.0], ["a", "a"]) == 0.0  # one object: no spread to measure
    assert M.clustered_standard_error([], []) == 0.0  # nothing scored


def test_the_simplest_candidate_within_one_standard_error_of_the_best_is_chosen():
    """How a run chooses the way it answers (picovlm/eval/choose.py): a later, more elaborate candidate
    must beat the earlier ones by more than the noise of the rows, else the earlier one stays."""
    from picovlm.eval.choose import one_standard_error_choice

    rng = random.Random(0)
    base = [rng.random() for _ in range(256)]
    # a lead of 0.004 made of a few rows that differ by a lot: well inside one standard error
    noisy = [s + (rng.choice([-0.5, 0.5]) if i % 8 == 0 else 0.0) for i, s in enumerate(base)]
    noisy = [s + 0.004 - (sum(noisy) - sum(base)) / 256 for s in noisy]
    chosen, errors = one_standard_error_choice([base, noisy])
    assert sum(noisy) / 256 > sum(base) / 256 and chosen == 0
    assert errors[1] == 0.0 and 0.004 < errors[0] < 0.05
    # a lead of 0.05 on every row: far outside it, the later candidate wins
    better = [s + 0.05 for s in base]
    chosen, errors = one_standard_error_choice([base, better])
    assert chosen == 1 and errors[1] == 0.0 and errors[0] < 1e-9
    # equal scores: the earlier; and a best that comes first is chosen whatever the errors
    assert one_standard_error_choice([base, list(base)])[0] == 0
    assert one_standard_error_choice([better, base, noisy])[0] == 0


def test_rows_of_one_object_count_as_one_piece_of_evidence():
    """The error is cluster-robust over the rows' objects (their `group`): a lead that comes from a few
    objects, each with many pictures that move together, is as uncertain as those few objects make it,
    however many rows they fill. With every row its own object it is the usual error of the mean."""
    from picovlm.eval.choose import one_standard_error_choice
    from picovlm.eval.metrics import paired_standard_error

    rng = random.Random(1)
    differences = [rng.gauss(0.0, 1.0) for _ in range(40)]
    usual = statistics.stdev(differences) / math.sqrt(len(differences))
    assert paired_standard_error(differences) == pytest.approx(usual)
    assert paired_standard_error(differences, [str(i) for i in range(40)]) == pytest.approx(usual)
    # 24 objects of 11 pictures each: the later way is right on 3 objects the earlier misses, and
    # wrong on 1 that the earlier gets; a lead of 2 objects' worth
    objects = [f"unit{i // 11}" for i in range(264)]
    base = [0.5] * 264
    lucky = [s + (0.6 if o in ("unit0", "unit1", "unit2") else -0.6 if o == "unit3" else 0.0)
             for s, o in zip(base, objects)]  # fmt: skip
    chosen_by_rows, by_rows = one_standard_error_choice([base, lucky])
    chosen_by_objects, by_objects = one_standard_error_choice([base, lucky], objects)
    assert chosen_by_rows == 1 and chosen_by_objects == 0  # 264 rows say "win", 24 objects say "noise"
    assert by_objects[0] > 3 * by_rows[0]


def test_field_majority_accuracy():
    def extract(text):
        colour, shape = text.split()
        return {"colour": colour, "shape": shape}

    train = ["red circle", "red square", "blue circle"]  # majority: red, circle
    refs = ["red star", "blue circle"]  # red right, star wrong, blue wrong, circle right -> 2/4
    assert M.field_majority_accuracy(refs, train, extract) == pytest.approx(0.5)


def test_training_answers_are_read_once_and_give_the_same_figures():
    """The trainer checks its answers every few hundred steps against the same training answers: read
    once (normalised set, each parser's majority), they give what the plain list gives."""
    parsed = []

    def extract(text):
        parsed.append(text)
        colour, shape = text.split()[:2]
        return {"colour": colour, "shape": shape}

    train = ["red circle", "red square", "blue circle"]
    preds, refs = ["red circle", "blue star", "Red Circle."], ["red star", "blue circle", "red square"]
    plain = M.generation_metrics(preds, refs, train_answers=train, extract_fields=extract)
    once = M.TrainingAnswers(train)
    for _ in range(3):
        assert M.generation_metrics(preds, refs, train_answers=once, extract_fields=extract) == plain
    parsed.clear()
    M.generation_metrics(preds, refs, train_answers=once, extract_fields=extract)
    calls_once = len(parsed)
    parsed.clear()
    M.generation_metrics(preds, refs, train_answers=train, extract_fields=extract)
    assert len(parsed) == calls_once + len(train)  # the list is parsed each time, the reader once
    assert plain["copied_from_train_share"] == pytest.approx(2 / 3)  # "Red Circle." normalises to one

    def shape_only(text):  # another parser (another field name): its own majority, not the first's
        return {"form": text.split()[1]}

    assert M.field_majority_accuracy(refs, once, shape_only) == pytest.approx(1 / 3)  # circle
    assert M.field_majority_accuracy(refs, train, shape_only) == pytest.approx(1 / 3)


def test_generation_metrics_flat_dict():
    refs = ["red circle at top", "blue square at center", "green star at left", "(B)"]
    preds = ["red circle at top", "red circle at top", "red circle at top", "Answer: B"]
    m = M.generation_metrics(
        preds,
        refs,
        questions=["q", "q", "q", "Q\nA: x\nB: y"],
        image_keys=["1", "2", "3", "4"],
        train_answers=["red circle at top"],
    )
    assert m["n_items"] == 4 and m["n_images"] == 4
    assert m["exact_match"] == pytest.approx(1 / 4)  # "Answer: B" vs "(B)" is not an exact match
    assert m["mc_items"] == 1 and m["mc_accuracy"] == 1.0
    assert m["top_answer_share"] == pytest.approx(3 / 4)
    assert m["reference_top_answer_share"] == pytest.approx(1 / 4)
    assert m["copied_from_train_share"] == pytest.approx(3 / 4)
    assert m["top_answers"][0] == ("red circle at top", 3)
    assert m["answer_words"] == pytest.approx((4 * 3 + 2) / 4)


def test_verdict_collapsed_in_plain_words():
    m = {
        "top_answer_share": 0.71,
        "reference_top_answer_share": 0.01,
        "distinct_answer_share": 0.05,
        "reference_distinct_answer_share": 1.0,
        "n_images": 100,
    }
    status, sentence = M.collapse_verdict(m)
    assert status == "collapsed"
    assert sentence.startswith("collapsed: 71% of test images got the same answer")


def test_verdict_collapse_relative_to_references():
    # A dataset whose answers repeat (e.g. 4 classes) is not "collapsed" when the model repeats them too.
    m = {
        "top_answer_share": 0.6,
        "reference_top_answer_share": 0.55,
        "distinct_answer_share": 0.04,
        "reference_distinct_answer_share": 0.04,
        "n_images": 100,
    }
    assert M.collapse_verdict(m)[0] == "healthy"
    m.update(distinct_answer_share=0.01, top_answer_share=0.6)
    status, sentence = M.collapse_verdict(m)
    assert status == "collapsed" and "only 1 distinct answers for 100 distinct images" in sentence


def test_verdict_ignores_image_and_overfitting_and_baseline():
    status, sentence = M.collapse_verdict({"image_gap_shuffled": 0.01})
    assert status == "ignores-image"
    assert sentence == "ignores the image: loss with shuffled images is only 0.01 nats/token higher"
    # where the set has facts, the sentence points to the check of which ones its pictures show
    sentence = M.collapse_verdict({"image_gap_shuffled": 0.01, "field_accuracy": 0.2})[1]
    assert sentence.endswith("higher; `picovlm data facts` tells which facts the pictures show")
    changed = {"image_gap_shuffled": 0.9, "answers_changed_share": 0.05, "field_accuracy": 0.2}
    assert M.collapse_verdict(changed)[1].endswith(
        "swapped; `picovlm data facts` tells which facts the pictures show"
    )
    # the loss depends on the image but greedy answers do not: generation still ignores it
    status, sentence = M.collapse_verdict({"image_gap_shuffled": 0.9, "answers_changed_share": 0.05})
    assert status == "ignores-image" and "only 5% of answers change" in sentence
    # ...unless the references themselves rarely differ between the swapped rows
    m = {"image_gap_shuffled": 0.9, "answers_changed_share": 0.05, "reference_answers_changed_share": 0.1}
    assert M.collapse_verdict(m)[0] == "healthy"
    status, sentence = M.collapse_verdict(
        {"image_gap_shuffled": 0.5, "train_test_loss_gap": 1.8, "token_f1": 0.64, "baseline_token_f1": 0.81}
    )
    assert status == "below-baseline"
    assert "token-F1 0.81, the model 0.64" in sentence and "overfitting: test loss is 1.80" in sentence
    assert M.collapse_verdict({})[0] == "unknown"


def test_against_the_lookup_facts_decide_when_both_have_them():
    # fashion-mnist-pairs: a shared template gives the lookup the higher F1, the model the facts
    pairs = {"image_gap_shuffled": 0.4, "token_f1": 0.863, "baseline_token_f1": 0.872,
             "field_accuracy": 0.80, "baseline_field_accuracy": 0.73}  # fmt: skip
    assert M.collapse_verdict(pairs)[0] == "healthy"
    status, sentence = M.collapse_verdict(dict(pairs, field_accuracy=0.50, token_f1=0.9))
    assert status == "below-baseline"
    assert sentence == "below baseline: a nearest-image lookup states 73% of the facts right, the model 50%"
    # where eval measured the margin's error over the test objects, the sentence says whether it is noise
    close = dict(pairs, field_accuracy=0.72, baseline_margin_field_accuracy=-0.01,
                 baseline_margin_field_accuracy_error=0.03, objects=55)  # fmt: skip
    assert M.collapse_verdict(close)[1] == (
        "below baseline: a nearest-image lookup states 73% of the facts right, the model 72% "
        "(-0.010 ± 0.030 over 55 objects: within one standard error)"
    )
    far = dict(close, field_accuracy=0.50, baseline_margin_field_accuracy=-0.23)
    assert M.collapse_verdict(far)[1].endswith("(-0.230 ± 0.030 over 55 objects: beyond one standard error)")
    # without facts on both sides, token F1 decides as before
    assert M.collapse_verdict(dict(pairs, baseline_field_accuracy=None))[0] == "below-baseline"


def test_verdict_wording_when_shuffling_does_not_raise_the_loss():
    sentence = M.collapse_verdict({"image_gap_shuffled": -0.003})[1]
    assert sentence == "ignores the image: loss with shuffled images is no higher (-0.00 nats/token)"


def test_verdict_names_retrieval_when_answers_are_training_answers():
    # issue 14's emoji run: 77% of answers were training answers word for word, no reference was
    recall = {"image_gap_shuffled": 0.26, "copied_from_train_share": 0.77,
              "reference_copied_from_train_share": 0.0, "token_f1": 0.72, "baseline_token_f1": 0.79}  # fmt: skip
    status, sentence = M.collapse_verdict(recall)
    assert status == "recalls-training"
    assert sentence.startswith(
        "recalls training answers: 77% of answers are verbatim training answers, while 0% of the references are"
    )
    assert "below baseline" in sentence
    # a set whose answers repeat (the facts of a photo recur): copying is what the references do too
    assert (
        M.collapse_verdict(dict(recall, reference_copied_from_train_share=0.6, token_f1=0.8))[0] == "healthy"
    )
    # the real data: the copy rate comes from the model's own answers
    answers, train = ["a cat.", "a dog.", "a new thing."], ["A cat.", "A dog."]
    m = M.generation_metrics(answers, ["a lion.", "a wolf.", "a fox."], train_answers=train)
    assert m["copied_from_train_share"] == 2 / 3 and M.collapse_verdict(m)[0] == "recalls-training"


def test_verdict_names_test_rows_seen_in_training():
    from picovlm.data.leakage import LEAKAGE_THRESHOLD

    assert M.THRESHOLDS["leaked_image_share"] == LEAKAGE_THRESHOLD  # eval names what training refuses
    healthy = {
        "image_gap_shuffled": 0.4,
        "answers_changed_share": 0.9,
        "token_f1": 0.9,
        "baseline_token_f1": 1.0,
    }
    leaked = {"leakage_compared_rows": 40, "leakage_shared_image_rows": 30, "leakage_shared_image_share": 0.75,
              "leakage_shared_answer_rows": 28}  # fmt: skip
    status, sentence = M.collapse_verdict({**healthy, **leaked})
    assert status == "seen-in-training"  # before "below baseline": the lookup found the very pictures
    assert sentence.startswith(
        "seen in training: 30 of 40 scored rows (75%) share a picture with the training split, 28 an "
        "identical answer: these scores measure memory; re-split with `picovlm data split`"
    )
    assert "below baseline" in sentence
    # at the threshold (what training lets through) and with shared answers alone: not named
    for share, rows in ((0.01, 1), (0.0, 0)):
        quiet = {**leaked, "leakage_shared_image_rows": rows, "leakage_shared_image_share": share}
        assert "seen in training" not in M.collapse_verdict({**healthy, **quiet, "baseline_token_f1": 0.5})[1]


def test_words_with_places_are_normalize_answers_words_and_where_they_stand():
    """ValueMatcher.restate replaces a fact's words in the answer as written: each normalised word
    must come with the characters it was folded from."""
    text = "The “Flag” of L'Été — an ＡＢＣ nation, 3 strokes."
    words = M.words_with_places(text)
    assert [w for w, _, _ in words] == M.normalize_answer(text).split()
    assert [text[start:end] for _, start, end in words] == [
        "Flag",
        "of",
        "L",
        "Été",
        "ＡＢＣ",
        "nation",
        "3",
        "strokes",
    ]
