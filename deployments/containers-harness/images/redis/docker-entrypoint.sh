#!/usr/bin/env bash
# Entrypoint of the redis stand-in image, after the official image's: `redis-server` gets
# prepended to flags or a .conf file; as root, /data is given to the redis user and the server runs
# as that user. The official build defaults protected-mode to no (Debian's binary: yes), so it is
# turned off here unless the arguments or the given config file set it.
set -Eeuo pipefail

if [[ "${1:-}" == -* || "${1:-}" == *.conf ]]; then
  set -- redis-server "$@"
fi

if [[ "${1:-}" == redis-server ]]; then
  if [[ "$(id -u)" == 0 ]]; then
    find . \! -user redis -exec chown redis '{}' +
    exec gosu redis "$0" "$@"
  fi
  sets_protected_mode=0
  for arg in "${@:2}"; do
    [[ "$arg" == --protected-mode ]] && sets_protected_mode=1
  done
  if [[ -n "${2:-}" && "$2" != -* && -r "$2" ]] && grep -qiE '^[[:space:]]*protected-mode[[:space:]]' "$2"; then
    sets_protected_mode=1
  fi
  if ((!sets_protected_mode)); then
    set -- "$@" --protected-mode no
  fi
fi

umask 0077
exec "$@"
