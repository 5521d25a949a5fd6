#!/usr/bin/env bash
# The paper's comparisons on real Fashion-MNIST (random labels, MLP 4×256, Adam 1e-3, batch 512, 12,800 images,
# 40 epochs per task), run with `python -m continual sweep` so that every run resumes and finished runs are skipped.
#
#   bash scripts/continual_studies.sh tuned [WORKERS]     # every mitigator with a strength over its grid, 2 seeds,
#                                                          # 20 tasks, without then with LayerNorm
#   bash scripts/continual_studies.sh confirm [WORKERS]   # each mitigator of the tuned study at its best strength
#                                                          # (its summary.md), 3 seeds × 30 tasks, both variants;
#                                                          # at its default strength the acceptance runs are reused
#   bash scripts/continual_studies.sh k [WORKERS]         # spectral's exponent k ∈ {1, 2, 4, 8} at the default
#                                                          # strength, 3 seeds, 30 tasks, no LayerNorm (paper Fig. 7)
#   STUDY_BASELINES="crelu:1 redo:0.1" \
#   bash scripts/continual_studies.sh shift [WORKERS]     # the other non-stationarities (pixel permutation, label
#                                                          # flip, class-incremental): none, spectral and the two best
#                                                          # tuned baselines (NAME:STRENGTH, from the tuned study's
#                                                          # summary.md files), 3 seeds, train and test accuracy
#
# Run folders (results.csv + config.json, committed as they finish; checkpoint.pt is ignored by git) live under
# results/studies/tuned/{noln,ln}/MITIGATOR/, with each sweep's summary.md and sensitivity.png beside them, so a
# later session re-running the same command skips what is done and starts the rest. A run that was cut off without
# its checkpoint restarts from task 1.
# Needs the real data: apt-get install -y dataset-fashion-mnist (or pass --data-dir through STUDY_EXTRA).
#
# Environment overrides (the tests run a tiny version with them):
#   STUDY_EXTRA   flags appended to every sweep, e.g. "--dataset digits --tasks 2 --epochs 1" (later flags win)
#   STUDY_OUT     the results folder (default results/studies)
#   STUDY_ONLY    mitigators to run (default: all of the grid below)
#   STUDY_VARIANTS    the tuned study's variants to run (default: noln ln)
#   STUDY_STRENGTHS   one grid for every mitigator instead of each one's own
#   STUDY_RERUN_DEFAULTS  non-empty: confirm runs a mitigator at its default strength too (else: the acceptance rows)
set -euo pipefail
cd "$(dirname "$0")/.."

study=${1:?usage: bash scripts/continual_studies.sh tuned|confirm|k|shift [WORKERS]}
workers=${2:-2}
out=${STUDY_OUT:-results/studies}

# Each mitigator's grid: at least 4 strengths over at least 2 decades around its literature default
# (continual/mitigators: DEFAULT_STRENGTHS); a best strength at the edge of its grid means the grid must grow.
declare -A GRID=(
  [none]="1"  # no strength: one run per seed (the grid's value is ignored), Adam's baseline for the same settings
  [crelu]="1"  # no strength either: an architecture (concatenated ReLU, width matched in parameters)
  [spectral]="0.001 0.01 0.1 0.3 1 3 10"  # 0.01 and 0.001 added: the drop-in strengths of docs/strength.md
  [spectral-coupled]="1e-5 1e-4 1e-3 1e-2"
  [l2]="1e-6 1e-5 1e-4 1e-3 1e-2"  # 1e-6 added: with LayerNorm the best of the first four was 1e-5, the edge
  [l2-init]="1e-6 1e-5 1e-4 1e-3 1e-2"  # 1e-6 added: the best of the first four was 1e-5, the edge
  [shrink-perturb]="1e-5 1e-4 1e-3 1e-2"
  [wasserstein]="1e-5 1e-4 1e-3 1e-2"
  [ewc]="1e-5 1e-4 1e-3 1e-2 0.1 1"  # 0.1 and 1 added: 1e-5..1e-2 all within noise of Adam (a guess: its Fisher EMA of g² is small)
  [cbp]="1e-5 1e-4 1e-3 1e-2 0.1"  # 0.1 added: the best of the first four was 1e-2, the edge
  [redo]="0.001 0.01 0.1 0.3"
)
ORDER="none crelu spectral l2-init shrink-perturb redo l2 wasserstein ewc cbp spectral-coupled"

# One sweep on the studies' benchmark (Fashion-MNIST, MLP 4×256, Adam 1e-3, batch 512, 12,800 images, 40 epochs):
#   study_sweep NONSTATIONARITY noln|ln TASKS "SEEDS" SWEEP-FLAGS...   (STUDY_EXTRA last, so its flags win)
study_sweep() {
  local nonstationarity=$1 variant=$2 tasks=$3 seeds=$4 ln=""
  shift 4
  [ "$variant" = ln ] && ln="--layernorm"
  # shellcheck disable=SC2086  # word lists
  python -m continual sweep --dataset fashion-mnist --nonstationarity "$nonstationarity" --model mlp \
    --tasks "$tasks" --epochs 40 --batch-size 512 --train-size 12800 --lr 1e-3 --seeds $seeds $ln \
    --workers "$workers" "$@" ${STUDY_EXTRA:-}
}

case "$study" in
  tuned)
    for variant in ${STUDY_VARIANTS:-noln ln}; do
      for m in ${STUDY_ONLY:-$ORDER}; do
        # shellcheck disable=SC2086  # a word list
        study_sweep random-labels "$variant" 20 "0 1" --mitigator "$m" \
          --strengths ${STUDY_STRENGTHS:-${GRID[$m]}} \
          --out "$out/tuned/$variant/$m"
      done
    done
    ;;
  confirm)
    for variant in ${STUDY_VARIANTS:-noln ln}; do
      for m in ${STUDY_ONLY:-$ORDER}; do
        summary="$out/tuned/$variant/$m/summary.md"
        [ -f "$summary" ] || { echo "skipping $variant/$m: no $summary (run the tuned study first)" >&2; continue; }
        best=$(sed -n "s/^\* $m: //p" "$summary")  # empty for none and crelu, which have no strength
        # at its default strength (or without one) the acceptance benchmark ran exactly this: reuse its rows
        if [ -z "${STUDY_RERUN_DEFAULTS:-}" ] && python -c "import sys; from continual.mitigators import \
DEFAULT_STRENGTHS as D, NO_STRENGTH as N; m, b = sys.argv[1:]; sys.exit(not (m in N or float(b) == D[m]))" \
            "$m" "${best:-0}"; then
          echo "$variant/$m: its best strength is its default: the acceptance runs (results/acceptance/$variant/$m-s*.csv, 3 seeds × 30 tasks) are its confirmation" >&2
          continue
        fi
        study_sweep random-labels "$variant" 30 "0 1 2" --mitigator "$m" --strengths "$best" \
          --out "$out/confirm/$variant/$m"
      done
    done
    ;;
  k)
    for k in ${STUDY_KS:-1 2 4 8}; do
      study_sweep random-labels noln 30 "0 1 2" --mitigator spectral --spectral.k "$k" --out "$out/k/k$k"
    done
    ;;
  shift)
    baselines=${STUDY_BASELINES:?set STUDY_BASELINES to the two best tuned baselines, e.g. "crelu:1 redo:0.1" (results/studies/tuned/*/*/summary.md; a mitigator without a strength takes any)}
    for ns in ${STUDY_SHIFTS:-pixel-permutation label-flip class-incremental}; do
      study_sweep "$ns" noln 20 "0 1 2" --mitigator none spectral --out "$out/shift/$ns/none-spectral"
      for b in $baselines; do
        study_sweep "$ns" noln 20 "0 1 2" --mitigator "${b%%:*}" --strengths "${b#*:}" --out "$out/shift/$ns/${b%%:*}"
      done
    done
    ;;
  *)
    echo "unknown study '$study'; valid: tuned, confirm, k, shift" >&2
    exit 2
    ;;
esac
