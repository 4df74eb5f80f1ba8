#!/bin/sh
# Create or update one role and one database per service on the external server. Safe to run any number of times.
set -eu
export PGPASSWORD="$EXTERNAL_POSTGRES_PASSWORD"
for db in $MLOX_DATABASES; do
  var="MLOX_DB_PASSWORD_$(echo "$db" | tr 'a-z-' 'A-Z_')"
  password="$(printenv "$var")"
  psql -v ON_ERROR_STOP=1 -h "$MLOX_PGHOST" -p "$MLOX_PGPORT" -U "$MLOX_PGUSER" -d "$MLOX_PGDATABASE" \
    --set=role="$db" --set=password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\gexec
ALTER ROLE :"role" WITH LOGIN PASSWORD :'password';
SELECT format('GRANT %I TO %I', :'role', current_user) WHERE NOT pg_has_role(current_user, :'role', 'MEMBER')\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'role', :'role') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'role')\gexec
SQL
  echo "database $db ready"
done
