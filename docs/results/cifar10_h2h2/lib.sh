# Shared by the stage scripts beside it (sourced, with S = this shard, 0 or 1, and SYNC = the
# stage's phase-marker folder): the runs root R, where grids go (C), the barriers, and the
# follow-up grids each phase writes from the records before it (docs/results/README.md).
R=${R:-/work/dreg_runs}; P=cifar10_h2h2; C=${C:-configs/grids}
G="tiny tiny_lars tiny_lamb tiny_gbn tiny_penalties tiny_gm"
SEEDED="tiny tiny_lars tiny_lamb tiny_gbn tiny_gm"   # the penalties keep their one run (a stated cut)
f() { echo $C/${P}_$1.yaml; }
sweep() {  # sweep NAME: this shard's half of grid NAME (a follow-up that had nothing to run has no grid)
  [ -f $(f $1) ] && OMP_NUM_THREADS=1 python launch/sweep.py --grid $(f $1) --runs-root $R --shard $S/2; }
solo() {  # solo NAME: all of grid NAME on 8 worker processes (GradientMix's), by shard 0 while shard 1 waits
  if [ $S = 0 ] && [ -f $(f $1) ]; then
    OMP_NUM_THREADS=1 python launch/sweep.py --grid $(f $1) --runs-root $R --nproc-per-node 8; fi; }
barrier() { touch $SYNC/$1_$S; while [ ! -f $SYNC/$1_0 ] || [ ! -f $SYNC/$1_1 ]; do sleep 30; done; }
written() {  # written NAME COMMAND...: shard 0 runs COMMAND (it writes grids), the other waits for it
  local name=$1; shift
  if [ $S = 0 ]; then "$@"; touch $SYNC/${name}_written; fi
  while [ ! -f $SYNC/${name}_written ]; do sleep 10; done
}
dirs() {  # dirs GRID...: the run folders of stage-1 grids and of their follow-ups
  for x in "$@"; do for d in $R/${P}_$x $R/${P}_${x}_warmup $R/${P}_${x}_warmup_rest $R/${P}_${x}_warmup_rest_edge $R/${P}_${x}_warmup_rest_edge2 $R/${P}_${x}_edge $R/${P}_${x}_edge2 $R/${P}_${x}_knob \
    $R/${P}_${x}_seeds $R/${P}_${x}_seeds34; do [ -d $d ] && echo $d; done; done; }
others() { dirs tiny_ref $(for x in $G; do [ $x != $1 ] && echo $x; done); }
none() { echo $C/${P}_$1.none; }  # NAME's answer where its records needed no grid (committed with the grids)
asked() { [ -f $(f $1) ] || [ -f $(none $1) ]; }
ask() {  # ask OUT GRID --KIND-grid ARGS...: write follow-up file OUT from GRID's runs; SAID holds what
  # report.py said, the exit code is its (3: the records need nothing run), 2 where GRID has no runs
  local out=$1 d=$(dirs $2) kind=$3 rc; shift 3
  SAID=""; [ -n "$d" ] || return 2
  SAID=$(python launch/report.py $d $kind $out "$@" 2>&1); rc=$?
  [ -z "$SAID" ] || printf '%s\n' "$SAID"
  return $rc
}
follow() {  # follow NAME GRID --KIND-grid ARGS...: write follow-up grid NAME from GRID's runs, unless an
  # earlier launch asked already: rewritten later it would read its own runs, and a resume must not
  # ask again what once had nothing to run, with later stages' records beside it now (hence NAME.none)
  asked $1 && return 0
  local name=$1; shift
  ask $(f $name) "$@"
  [ $? = 3 ] && printf '%s\n' "$SAID" > $(none $name)
  return 0
}

edge_gm() { follow tiny_gm_edge$1 tiny_gm --edge-grid; }   # edge_gm [2]: the first or the second extension
# edge_rest FAMILY [2]: the same for a family after its warmup control (a 5-warmup selection may sit
# at the top of the rates its variant tried)
edge_rest() { follow $1_warmup_rest_edge$2 $1 --edge-grid; }
# GradientMix's folder (it and vanilla on its 8 workers) was tuned at 2 warmup epochs only: each
# selection at 5 and twice its rate, as tiny_warmup_rest.yaml gives DReg's default, SAM and extragradient
# Stage 5: the best method of (a), ranked over every family after the seeds, moved to cnn_base at its
# cnn_tiny selection (knobs and warmup) for 20 epochs, the rate halved, as is and doubled; the family
# holding it writes the grid, the others have nothing to move (vanilla has its own grid there).
base_best() {  # asked once: the families without the best answer "nothing to move" until one writes it
  asked base_best && return 0
  local g rc all=3 said=""
  for g in $G; do
    ask $(f base_best) $g --knob-grid --seeds 0 --set model.arch=cnn_base --set train.epochs=20 \
      --rate-factors 0.5,1,2 --best 1 --against $(others $g); rc=$?
    case $rc in
      0) [ -f $(f base_best) ] && return 0;;
      3) said="$said$g: $SAID"$'\n';;
      *) [ -z "$(dirs $g)" ] || all=$rc;;  # 2 without runs: a family that did not run has nothing to say
    esac
  done
  [ $all = 3 ] && printf '%s' "$said" > $(none base_best)
  return 0
}
edge_base() { for g in base_ref base base_best; do follow ${g}_edge $g --edge-grid; done; }
gm_grid() { [ -f $(f $1) ] && grep -q "method: gradientmix" $(f $1); }  # its cells need GradientMix's 8 workers
warmup_gm() { follow tiny_gm_warmup_rest tiny_gm --knob-grid --seeds 0 --set optim.warmup_epochs=5 --rate-factors 2; }
seeds() { for g in tiny_ref $SEEDED; do follow ${g}_seeds $g --seed-grid --seeds 1,2; done; }
# The penalties' single runs are not read for the intervals: one seed has none.
seeds34() { for g in $SEEDED; do follow ${g}_seeds34 $g --seed-grid --against $(others $g | grep -v _penalties) \
  --seeds 3,4 --wide-only; done; }
steps() { for g in $G; do follow ${g}_steps $g --steps-grid --against $(others $g) --seeds 0 --best 2; done; }
transfer() {
  # Vanilla, LARS and LAMB, and the best method of (a) at its best variant (`--best 1`, ranked against
  # every family, so DReg's paper form does not ride along with its default): tiny's grids hold vanilla
  # beside it and name it when it is one of tiny's; another family writes grids only when its own
  # selection is the best (otherwise it has nothing to move, and says so).
  local g s m best
  for g in tiny tiny_lars tiny_lamb tiny_gbn tiny_gm tiny_penalties; do
    [ -n "$(dirs $g)" ] || continue
    best=$(case $g in tiny_lars|tiny_lamb) ;; *) echo "--best 1 --against $(others $g)";; esac)
    for s in "" _steps; do m=${s:+--match-steps}
      follow ${g}_x8192$s $g --transfer-grid --batch 8192 --seeds 0 $best $m
      follow ${g}_x8192_sqrt$s $g --transfer-grid --batch 8192 --seeds 0 --rule sqrt $best $m
    done
  done
  for s in "" _steps; do follow tiny_x8192_retune$s tiny --transfer-grid --batch 8192 --seeds 0 --rule none \
    --rate-factors 0.25,0.5,1 --methods vanilla ${s:+--match-steps}; done
}
