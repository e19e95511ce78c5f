#!/bin/bash
# Commits the records of every run that is over (and each follow-up grid written so far) to main,
# once now and then every INTERVAL seconds (default 600; 0: once), so that a machine that goes away
# loses only the runs in flight: the runs root R lives on this machine only. Only the study's own
# paths are committed; other staged or unstaged work is left as it is. A commit that cannot take
# the index (another git command holds it) waits for the next round.
#   nohup setsid bash docs/results/cifar10_h2h2/keep_records.sh >> /work/dreg_runs/keep.log 2>&1 &
R=${R:-/work/dreg_runs}; INTERVAL=${1:-600}
HERE=$(cd "$(dirname "$0")" && pwd); cd "$HERE/../../.."
OUT=docs/results/cifar10_h2h2/runs
while :; do
  for d in "$R"/cifar10_h2h2_*/; do
    [ -d "$d" ] && python launch/report.py "$d" --copy-records $OUT >/dev/null
  done
  paths=($OUT $(ls configs/grids/cifar10_h2h2_*.yaml configs/grids/cifar10_h2h2_*.none 2>/dev/null))
  git add -- "${paths[@]}" 2>/dev/null
  new=$(git diff --cached --name-only --diff-filter=A -- $OUT | grep '/summary.json$' | sed "s|^$OUT/||; s|/summary.json$||")
  grids=$(git diff --cached --name-only --diff-filter=A -- configs/grids)
  # A sweep rewrites its sweep.json on every pass: that alone is not worth a commit.
  if [ -n "$new$grids" ]; then
    msg="records: $(echo "$new" | grep -c .) finished run(s) of cifar10_h2h2${grids:+, follow-up grids}"
    body=$(for r in $new; do python -c "import json,sys; s=json.load(open(sys.argv[1]))
print(sys.argv[2], 'val', s.get('best', {}).get('val_acc'), 'test', (s.get('test') or {}).get('acc'))" \
      "$OUT/$r/summary.json" "$r"; done; echo "$grids")
    git commit -q -m "$msg" -m "$body" -- "${paths[@]}" && echo "$(date -u +%FT%TZ) $msg"
  fi
  git reset -q -- "${paths[@]}" 2>/dev/null  # nothing of the study's stays staged between rounds
  [ "$INTERVAL" = 0 ] && break
  sleep "$INTERVAL"
done
