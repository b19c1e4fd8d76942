#!/usr/bin/env bash
# Smoke test of a built backup image: one real backup run, then verify and list,
# with the same mounts as the compose service (docs/reference/backup-format.md).
#
# Usage:
#   scripts/smoke-backup-image.sh IMAGE sqlite
#   scripts/smoke-backup-image.sh IMAGE mysql
#
# sqlite  creates a small SQLite database (with the image's own sqlite3) and
#         backs it up; the container gets no network.
# mysql   seeds and backs up a running MySQL/MariaDB server reached on the
#         host network: DB_HOST (default 127.0.0.1), DB_PORT (3306), DB_USER
#         (root), DB_PASSWORD (empty), DB_NAME (tracker_backup_smoke, created
#         if missing). It (re)creates the table `torrents` in DB_NAME and drops
#         it at the end.
#
# Needs only docker. Everything is written to a temporary directory that is
# removed at the end; the container runs as the calling user's uid:gid.
# Exit 0 when the set is complete and verifies; non-zero otherwise.
set -o errexit -o nounset -o pipefail

readonly ROWS=3
WORK=""          # the temporary directory
MYSQL_IMAGE=""   # set once the MySQL table exists: the image whose client drops it

log() { printf '[smoke %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
  printf '[smoke] error: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -o/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

# A value in backup.conf's grammar: single quotes, an embedded ' as '\''.
conf_quote() {
  local quote="'" escaped="'\\''"
  printf "'%s'" "${1//${quote}/${escaped}}"
}

# mariadb (the image's client) on the host network; MYSQL_PWD keeps the
# password off the command line.
mysql_client() {
  local image="$1"
  shift
  MYSQL_PWD="${DB_PASSWORD:-}" docker run --rm --network host --env MYSQL_PWD \
    --entrypoint mariadb "${image}" --host="${DB_HOST:-127.0.0.1}" --port="${DB_PORT:-3306}" \
    --user="${DB_USER:-root}" "$@"
}

cleanup() {
  if [[ -n "${MYSQL_IMAGE}" ]]; then
    mysql_client "${MYSQL_IMAGE}" --execute="DROP TABLE IF EXISTS \`${DB_NAME:-tracker_backup_smoke}\`.torrents" \
      || log "could not drop the smoke test's table torrents"
  fi
  if [[ -n "${WORK}" ]]; then
    rm -rf -- "${WORK}"
  fi
}

# docker run with the compose service's mounts, as the calling user.
run_image() {
  local work="$1" network="$2"
  shift 2
  local -a command=(
    docker run --rm --user "$(id -u):$(id -g)" --network "${network}"
    --volume "${work}/storage/backup-etc:/etc/backup:ro"
    --volume "${work}/storage:/data/storage:ro"
    --volume "${work}/storage/backup:/backups"
  )
  "${command[@]}" "$@"
}

write_common_files() {
  local work="$1"
  mkdir -p "${work}/storage/tracker/etc" "${work}/storage/tracker/lib/database" \
    "${work}/storage/backup-etc"
  printf '[core.database]\ndriver = "sqlite3"\n' >"${work}/storage/tracker/etc/tracker.toml"
  printf '%s\n' /data/storage/tracker/etc/tracker.toml /data/storage/backup-etc/backup.conf \
    >"${work}/storage/backup-etc/backup-paths.txt"
  printf 'BACKUP_PATHS_FILE=%s\nBACKUP_RETENTION_DAYS=%s\n' \
    "$(conf_quote /etc/backup/backup-paths.txt)" "$(conf_quote 7)" \
    >"${work}/storage/backup-etc/backup.conf"
}

seed_sqlite() {
  local image="$1" work="$2"
  local sql="CREATE TABLE torrents (id INTEGER PRIMARY KEY, info_hash TEXT UNIQUE, completed INTEGER);"
  local i
  for ((i = 1; i <= ROWS; i++)); do
    sql+=" INSERT INTO torrents (info_hash, completed) VALUES ('hash${i}', ${i});"
  done
  docker run --rm --user "$(id -u):$(id -g)" --network none \
    --volume "${work}/storage/tracker/lib/database:/database" \
    --entrypoint sqlite3 "${image}" /database/sqlite3.db "${sql}"
  printf 'DB_TYPE=%s\nDB_PATH=%s\n' "$(conf_quote sqlite)" \
    "$(conf_quote /data/storage/tracker/lib/database/sqlite3.db)" \
    >>"${work}/storage/backup-etc/backup.conf"
}

seed_mysql() {
  local image="$1" work="$2"
  local host="${DB_HOST:-127.0.0.1}" port="${DB_PORT:-3306}" user="${DB_USER:-root}"
  local name="${DB_NAME:-tracker_backup_smoke}"
  local sql="CREATE DATABASE IF NOT EXISTS \`${name}\`; USE \`${name}\`;"
  sql+=" DROP TABLE IF EXISTS torrents;"
  sql+=" CREATE TABLE torrents (id INTEGER PRIMARY KEY AUTO_INCREMENT, info_hash VARCHAR(40) UNIQUE, completed INTEGER);"
  local i
  for ((i = 1; i <= ROWS; i++)); do
    sql+=" INSERT INTO torrents (info_hash, completed) VALUES ('hash${i}', ${i});"
  done
  MYSQL_IMAGE="${image}"
  mysql_client "${image}" --execute="${sql}"
  printf 'DB_TYPE=%s\nDB_HOST=%s\nDB_PORT=%s\nDB_USER=%s\nDB_PASSWORD=%s\nDB_NAME=%s\n' \
    "$(conf_quote mysql)" "$(conf_quote "${host}")" "$(conf_quote "${port}")" \
    "$(conf_quote "${user}")" "$(conf_quote "${DB_PASSWORD:-}")" "$(conf_quote "${name}")" \
    >>"${work}/storage/backup-etc/backup.conf"
}

check_set() {
  local work="$1" database="$2" ts="$3"
  local backups="${work}/storage/backup"
  # The database file is .gz or .zst, by the image's BACKUP_COMPRESSION default.
  local -a databases=("${backups}/${database}/${database}_${ts}."*)
  if ((${#databases[@]} != 1)) || [[ ! -s "${databases[0]}" ]]; then
    die "the set ${ts} has no single ${database} file"
  fi
  local -a expected=("config/config_${ts}.tar.gz" "manifests/set_${ts}.sha256")
  local file
  for file in "${expected[@]}"; do
    [[ -s "${backups}/${file}" ]] || die "the set ${ts} has no ${file}"
  done
  grep -qx "rows.torrents=${ROWS}" "${backups}/manifests/set_${ts}.meta" \
    || die "the set ${ts} did not record ${ROWS} rows of torrents"
}

main() {
  (($# == 2)) || usage
  local image="$1" database="$2" network
  case "${database}" in
    sqlite) network="none" ;;
    mysql) network="host" ;;
    *) usage ;;
  esac
  docker image inspect "${image}" >/dev/null 2>&1 || die "no local image ${image}"

  WORK="$(mktemp -d)"
  trap cleanup EXIT
  local work="${WORK}"
  write_common_files "${work}"
  "seed_${database}" "${image}" "${work}"

  log "${image}: backup run (${database})"
  local output ts
  output="$(run_image "${work}" "${network}" "${image}" run)"
  ts="$(tail -n 1 <<<"${output}")"
  [[ "${ts}" =~ ^[0-9]{8}_[0-9]{6}$ ]] || die "run printed no set timestamp (got '${ts}')"
  check_set "${work}" "${database}" "${ts}"

  log "${image}: verify and list set ${ts}"
  run_image "${work}" "${network}" "${image}" verify latest >/dev/null
  run_image "${work}" "${network}" "${image}" list | grep -q "^${ts} complete " \
    || die "list does not show the set ${ts} as complete"
  log "${image}: ${database} backup set ${ts} is complete and verified"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
