# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# `snapshot`: the consistent database snapshot of a new set into staging.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# The consistent view of the database exists: tell the maintenance script (on
# stdout) when this is `backup.sh snapshot`, then log it (the line first: the
# tracker waits for it).
SNAPSHOT_SIGNAL="no"
snapshot_is_open() {
  if [[ "${SNAPSHOT_SIGNAL}" == yes ]]; then
    printf '%s\n' "${SNAPSHOT_OPEN_LINE}"
  fi
  log "consistent snapshot open"
}

# Before the tracker is stopped (prepare_snapshot): check the database file,
# link it as source.db into the staging directory $1, and start the sqlite3
# that will copy it, reading its commands from a FIFO (snapshot_sqlite): its
# start-up is then not part of the window. Until its BEGIN it only holds the
# file open, without a lock.
SQLITE_SOURCE=""
SQLITE_PID=""
SQLITE_IN_FD=""
prepare_sqlite() {
  local dir="$1" source="${CONFIG[DB_PATH]}"
  if [[ ! -f "${source}" ]]; then
    die "${EXIT_BACKUP}" "SQLite database ${source} does not exist"
  fi
  if [[ ! -r "${source}" ]]; then
    die "${EXIT_BACKUP}" "SQLite database ${source} is not readable by uid $(id -u)"
  fi
  [[ "${source}" == /* ]] || source="${PWD}/${source}"
  SQLITE_SOURCE="${source}"
  log "SQLite database ${source}: the snapshot is a file copy under a read lock"
  ln -s -- "${source}" "${dir}/source.db" || die "${EXIT_BACKUP}" "cannot create ${dir}/source.db"
  mkfifo -m 0600 -- "${dir}/sqlite.in" || die "${EXIT_BACKUP}" "cannot create a FIFO in ${dir}"
  (cd -- "${dir}" && exec sqlite3 -bail -readonly -cmd '.timeout 10000' "${source}" <sqlite.in >mode) &
  SQLITE_PID=$!
  BACKGROUND_PIDS+=("${SQLITE_PID}")
  exec {SQLITE_IN_FD}>"${dir}/sqlite.in"
  rm -f -- "${dir}/sqlite.in"
}

# A WAL database whose -wal file is gone was closed cleanly by its last
# connection (the tracker, stopped for the snapshot): it is whole in its main
# file, and nothing changes that file without writing a -wal file first. SQLite
# cannot open it where it cannot create the -shm file, as on the backup
# container's read-only mount of the tracker's storage: a copy of the file is
# the snapshot. (Byte 18 of the header, the write version, is 2 in WAL mode.)
wal_closed_on_read_only() {
  local source="$1" version
  [[ ! -e "${source}-wal" && ! -w "${source%/*}" ]] || return 1
  version="$(od -An -tu1 -j18 -N1 -- "${source}")" || return 1
  [[ "${version//[[:space:]]/}" == 2 ]]
}

# cp inside a read transaction: its SHARED lock keeps every writer from changing
# the file until the copy is done, and cp streams large blocks where the online
# backup API copies page by page (3-4x slower for a 1 GB database, see
# bench/README.md). Run in the staging directory, with source.db a symlink to
# the database (prepare_sqlite), so the .shell line needs no quoting; copy.ok
# tells that cp succeeded (sqlite3 ignores .shell's exit status). Nothing
# starts here but the copy's sh and cp: this is the window.
snapshot_sqlite() {
  local dir="$1" source="${SQLITE_SOURCE}" line journal_mode="" rc=0
  if wal_closed_on_read_only "${source}"; then
    exec {SQLITE_IN_FD}>&- # the prepared sqlite3 reads no command and ends
    wait "${SQLITE_PID}" || true
    log "WAL database closed cleanly (no ${source##*/}-wal) on a read-only mount: copying its file"
    cp -- "${dir}/source.db" "${dir}/snapshot.db" \
      || die "${EXIT_BACKUP}" "SQLite copy of ${source} failed (see cp's error above)"
    return 0
  fi
  # A subshell: should sqlite3 be gone, SIGPIPE ends the subshell only.
  (printf '%s\n' 'BEGIN;' 'SELECT count(*) FROM sqlite_master;' 'PRAGMA journal_mode;' \
    '.shell cp -- source.db snapshot.db && : >copy.ok' 'COMMIT;' >&"${SQLITE_IN_FD}") 2>/dev/null || rc=$?
  exec {SQLITE_IN_FD}>&-
  wait "${SQLITE_PID}" || rc=$?
  if ((rc != 0)); then
    die "${EXIT_BACKUP}" "SQLite copy of ${source} failed (see the error above)"
  fi
  if [[ ! -f "${dir}/copy.ok" ]]; then
    die "${EXIT_BACKUP}" "SQLite copy of ${source} failed (see cp's error above)"
  fi
  # The last line of sqlite3's output: the journal mode.
  while IFS= read -r line || [[ -n "${line}" ]]; do journal_mode="${line}"; done <"${dir}/mode"
  # Only a rollback-journal database is whole in its main file. A WAL database
  # keeps committed pages in its -wal file, which the copy misses: any other
  # journal mode (or unexpected output) is copied with the online backup API.
  case "${journal_mode}" in
    delete | truncate | persist) ;;
    *)
      log "journal mode '${journal_mode}': copying with the online backup API instead"
      rm -f -- "${dir}/snapshot.db"
      if ! (cd -- "${dir}" && sqlite3 -bail -readonly -cmd '.timeout 10000' "${source}" '.backup snapshot.db'); then
        die "${EXIT_BACKUP}" "SQLite backup of ${source} failed (see the error above)"
      fi
      ;;
  esac
}

# Everything of set SET_TS (new_set_ts) that needs no stopped tracker: its
# staging directory and the engine's preparation (prepare_mysql, prepare_sqlite).
prepare_snapshot() {
  local dir="${STAGING_DIR}/${SET_TS}"
  log "set ${SET_TS} (UTC): snapshot of the ${CONFIG[DB_TYPE]} database"
  FAILURE_DIRS+=("${dir}")
  mkdir -- "${dir}" || die "${EXIT_BACKUP}" "cannot create ${dir}"
  case "${CONFIG[DB_TYPE]}" in
    mysql) prepare_mysql "${dir}" ;;
    sqlite) prepare_sqlite "${dir}" ;;
  esac
}

# `snapshot --gate SECONDS`: SNAPSHOT_READY_LINE on stdout, then one line from
# stdin. Only SNAPSHOT_GO_LINE goes on; EOF (the maintenance script is gone),
# another line or SECONDS without a line end the run with EXIT_BACKUP: the
# EXIT trap removes the staging directory and the lock goes with the process.
wait_for_go() {
  local seconds="$1" line="" rc=0
  printf '%s\n' "${SNAPSHOT_READY_LINE}"
  log "ready; waiting for '${SNAPSHOT_GO_LINE}' on stdin (at most ${seconds} s)"
  IFS= read -r -t "${seconds}" line || rc=$?
  if ((rc > 128)); then
    die "${EXIT_BACKUP}" "no '${SNAPSHOT_GO_LINE}' on stdin within ${seconds} s; no snapshot taken"
  fi
  if ((rc != 0)); then
    die "${EXIT_BACKUP}" "stdin ended before '${SNAPSHOT_GO_LINE}'; no snapshot taken"
  fi
  if [[ "${line}" != "${SNAPSHOT_GO_LINE}" ]]; then
    die "${EXIT_BACKUP}" "expected '${SNAPSHOT_GO_LINE}' on stdin, got another line; no snapshot taken"
  fi
}

# Take the consistent database snapshot of set SET_TS into staging (after
# prepare_snapshot).
take_snapshot() {
  local started_at="$1"
  local ts="${SET_TS}" dir="${STAGING_DIR}/${SET_TS}"
  local snapshot_started_at
  TZ=UTC0 printf -v snapshot_started_at '%(%Y-%m-%dT%H:%M:%SZ)T' -1
  case "${CONFIG[DB_TYPE]}" in
    mysql) snapshot_mysql "${dir}" ;;
    sqlite)
      snapshot_sqlite "${dir}"
      snapshot_is_open
      rm -f -- "${dir}/source.db" "${dir}/copy.ok" "${dir}/mode"
      ;;
  esac
  {
    printf 'set=%s\n' "${ts}"
    printf 'db_type=%s\n' "${CONFIG[DB_TYPE]}"
    printf 'tool_version=%s\n' "$(tool_version)"
    printf 'started_at=%s\n' "${started_at}"
    printf 'snapshot_started_at=%s\n' "${snapshot_started_at}"
    printf 'snapshot_finished_at=%s\n' "$(utc_now)"
  } >"${dir}/meta.partial" || die "${EXIT_BACKUP}" "cannot write ${dir}/meta.partial"
  : >"${dir}/snapshot.ok" || die "${EXIT_BACKUP}" "cannot write ${dir}/snapshot.ok"
  # From here on the snapshot waits for `finish TS`, even if this run fails.
  FAILURE_DIRS=()
  log "set ${ts}: snapshot done in staging"
}
