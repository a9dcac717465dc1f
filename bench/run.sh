#!/usr/bin/env bash
# The performance benchmark (issue: 10-million-member audiences). Prints each figure beside its
# reference, measured side by side in one run on this machine.
#
#   bench/run.sh [MEMBERS...]        # default: 1000000 10000000
#
# Needs GNU time (/usr/bin/time) and coreutils. Work files go to $BENCH_DIR (default
# /tmp/audience-sync-bench); nothing leaves loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000 10000000)
dir=${BENCH_DIR:-/tmp/audience-sync-bench}
mkdir -p "$dir"
cargo build --release --quiet --bin audience-sync --example gen_snapshot --example bench_delivery
bin=$PWD/target/release/audience-sync
gen=$PWD/target/release/examples/gen_snapshot

# seconds and peak RSS (MB) of a command, via GNU time
measure() {
  /usr/bin/time -f "%e %M" -o "$dir/time.out" "$@" > "$dir/cmd.out" 2> "$dir/cmd.err" || { cat "$dir/cmd.err" >&2; return 1; }
  read -r secs kb < "$dir/time.out"
  echo "$secs $((kb / 1024))"
}

printf '%-44s %10s %9s %12s %s\n' "measure" "seconds" "RSS MB" "rate" "reference"
for n in "${sizes[@]}"; do
  work="$dir/$n"
  rm -rf "$work" && mkdir -p "$work"
  "$gen" --members "$n" > "$work/base.csv"
  "$gen" --members "$n" --churn 0.01 > "$work/churn.csv"
  LC_ALL=C sort -S 200M "$work/base.csv" > "$work/base.sorted"
  cat > "$work/config.toml" <<TOML
[state]
path = "state.db"
[destination]
type = "file"
path = "out.ndjson"
[[audience]]
name = "Bench"
source = { type = "file", path = "snap.csv" }
TOML
  # reference: sort the new snapshot and compare it with the sorted previous one
  read -r ref _ < <(measure bash -c "LC_ALL=C sort -S 200M '$work/churn.csv' | LC_ALL=C comm -3 - '$work/base.sorted' > /dev/null")

  cp "$work/base.csv" "$work/snap.csv"
  read -r secs mb < <(measure "$bin" --config "$work/config.toml" sync)
  printf '%-44s %10s %9s %12s %s\n' "$n initial pass (file destination)" "$secs" "$mb" "$(awk "BEGIN{printf \"%.0f/s\", $n/$secs}")" "target >= 500000/s"

  cp "$work/churn.csv" "$work/snap.csv"
  read -r secs mb < <(measure "$bin" --config "$work/config.toml" sync)
  printf '%-44s %10s %9s %12s %s\n' "$n delta pass, 1% exits + 1% entries" "$secs" "$mb" "$(awk "BEGIN{printf \"%.1fx\", $secs/$ref}")" "sort|comm ${ref}s; target <= 3x, <= 256 MB"

  read -r secs mb < <(measure "$bin" --config "$work/config.toml" sync)
  printf '%-44s %10s %9s %12s %s\n' "$n unchanged, identical file (diff skipped)" "$secs" "$mb" "$(awk "BEGIN{printf \"%.1fx\", $secs/$ref}")" "target <= 2x"

  touch "$work/snap.csv"
  read -r secs mb < <(measure "$bin" --config "$work/config.toml" sync)
  printf '%-44s %10s %9s %12s %s\n' "$n same bytes, new mtime (diff skipped)" "$secs" "$mb" "$(awk "BEGIN{printf \"%.1fx\", $secs/$ref}")" "target <= 2x"

  # the same members in another order: the hash differs, so the diff runs and finds nothing
  { head -n 1 "$work/churn.csv"; tail -n +2 "$work/churn.csv" | tac; } > "$work/snap.csv"
  read -r secs mb < <(measure "$bin" --config "$work/config.toml" sync)
  printf '%-44s %10s %9s %12s %s\n' "$n same members reordered (full diff)" "$secs" "$mb" "$(awk "BEGIN{printf \"%.1fx\", $secs/$ref}")" "target <= 2x"

  bytes=$(stat -c %s "$work/state.db")
  printf '%-44s %10s %9s %12s %s\n' "$n state file" "" "" "$((bytes / (n + n / 100)))  B/row" "$((bytes / 1048576)) MB for $((n + n / 100)) rows"

  # cost against churn: a delta with ten times the changes
  "$gen" --members "$n" --churn 0.1 > "$work/snap.csv"
  read -r secs mb < <(measure "$bin" --config "$work/config.toml" sync)
  changes=$(grep -o '[0-9]* entered, [0-9]* exited' "$dir/cmd.out" | head -1)
  printf '%-44s %10s %9s %12s %s\n' "$n delta pass, about 10% churn" "$secs" "$mb" "$(awk "BEGIN{printf \"%.1fx\", $secs/$ref}")" "($changes)"

  rm -f "$work"/*.csv "$work/base.sorted" "$work/out.ndjson"
done

target/release/examples/bench_delivery --destination contentstack --members 30000 --latency-ms 5 --concurrency 64 --runs 5 | sed 's/^/contentstack 5 ms c=64: /'
target/release/examples/bench_delivery --destination segment --members 300000 --latency-ms 5 --concurrency 16 | sed 's/^/segment 5 ms c=16: /'
