#!/bin/bash
# Starts stage 1 of cifar10_h2h2 (stage1.sh beside this file) on both cores, and after both
# shards GradientMix with vanilla on 8 worker processes (both cores); then marks stage 1 done
# ($R/.sync/stage1_done, which start_stage2.sh waits for). Logs go to the runs root R (default
# /work/dreg_runs). Run it again to resume: finished cells are skipped, partial ones resume from
# their checkpoints, and each follow-up grid already written is kept.
export R=${R:-/work/dreg_runs}
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/../../.." && pwd)
mkdir -p "$R"; rm -rf "$R/.sync"; mkdir -p "$R/.sync"
nohup setsid bash "$HERE/stage1.sh" 0 >> "$R/stage1_0.log" 2>&1 &
nohup setsid bash "$HERE/stage1.sh" 1 >> "$R/stage1_1.log" 2>&1 &
nohup setsid bash -c "while pgrep -f 'cifar10_h2h2/[s]tage1.sh' >/dev/null; do sleep 60; done; cd '$REPO' &&
  OMP_NUM_THREADS=1 python launch/sweep.py --grid configs/grids/cifar10_h2h2_tiny_gm.yaml --runs-root '$R' \
  --nproc-per-node 8 && touch '$R/.sync/stage1_done'" >> "$R/after.log" 2>&1 &
