#!/bin/bash
# Stage 1 of cifar10_h2h2 on one core (shard S of 2), in phases both shards finish before the next:
#   A  the stage-1 grids left: LARS, vanilla's warmup-5 control, LAMB, ghost BN
#   B  one more rate beyond each selection at an edge (grids written by shard 0 from A's records)
#   C  a second extension where a selection is still at an edge; SAM's and extragradient's second knob value
#   D  the penalties (100 core-minutes a run)
# Start both shards with start_stage1.sh beside it (it clears the phase markers of an earlier
# launch); R (default /work/dreg_runs) is the runs root, as in docs/results/README.md.
S=$1; R=${R:-/work/dreg_runs}; P=cifar10_h2h2; C=configs/grids; SYNC=$R/.sync
cd "$(dirname "$0")/../../.."
sweep() { OMP_NUM_THREADS=1 python launch/sweep.py --grid $C/${P}_$1.yaml --runs-root $R --shard $S/2; }
barrier() { touch $SYNC/$1_$S; while [ ! -f $SYNC/$1_0 ] || [ ! -f $SYNC/$1_1 ]; do sleep 30; done; }
written() {  # written NAME COMMAND...: shard 0 runs COMMAND (it writes grids), the other waits for it
  local name=$1; shift
  if [ $S = 0 ]; then "$@"; touch $SYNC/${name}_written; fi
  while [ ! -f $SYNC/${name}_written ]; do sleep 10; done
}
dirs() { for x in "$@"; do for d in $R/${P}_$x $R/${P}_${x}_warmup $R/${P}_${x}_edge $R/${P}_${x}_edge2 $R/${P}_${x}_knob; do [ -d $d ] && echo $d; done; done; }
FAM="tiny tiny_lars tiny_lamb tiny_gbn"
edges() {  # edges N: the edge grids of round N (file suffix _edge or _edge2)
  local sfx=_edge; [ $1 = 2 ] && sfx=_edge2
  # A grid already written (an earlier launch) is kept: rewritten now it would read its own runs.
  for g in $FAM; do [ -f $C/${P}_${g}${sfx}.yaml ] || python launch/report.py $(dirs $g) --edge-grid $C/${P}_${g}${sfx}.yaml; done
}
run_edges() { local sfx=_edge; [ $1 = 2 ] && sfx=_edge2; for g in $FAM; do [ -f $C/${P}_${g}${sfx}.yaml ] && sweep ${g}${sfx}; done; }
knob() { [ -f $C/${P}_tiny_knob.yaml ] || python launch/report.py $(dirs tiny) --knob-grid $C/${P}_tiny_knob.yaml --seeds 0 \
           --set methods.sam.rho=0.02 --set methods.extragradient.gamma_scale=2.0; }

for g in tiny_lars tiny_warmup tiny_lamb tiny_gbn; do sweep $g; done
barrier A
written edges1 edges 1
run_edges 1
barrier B
written edges2 edges 2
written knob knob
run_edges 2
sweep tiny_knob
barrier C
sweep tiny_penalties
barrier D
