#!/usr/bin/env bash
# Peak memory with large trait values: a trait of USERS users holding 30 KB each (the file
# destination, the default sort budget), its first sync, then a delta that changes every value,
# with the seconds and peak RSS of each, for each binary given (default: this tree's release
# build). Delivery and the diff's writer must hold a bounded number of bytes, not of users.
#
#   bench/large_values.sh [USERS] [BINARY...]     # default: 15000 users
#
# Needs GNU time. Work files (about 0.9 GB for 15,000 users) go to $BENCH_DIR (default
# /tmp/audience-sync-large); nothing leaves loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-15000}
shift || true
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
  cargo build --release --quiet --bin audience-sync
  bins=("$PWD/target/release/audience-sync")
fi
dir=${BENCH_DIR:-/tmp/audience-sync-large}
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
snapshot() { # $1: the letter every value is made of
  awk -v n="$users" -v letter="$1" 'BEGIN {
    v = letter; while (length(v) < 30720) v = v v; v = substr(v, 1, 30720); print "user_id,value"
    for (i = 0; i < n; i++) printf "user-%06d,%s\n", i, v }'
}
snapshot n > first.csv
snapshot m > delta.csv
printf '[state]\npath = "state.db"\n[destination]\ntype = "file"\npath = "out.ndjson"\n[[computed_trait]]\nname = "Note"\nsource = { type = "file", path = "t.csv" }\n' > config.toml

run() { # $1: binary, $2: what the run is
  sync
  /usr/bin/time -f "%e %M" -o time.out "$1" --config config.toml sync > /dev/null 2> cmd.err || { cat cmd.err >&2; return 1; }
  read -r secs kb < time.out
  printf '%-60s %-12s %8s s %8s MB\n' "$1" "$2" "$secs" "$((kb / 1024))"
}
for bin in "${bins[@]}"; do
  rm -f state.db* out.ndjson
  cp first.csv t.csv && run "$bin" "first sync"
  cp delta.csv t.csv && run "$bin" "delta"
done
rm -f ./*.csv state.db* out.ndjson
