#!/usr/bin/env bash
# The full fault matrix (by hand; CI runs a short form): every workload x fault, RUNS runs
# each, SECONDS long. Prints each pair's JSON line; exits non-zero if any pair failed.
set -u -o pipefail
RUNS=${RUNS:-20}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-30}
status=0
for workload in bank append register; do
  for fault in kill pause partition restart-all wipe switchover membership mixed; do
    node build-bench/bench/torture.js --workload "$workload" --fault "$fault" --runs "$RUNS" --seconds "$SECONDS_PER_RUN" | tail -n 1 || status=1
  done
done
exit $status
