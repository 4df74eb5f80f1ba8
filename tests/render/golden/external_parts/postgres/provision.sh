#!/bin/sh
# Create or update one role and one database per service. Safe to run any number of times.
set -eu
export PGPASSWORD="$POSTGRES_PASSWORD"
for db in $MLOX_DATABASES; do
  var="MLOX_DB_PASSWORD_$(echo "$db" | tr 'a-z-' 'A-Z_')"
  password="$(printenv "$var")"
  psql -v ON_ERROR_STOP=1 -h postgres -U "$POSTGRES_USER" -d postgres \
    --set=role="$db" --set=password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\gexec
ALTER ROLE :"role" WITH LOGIN PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'role', :'role') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'role')\gexec
SQL
  echo "database $db ready"
done
