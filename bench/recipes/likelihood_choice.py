"""Can a retrieving model tell which answer fits a picture: its own, or one of its neighbours'?

docs/recipes.md finding 22. For each test picture, the candidates are the model's answer (from `picovlm
eval`'s predictions.jsonl) and the answers of the k training pictures in its prompt. The model scores each
by its mean log-probability per answer token, given the picture and the prompt it answers from; the
answer kept is the likeliest, with BIAS nats per token added to each neighbour's score (BIAS > 0 leans
towards copying a neighbour, as the lookup does).

    python bench/recipes/likelihood_choice.py RUN_DIR DATA_DIR     # RUN_DIR/eval from real_suite.sh
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from datasets import load_from_disk

from picovlm.data.collate import pad_collate
from picovlm.eval import metrics as M
from picovlm.eval.evaluate import items_from_rows, next_token_logits, score_answers
from picovlm.eval.facts import fact_parser_for
from picovlm.model.vlm import VisionLanguageModel
from picovlm.retrieval import thumbnail_vectors


@torch.no_grad()
def mean_log_probs(model, image, question: str, candidates: list[str]) -> list[float]:
    """Each candidate answer's mean log-probability per token, read after `image` and `question`."""
    (prompt,) = model.retrieval_questions([question], [[image]])
    pixels = model.processor.image_pixels([image])
    samples = []
    for answer in candidates:
        input_ids, labels = model.processor.encode_turns([(prompt, answer)], 1)
        samples.append({"input_ids": input_ids, "labels": labels, "pixel_values": pixels})
    batch = pad_collate(samples, model.processor.pad_token_id)
    logits, targets = next_token_logits(model, batch)
    answer = (targets != -100).float()
    log_probs = -F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    return ((log_probs * answer).sum(dim=1) / answer.sum(dim=1)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir")
    parser.add_argument("data_dir")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = VisionLanguageModel.from_pretrained(f"{args.run_dir}/model").float().eval()
    if model.retrieval is None:
        raise SystemExit(f"{args.run_dir}/model does not retrieve: there are no neighbours to choose from.")
    data = load_from_disk(args.data_dir)
    # the rows `picovlm eval` answered, in its order (predictions.jsonl's "index"), scored as it scores them
    items = items_from_rows(data["test"])
    parse = fact_parser_for(data["test"], data["train"])
    predictions = [json.loads(line) for line in open(f"{args.run_dir}/eval/predictions.jsonl")]
    own = {p["index"]: p["answer"] for p in predictions if p["model"] == "model"}
    found = model.retrieval.neighbours(thumbnail_vectors([item.images[0] for item in items]))
    candidates, scores = [], []
    for i, item in enumerate(items):
        candidates.append([own[i]] + [model.retrieval.answers[j] for j in found[i]])
        scores.append(mean_log_probs(model, item.images[0], item.question, candidates[-1]))

    def row(name: str, answers: list[str]) -> str:
        metrics, _ = score_answers(items, answers, extract_fields=parse)
        return (
            f"| {name} | {metrics['token_f1']:.3f} | {metrics['field_accuracy']:.3f} | "
            f"{metrics['distinct_answer_share']:.0%} |"
        )

    print("| answers | token F1 | facts | distinct |\n|---|---|---|---|")
    print(row("the model's", [c[0] for c in candidates]))
    print(row("the nearest neighbour's (the lookup)", [c[1] for c in candidates]))
    best = [max(c, key=lambda a, r=item.reference: M.token_f1(a, r)) for c, item in zip(candidates, items)]
    print(row("the best of them, knowing the reference", best))
    for bias in (0.0, 0.25, 0.5, 1.0):
        chosen = [c[int(np.argmax([s[0]] + [x + bias for x in s[1:]]))] for c, s in zip(candidates, scores)]
        print(row(f"the likeliest, neighbours + {bias:g} nats/token", chosen))


if __name__ == "__main__":
    main()
