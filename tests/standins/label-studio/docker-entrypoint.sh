#!/bin/sh
# Stand-in for Label Studio's deploy/docker-entrypoint.sh, written for the mlox e2e tests
# (see the Dockerfile beside it for what it keeps of upstream's and what it leaves out).
# `label-studio-uwsgi`: the image's production start; anything else runs as given.
set -e
if [ "$1" = "label-studio-uwsgi" ]; then
  if [ -n "${POSTGRE_HOST:-}" ]; then  # (the lock is Postgres'; like upstream, only there)
    echo "=> database migrations"
    python3 /label-studio/label_studio/manage.py locked_migrate
  fi
  echo "=> label-studio init"
  label-studio init -q
  exec uwsgi --ini /label-studio/deploy/uwsgi.ini
fi
exec "$@"
