#!/usr/bin/env bash
# The PostgreSQL state against SQLite's (issue 17): the initial and the delta pass of one
# audience, each backend in turn on the same snapshots, side by side in one run.
#
#   bench/postgres.sh [MEMBERS...]     # default: 1000000 10000000
#
# Uses the server at $AUDIENCE_SYNC_BENCH_POSTGRES_URL (a user that may create databases), or
# starts a throwaway one with .ci/postgres.sh (as root). Needs GNU time and psql. Work files go
# to $BENCH_DIR (default /tmp/audience-sync-bench-pg); nothing leaves loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000 10000000)
dir=${BENCH_DIR:-/tmp/audience-sync-bench-pg}
mkdir -p "$dir"
if [ -z "${AUDIENCE_SYNC_BENCH_POSTGRES_URL:-}" ]; then
  source .ci/postgres.sh
  trap stop_postgres EXIT
  AUDIENCE_SYNC_BENCH_POSTGRES_URL=$AUDIENCE_SYNC_TEST_POSTGRES_URL
fi
cargo build --release --quiet --bin audience-sync --example gen_snapshot
bin=$PWD/target/release/audience-sync
gen=$PWD/target/release/examples/gen_snapshot

# seconds and peak RSS (MB) of a command, via GNU time
measure() {
  /usr/bin/time -f "%e %M" -o "$dir/time.out" "$@" > "$dir/cmd.out" 2> "$dir/cmd.err" || { cat "$dir/cmd.err" >&2; return 1; }
  read -r secs kb < "$dir/time.out"
  echo "$secs $((kb / 1024))"
}

# config.toml of one backend in $work/$1: `path = ...` or `url_env = ...`
config() {
  mkdir -p "$work/$1"
  cat > "$work/$1/config.toml" <<TOML
[state]
$2
[destination]
type = "file"
path = "out.ndjson"
[[audience]]
name = "Bench"
source = { type = "file", path = "$work/snap.csv" }
TOML
}

# The floor under any PostgreSQL first sync: seconds the server alone takes to insert $1 rows of
# a first sync's shape into a copy of member_rows (same columns, keys and indexes), in two
# sessions at once as delivery's two connections do, the rows made by the server itself.
server_floor() {
  local n=$1 url=$2 half=$(($1 / 2)) start
  psql -q "$url" -c "CREATE TABLE floor_rows (LIKE member_rows INCLUDING ALL)"
  start=$(date +%s.%N)
  for range in "1 $half" "$((half + 1)) $n"; do
    psql -q "$url" -c "INSERT INTO floor_rows (computation_id, user_id, desired, synced, updated_at, synced_at) \
      SELECT 1, 'user-' || lpad(i::text, 10, '0'), 'true', 'true', 1764000000000, 1764000000000 \
      FROM generate_series(${range% *}, ${range#* }) i" &
  done
  wait
  awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $start}"
}

printf '%-40s %9s %7s %9s %7s %s\n' "measure" "SQLite s" "MB" "Postgres" "MB" "ratio (target <= 2x, <= 256 MB)"
for n in "${sizes[@]}"; do
  work="$dir/$n"
  rm -rf "$work" && mkdir -p "$work"
  "$gen" --members "$n" > "$work/base.csv"
  "$gen" --members "$n" --churn 0.01 > "$work/churn.csv"
  db="bench_${n}_$$"
  psql -q "$AUDIENCE_SYNC_BENCH_POSTGRES_URL" -c "CREATE DATABASE $db"
  export AUDIENCE_SYNC_BENCH_STATE_URL="${AUDIENCE_SYNC_BENCH_POSTGRES_URL%/*}/$db"
  config sqlite 'path = "state.db"'
  config postgres 'url_env = "AUDIENCE_SYNC_BENCH_STATE_URL"'
  for pass in "initial pass:base.csv" "delta pass, 1% exits + 1% entries:churn.csv"; do
    cp "$work/${pass#*:}" "$work/snap.csv"
    read -r s_secs s_mb < <(measure "$bin" --config "$work/sqlite/config.toml" sync)
    read -r p_secs p_mb < <(measure "$bin" --config "$work/postgres/config.toml" sync)
    [ "${pass%%:*}" != "initial pass" ] || initial_secs=$s_secs
    printf '%-40s %9s %7s %9s %7s %s\n' "$n ${pass%%:*}" "$s_secs" "$s_mb" "$p_secs" "$p_mb" \
      "$(awk "BEGIN{printf \"%.2fx\", $p_secs/$s_secs}")"
  done
  floor=$(server_floor "$n" "$AUDIENCE_SYNC_BENCH_STATE_URL")
  printf '%-40s %9s %7s %9s %7s %s\n' "$n rows inserted by the server alone" "" "" "$floor" "" \
    "$(awk "BEGIN{printf \"%.2fx of SQLite's initial pass\", $floor/$initial_secs}")"
  psql -q "$AUDIENCE_SYNC_BENCH_POSTGRES_URL" -c "DROP DATABASE $db"
  rm -rf "$work"
done
