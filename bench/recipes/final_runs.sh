#!/usr/bin/env bash
# The chosen default (DEFAULT_PRESET + TrainConfig defaults) for the 10-minute budget, on the
# demo set and on the two real sets (fashion-mnist, fashion-mnist-pairs; the pairs also with a second
# seed), each evaluated on its whole test split with the
# nearest-neighbour baseline. One thread: on this shared 2-core machine two threads were up to 15x
# slower per step whenever another job ran (docs/recipes.md).
set -u
for d in demo fashion pairs; do
  echo "== default-10min-$d $(uptime)"
  python bench/recipes/run_recipe.py --name default-10min-$d --data runs/recipes/data/$d --preset picovlm-small \
    --as-default --minutes 10 --threads 1 --eval-items 300
done
python bench/recipes/run_recipe.py --name default-10min-pairs-seed1 --data runs/recipes/data/pairs \
  --preset picovlm-small --as-default --minutes 10 --threads 1 --eval-items 300 train.seed=1
