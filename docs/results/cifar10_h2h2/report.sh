#!/bin/bash
# Writes the cnn_tiny report of cifar10_h2h2 (both regimes, the transfer and the noise scale) from
# the committed records: OUT (default this folder)/report.md and its figures. It names the stage
# folders, never runs/*: stage 0's horizon runs (one of them is also the reference's lr 0.4 cell)
# and cnn_base's stage 5 are not part of it. The verdict (verdict.md) and the step costs
# (step_cost.json, bench/method_cost.py) are read where they are committed.
HERE=$(cd "$(dirname "$0")" && pwd); cd "$HERE/../../.."
R=docs/results/cifar10_h2h2/runs; . "$HERE/lib.sh"
OUT=${OUT:-docs/results/cifar10_h2h2}
moved() {  # the folders stages 3 and 4 write for family $1 (lib.sh: steps, transfer)
  local s r; for s in "" _steps; do for r in "" _sqrt; do echo $R/${P}_$1_x8192$r$s; done; done; echo $R/${P}_$1_steps; }
folders=$(dirs tiny_ref $G; for g in $G; do for d in $(moved $g); do [ -d $d ] && echo $d; done; done
  for s in "" _steps; do [ -d $R/${P}_tiny_x8192_retune$s ] && echo $R/${P}_tiny_x8192_retune$s; done)
extra=()
[ -f $HERE/verdict.md ] && extra+=(--preface docs/results/cifar10_h2h2/verdict.md)
[ -f $HERE/step_cost.json ] && extra+=(--step-cost docs/results/cifar10_h2h2/step_cost.json)
python launch/report.py $folders --title "CIFAR-10, cnn_tiny: what keeps accuracy at batch 4096 and 8192" \
  "${extra[@]}" --out $OUT
