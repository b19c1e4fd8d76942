# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# `finish`: check, compress, archive config, checksum, rename into place.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# Read the paths file; write the existing paths (relative to /) NUL-separated
# to $1. Missing paths are logged and skipped.
collect_config_paths() {
  local list="$1" paths_file="${CONFIG[BACKUP_PATHS_FILE]}" line number=0 count=0
  : >"${list}" || die "${EXIT_BACKUP}" "cannot write ${list}"
  while IFS= read -r line || [[ -n "${line}" ]]; do
    number=$((number + 1))
    line="${line%$'\r'}"
    line="${line#"${line%%[! $'\t']*}"}"
    line="${line%"${line##*[! $'\t']}"}"
    [[ -z "${line}" || "${line}" == '#'* ]] && continue
    if [[ "${line}" != /* ]]; then
      die "${EXIT_CONFIG}" "${paths_file}:${number}: not an absolute path: ${line}"
    fi
    if [[ ! -e "${line}" && ! -L "${line}" ]]; then
      log "config path ${line} does not exist; skipped"
      continue
    fi
    local relative="${line#/}"
    printf '%s\0' "${relative:-.}" >>"${list}" || die "${EXIT_BACKUP}" "cannot write ${list}"
    count=$((count + 1))
  done <"${paths_file}"
  log "archiving ${count} config path(s) from ${paths_file}"
}

# Verify the snapshot, compress it, archive config, write meta + manifest,
# then rename everything into place (manifest last).
finish_set() {
  local ts="$1" dir="${STAGING_DIR}/$1"
  if [[ ! -f "${dir}/snapshot.ok" ]]; then
    die "${EXIT_CONFIG}" "no completed snapshot ${ts} in ${STAGING_DIR} (run 'backup.sh snapshot' first)"
  fi
  if set_is_complete "${ts}"; then
    die "${EXIT_CONFIG}" "set ${ts} is already complete"
  fi
  local db_type
  db_type="$(sed -n 's/^db_type=//p' "${dir}/meta.partial")"
  local out="${dir}/out" db_name config_name meta_name sums_name
  config_name="$(set_file config "${ts}")"
  meta_name="$(set_file meta "${ts}")"
  sums_name="$(set_file sums "${ts}")"
  db_name="$(set_file "${db_type}" "${ts}" "${CONFIG[BACKUP_COMPRESSION]}")" || die "${EXIT_INTERNAL}" "unknown db_type in ${dir}/meta.partial"
  rm -rf -- "${out}"
  FAILURE_DIRS+=("${out}")
  mkdir -p -- "${out}/mysql" "${out}/sqlite" "${out}/config" "${out}/manifests" \
    || die "${EXIT_BACKUP}" "cannot create ${out}"
  setup_compressor
  log "set ${ts}: finishing (${COMPRESSOR[0]} level ${CONFIG[BACKUP_COMPRESSION_LEVEL]})"

  case "${db_type}" in
    sqlite)
      # quick_check: the structure of every b-tree page and record, O(N).
      # integrity_check also matches every index entry with its row, O(N log N):
      # half of the whole backup for 10^7 torrents (bench/README.md), for a
      # fault a copy of the pages cannot introduce. restore runs the full check.
      local result
      result="$(sqlite3 -bail -readonly "${dir}/snapshot.db" 'PRAGMA quick_check;' 2>&1 | head -n 5)" || true
      if [[ "${result}" != "ok" ]]; then
        die "${EXIT_VERIFY}" "quick_check of the SQLite snapshot failed: ${result}"
      fi
      sqlite_row_counts "${dir}/snapshot.db" "${dir}/rows"
      compress_to "${dir}/snapshot.db" "${out}/${db_name}"
      ;;
    mysql)
      local tail_bytes
      tail_bytes="$(tail -c 200 -- "${dir}/dump.sql")"
      if [[ ! -s "${dir}/dump.sql" ]] || ! check_dump_marker "${tail_bytes}"; then
        die "${EXIT_VERIFY}" "the staged dump is empty or lacks '${DUMP_MARKER}'"
      fi
      compress_to "${dir}/dump.sql" "${out}/${db_name}" "${dir}/dump.tail"
      if ! check_dump_marker "$(<"${dir}/dump.tail")"; then
        die "${EXIT_VERIFY}" "the compressed dump does not end with '${DUMP_MARKER}'"
      fi
      ;;
  esac

  collect_config_paths "${dir}/paths.list"
  if ! tar --create --file=- --directory=/ --exclude-tag-all="${ROOT_TAG}" \
    --null --verbatim-files-from --files-from="${dir}/paths.list" \
    | "${CONFIG_COMPRESSOR[@]}" >"${out}/${config_name}"; then
    die "${EXIT_BACKUP}" "archiving config files failed (tar/compressor exit ${PIPESTATUS[*]}; see above)"
  fi
  # Counted through a pipe: a listing written to the disk the archive just filled
  # failed as a broken archive (exit 4), not as the full disk it was.
  local entries
  if ! gzip -t -- "${out}/${config_name}" \
    || ! entries="$(tar --list --gzip --file="${out}/${config_name}" | wc -l)"; then
    die "${EXIT_VERIFY}" "the config archive fails gzip -t or tar --list"
  fi
  log "config archive holds ${entries} entries"

  {
    cat -- "${dir}/meta.partial"
    printf 'finished_at=%s\n' "$(utc_now)"
    sed 's/^/rows./' -- "${dir}/rows"
  } >"${out}/${meta_name}" || die "${EXIT_BACKUP}" "cannot write ${meta_name}"

  local relative sum
  local -a payload=("${db_name}" "${config_name}" "${meta_name}")
  for relative in "${payload[@]}"; do
    sum="$(sha256sum <"${out}/${relative}")" || die "${EXIT_BACKUP}" "sha256sum of ${relative} failed"
    printf '%s  %s\n' "${sum%% *}" "${relative}"
  done >"${out}/${sums_name}" || die "${EXIT_BACKUP}" "cannot write ${sums_name}"

  # Data on disk before the names appear; then rename, manifest last.
  sync -- "${out}/${db_name}" "${out}/${config_name}" "${out}/${meta_name}" "${out}/${sums_name}" \
    || die "${EXIT_BACKUP}" "sync failed"
  for relative in "${payload[@]}" "${sums_name}"; do
    mkdir -p -- "${ROOT_DIR}/${relative%/*}" || die "${EXIT_BACKUP}" "cannot create ${ROOT_DIR}/${relative%/*}"
    if [[ -e "${ROOT_DIR}/${relative}" ]]; then
      die "${EXIT_BACKUP}" "${ROOT_DIR}/${relative} already exists; not overwriting"
    fi
    ROLLBACK_FILES+=("${ROOT_DIR}/${relative}")
    mv -- "${out}/${relative}" "${ROOT_DIR}/${relative}" || die "${EXIT_BACKUP}" "cannot rename ${relative} into place"
  done
  sync -f -- "${ROOT_DIR}/${sums_name}" || true
  ROLLBACK_FILES=()
  FAILURE_DIRS=()
  rm -rf -- "${dir}"
  log "set ${ts}: complete (${db_name}, ${config_name}, ${meta_name}, ${sums_name})"
}
