#!/bin/sh
# Runs once, when the postgres container initializes its data directory (as the postgres
# superuser, in POSTGRES_DB). Creates the application role the seed's Prisma client uses
# through PgBouncer, and the monitoring role pg-health-exporter runs as: pg_monitor only.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v app_password="$APP_PASSWORD" -v monitor_password="$MONITOR_PASSWORD" <<'SQL'
CREATE ROLE app LOGIN PASSWORD :'app_password';
GRANT ALL ON SCHEMA public TO app;
CREATE ROLE monitor LOGIN PASSWORD :'monitor_password' IN ROLE pg_monitor;
-- The seed's "Enable query stats extension"; the exporter reads it in the DSN's database.
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
-- pg_monitor cannot read sequence positions or the column statistics behind the bloat
-- estimates: let the monitoring role read the application's tables and sequences.
ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON TABLES TO monitor;
ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON SEQUENCES TO monitor;
SQL
