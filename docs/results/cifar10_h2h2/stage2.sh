#!/bin/bash
# Stages 2-5 of cifar10_h2h2 on one core (shard S of 2), in phases both shards finish before the
# next; each phase's grids are written once by shard 0 from the records before it (lib.sh):
#   E0 the warmup-5 control of DReg's default, SAM and extragradient (stage 1's last, written after
#      its knob phase had named their selections; its records are read with tiny's from here on)
#   E0e one more rate beyond a selection the control left at its variant's edge, and a second
#      where it is still there (nothing runs where the control's selections are bracketed)
#   E  GradientMix's edge extensions, one and where still at the edge a second, then its warmup-5
#      control (it and vanilla on its 8 workers, at twice their rates) and that control's edges
#      (8 worker processes on both cores)
#   F  stage 2: seeds 1 and 2 at every selection and at the 512 reference
#   G  seeds 3 and 4 where the seed-paired 95% interval is wider than a third of the gap
#   H  stage 3: matched steps (348 epochs at 4096) for vanilla and the two best of (a)
#   I  stage 4: transfer to 8192 under the linear and the sqrt rule, and vanilla re-tuned there
# Stage 5 (cnn_base: 1, 3, 6 and 3 cells, too few and uneven for two static shards) runs after it
# from start_stage5.sh.
# Start both shards with start_stage2.sh beside it; run it again to resume.
S=$1; HERE=$(cd "$(dirname "$0")" && pwd); SYNC=${R:-/work/dreg_runs}/.sync2
cd "$HERE/../../.."; . "$HERE/lib.sh"; mkdir -p "$SYNC"

sweep tiny_warmup_rest
barrier E0
written rest_edge edge_rest tiny
sweep tiny_warmup_rest_edge
barrier E0e1
written rest_edge2 edge_rest tiny 2
sweep tiny_warmup_rest_edge2
barrier E0e
written gm_edge edge_gm
solo tiny_gm_edge
barrier E1
written gm_edge2 edge_gm 2
solo tiny_gm_edge2
barrier E2
written gm_warmup warmup_gm
solo tiny_gm_warmup_rest
barrier E3
written gm_rest_edge edge_rest tiny_gm
solo tiny_gm_warmup_rest_edge
barrier E4
written gm_rest_edge2 edge_rest tiny_gm 2
solo tiny_gm_warmup_rest_edge2
barrier E

written seeds seeds
for g in tiny_ref tiny tiny_lars tiny_lamb tiny_gbn; do sweep ${g}_seeds; done
barrier F1; solo tiny_gm_seeds; barrier F

written seeds34 seeds34
for g in tiny tiny_lars tiny_lamb tiny_gbn; do [ -f $(f ${g}_seeds34) ] && sweep ${g}_seeds34; done
barrier G1; solo tiny_gm_seeds34; barrier G

written steps steps
for g in tiny tiny_lars tiny_lamb tiny_gbn tiny_penalties; do [ -f $(f ${g}_steps) ] && sweep ${g}_steps; done
barrier H1; solo tiny_gm_steps; barrier H

written transfer transfer
for g in tiny tiny_lars tiny_lamb tiny_gbn tiny_penalties; do for s in "" _steps; do for r in "" _sqrt; do
  sweep ${g}_x8192$r$s; done; done; done
for s in "" _steps; do sweep tiny_x8192_retune$s; done
barrier I1; for s in "" _steps; do for r in "" _sqrt; do solo tiny_gm_x8192$r$s; done; done; barrier I

