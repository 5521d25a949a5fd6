#!/usr/bin/env bash
# Short CPU sanity comparison for docs/results-rl.md: cheetah-run, 20k env steps, replay ratio 4 (16 does not fit a
# shared 2-core CPU in the time available), warm-up 5k random steps, 2 seeds, SAC+LayerNorm vs spectral.
# Usage: bash scripts/rl_short_cheetah.sh [OUT_ROOT]   (runs in the background; logs in OUT_ROOT/*.log)
set -euo pipefail
OUT=${1:-runs/rl-short-cheetah}
mkdir -p "$OUT"
for seed in 0 1; do
  for mit in none spectral; do
    nohup python -m rl train --env cheetah-run --mitigator "$mit" --steps 20000 --replay-ratio 4 \
      --warmup-steps 5000 --eval-interval 2500 --eval-episodes 5 --checkpoint-interval 5000 \
      --seed "$seed" --threads 1 --no-progress --out "$OUT/cheetah-run-$mit-s$seed" \
      > "$OUT/cheetah-run-$mit-s$seed.log" 2>&1 &
  done
done
echo "started 4 runs under $OUT; watch with: tail -n 3 $OUT/*.log"
