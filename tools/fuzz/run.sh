#!/bin/sh
# Run every atheris harness for SECONDS (default 60) each; crash files go to $FUZZ_OUT (default ./fuzz-out/).
# Usage: tools/fuzz/run.sh [SECONDS] [extra libFuzzer flags...]
set -u
cd "$(dirname "$0")/../.." || exit 2
secs=${1:-60}
[ $# -gt 0 ] && shift
out=${FUZZ_OUT:-fuzz-out}
mkdir -p "$out"
status=0
for t in rpc console config deviceinfo dcr urequests; do
    echo "== $t ($secs s)"
    python -m tools.fuzz "$t" --seconds "$secs" --artifacts "$out" "$@" || status=1
done
exit $status
