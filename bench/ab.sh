#!/usr/bin/env bash
# Two builds side by side, interleaved (A B A B ...), so that the machine's drift over minutes
# falls on both: a first sync of MEMBERS on an empty state, a 1 % + 1 % delta on the same
# state copied for each, and the next delta, back to the first file (the delta as it runs pass
# after pass), with the seconds, peak RSS and CPU of each run.
#
#   bench/ab.sh BIN_A BIN_B [MEMBERS] [RUNS]     # default: 10000000 members, 3 runs of each
#
# Build the binaries first (e.g. `git stash; cargo build --release; cp target/release/audience-sync
# /tmp/a; git stash pop; cargo build --release`). Needs GNU time. Work files go to $BENCH_DIR
# (default /tmp/audience-sync-ab); nothing leaves loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
a=$(realpath "$1") b=$(realpath "$2") n=${3:-10000000} runs=${4:-3}
dir=${BENCH_DIR:-/tmp/audience-sync-ab}
rm -rf "$dir" && mkdir -p "$dir"
cargo build --release --quiet --example gen_snapshot
gen=$PWD/target/release/examples/gen_snapshot
cd "$dir"
"$gen" --members "$n" > base.csv
"$gen" --members "$n" --churn 0.01 > churn.csv
printf '[state]\npath = "state.db"\n[destination]\ntype = "file"\npath = "out.ndjson"\n[[audience]]\nname = "Bench"\nsource = { type = "file", path = "snap.csv" }\n' > config.toml

# seconds, peak RSS (MB) and CPU seconds (user + system) of one `sync`
run() {
  sync # dirty pages of what ran before flushed first, not timed (as in bench/run.sh)
  /usr/bin/time -f "%e %M %U %S" -o time.out "$1" --config config.toml sync > /dev/null 2> cmd.err || { cat cmd.err >&2; return 1; }
  read -r secs kb user sys < time.out
  echo "$secs $((kb / 1024)) $(awk "BEGIN{print $user + $sys}")"
}

# the state a first sync leaves, taken once, for every delta to start from
cp base.csv snap.csv
"$a" --config config.toml sync > /dev/null 2>&1
cp state.db fresh.db

printf '%-8s %-6s %9s %7s %8s\n' "build" "pass" "seconds" "RSS MB" "CPU s"
for _ in $(seq "$runs"); do
  for bin in "$a" "$b"; do
    label=$([ "$bin" = "$a" ] && echo A || echo B)
    rm -f state.db* out.ndjson && cp base.csv snap.csv
    printf '%-8s %-6s %9s %7s %8s\n' "$label" first $(run "$bin")
    rm -f state.db* out.ndjson && cp fresh.db state.db && cp churn.csv snap.csv
    printf '%-8s %-6s %9s %7s %8s\n' "$label" delta $(run "$bin")
    cp base.csv snap.csv
    printf '%-8s %-6s %9s %7s %8s\n' "$label" next $(run "$bin")
  done
done
