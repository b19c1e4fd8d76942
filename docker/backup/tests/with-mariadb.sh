#!/usr/bin/env bash
#
# Run a command with a throw-away MariaDB server on 127.0.0.1 (root, empty
# password), then stop the server and delete its data. Used by the Dockerfile's
# test stage, where no server runs; on a host, run the tests directly against
# the machine's server instead.
#
#   tests/with-mariadb.sh COMMAND [ARG...]
#
# MARIADB_PORT (default 3306) is the port to listen on; the command sees
# MARIADB_HOST/PORT/USER/PASSWORD. Needs root and the mariadb-server package.

set -o errexit -o nounset -o pipefail

readonly PORT="${MARIADB_PORT:-3306}"
readonly START_TIMEOUT_SECONDS=60

log() {
  printf '[with-mariadb] %s\n' "$*" >&2
}

main() {
  (($# > 0)) || {
    log "usage: with-mariadb.sh COMMAND [ARG...]"
    exit 2
  }
  local datadir rundir
  datadir="$(mktemp -d /tmp/mariadb-data.XXXXXX)"
  rundir="$(mktemp -d /tmp/mariadb-run.XXXXXX)"
  chown mysql:mysql "${datadir}" "${rundir}"
  mariadb-install-db --user=mysql --datadir="${datadir}" --skip-test-db \
    --auth-root-authentication-method=normal >"${rundir}/install.log" 2>&1 \
    || {
      cat "${rundir}/install.log" >&2
      exit 1
    }
  mariadbd --no-defaults --user=mysql --datadir="${datadir}" --socket="${rundir}/mysqld.sock" \
    --pid-file="${rundir}/mysqld.pid" --bind-address=127.0.0.1 --port="${PORT}" \
    --skip-name-resolve --innodb-buffer-pool-size=64M --log-error="${rundir}/error.log" &
  local server_pid=$!
  # shellcheck disable=SC2064  # expand now: pid and dirs are fixed
  trap "kill ${server_pid} 2>/dev/null; wait ${server_pid} 2>/dev/null; rm -rf -- '${datadir}' '${rundir}'" EXIT

  local tries
  for ((tries = START_TIMEOUT_SECONDS * 10; tries > 0; tries--)); do
    if mariadb --no-defaults -h127.0.0.1 -P"${PORT}" -uroot -e 'SELECT 1' >/dev/null 2>&1; then
      break
    fi
    kill -0 "${server_pid}" 2>/dev/null || break
    sleep 0.1
  done
  if ((tries == 0)) || ! kill -0 "${server_pid}" 2>/dev/null; then
    cat "${rundir}/error.log" >&2 || true
    log "MariaDB did not start within ${START_TIMEOUT_SECONDS} s"
    exit 1
  fi
  log "MariaDB $(mariadb --no-defaults -h127.0.0.1 -P"${PORT}" -uroot -N -e 'SELECT VERSION()') on 127.0.0.1:${PORT}"

  export MARIADB_HOST=127.0.0.1 MARIADB_PORT="${PORT}" MARIADB_USER=root MARIADB_PASSWORD=""
  local status=0
  "$@" || status=$?
  return "${status}"
}

main "$@"
