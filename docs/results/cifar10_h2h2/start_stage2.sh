#!/bin/bash
# Starts stages 2-5 of cifar10_h2h2 (stage2.sh beside this file) on both cores once stage 1 is
# done (the marker start_stage1.sh leaves after GradientMix: start that first, in the same
# machine's life; on a finished stage 1 it only skips its cells and leaves the marker again).
# Logs go to the runs root R (default /work/dreg_runs). Run both again to resume: finished cells
# are skipped, partial ones resume from their checkpoints, and each follow-up grid already
# written is kept.
export R=${R:-/work/dreg_runs}
HERE=$(cd "$(dirname "$0")" && pwd)
# The waiter below names stage2.sh on its command line, so this finds it too; the marker's name
# cannot be the pattern: stage 1's GradientMix waiter names it as well.
if pgrep -f 'cifar10_h2h2/[s]tage2[.]sh' >/dev/null; then
  echo "stages 2-5 of cifar10_h2h2 are running or waiting already: stop them first"; exit 1; fi
mkdir -p "$R"; rm -rf "$R/.sync2"; mkdir -p "$R/.sync2"
nohup setsid bash -c "while [ ! -f '$R/.sync/stage1_done' ]; do sleep 60; done
  bash '$HERE/stage2.sh' 0 >> '$R/stage2_0.log' 2>&1 & bash '$HERE/stage2.sh' 1 >> '$R/stage2_1.log' 2>&1 & wait" \
  >/dev/null 2>&1 &
