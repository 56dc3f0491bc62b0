#!/usr/bin/env bash
# Entrypoint of the postgres:17 stand-in image, with the official image's interface: on an empty
# PGDATA it runs initdb (superuser POSTGRES_USER with POSTGRES_PASSWORD), appends
# `host all all all <POSTGRES_HOST_AUTH_METHOD or password_encryption>` (scram-sha-256) to
# pg_hba.conf, creates POSTGRES_DB, runs /docker-entrypoint-initdb.d/* against a socket-only
# temporary server started with the same arguments, then execs the command (default `postgres`;
# extra arguments such as `-c config_file=...` pass through). As root it fixes ownership of PGDATA
# and steps down to the postgres user.
set -Eeuo pipefail

# file_env VAR [DEFAULT]: VAR from VAR or the file named by VAR_FILE (exclusive).
file_env() {
  local var="$1" file_var="$1_FILE" value="${2:-}"
  if [[ -n "${!var:-}" && -n "${!file_var:-}" ]]; then
    echo "error: both $var and $file_var are set (but are exclusive)" >&2
    exit 1
  fi
  if [[ -n "${!var:-}" ]]; then
    value="${!var}"
  elif [[ -n "${!file_var:-}" ]]; then
    value="$(<"${!file_var}")"
  fi
  export "$var=$value"
  unset "$file_var"
}

wants_help() {
  local arg
  for arg; do
    case "$arg" in -'?' | --help | --describe-config | -V | --version) return 0 ;; esac
  done
  return 1
}

setup_env() {
  : "${PGDATA:=/var/lib/postgresql/data}"
  export PGDATA
  file_env POSTGRES_PASSWORD
  file_env POSTGRES_USER postgres
  file_env POSTGRES_DB "$POSTGRES_USER"
  file_env POSTGRES_INITDB_ARGS
  : "${POSTGRES_HOST_AUTH_METHOD:=}"
}

create_directories() {
  mkdir -p "$PGDATA"
  chmod 00700 "$PGDATA" || :
  mkdir -p /var/run/postgresql || :
  chmod 03775 /var/run/postgresql || :
  if [[ -n "${POSTGRES_INITDB_WALDIR:-}" ]]; then
    mkdir -p "$POSTGRES_INITDB_WALDIR"
    [[ "$(id -u)" != 0 ]] || find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres '{}' +
    chmod 700 "$POSTGRES_INITDB_WALDIR"
  fi
  if [[ "$(id -u)" == 0 ]]; then
    find "$PGDATA" \! -user postgres -exec chown postgres '{}' +
    find /var/run/postgresql \! -user postgres -exec chown postgres '{}' +
  fi
}

verify_minimum_env() {
  if [[ -z "$POSTGRES_PASSWORD" && "$POSTGRES_HOST_AUTH_METHOD" != trust ]]; then
    cat >&2 <<'EOM'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
       connections without a password. This is *not* recommended.
EOM
    exit 1
  fi
}

init_database_dir() {
  local pwfile extra=()
  [[ -z "${POSTGRES_INITDB_WALDIR:-}" ]] || extra+=(--waldir "$POSTGRES_INITDB_WALDIR")
  # shellcheck disable=SC2206 # POSTGRES_INITDB_ARGS is a word list, as in the official image
  [[ -z "$POSTGRES_INITDB_ARGS" ]] || extra+=($POSTGRES_INITDB_ARGS)
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" "${extra[@]}"
  rm -f "$pwfile"
}

# setup_hba ARGS...: host connections from anywhere with the configured password method.
setup_hba() {
  [[ "${1:-}" != postgres ]] || shift
  local auth
  auth="$(postgres -C password_encryption "$@")"
  : "${POSTGRES_HOST_AUTH_METHOD:=$auth}"
  printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
}

temp_server_start() {
  [[ "${1:-}" != postgres ]] || shift
  set -- "$@" -c listen_addresses='' -p "${PGPORT:-5432}"
  NOTIFY_SOCKET='' PGUSER="${PGUSER:-$POSTGRES_USER}" \
    pg_ctl -D "$PGDATA" -o "$(printf '%q ' "$@")" -w start
}

temp_server_stop() {
  PGUSER="${PGUSER:-postgres}" pg_ctl -D "$PGDATA" -m fast -w stop
}

# process_sql_on DB PSQL-ARGS...: psql over the local socket as POSTGRES_USER.
process_sql_on() {
  local runner=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
  [[ -z "$1" ]] || runner+=(--dbname "$1")
  shift
  PGHOST='' PGHOSTADDR='' "${runner[@]}" "$@"
}

process_sql() { process_sql_on "$POSTGRES_DB" "$@"; }

setup_db() {
  local exists
  exists="$(process_sql_on postgres --set db="$POSTGRES_DB" --tuples-only \
    <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")"
  if [[ -z "${exists//[[:space:]]/}" ]]; then
    process_sql_on postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
}

process_init_files() {
  local f
  for f; do
    case "$f" in
      *.sh)
        if [[ -x "$f" ]]; then
          echo "$0: running $f"
          "$f"
        else
          echo "$0: sourcing $f"
          # shellcheck disable=SC1090 # user-provided init script
          . "$f"
        fi
        ;;
      *.sql) echo "$0: running $f" && process_sql -f "$f" ;;
      *.sql.gz) echo "$0: running $f" && gunzip -c "$f" | process_sql ;;
      *.sql.xz) echo "$0: running $f" && xzcat "$f" | process_sql ;;
      *.sql.zst) echo "$0: running $f" && zstd -dc "$f" | process_sql ;;
      *) echo "$0: ignoring $f" ;;
    esac
  done
}

main() {
  if [[ "${1:-}" == -* ]]; then
    set -- postgres "$@"
  fi
  if [[ "${1:-}" == postgres ]] && ! wants_help "$@"; then
    setup_env
    create_directories
    if [[ "$(id -u)" == 0 ]]; then
      exec gosu postgres "${BASH_SOURCE[0]}" "$@"
    fi
    if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
      verify_minimum_env
      ls /docker-entrypoint-initdb.d/ >/dev/null
      init_database_dir
      setup_hba "$@"
      export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
      temp_server_start "$@"
      setup_db
      shopt -s nullglob
      process_init_files /docker-entrypoint-initdb.d/*
      shopt -u nullglob
      temp_server_stop
      unset PGPASSWORD
      printf '\nPostgreSQL init process complete; ready for start up.\n\n'
    else
      printf '\nPostgreSQL Database directory appears to contain a database; Skipping initialization\n\n'
    fi
  fi
  exec "$@"
}

main "$@"
