#!/usr/bin/env bash
# Full-length comparison of Section 5.4 / Figure 5 / Figure 16 on a GPU machine:
#   7 DMC environments (rl.config.PAPER7_ENVS) × {none, resets, spectral} × SEEDS seeds × {1M buffer, 250k buffer},
#   one process per environment and buffer training its 15 agents together,
#   SAC with LayerNorm, single critic, replay ratio 16, 10k random warm-up steps (all defaults of rl.config.Config).
#
# Usage:  bash scripts/rl_full_comparison.sh            # everything (7 × 2 = 14 processes, 210 agents)
#         ENVS="cheetah-run walker-run" SEEDS="0 1 2" STEPS=500000 JOBS=8 bash scripts/rl_full_comparison.sh
#         DRY_RUN=1 bash scripts/rl_full_comparison.sh  # print the commands only
# Re-running the script continues killed runs (--resume) and skips finished ones.
# Cost: 1M env steps at RR16 are 16M updates of every agent (docs/rl.md: seed-updates/s); JOBS processes per GPU.
set -euo pipefail
ENVS=${ENVS:-$(python -c "from rl.config import PAPER7_ENVS; print(' '.join(PAPER7_ENVS))")}
MITIGATORS=${MITIGATORS:-"none resets spectral"}
SEEDS=${SEEDS:-"0 1 2 3 4"}
BUFFERS=${BUFFERS:-"1000000 250000"}
STEPS=${STEPS:-1000000}
STRENGTH=${STRENGTH:-1.0}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-2}
THREADS=${THREADS:-2}
OUT=${OUT:-runs/full}
EXTRA=${EXTRA:-}  # e.g. EXTRA="--compile"

mkdir -p "$OUT"
commands=()
for env in $ENVS; do for buffer in $BUFFERS; do
  # one process per (environment, buffer): every mitigator × seed agent of it trained together (rl/sac.py)
  dir="$OUT/$env/buf$buffer"
  first="$dir/${MITIGATORS%% *}-seed${SEEDS%% *}/results.csv"
  if [[ -f "$first" ]] && [[ "$(tail -n 1 "$first" | cut -d, -f4)" == "$STEPS" ]]; then
    continue  # finished
  fi
  resume=""
  [[ -f "$dir/config.json" ]] && resume="--resume"
  commands+=("python -m rl train --env $env --mitigator $MITIGATORS --seeds $SEEDS --steps $STEPS --buffer-size $buffer \
--strength $STRENGTH --device $DEVICE --threads $THREADS --no-progress --out $dir $resume $EXTRA > $dir.log 2>&1")
  mkdir -p "$(dirname "$dir")"
done; done

echo "${#commands[@]} processes to do, $JOBS at a time, under $OUT"
if [[ -n "${DRY_RUN:-}" ]]; then printf '%s\n' "${commands[@]}"; exit 0; fi
printf '%s\n' "${commands[@]}" | xargs -P "$JOBS" -I{} bash -c '{}'
for env in $ENVS; do
  python -m rl plot "$OUT/$env" -o "$OUT/$env.png" | tee "$OUT/$env.md"
done
python -m rl plot "$OUT" -o "$OUT/all.png" | tee "$OUT/all.md"
