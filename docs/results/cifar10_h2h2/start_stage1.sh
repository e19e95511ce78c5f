#!/bin/bash
# Starts stage 1 of cifar10_h2h2 (stage1.sh beside this file) on both cores, and after both
# shards GradientMix with vanilla on 8 worker processes (both cores); then marks stage 1 done
# ($R/.sync/stage1_done, which start_stage2.sh waits for). Logs go to the runs root R (default
# /work/dreg_runs). Run it again to resume: finished cells are skipped (on a fresh machine too: it
# copies the committed records into R first), partial ones resume from their checkpoints, and each
# follow-up grid already written (or answered with nothing to run, NAME.none) is kept.
export R=${R:-/work/dreg_runs}
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/../../.." && pwd)
if pgrep -f 'cifar10_h2h2/[s]tage[12].sh|cifar10_h2h2_tiny_gm[.]yaml' >/dev/null; then
  echo "a stage of cifar10_h2h2 is running already: stop it first (its markers would be cleared under it)"; exit 1; fi
mkdir -p "$R"; rm -rf "$R/.sync"; mkdir -p "$R/.sync"
# On a fresh machine the runs root starts from the committed records (every finished run), so that
# the sweeps skip those cells; no file already in R is replaced.
cp -rn "$HERE/runs/." "$R/"
nohup setsid bash "$HERE/stage1.sh" 0 >> "$R/stage1_0.log" 2>&1 &
nohup setsid bash "$HERE/stage1.sh" 1 >> "$R/stage1_1.log" 2>&1 &
# GradientMix once both shards passed their last barrier (not merely stopped: a killed stage 1 must
# not start it); the marker follows even if one of its cells failed, with the sweep's exit code logged.
nohup setsid bash -c "while [ ! -f '$R/.sync/D_0' ] || [ ! -f '$R/.sync/D_1' ]; do sleep 60; done; cd '$REPO' &&
  OMP_NUM_THREADS=1 python launch/sweep.py --grid configs/grids/cifar10_h2h2_tiny_gm.yaml --runs-root '$R' \
  --nproc-per-node 8; echo \"gradientmix sweep exit code \$?\"; touch '$R/.sync/stage1_done'" >> "$R/after.log" 2>&1 &
