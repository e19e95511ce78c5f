#!/bin/bash
# pool.sh NAME...: runs the unfinished cells of the study's grids NAME (lib.sh's names, e.g.
# base_ref) on two single-process workers, one per core, each taking the next cell neither has
# claimed, in the order named, and returns when both are done. For phases of few, uneven cells,
# where `--shard S/2` would leave one core idle (stage 5: 1, 3, 6 and 3 cells, one of them twice as
# long); a missing grid is skipped. A grid whose cells need GradientMix's 8 worker processes is
# refused before anything runs (sweep.py --nproc-per-node 8 runs it).
R=${R:-/work/dreg_runs}; HERE=$(cd "$(dirname "$0")" && pwd); cd "$HERE/../../.."; S=0; . "$HERE/lib.sh"
for g in "$@"; do if gm_grid $g; then
  echo "pool.sh: $(f $g) trains GradientMix on 8 worker processes: run it with launch/sweep.py --nproc-per-node 8" >&2
  exit 2; fi; done
queue=$(for g in "$@"; do [ -f $(f $g) ] && python launch/sweep.py --grid $(f $g) --runs-root $R --dry-run |
  awk -v g=$g '$1 ~ /^[0-9]+$/ && $2 != "cells" && $2 != "finished" {print g, $1}'; done)
CLAIMS=$(mktemp -d "$R/.pool.XXXXXX")  # mkdir is atomic: a cell goes to the worker that made its claim
work() {
  while read -r g i; do
    [ -n "$g" ] && mkdir "$CLAIMS/${g}_$i" 2>/dev/null || continue
    OMP_NUM_THREADS=1 python launch/sweep.py --grid $(f $g) --runs-root $R --cell-index $i; rc=$?
    echo "$(date -u +%FT%TZ) worker $1: $g cell $i exit code $rc"
  done <<< "$queue"
}
work 0 & work 1 & wait
rm -rf "$CLAIMS"
