#!/usr/bin/env bash
# Acceptance for the continual package (issue 3): real Fashion-MNIST, random labels, 12,800 images, MLP 4×256,
# Adam 1e-3, batch 512, 40 epochs per task, 30 tasks, seeds 0 1 2; every mitigator, without and with LayerNorm.
#
#   bash scripts/continual_acceptance.sh [JOBS] [OUT]        # JOBS parallel processes (default 2), OUT runs/accept
#   bash scripts/continual_acceptance.sh --report [OUT]      # figures + tables from whatever has finished
#       (train accuracy, σ1 max and dormant fraction per task; a per-mitigator and a per-seed table)
#   bash scripts/continual_acceptance.sh --collect [OUT]     # copy every run's rows to results/acceptance/V/NAME.csv
#   bash scripts/continual_acceptance.sh --report results/acceptance   # the same report from the committed rows
#
# Every run is its own folder OUT/{noln,ln}/MITIGATOR-sSEED and is started with --resume, so re-running the script
# continues killed runs and skips finished ones (and runs another instance is working on). Jobs are ordered by
# priority: without LayerNorm none and spectral (3 seeds) then every other mitigator at seed 0; the same with
# LayerNorm; then seeds 1 and 2 of the other mitigators, without LayerNorm first. `none` trains its three seeds in
# one process (--vectorize-seeds).
# Needs the real data: apt-get install -y dataset-fashion-mnist (or --data-dir / internet for torchvision).
# Run times are in docs/results.md (8–11 minutes per run per CPU thread on an idle 2-core machine; Wasserstein about
# three times that: it sorts every parameter each step). Exits non-zero if any run failed (its log.txt says why).
#
# Environment overrides (the tests run a tiny version of this same path with them):
#   ACCEPT_EXTRA   flags appended to every run, e.g. "--tasks 2 --epochs 1 --data-dir DIR" (later flags win)
#   ACCEPT_SEEDS   seeds (default "0 1 2"); ACCEPT_OTHERS   the mitigators besides none and spectral (may be empty)
#   ACCEPT_FIGURES where --report writes its PNGs (default docs/figures)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--report" ]; then
  out=${2:-runs/accept}
  figures=${ACCEPT_FIGURES:-docs/figures}
  mkdir -p "$figures"
  for v in noln ln; do
    # run folders (V/NAME/results.csv, started runs only) or collected rows (V/NAME.csv)
    files=$(shopt -s nullglob; for f in "$out/$v"/*/results.csv "$out/$v"/*.csv; do echo "$f"; done)
    [ -z "$files" ] && continue
    echo "## $v"
    python -m continual plot $files -o "$figures/acceptance-$v.png" --per-seed
    for m in sigma_max dormant_fraction; do  # the mechanism: largest singular value, dormant units
      python -m continual plot $files -o "$figures/acceptance-$v-$m.png" --metric "$m" > /dev/null
    done
  done
  exit 0
fi

if [ "${1:-}" = "--collect" ]; then
  out=${2:-runs/accept}
  dest=${ACCEPT_RESULTS:-results/acceptance}
  shopt -s nullglob
  for f in "$out"/*/*/results.csv; do
    run=$(dirname "$f")
    target="$dest/$(basename "$(dirname "$run")")/$(basename "$run").csv"
    mkdir -p "$(dirname "$target")"
    cp "$f" "$target.tmp" && mv "$target.tmp" "$target"  # never a half-copied file
    echo "$target: $(($(wc -l < "$target") - 1)) rows"
  done
  exit 0
fi

jobs=${1:-2}
out=${2:-runs/accept}
common="--preset fmnist-random-labels --tasks 30 --epochs 40 --batch-size 512 --train-size 12800 --lr 1e-3
        --threads 1 --no-progress --resume ${ACCEPT_EXTRA:-}"
read -r -a seeds <<< "${ACCEPT_SEEDS:-0 1 2}"
read -r -a others <<< "${ACCEPT_OTHERS-l2 l2-init shrink-perturb redo crelu wasserstein ewc spectral-coupled cbp}"

list() {
  for v in noln ln; do
    echo "$v none ${seeds[*]}"
    for s in "${seeds[@]}"; do echo "$v spectral $s"; done
    for m in "${others[@]}"; do echo "$v $m ${seeds[0]}"; done
  done
  for v in noln ln; do
    for s in "${seeds[@]:1}"; do
      for m in "${others[@]}"; do echo "$v $m $s"; done
    done
  done
}

run_one() {  # variant mitigator seed...
  local v=$1 m=$2; shift 2
  local name="$m-seed$(echo "$@" | tr ' ' '-')"
  local dir="$out/$v/$name"
  local extra=()
  [ "$v" = ln ] && extra+=(--layernorm)
  [ "$m" = none ] && extra+=(--vectorize-seeds)
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  if ! flock -n 9; then echo "skip $v $name (running in another process)"; return 0; fi
  # shellcheck disable=SC2086  # $common is a list of flags without spaces inside them
  if python -m continual run $common "${extra[@]}" --mitigator "$m" --seeds "$@" --out "$dir" \
      > "$dir/log.txt" 2>&1; then
    echo "done $v $name"
  else
    echo "FAILED $v $name: $(tail -n 1 "$dir/log.txt")"
    return 1
  fi
}
export -f run_one
export out common

list | xargs -P "$jobs" -L 1 bash -c 'run_one "$@"' _
