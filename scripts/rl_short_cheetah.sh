#!/usr/bin/env bash
# Short CPU comparison for docs/results.md: cheetah-run, 20k env steps, replay ratio 4 (16 does not fit a shared
# 2-core CPU in the time available), warm-up 5k random steps, evaluation every 2.5k steps (5 episodes), 1 thread
# per run. Runs: SAC+LayerNorm (none) seeds 0 and 1; spectral λ=1 (the default) seeds 0 and 1; spectral λ=0.1 seed 0.
# Usage: bash scripts/rl_short_cheetah.sh [OUT_ROOT]   (runs in the background; logs in OUT_ROOT/*.log)
#        python -m rl plot OUT_ROOT -o fig.png          (figure + markdown table)
set -euo pipefail
OUT=${1:-runs/rl-short-cheetah}
mkdir -p "$OUT"
run() {  # NAME SEED EXTRA_FLAGS...
  local name=$1 seed=$2; shift 2
  nohup python -m rl train --env cheetah-run --steps 20000 --replay-ratio 4 --warmup-steps 5000 \
    --eval-interval 2500 --eval-episodes 5 --checkpoint-interval 5000 --seed "$seed" --threads 1 --no-progress \
    --out "$OUT/cheetah-run-$name-s$seed" "$@" > "$OUT/cheetah-run-$name-s$seed.log" 2>&1 &
}
for seed in 0 1; do
  run none "$seed" --mitigator none
  run spectral "$seed" --mitigator spectral
done
run spectral0.1 0 --mitigator spectral --strength 0.1
echo "started 5 runs under $OUT; progress: tail -n 1 $OUT/*/metrics.csv"
