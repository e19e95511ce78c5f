#!/bin/bash
# report.sh [tiny|base]: writes a report of cifar10_h2h2 from the committed records. tiny (the
# default): cnn_tiny, both regimes, the transfer and the noise scale, into this folder; base: stage
# 5's cnn_base runs, into docs/results/cifar10_h2h2_base. OUT overrides where. It names the stage
# folders, never runs/*: the horizon checks (stage 0's 40-epoch run is also the reference's lr 0.4
# cell) are not part of either. A verdict (verdict.md, or verdict_base.md) and the step costs
# (step_cost.json, bench/method_cost.py) are read where they are committed.
HERE=$(cd "$(dirname "$0")" && pwd); cd "$HERE/../../.."
R=docs/results/cifar10_h2h2/runs; . "$HERE/lib.sh"
moved() {  # the folders stages 3 and 4 write for family $1 (lib.sh: steps, transfer)
  local s r; for s in "" _steps; do for r in "" _sqrt; do echo $R/${P}_$1_x8192$r$s; done; done; echo $R/${P}_$1_steps; }
case ${1:-tiny} in
  tiny) OUT=${OUT:-docs/results/cifar10_h2h2}; verdict=verdict.md
    title="CIFAR-10, cnn_tiny: what keeps accuracy at batch 4096 and 8192"
    folders=$(dirs tiny_ref $G; for g in $G; do for d in $(moved $g); do [ -d $d ] && echo $d; done; done
      for s in "" _steps; do [ -d $R/${P}_tiny_x8192_retune$s ] && echo $R/${P}_tiny_x8192_retune$s; done);;
  base) OUT=${OUT:-docs/results/cifar10_h2h2_base}; verdict=verdict_base.md
    title="CIFAR-10, cnn_base: vanilla and the best method of cnn_tiny at batch 4096"
    folders=$(for g in base_ref base base_best; do for d in $R/${P}_$g $R/${P}_${g}_edge; do [ -d $d ] && echo $d; done; done);;
  *) echo "report.sh takes tiny or base, got '$1'" >&2; exit 2;;
esac
[ -n "$folders" ] || { echo "no committed records for '${1:-tiny}' under $R yet" >&2; exit 2; }
extra=()
[ -f $HERE/$verdict ] && extra+=(--preface docs/results/cifar10_h2h2/$verdict)
[ -f $HERE/step_cost.json ] && extra+=(--step-cost docs/results/cifar10_h2h2/step_cost.json)
python launch/report.py $folders --title "$title" "${extra[@]}" --out $OUT
