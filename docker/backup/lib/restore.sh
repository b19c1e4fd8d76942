# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# `restore`: the database (SQLite or MySQL) and config files of a verified set.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# --- restore ------------------------------------------------------------------

restore_sqlite() {
  local ts="$1" file="$2" meta="$3"
  local target="${RESTORE_DB_PATH:-${CONFIG[DB_PATH]}}"
  local target_dir="${target%/*}" base="${target##*/}"
  [[ "${target}" == */* ]] || target_dir="."
  if [[ ! -d "${target_dir}" || ! -w "${target_dir}" ]]; then
    die "${EXIT_BACKUP}" "cannot write to ${target_dir} (directory of ${target})"
  fi
  local temporary="${target_dir}/.${base}.restore-${ts}.tmp"
  CLEANUP_FILES+=("${temporary}")
  log "restoring SQLite ${target} from ${file}"
  decompress "${ROOT_DIR}/${file}" >"${temporary}" || die "${EXIT_BACKUP}" "cannot write ${temporary}"
  local result
  result="$(sqlite3 -bail -readonly "${temporary}" 'PRAGMA integrity_check;' 2>&1 | head -n 5)" || true
  if [[ "${result}" != "ok" ]]; then
    die "${EXIT_VERIFY}" "integrity_check of the restored database failed: ${result}"
  fi
  # Registered first: a count that fails (a full disk) leaves none of them beside
  # the live database.
  CLEANUP_FILES+=("${temporary}.rows" "${temporary}.rows.work" "${temporary}.rows.work.counts")
  sqlite_row_counts "${temporary}" "${temporary}.rows"
  compare_row_counts "${meta}" "${temporary}.rows"
  local stamp aside suffix
  stamp="$(date -u '+%Y%m%d_%H%M%S')"
  aside="${target}.before-restore-${stamp}"
  if [[ -e "${aside}" ]]; then
    die "${EXIT_BACKUP}" "${aside} already exists; retry in a second"
  fi
  if [[ -e "${target}" ]]; then
    chmod --reference="${target}" -- "${temporary}"
    if [[ "$(id -u)" == 0 ]]; then
      chown --reference="${target}" -- "${temporary}"
    fi
    # Keep the old database aside; a hard link keeps the target in place until
    # the atomic rename below.
    ln -- "${target}" "${aside}" 2>/dev/null || cp -p -- "${target}" "${aside}" \
      || die "${EXIT_BACKUP}" "cannot keep the old database aside as ${aside}"
    log "the old database is kept as ${aside}"
  fi
  # Its journals go aside too, before the rename, and even when the database file
  # itself is gone (deleted by hand after a crash): SQLite would replay a -wal left
  # here on the restored file. Should a move or the rename fail, the journals go
  # back next to the old database, which stays in place: its committed
  # transactions may be in its -wal still. A signal waits until the journals and
  # the database are where they belong together (the old ones or the new one).
  local -a moved=()
  defer_signals
  for suffix in -wal -shm -journal; do
    if [[ -e "${target}${suffix}" || -L "${target}${suffix}" ]]; then
      if ! mv -- "${target}${suffix}" "${aside}${suffix}"; then
        journals_back "${target}" "${aside}" "${moved[@]}"
        die "${EXIT_BACKUP}" "cannot move ${target}${suffix} aside; nothing was restored"
      fi
      moved+=("${suffix}")
      log "its ${suffix#-} is kept as ${aside}${suffix}"
    fi
  done
  if ! mv -f -- "${temporary}" "${target}"; then
    journals_back "${target}" "${aside}" "${moved[@]}"
    die "${EXIT_BACKUP}" "cannot rename the restored database into place; nothing was restored"
  fi
  log "SQLite database ${target} restored from set ${ts}"
  resume_signals
}

# journals_back TARGET ASIDE SUFFIX...: move the journals back from ASIDE to TARGET.
journals_back() {
  local target="$1" aside="$2" suffix
  shift 2
  for suffix in "$@"; do
    mv -- "${aside}${suffix}" "${target}${suffix}" \
      || log "cannot move ${aside}${suffix} back to ${target}${suffix}: move it back before the tracker starts"
  done
}

restore_mysql() {
  local ts="$1" file="$2" meta="$3"
  mkdir -p -- "${STAGING_DIR}" || die "${EXIT_BACKUP}" "cannot create ${STAGING_DIR}"
  setup_mysql "${STAGING_DIR}"
  if ! "${MYSQL_CLIENT[@]}" --batch -e 'SELECT 1' >/dev/null; then
    die "${EXIT_BACKUP}" "cannot connect to ${CONFIG[DB_NAME]} at ${CONFIG[DB_HOST]}:${CONFIG[DB_PORT]} (see the client's error above)"
  fi
  log "restoring MySQL database ${CONFIG[DB_NAME]} at ${CONFIG[DB_HOST]}:${CONFIG[DB_PORT]} from ${file}"
  drop_tables_not_in_set "${meta}"
  if ! decompress "${ROOT_DIR}/${file}" | "${MYSQL_CLIENT[@]}" --batch; then
    die "${EXIT_BACKUP}" "loading the dump failed (decompress/mariadb exit ${PIPESTATUS[*]}; see above)"
  fi
  local counts_file="${STAGING_DIR}/restore-rows.$$"
  CLEANUP_FILES+=("${counts_file}")
  mysql_row_counts "${counts_file}"
  compare_row_counts "${meta}" "${counts_file}"
  log "MySQL database ${CONFIG[DB_NAME]} restored from set ${ts}"
}

# The config archive of set $1 ($2): by default into BACKUP_ROOT/restore-TS,
# extracted into a fresh directory next to it and renamed into place only when
# whole (a failed or killed extraction leaves no file under the final name; an
# earlier restore-TS is kept aside, never deleted). RESTORE_CONFIG_ROOT, the
# operator's own directory, is extracted into in place.
restore_config() {
  local ts="$1" file="$2" destination partial stamp
  if [[ -n "${RESTORE_CONFIG_ROOT:-}" ]]; then
    destination="${RESTORE_CONFIG_ROOT}"
    mkdir -p -- "${destination}" || die "${EXIT_BACKUP}" "cannot create ${destination}"
    log "extracting ${file} into ${destination} (in place: a failed extraction can leave part of it there)"
    tar --extract --gzip --no-same-owner --file="${ROOT_DIR}/${file}" --directory="${destination}" \
      || die "${EXIT_BACKUP}" "extracting ${file} failed"
    log "config files of set ${ts} restored under ${destination}"
    return 0
  fi
  destination="${ROOT_DIR}/restore-${ts}"
  partial="$(mktemp -d "${destination}.partial.XXXXXX")" || die "${EXIT_BACKUP}" "cannot create a directory next to ${destination}"
  FAILURE_DIRS+=("${partial}")
  log "extracting ${file} into ${destination}"
  tar --extract --gzip --no-same-owner --file="${ROOT_DIR}/${file}" --directory="${partial}" \
    || die "${EXIT_BACKUP}" "extracting ${file} failed (nothing was left under ${destination})"
  chmod 0755 -- "${partial}"
  if [[ -e "${destination}" || -L "${destination}" ]]; then
    stamp="$(date -u '+%Y%m%d_%H%M%S')"
    mv -T -- "${destination}" "${destination}.before-${stamp}" \
      || die "${EXIT_BACKUP}" "cannot move the earlier ${destination} aside"
    log "the earlier ${destination} is kept as ${destination}.before-${stamp}"
  fi
  mv -T -- "${partial}" "${destination}" || die "${EXIT_BACKUP}" "cannot rename the extracted files to ${destination}"
  log "config files of set ${ts} restored under ${destination}"
}
