#!/usr/bin/env bash
# dask.distributed's own ASYNCHRONOUS tests on localsched: the tests that build
# their own LocalCluster(asynchronous=True) / Client(asynchronous=True).
# Usage: tools/peers/distributed_async/run.sh [extra pytest args, e.g. -k async_with]
# Last line: "N/M passed" over category own-async (conftest.py); dask-objects is
# reported on the lines before. See README.md.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
PY=${PEERS_PY:-$(command -v python || command -v python3)}
base=${TMPDIR:-/tmp}/localsched-peers-async
CACHE=${PEERS_CACHE:-$base/.cache}
RESULTS=${PEERS_RESULTS:-$base/results}
mkdir -p "$CACHE" "$RESULTS"
NICE="nice -n 10"   # 2 cores shared with other work
TIMEOUT=${PEERS_TIMEOUT:-60}
# The mirror and commit of the shared synchronous runner (../shared/peers).
DISTRIBUTED_GIT=${DISTRIBUTED_GIT:-/work/.mirror/dask+distributed/repo}
DISTRIBUTED_COMMIT=${DISTRIBUTED_COMMIT:-40fcd99a8cd41c39071a16a546e93a9298f1b64d}
FILES="distributed/tests/test_client.py distributed/tests/test_as_completed.py
distributed/tests/test_variable.py distributed/tests/test_queues.py
distributed/tests/test_locks.py distributed/tests/test_semaphore.py
distributed/tests/test_events.py distributed/tests/test_publish.py
distributed/tests/test_worker_client.py distributed/tests/test_actor.py
distributed/diagnostics/tests/test_progressbar.py
distributed/deploy/tests/test_local.py distributed/deploy/tests/test_adaptive.py
distributed/deploy/tests/test_cluster.py"

if ! git --git-dir="$DISTRIBUTED_GIT" cat-file -e "$DISTRIBUTED_COMMIT^{commit}" 2>/dev/null; then
  echo "no git mirror of dask/distributed with $DISTRIBUTED_COMMIT at DISTRIBUTED_GIT=$DISTRIBUTED_GIT"
  echo "0/0 passed"; exit 2
fi
WORK=$CACHE/distributed-async-work
rm -rf "$WORK"; mkdir -p "$WORK/src"
# shellcheck disable=SC2086
git --git-dir="$DISTRIBUTED_GIT" archive "$DISTRIBUTED_COMMIT" $FILES | tar x -C "$WORK/src"
# Flat: every test module top-level, importable by the worker processes too
# (PYTHONPATH), each ending with the swap of distributed's names for localsched's.
for f in $FILES; do
  dst=$WORK/$(basename "$f")
  cp "$WORK/src/$f" "$dst"
  printf '\n\nimport _peers_shim\n_peers_shim.patch_module(globals())\n' >> "$dst"
done
cp "$HERE"/conftest.py "$HERE"/_peers_shim.py "$HERE"/sitecustomize.py "$HERE"/pytest.ini \
   "$HERE"/not_applicable.txt "$HERE"/dask_objects.txt "$HERE"/peers_record.py "$WORK/"
# localsched from this checkout first (the venv's editable install may point elsewhere).
export PYTHONPATH="$WORK:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
JSON=$RESULTS/distributed_async.json
LOG=$RESULTS/distributed_async.log
echo "running $(echo $FILES | wc -w) files from dask/distributed@${DISTRIBUTED_COMMIT:0:9} with $PY, localsched from $ROOT (log: $LOG)"
(cd "$WORK" && PEERS_RESULTS_JSON=$JSON timeout -k 30 3600 $NICE "$PY" -m pytest -p no:cacheprovider \
    --timeout="$TIMEOUT" "$@" $(for f in $FILES; do basename "$f"; done) >"$LOG" 2>&1)
tail -n 3 "$LOG"
# Rerun each failure once, alone, to tell flakes from real failures (PEERS_RERUN=0: skip).
if [ "${PEERS_RERUN:-1}" = 1 ]; then
  ids=$("$PY" "$HERE/summarize.py" --failed-ids "$JSON")
  if [ -n "$ids" ]; then
    echo "rerunning $(printf '%s\n' "$ids" | wc -l) failed test(s) alone, one pytest process each"
    while IFS= read -r id; do
      [ -z "$id" ] && continue
      (cd "$WORK" && PEERS_RESULTS_JSON="$JSON.rerun.part" timeout -k 10 $((TIMEOUT + 60)) \
          $NICE "$PY" -m pytest -q -p no:cacheprovider --timeout="$TIMEOUT" "$id" >/dev/null 2>&1)
      "$PY" "$HERE/summarize.py" --merge-rerun "$JSON" "$JSON.rerun.part"
      rm -f "$JSON.rerun.part"
    done <<< "$ids"
  fi
fi
echo "--- dask-objects (own asynchronous cluster, asserting on dask's Worker/Nanny/Scheduler objects)"
"$PY" "$HERE/summarize.py" "$JSON" --scope dask-objects | tail -n 1
echo "--- own-async + dask-objects (every test building its own asynchronous cluster or client)"
"$PY" "$HERE/summarize.py" "$JSON" --scope own-async,dask-objects | tail -n 1
echo "--- in scope: own-async (tests building their own asynchronous LocalCluster/Client)"
"$PY" "$HERE/summarize.py" "$JSON" --scope own-async --failures
