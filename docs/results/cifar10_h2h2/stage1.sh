#!/bin/bash
# Stage 1 of cifar10_h2h2 on one core (shard S of 2), in phases both shards finish before the next:
#   A  the stage-1 grids left: LARS, vanilla's warmup-5 control, LAMB, ghost BN and its warmup-5 control
#   B  one more rate beyond each selection at an edge (grids written by shard 0 from A's records)
#   B2 a second extension where a selection is still at an edge
#   C  SAM's and extragradient's second knob value, at the rates selected after both extensions
#   D  the penalties (100 core-minutes a run)
# Start both shards with start_stage1.sh beside it (it clears the phase markers of an earlier
# launch); R (default /work/dreg_runs) is the runs root, as in docs/results/README.md.
S=$1; HERE=$(cd "$(dirname "$0")" && pwd); SYNC=${R:-/work/dreg_runs}/.sync
cd "$HERE/../../.."; . "$HERE/lib.sh"; mkdir -p "$SYNC"
FAM="tiny tiny_lars tiny_lamb tiny_gbn"
edges() { local sfx=_edge; [ $1 = 2 ] && sfx=_edge2; for g in $FAM; do follow $g$sfx $g --edge-grid; done; }
run_edges() { local sfx=_edge; [ $1 = 2 ] && sfx=_edge2; for g in $FAM; do sweep $g$sfx; done; }
knob() { follow tiny_knob tiny --knob-grid --seeds 0 --set methods.sam.rho=0.02 --set methods.extragradient.gamma_scale=2.0; }

for g in tiny_lars tiny_warmup tiny_lamb tiny_gbn tiny_gbn_warmup; do sweep $g; done
barrier A
written edges1 edges 1
run_edges 1
barrier B
written edges2 edges 2
run_edges 2
barrier B2
written knob knob   # at the rates the edges left selected
sweep tiny_knob
barrier C
sweep tiny_penalties
barrier D
