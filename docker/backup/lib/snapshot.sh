# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# `snapshot`: the consistent database snapshot of a new set into staging.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# The consistent view of the database exists: log it, and tell the maintenance
# script (on stdout) when this is `backup.sh snapshot`.
SNAPSHOT_SIGNAL="no"
snapshot_is_open() {
  log "consistent snapshot open"
  if [[ "${SNAPSHOT_SIGNAL}" == yes ]]; then
    printf '%s\n' "${SNAPSHOT_OPEN_LINE}"
  fi
}

snapshot_sqlite() {
  local dir="$1" source="${CONFIG[DB_PATH]}"
  if [[ ! -f "${source}" ]]; then
    die "${EXIT_BACKUP}" "SQLite database ${source} does not exist"
  fi
  if [[ ! -r "${source}" ]]; then
    die "${EXIT_BACKUP}" "SQLite database ${source} is not readable by uid $(id -u)"
  fi
  [[ "${source}" == /* ]] || source="${PWD}/${source}"
  log "copying SQLite database ${source} (file copy under a read lock)"
  # cp inside a read transaction: its SHARED lock keeps every writer from
  # changing the file until the copy is done, and cp streams large blocks
  # where the online backup API copies page by page (3-4x slower for a 1 GB
  # database, see bench/README.md). Run in the staging directory, with
  # source.db a symlink to the database, so the .shell line needs no quoting;
  # copy.ok tells that cp succeeded (sqlite3 ignores .shell's exit status).
  ln -s -- "${source}" "${dir}/source.db" || die "${EXIT_BACKUP}" "cannot create ${dir}/source.db"
  local mode
  if ! mode="$(cd -- "${dir}" && sqlite3 -bail -readonly -cmd '.timeout 10000' "${source}" \
    'BEGIN' 'SELECT count(*) FROM sqlite_master' 'PRAGMA journal_mode' \
    '.shell cp -- source.db snapshot.db && : >copy.ok' 'COMMIT')"; then
    die "${EXIT_BACKUP}" "SQLite copy of ${source} failed (see the error above)"
  fi
  if [[ ! -f "${dir}/copy.ok" ]]; then
    die "${EXIT_BACKUP}" "SQLite copy of ${source} failed (see cp's error above)"
  fi
  rm -f -- "${dir}/source.db" "${dir}/copy.ok"
  # Only a rollback-journal database is whole in its main file. A WAL database
  # keeps committed pages in its -wal file, which the copy misses: any other
  # journal mode (or unexpected output) is copied with the online backup API.
  local journal_mode="${mode##*$'\n'}"
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

# Take the consistent database snapshot of set SET_TS (new_set_ts) into staging.
take_snapshot() {
  local started_at="$1"
  local ts="${SET_TS}" dir="${STAGING_DIR}/${SET_TS}"
  log "set ${ts} (UTC): snapshot of the ${CONFIG[DB_TYPE]} database"
  FAILURE_DIRS+=("${dir}")
  mkdir -- "${dir}" || die "${EXIT_BACKUP}" "cannot create ${dir}"
  local snapshot_started_at
  snapshot_started_at="$(utc_now)"
  case "${CONFIG[DB_TYPE]}" in
    mysql) snapshot_mysql "${dir}" ;;
    sqlite)
      snapshot_sqlite "${dir}"
      snapshot_is_open
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
