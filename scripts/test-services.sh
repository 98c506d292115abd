#!/usr/bin/env bash
# Make sure the tests have a Postgres and a Redis: start the machine's own servers when they are
# installed but stopped. When neither is installed, the tests start embedded ones themselves
# (tests/embedded.py), so this script never fails for lack of them.
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ -z "${NOTIFY_TEST_DATABASE_URL:-}" ] && ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "starting the local PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  else
    echo "no local PostgreSQL: the tests will start an embedded one" >&2
  fi
fi

if [ -z "${NOTIFY_TEST_REDIS_URL:-}" ] && ! port_open 6379; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "starting the local Redis" >&2
    mkdir -p /tmp/notify-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/notify-redis --logfile /tmp/notify-redis/redis.log || true
  else
    echo "no local Redis: the tests will start an embedded one" >&2
  fi
fi
for _ in $(seq 1 50); do
  { [ -n "${NOTIFY_TEST_DATABASE_URL:-}" ] || port_open 5432 || ! command -v pg_ctlcluster >/dev/null; } && break
  sleep 0.2
done
exit 0
