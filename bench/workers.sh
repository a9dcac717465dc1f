#!/usr/bin/env bash
# One first sync shared by several workers (issue 17): 1 worker, then 3, deliver the same
# audience to a loopback Contentstack stand-in with a fixed latency, on a PostgreSQL state.
#
#   bench/workers.sh [ARGS...]     # default: --members 300000 --latency-ms 50 --concurrency 32 --workers 1,3
#
# ARGS go to examples/bench_workers.rs (--runs N for min / median / max). Uses the server at
# $AUDIENCE_SYNC_BENCH_POSTGRES_URL (a user that may create databases), or starts a throwaway one
# with .ci/postgres.sh (as root). Nothing leaves loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${AUDIENCE_SYNC_BENCH_POSTGRES_URL:-}" ]; then
  source .ci/postgres.sh
  trap stop_postgres EXIT
  AUDIENCE_SYNC_BENCH_POSTGRES_URL=$AUDIENCE_SYNC_TEST_POSTGRES_URL
fi
cargo build --release --quiet --bin audience-sync --example bench_workers
target/release/examples/bench_workers --postgres "$AUDIENCE_SYNC_BENCH_POSTGRES_URL" "$@"
