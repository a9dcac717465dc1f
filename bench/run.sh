#!/usr/bin/env bash
# The performance benchmark (issue: 10-million-member audiences). Prints each figure beside its
# reference, measured side by side in one run on this machine.
#
#   bench/run.sh [MEMBERS...]        # default: 1000000 10000000; MANY=0 skips the 100-audience shape,
#                                    # WIDE=0 the 1,000-audience one, MIXED=0 the mixed sizes;
#                                    # RUNS=N runs the many-audience and mixed shapes N times (default 3)
#
# Needs GNU time (/usr/bin/time), coreutils and the sqlite3 shell. Work files go to $BENCH_DIR (default
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

# seconds and peak RSS (MB) of a command, via GNU time. Dirty pages are flushed first (`sync`,
# not timed): otherwise a pass pays for the writeback of whatever ran before it (the 500 MB the
# initial pass and the floor leave dirty, say), which a daemon's next pass, hours later, does not.
measure() {
  sync
  /usr/bin/time -f "%e %M" -o "$dir/time.out" "$@" > "$dir/cmd.out" 2> "$dir/cmd.err" || { cat "$dir/cmd.err" >&2; return 1; }
  read -r secs kb < "$dir/time.out"
  echo "$secs $((kb / 1024))"
}

# The floor under a first sync's writes: seconds SQLite alone takes to insert $1 rows of a first
# sync's shape into member_rows (its definition read from the state $2) in one transaction, less
# the seconds it takes to make them.
sqlite_floor() {
  local db=$dir/floor.db make insert
  local rows="WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < $1) \
    SELECT 1, 'user-' || printf('%010d', i), 1, 1, 1764000000000, 1764000000000 FROM g"
  rm -f "$db"*
  { echo "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"; sqlite3 "$2" ".schema member_rows"; } | sqlite3 "$db" > /dev/null
  read -r make _ < <(measure sqlite3 "$db" "SELECT count(*) FROM ($rows)")
  read -r insert _ < <(measure sqlite3 "$db" "INSERT INTO member_rows (computation_id, user_id, desired, synced, updated_at, synced_at) $rows")
  rm -f "$db"*
  awk "BEGIN{printf \"%.2f\", $insert - $make}"
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
  read -r first mb < <(measure "$bin" --config "$work/config.toml" sync)
  printf '%-44s %10s %9s %12s %s\n' "$n initial pass (file destination)" "$first" "$mb" "$(awk "BEGIN{printf \"%.0f/s\", $n/$first}")" "target >= 1000000/s (issue 14)"
  floor=$(sqlite_floor "$n" "$work/state.db")
  printf '%-44s %10s %9s %12s %s\n' "$n rows inserted by SQLite alone" "$floor" "" "$(awk "BEGIN{printf \"%.0f/s\", $n/$floor}")" "the floor under the initial pass's writes"
  # the machine's speed drifts between runs; against the floor measured beside it, it does less
  printf '%-44s %10s %9s %12s %s\n' "$n initial pass against that floor" "" "" "$(awk "BEGIN{printf \"%.2fx\", $first/$floor}")" "the pass's whole time over SQLite's inserts alone"

  cp "$work/churn.csv" "$work/snap.csv"
  read -r secs mb < <(measure "$bin" --config "$work/config.toml" sync)
  printf '%-44s %10s %9s %12s %s\n' "$n delta pass, 1% exits + 1% entries" "$secs" "$mb" "$(awk "BEGIN{printf \"%.1fx\", $secs/$ref}")" "sort|comm ${ref}s; target <= 2x, <= 256 MB"

  read -r secs mb < <(measure "$bin" --config "$work/config.toml" sync)
  printf '%-44s %10s %9s %12s %s\n' "$n unchanged, identical file (diff skipped)" "$secs" "$mb" "$(awk "BEGIN{printf \"%.1fx\", $secs/$ref}")" "target <= 2x"

  touch "$work/snap.csv"
  read -r secs mb < <(measure "$bin" --config "$work/config.toml" sync)
  printf '%-44s %10s %9s %12s %s\n' "$n same bytes, new mtime (diff skipped)" "$secs" "$mb" "$(awk "BEGIN{printf \"%.1fx\", $secs/$ref}")" "target <= 2x"

  # the same members in another order: the hash differs, so the diff runs and finds nothing
  { head -n 1 "$work/churn.csv"; tail -n +2 "$work/churn.csv" | tac; } > "$work/snap.csv"
  read -r secs mb < <(measure "$bin" --config "$work/config.toml" sync)
  printf '%-44s %10s %9s %12s %s\n' "$n same members reordered (full diff)" "$secs" "$mb" "$(awk "BEGIN{printf \"%.1fx\", $secs/$ref}")" "target <= 2x"

  # the next delta, back to the first file: the 1 % + 1 % again, and the diff now also folds in
  # the last delta's acknowledgements (`acknowledged`): the delta as it runs pass after pass
  LC_ALL=C sort -S 200M "$work/churn.csv" > "$work/churn.sorted"
  read -r ref2 _ < <(measure bash -c "LC_ALL=C sort -S 200M '$work/base.csv' | LC_ALL=C comm -3 - '$work/churn.sorted' > /dev/null")
  cp "$work/base.csv" "$work/snap.csv"
  read -r secs mb < <(measure "$bin" --config "$work/config.toml" sync)
  printf '%-44s %10s %9s %12s %s\n' "$n next delta pass, 1% + 1% back" "$secs" "$mb" "$(awk "BEGIN{printf \"%.1fx\", $secs/$ref2}")" "sort|comm ${ref2}s; target <= 2x, <= 256 MB"

  bytes=$(stat -c %s "$work/state.db")
  printf '%-44s %10s %9s %12s %s\n' "$n state file" "" "" "$((bytes / (n + n / 100)))  B/row" "$((bytes / 1048576)) MB for $((n + n / 100)) rows"

  # cost against churn: a delta with ten times the changes
  "$gen" --members "$n" --churn 0.1 > "$work/snap.csv"
  read -r secs mb < <(measure "$bin" --config "$work/config.toml" sync)
  changes=$(grep -o '[0-9]* entered, [0-9]* exited' "$dir/cmd.out" | head -1)
  printf '%-44s %10s %9s %12s %s\n' "$n delta pass, about 10% churn" "$secs" "$mb" "$(awk "BEGIN{printf \"%.1fx\", $secs/$ref}")" "($changes)"

  rm -f "$work"/*.csv "$work/base.sorted" "$work/churn.sorted" "$work/out.ndjson"
done

# Many audiences (issue 14): 100 audiences of 100,000 members each (users of their own), against
# one audience of 10,000,000 with the same churn, side by side: initial pass and 1 % + 1 % delta.
if [ "${MANY:-1}" = 1 ]; then
  many="$dir/many" one="$dir/one"
  rm -rf "$many" "$one" && mkdir -p "$many" "$one"
  header() { printf '[state]\npath = "state.db"\n[destination]\ntype = "file"\npath = "out.ndjson"\n'; }
  { header; for i in $(seq 0 99); do printf '[[audience]]\nname = "A%d"\nsource = { type = "file", path = "s%d.csv" }\n' "$i" "$i"; done; } > "$many/config.toml"
  { header; printf '[[audience]]\nname = "One"\nsource = { type = "file", path = "s.csv" }\n'; } > "$one/config.toml"
  for i in $(seq 0 99); do
    "$gen" --members 100000 --seed "$i" --offset $((i * 100000)) > "$many/a$i.csv"
    "$gen" --members 100000 --seed "$i" --offset $((i * 100000)) --churn 0.01 > "$many/c$i.csv"
  done
  "$gen" --members 10000000 > "$one/a.csv"
  "$gen" --members 10000000 --churn 0.01 > "$one/c.csv"
  for run in $(seq 1 "${RUNS:-3}"); do
    rm -f "$many"/state.db* "$one"/state.db*
    for i in $(seq 0 99); do cp "$many/a$i.csv" "$many/s$i.csv"; done
    cp "$one/a.csv" "$one/s.csv"
    read -r m_init m_mb < <(measure "$bin" --config "$many/config.toml" sync)
    read -r o_init o_mb < <(measure "$bin" --config "$one/config.toml" sync)
    for i in $(seq 0 99); do cp "$many/c$i.csv" "$many/s$i.csv"; done
    cp "$one/c.csv" "$one/s.csv"
    read -r m_delta m_mb2 < <(measure "$bin" --config "$many/config.toml" sync)
    read -r o_delta o_mb2 < <(measure "$bin" --config "$one/config.toml" sync)
    printf '%-44s %10s %9s %12s %s\n' "100 x 100k initial pass (run $run)" "$m_init" "$m_mb" "$(awk "BEGIN{printf \"%.2fx\", $m_init/$o_init}")" "one 10M audience ${o_init}s; target <= 1.2x"
    printf '%-44s %10s %9s %12s %s\n' "100 x 100k delta, 1% + 1% each (run $run)" "$m_delta" "$m_mb2" "$(awk "BEGIN{printf \"%.2fx\", $m_delta/$o_delta}")" "one 10M audience ${o_delta}s; target <= 1.3x"
  done
  bytes=$(stat -c %s "$many/state.db")
  printf '%-44s %10s %9s %12s %s\n' "100 x 100k state file" "" "" "$((bytes / 10000000))  B/row" "target <= 50 B/row"
  rm -f "$many"/*.csv "$one"/*.csv
fi

# Many small computations (issue 14): 1,000 audiences of 1,000 members each; `status` and a pass
# in which nothing changed (every file as it was: each diff skipped by its fingerprint).
if [ "${WIDE:-1}" = 1 ]; then
  wide="$dir/wide"
  rm -rf "$wide" && mkdir -p "$wide"
  { printf '[state]\npath = "state.db"\n[destination]\ntype = "file"\npath = "out.ndjson"\n'
    for i in $(seq 0 999); do printf '[[audience]]\nname = "W%d"\nsource = { type = "file", path = "w%d.csv" }\n' "$i" "$i"; done
  } > "$wide/config.toml"
  for i in $(seq 0 999); do "$gen" --members 1000 --seed "$i" --offset $((i * 1000)) > "$wide/w$i.csv"; done
  read -r secs mb < <(measure "$bin" --config "$wide/config.toml" sync)
  printf '%-44s %10s %9s %12s %s\n' "1,000 x 1,000 initial pass" "$secs" "$mb" "" ""
  read -r secs mb < <(measure "$bin" --config "$wide/config.toml" status)
  printf '%-44s %10s %9s %12s %s\n' "1,000 computations: status" "$secs" "$mb" "" "target < 1 s"
  read -r secs mb < <(measure "$bin" --config "$wide/config.toml" sync)
  printf '%-44s %10s %9s %12s %s\n' "1,000 computations: nothing changed" "$secs" "$mb" "" "target < 2 s"
  rm -rf "$wide"
fi

# Mixed sizes (issue 14): 99 audiences of 100,000 with 1 % + 1 % churn each, in the same pass as
# a 10,000,000-member first sync, against the same 99 deltas alone: when the last small delta
# finished (sync_runs.finished_at), counted from the command's start.
if [ "${MIXED:-1}" = 1 ]; then
  mixed="$dir/mixed"
  rm -rf "$mixed" && mkdir -p "$mixed"
  small() { for i in $(seq 0 98); do printf '[[audience]]\nname = "S%d"\nsource = { type = "file", path = "s%d.csv" }\n' "$i" "$i"; done; }
  header() { printf '[state]\npath = "state.db"\n[destination]\ntype = "file"\npath = "out.ndjson"\n'; }
  { header; small; } > "$mixed/alone.toml"
  { header; small; printf '[[audience]]\nname = "Big"\nsource = { type = "file", path = "big.csv" }\n'; } > "$mixed/mixed.toml"
  for i in $(seq 0 98); do "$gen" --members 100000 --seed "$i" --offset $((i * 100000)) > "$mixed/s$i.csv"; done
  "$gen" --members 10000000 --seed 7 --offset 20000000 > "$mixed/big.csv"
  measure "$bin" --config "$mixed/alone.toml" sync > /dev/null
  cp "$mixed/state.db" "$mixed/base.db"
  for i in $(seq 0 98); do "$gen" --members 100000 --seed "$i" --offset $((i * 100000)) --churn 0.01 > "$mixed/s$i.csv"; done
  # seconds from `start` to the last small delta's end, in the state at $mixed/state.db
  last_small() {
    sqlite3 "$mixed/state.db" "SELECT printf('%.1f', (max(julianday(finished_at)) - 2440587.5) * 86400 - $1)
      FROM sync_runs WHERE computation_key != 'big' AND mode = 'delta'"
  }
  for run in $(seq 1 "${RUNS:-3}"); do
    for shape in alone mixed; do
      rm -f "$mixed"/state.db* && cp "$mixed/base.db" "$mixed/state.db"
      start=$(date +%s.%N)
      read -r secs mb < <(measure "$bin" --config "$mixed/$shape.toml" sync)
      done_at=$(last_small "$start")
      printf '%-44s %10s %9s %12s %s\n' "99 small deltas, $shape (run $run)" "$secs" "$mb" "${done_at} s" "last small delta finished; target: mixed <= alone + a few s"
    done
  done
  rm -rf "$mixed"
fi

target/release/examples/bench_delivery --destination contentstack --members 30000 --latency-ms 5 --concurrency 64 --runs 5 | sed 's/^/contentstack 5 ms c=64: /'
target/release/examples/bench_delivery --destination segment --members 300000 --latency-ms 5 --concurrency 16 | sed 's/^/segment 5 ms c=16: /'
