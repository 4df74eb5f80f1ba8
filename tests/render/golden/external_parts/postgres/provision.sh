#!/bin/sh
# Set the superuser's password, create or update one role and one database per service.
# Safe to run any number of times. Over the Unix socket, which the image trusts: no old
# password is needed, so kept data takes this stack's passwords.
set -eu
export PGHOST=/var/run/postgresql
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres --set=role="$POSTGRES_USER" \
  --set=password="$POSTGRES_PASSWORD" <<'SQL'
ALTER ROLE :"role" WITH PASSWORD :'password';
SQL
echo "superuser $POSTGRES_USER ready"
for db in $MLOX_DATABASES; do
  var="MLOX_DB_PASSWORD_$(echo "$db" | tr 'a-z-' 'A-Z_')"
  password="$(printenv "$var")"
  psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \
    --set=role="$db" --set=password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\gexec
ALTER ROLE :"role" WITH LOGIN PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'role', :'role') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'role')\gexec
SQL
  echo "database $db ready"
done
