#!/usr/bin/env bash
# A throwaway PostgreSQL server for the face-gallery tests (scripts/test.sh starts and stops it).
#   scripts/postgres.sh start   install Debian's postgresql if missing, init a cluster, start it,
#                               print its SQLAlchemy URL (the only line on stdout)
#   scripts/postgres.sh stop
# IIS_PG_DIR (default /tmp/iis-postgres-$UID) holds the cluster; IIS_PG_PORT (default 55432).
# The server runs as the `postgres` user when started by root (it refuses to run as root).
set -euo pipefail
DIR=${IIS_PG_DIR:-/tmp/iis-postgres-$(id -u)}
PORT=${IIS_PG_PORT:-55432}

# `|| true`: without /usr/lib/postgresql find fails, and pipefail + set -e would end the script
# here, silently, before it could install PostgreSQL
pgbin() { { find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null || true; } | sort -V | tail -1; }
BIN=$(pgbin)
if [ -z "$BIN" ] || [ ! -x "$BIN/pg_ctl" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing postgresql (apt)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    BIN=$(pgbin)
  else
    echo "the PostgreSQL tests need Debian's postgresql: sudo apt-get install postgresql" >&2
    exit 2
  fi
fi
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-start}" in
  start)
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
      rm -rf "$DIR" && mkdir -p "$DIR"
      [ "$(id -u)" = 0 ] && chown postgres: "$DIR"
      as_owner "$BIN/initdb" -D "$DIR/data" -U iis --auth=trust -E UTF8 >/dev/null
    fi
    if ! as_owner "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
      as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=200" start >&2
    fi
    echo "postgresql+psycopg://iis@127.0.0.1:$PORT/postgres"
    ;;
  stop)
    if [ -f "$DIR/data/PG_VERSION" ]; then
      as_owner "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >&2 || true
    fi
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
