# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# The commands (cmd_*): what each of backup.sh's commands runs, in order.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# --- commands -----------------------------------------------------------------

# The start of `snapshot` and `run`: config, BACKUP_ROOT, the lock, a new set's
# TS (SET_TS) and no stale staging.
begin_new_set() {
  load_config "${CONFIG_PATH}"
  validate_config backup
  local -a root_owned
  mapfile -t root_owned < <(root_dirs)
  refuse_root_in_foreign_dirs "${root_owned[@]}"
  prepare_root
  acquire_lock
  ON_ERROR_EXIT="${EXIT_BACKUP}"
  new_set_ts
  clean_stale_staging
}

cmd_snapshot() {
  local started_at gate_seconds=""
  if (($# > 0)); then
    if (($# != 2)) || [[ "$1" != --gate || ! "$2" =~ ^[1-9][0-9]{0,5}$ ]]; then
      die "${EXIT_CONFIG}" "usage: backup.sh snapshot [--gate SECONDS] (SECONDS: 1-999999)"
    fi
    gate_seconds="$2"
  fi
  started_at="$(utc_now)"
  begin_new_set
  SNAPSHOT_SIGNAL="yes"
  prepare_snapshot
  [[ -z "${gate_seconds}" ]] || wait_for_go "${gate_seconds}"
  take_snapshot "${started_at}"
  printf '%s\n' "${SET_TS}"
}

# Options of `run` and `finish`: --no-prune sets PRUNE=no; other arguments
# are left in PRUNE_ARGS. The restore's safety backup passes --no-prune, so it
# can never delete the (possibly old) set it is about to restore.
PRUNE="yes"
declare -ga PRUNE_ARGS=()
parse_prune_option() {
  PRUNE="yes"
  PRUNE_ARGS=()
  while (($# > 0)); do
    case "$1" in
      --no-prune) PRUNE="no" ;;
      -*) die "${EXIT_CONFIG}" "unknown option $1 (see --help)" ;;
      *) PRUNE_ARGS+=("$1") ;;
    esac
    shift
  done
}

# Retention after a new set, unless --no-prune was given.
retention_unless_no_prune() {
  if [[ "${PRUNE}" == "no" ]]; then
    log "retention: skipped (--no-prune); no set was deleted"
    return 0
  fi
  apply_retention "${CONFIG[BACKUP_RETENTION_DAYS]}"
}

cmd_finish() {
  parse_prune_option "$@"
  ((${#PRUNE_ARGS[@]} == 1)) || die "${EXIT_CONFIG}" "usage: backup.sh finish TS [--no-prune]"
  local ts="${PRUNE_ARGS[0]}"
  [[ "${ts}" =~ ${TS_REGEX} ]] || die "${EXIT_CONFIG}" "finish: '${ts}' is not a set name (YYYYMMDD_HHMMSS)"
  load_config "${CONFIG_PATH}"
  validate_config backup
  local -a root_owned
  mapfile -t root_owned < <(root_dirs)
  refuse_root_in_foreign_dirs "${root_owned[@]}"
  prepare_root
  acquire_lock
  ON_ERROR_EXIT="${EXIT_BACKUP}"
  # Nobody retries a failed finish (the maintenance script's next run takes a new
  # snapshot): its snapshot goes with it, and never keeps a full disk full.
  FAILURE_DIRS+=("${STAGING_DIR}/${ts}")
  finish_set "${ts}"
  retention_unless_no_prune
  printf '%s\n' "${ts}"
}

cmd_run() {
  parse_prune_option "$@"
  ((${#PRUNE_ARGS[@]} == 0)) || die "${EXIT_CONFIG}" "usage: backup.sh run [--no-prune]"
  local started_at
  started_at="$(utc_now)"
  begin_new_set
  prepare_snapshot
  take_snapshot "${started_at}"
  # Nobody retries the finish of a failed run: drop the whole staging then.
  FAILURE_DIRS+=("${STAGING_DIR}/${SET_TS}")
  finish_set "${SET_TS}"
  retention_unless_no_prune
  printf '%s\n' "${SET_TS}"
}

# list [--records [--checksums]]: for people, or as list_records (list.sh).
cmd_list() {
  local ts state records="no" checksums="no"
  local -a files=()
  while (($# > 0)); do
    case "$1" in
      --records) records="yes" ;;
      --checksums) checksums="yes" ;;
      *) die "${EXIT_CONFIG}" "usage: backup.sh list [--records [--checksums]]" ;;
    esac
    shift
  done
  [[ "${checksums}" == no || "${records}" == yes ]] || die "${EXIT_CONFIG}" "list: --checksums needs --records"
  [[ -d "${ROOT_DIR}" ]] || die "${EXIT_CONFIG}" "BACKUP_ROOT ${ROOT_DIR} does not exist"
  if [[ "${records}" == yes ]]; then
    list_records "${checksums}"
    return 0
  fi
  while IFS= read -r ts; do
    mapfile -t files < <(set_files "${ts}")
    state="incomplete"
    set_is_complete "${ts}" && state="complete"
    printf '%s %s %s\n' "${ts}" "${state}" "${files[*]}"
  done < <(all_set_timestamps)
}

cmd_verify() {
  [[ -d "${ROOT_DIR}" ]] || die "${EXIT_CONFIG}" "BACKUP_ROOT ${ROOT_DIR} does not exist"
  ON_ERROR_EXIT="${EXIT_VERIFY}"
  resolve_set "$1" "${EXIT_VERIFY}"
  verify_set "${SET_TS}"
}

cmd_restore() {
  local wanted="" yes="no" only="all"
  while (($# > 0)); do
    case "$1" in
      --yes) yes="yes" ;;
      --only)
        (($# > 1)) || die "${EXIT_CONFIG}" "restore: --only needs db or config"
        only="$2"
        shift
        ;;
      --only=*) only="${1#--only=}" ;;
      -*) die "${EXIT_CONFIG}" "restore: unknown option $1" ;;
      *)
        [[ -z "${wanted}" ]] || die "${EXIT_CONFIG}" "restore: more than one set given"
        wanted="$1"
        ;;
    esac
    shift
  done
  [[ "${only}" == all || "${only}" == db || "${only}" == config ]] \
    || die "${EXIT_CONFIG}" "restore: --only takes db or config, not '${only}'"
  if [[ "${yes}" != "yes" ]]; then
    die "${EXIT_REFUSED}" "restore replaces live data; re-run with --yes to confirm (stop the tracker first)"
  fi
  load_config "${CONFIG_PATH}"
  validate_config restore
  [[ -d "${ROOT_DIR}" ]] || die "${EXIT_REFUSED}" "BACKUP_ROOT ${ROOT_DIR} does not exist"
  local sqlite_target="${RESTORE_DB_PATH:-${CONFIG[DB_PATH]:-}}"
  local -a root_owned
  mapfile -t root_owned < <(root_dirs)
  refuse_root_in_foreign_dirs "${root_owned[@]}"
  # The database's directory and the config's destination, all the way from /
  # (tar extracts through links on the way).
  [[ "${sqlite_target}" != */* ]] || refuse_root_in_foreign_path "${sqlite_target%/*}"
  refuse_root_in_foreign_path "${RESTORE_CONFIG_ROOT:-${ROOT_DIR}/restore}"
  acquire_lock
  resolve_set "${wanted:-latest}" "${EXIT_REFUSED}"
  local ts="${SET_TS}"
  log "restoring set ${ts} (${only})"
  verify_set "${ts}"
  ON_ERROR_EXIT="${EXIT_BACKUP}"
  local meta config_file db_file
  meta="${ROOT_DIR}/$(set_file meta "${ts}")"
  config_file="$(set_file config "${ts}")"
  if [[ "${only}" != config ]]; then
    # The set's database file, whichever its compression (verify_set allows one).
    local relative found="no" compression
    for compression in gzip zstd; do
      for relative in "${VERIFIED_FILES[@]}"; do
        if [[ "${relative}" == "$(set_file "${CONFIG[DB_TYPE]}" "${ts}" "${compression}")" ]]; then
          found="yes"
          db_file="${relative}"
        fi
      done
    done
    if [[ "${found}" != "yes" ]]; then
      die "${EXIT_REFUSED}" "set ${ts} has no ${CONFIG[DB_TYPE]} backup (DB_TYPE=${CONFIG[DB_TYPE]} in ${CONFIG_PATH})"
    fi
    case "${CONFIG[DB_TYPE]}" in
      sqlite) restore_sqlite "${ts}" "${db_file}" "${meta}" ;;
      mysql) restore_mysql "${ts}" "${db_file}" "${meta}" ;;
    esac
  fi
  if [[ "${only}" != db ]]; then
    restore_config "${ts}" "${config_file}"
  fi
  log "restore of set ${ts} done"
}
