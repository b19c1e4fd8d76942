# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# The set layout: every file name of a set, and which sets exist (the one owner).
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# Final name of a set's database file, relative to BACKUP_ROOT: TYPE TS
# [COMPRESSION] (gzip, the default: .gz; zstd: .zst).
db_file_name() {
  local db_type="$1" ts="$2" suffix="gz"
  [[ "${3:-gzip}" == gzip ]] || suffix="zst"
  case "${db_type}" in
    mysql) printf 'mysql/mysql_%s.sql.%s' "${ts}" "${suffix}" ;;
    sqlite) printf 'sqlite/sqlite_%s.db.%s' "${ts}" "${suffix}" ;;
    *) return 1 ;;
  esac
}

# Every file a set TS may hold, relative to BACKUP_ROOT, the checksum manifest
# (what makes a set complete) last. The one list of the set layout in the image
# (lib/tracker_deployer/remote/backups.py set_layout is Python's; a unit test
# holds the two to each other).
set_layout() {
  local ts="$1"
  printf '%s\n' "mysql/mysql_${ts}.sql.gz" "mysql/mysql_${ts}.sql.zst" \
    "sqlite/sqlite_${ts}.db.gz" "sqlite/sqlite_${ts}.db.zst" "config/config_${ts}.tar.gz" \
    "manifests/set_${ts}.meta" "manifests/set_${ts}.sha256"
}

# Every final-named file of set $1 that exists (relative paths, one per line).
set_files() {
  local ts="$1" relative
  while IFS= read -r relative; do
    if [[ -f "${ROOT_DIR}/${relative}" ]]; then
      printf '%s\n' "${relative}"
    fi
  done < <(set_layout "${ts}")
}

# All set timestamps found under BACKUP_ROOT (exact file name patterns only),
# sorted oldest first.
all_set_timestamps() {
  local path name
  local -A seen=()
  for path in "${ROOT_DIR}"/mysql/mysql_*.sql.gz "${ROOT_DIR}"/sqlite/sqlite_*.db.gz \
    "${ROOT_DIR}"/mysql/mysql_*.sql.zst "${ROOT_DIR}"/sqlite/sqlite_*.db.zst \
    "${ROOT_DIR}"/config/config_*.tar.gz "${ROOT_DIR}"/manifests/set_*.meta \
    "${ROOT_DIR}"/manifests/set_*.sha256; do
    [[ -f "${path}" ]] || continue
    name="${path##*/}"
    name="${name#*_}"
    name="${name%%.*}"
    if [[ "${name}" =~ ${TS_REGEX} ]]; then
      seen["${name}"]=1
    fi
  done
  if ((${#seen[@]} > 0)); then
    printf '%s\n' "${!seen[@]}" | sort
  fi
}

set_is_complete() {
  [[ -f "${ROOT_DIR}/manifests/set_$1.sha256" ]]
}

latest_complete_set() {
  local ts latest=""
  while IFS= read -r ts; do
    if set_is_complete "${ts}"; then
      latest="${ts}"
    fi
  done < <(all_set_timestamps)
  printf '%s' "${latest}"
}
