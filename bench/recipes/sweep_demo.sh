#!/usr/bin/env bash
# The recipe comparison on the demo set, one run at a time, a fixed step count each (the shared 2-core
# machine's load swings step times 4x, so equal steps compare recipes; s/step is reported beside).
# Round 1: 250 steps. Round 2: 1,000 steps (about 3 minutes at one thread each), after round 1 showed
# every recipe still collapsed at 250. `bench/recipes/sweep_demo.sh 2` runs round 2 only. See docs/recipes.md.
# YAML reads "1e-3" as a string, so rates are written as decimals.
set -u
ROUNDS=${1:-"1 2"}
D=runs/recipes/data/demo
COMMON="train.tokenizer_vocab_size=1024 train.lr_language_backbone=0.001 train.lr_mp=0.003"
FAST="model.vit_patch_size=32 model.mp_pixel_shuffle_factor=1 model.vit_hidden_dim=384 train.batch_size=16 train.lr_vision_backbone=0.003"
run() {
  steps=$1 minutes=$2 name=$3; shift 3; echo "== $name $(uptime)"
  python bench/recipes/run_recipe.py --name "$name" --data $D --steps "$steps" --minutes "$minutes" --threads 1 $COMMON "$@"
}
for round in $ROUNDS; do
  if [ "$round" = 1 ]; then
    run 250 9 fast $FAST
    run 250 9 fast-lm2 $FAST model.lm_n_blocks=2
  else
    run 1000 6 fast-1k $FAST
    run 1000 6 fast-lm2-1k $FAST model.lm_n_blocks=2
    run 1000 6 px112-1k model.vit_img_size=112 model.vit_patch_size=16 model.mp_pixel_shuffle_factor=1 model.vit_hidden_dim=384 train.batch_size=16 train.lr_vision_backbone=0.003
    run 1000 6 fast-lrv1-1k $FAST train.lr_vision_backbone=0.001
  fi
done
