#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for the tests that need one, installing it from Debian's
# packages if the machine lacks it. Source it: it exports AUDIENCE_SYNC_TEST_POSTGRES_URL and
# defines stop_postgres. The server listens on 127.0.0.1 only and keeps its data in a temp dir.
set -euo pipefail

if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  echo "installing postgresql from Debian's packages..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGDATA=$(mktemp -d /tmp/audience-sync-pg.XXXXXX)
# A port nothing listens on now (a fixed one can be taken by whatever else runs on the machine).
PGPORT=${PGPORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
chown postgres "$PGDATA"
su postgres -c "$PGBIN/initdb -D $PGDATA -A trust -U postgres" >/dev/null
su postgres -c "$PGBIN/pg_ctl -D $PGDATA -l $PGDATA/server.log -o '-p $PGPORT -k $PGDATA -c listen_addresses=127.0.0.1' -w start" >/dev/null
export AUDIENCE_SYNC_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"

stop_postgres() {
  su postgres -c "$PGBIN/pg_ctl -D $PGDATA -m fast -w stop" >/dev/null 2>&1 || true
  rm -rf "$PGDATA"
}
