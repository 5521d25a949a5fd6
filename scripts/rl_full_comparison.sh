#!/usr/bin/env bash
# Full-length comparison of Section 5.4 / Figure 5 / Figure 16 on a GPU machine:
#   7 DMC environments (rl.config.PAPER7_ENVS) × {none, resets, spectral} × SEEDS seeds × {1M buffer, 250k buffer},
#   SAC with LayerNorm, single critic, replay ratio 16, 10k random warm-up steps (all defaults of rl.config.Config).
#
# Usage:  bash scripts/rl_full_comparison.sh            # everything (7 × 3 × 5 × 2 = 210 runs)
#         ENVS="cheetah-run walker-run" SEEDS="0 1 2" STEPS=500000 JOBS=8 bash scripts/rl_full_comparison.sh
#         DRY_RUN=1 bash scripts/rl_full_comparison.sh  # print the commands only
# Re-running the script continues killed runs (--resume) and skips finished ones.
# Cost: 1M env steps at RR16 are 16M updates per run (docs/rl.md: updates/s); run JOBS runs side by side per GPU.
set -euo pipefail
ENVS=${ENVS:-$(python -c "from rl.config import PAPER7_ENVS; print(' '.join(PAPER7_ENVS))")}
MITIGATORS=${MITIGATORS:-"none resets spectral"}
SEEDS=${SEEDS:-"0 1 2 3 4"}
BUFFERS=${BUFFERS:-"1000000 250000"}
STEPS=${STEPS:-1000000}
STRENGTH=${STRENGTH:-1.0}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-6}
THREADS=${THREADS:-2}
OUT=${OUT:-runs/full}
EXTRA=${EXTRA:-}  # e.g. EXTRA="--compile"

mkdir -p "$OUT"
commands=()
for env in $ENVS; do for buffer in $BUFFERS; do for mit in $MITIGATORS; do for seed in $SEEDS; do
  dir="$OUT/$env/buf$buffer/$mit-s$seed"
  if [[ -f "$dir/metrics.csv" ]] && [[ "$(tail -n 1 "$dir/metrics.csv" | cut -d, -f1)" == "$STEPS" ]]; then
    continue  # finished
  fi
  resume=""
  [[ -f "$dir/config.json" ]] && resume="--resume"
  commands+=("python -m rl train --env $env --mitigator $mit --seed $seed --steps $STEPS --buffer-size $buffer \
--strength $STRENGTH --device $DEVICE --threads $THREADS --no-progress --out $dir $resume $EXTRA > $dir.log 2>&1")
  mkdir -p "$(dirname "$dir")"
done; done; done; done

echo "${#commands[@]} runs to do, $JOBS at a time, under $OUT"
if [[ -n "${DRY_RUN:-}" ]]; then printf '%s\n' "${commands[@]}"; exit 0; fi
printf '%s\n' "${commands[@]}" | xargs -P "$JOBS" -I{} bash -c '{}'
for env in $ENVS; do
  python -m rl plot "$OUT/$env" -o "$OUT/$env.png" | tee "$OUT/$env.md"
done
python -m rl plot "$OUT" -o "$OUT/all.png" | tee "$OUT/all.md"
