#!/usr/bin/env bash
# Instructions per request of the hit workload (examples/hit_workload.rs), counted by callgrind:
# each case runs at two request counts, and the difference in instructions is divided by the
# difference in requests, so that start-up and warm-up cancel out.
#
# Run: benches/callgrind.sh            (needs valgrind; builds the example in release mode)
# Options through the environment: SMALL=20000 LARGE=60000 KEYS="1 10000", BINARY=path (a
# hit_workload built earlier, to compare two versions).
set -euo pipefail
cd "$(dirname "$0")/.."
small=${SMALL:-20000}
large=${LARGE:-60000}
keys=${KEYS:-1 10000}
binary=${BINARY:-}
if [ -z "$binary" ]; then
  cargo build --release --example hit_workload >&2
  binary=${CARGO_TARGET_DIR:-target}/release/examples/hit_workload
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

instructions() { # mode requests keys
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1.$2.$3" "$binary" "$1" --requests "$2" --keys "$3" \
    2>&1 >/dev/null | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

echo "| keys | floor (instructions/request) | hit (instructions/request) | hit / floor |"
echo "|---:|---:|---:|---:|"
for k in $keys; do
  declare -A per
  for mode in floor hit; do
    a=$(instructions "$mode" "$small" "$k")
    b=$(instructions "$mode" "$large" "$k")
    per[$mode]=$(( (b - a) / (large - small) ))
  done
  ratio=$(awk -v h="${per[hit]}" -v f="${per[floor]}" 'BEGIN { printf "%.2f", h / f }')
  echo "| $k | ${per[floor]} | ${per[hit]} | ${ratio}x |"
  unset per
done
