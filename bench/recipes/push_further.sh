#!/usr/bin/env bash
# Issue 9's "push further": the default recipe with 60 minutes, with smaller vocabularies, with a second
# LM block, and with twice the data, each against the 10-minute default rows of final_runs.sh.
# Two lanes, one thread each, pinned to one core each so they do not slow each other: lane 0 runs the
# 60-minute run, lane 1 the 10-minute variants one after another.
set -u
mkdir -p runs/recipes/logs
[ -d runs/recipes/data/demo ] || picovlm data demo --n 3000 --out runs/recipes/data/demo
[ -d runs/recipes/data/demo6k ] || picovlm data demo --n 7500 --out runs/recipes/data/demo6k  # 6,000 train rows
R="python bench/recipes/run_recipe.py --preset picovlm-small --as-default --threads 1 --eval-items 300"
taskset -c 0 $R --name default-60min-demo --data runs/recipes/data/demo --minutes 60 \
  train.epochs=100 train.eval_interval=500 train.checkpoint_interval=1000 > runs/recipes/logs/lane0.log 2>&1 &
(
  taskset -c 1 $R --name vocab512-10min-demo --data runs/recipes/data/demo --minutes 10 train.tokenizer_vocab_size=512
  taskset -c 1 $R --name vocab300-10min-demo --data runs/recipes/data/demo --minutes 10 train.tokenizer_vocab_size=300
  taskset -c 1 $R --name lm2-10min-demo --data runs/recipes/data/demo --minutes 10 model.lm_n_blocks=2
  taskset -c 1 $R --name data2x-10min-demo --data runs/recipes/data/demo6k --minutes 10
) > runs/recipes/logs/lane1.log 2>&1
wait
# fashion-mnist-pairs for an hour, best/ chosen by the answer check's field accuracy (finding 12)
[ -d runs/recipes/data/pairs ] || picovlm realset fashion-mnist-pairs --out runs/recipes/data/pairs
taskset -c 0 $R --name pairs-60min-bestfield --data runs/recipes/data/pairs --minutes 60 train.epochs=100 \
  train.eval_interval=500 train.checkpoint_interval=1000 train.best_metric=gen_field_accuracy train.gen_eval_items=64
python -c "
from picovlm.eval.evaluate import evaluate
m = evaluate('runs/recipes/pairs-60min-bestfield/best', 'runs/recipes/data/pairs', max_items=300, baseline='nearest',
             max_new_tokens=96, swap_items=64, thumbnails=False)['metrics']
print({k: m[k] for k in ('token_f1', 'field_accuracy', 'distinct_answer_share', 'image_gap_shuffled', 'loss')})"
