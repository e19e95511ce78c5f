#!/bin/bash
# Starts stage 5 of cifar10_h2h2 (cnn_base) on both cores through pool.sh beside this file, once
# stages 1-4 are over (their records are committed and copied into the runs root R, default
# /work/dreg_runs, where missing): the best method of (a) is named from every record before it
# (lib.sh's base_best, once), then the 40-epoch horizon check, that method, vanilla at 4096 and the
# reference run, then one more rate beyond any of their selections at an edge (edge_base, written
# once from those records) and those cells. Log: $R/stage5.log. Run it again to resume: finished
# cells are skipped.
export R=${R:-/work/dreg_runs}
HERE=$(cd "$(dirname "$0")" && pwd)
if pgrep -f 'cifar10_h2h2/[p]ool[.]sh' >/dev/null; then echo "stage 5 of cifar10_h2h2 is running already"; exit 1; fi
if pgrep -f 'cifar10_h2h2/[s]tage[12][.]sh' >/dev/null; then
  echo "stages 1-4 of cifar10_h2h2 are running: start stage 5 once they are over (it reads their records)"; exit 1; fi
mkdir -p "$R"; cp -rn "$HERE/runs/." "$R/"
nohup setsid bash -c "cd '$HERE/../../..'; (S=0; . '$HERE/lib.sh'; base_best) && bash '$HERE/pool.sh' base_horizon base_best base base_ref &&
  (S=0; . '$HERE/lib.sh'; edge_base) && bash '$HERE/pool.sh' base_best_edge base_edge base_ref_edge" \
  >> "$R/stage5.log" 2>&1 &
