# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# The set layout: every file name of a set, and which sets exist (the one owner).
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# The one function that names a set's files: set_file KIND TS [COMPRESSION]
# prints the file's name relative to BACKUP_ROOT. KIND: mysql or sqlite (the
# database file; COMPRESSION gzip: .gz, or zstd, the default: .zst), config
# (the config archive), meta, or sums (the checksum manifest, what makes a set
# complete). TS '*' gives the glob of every such file.
# (lib/tracker_deployer/backup_layout.py is Python's owner; a unit test holds
# the two to each other.)
set_file() {
  local kind="$1" ts="$2" suffix="gz"
  [[ "${3:-}" == gzip ]] || suffix="zst"
  case "${kind}" in
    mysql) printf 'mysql/mysql_%s.sql.%s' "${ts}" "${suffix}" ;;
    sqlite) printf 'sqlite/sqlite_%s.db.%s' "${ts}" "${suffix}" ;;
    config) printf 'config/config_%s.tar.gz' "${ts}" ;;
    meta) printf 'manifests/set_%s.meta' "${ts}" ;;
    sums) printf 'manifests/set_%s.sha256' "${ts}" ;;
    *) return 1 ;;
  esac
}

# Every file a set TS may hold, relative to BACKUP_ROOT, the checksum manifest
# (what makes a set complete) last.
set_layout() {
  local ts="$1" kind compression
  for kind in mysql sqlite; do
    for compression in gzip zstd; do
      set_file "${kind}" "${ts}" "${compression}"
      printf '\n'
    done
  done
  for kind in config meta sums; do
    set_file "${kind}" "${ts}"
    printf '\n'
  done
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

# All set timestamps found under BACKUP_ROOT (files with the layout's exact
# names only), sorted oldest first.
all_set_timestamps() {
  local pattern path relative name ts
  local -A seen=()
  local -a patterns=()
  mapfile -t patterns < <(set_layout '*')
  for pattern in "${patterns[@]}"; do
    for path in "${ROOT_DIR}"/${pattern}; do
      [[ -f "${path}" ]] || continue
      relative="${path#"${ROOT_DIR}/"}"
      name="${relative##*/}"
      ts="${name#*_}"
      ts="${ts%%.*}"
      [[ "${ts}" =~ ${TS_REGEX} ]] || continue
      # Only a name the layout gives for that TS (not e.g. mysql_TS.x.sql.gz).
      # (grep reads it all: with -q it may exit early, set_layout die of SIGPIPE
      # and, under pipefail, a real file be skipped.)
      set_layout "${ts}" | grep -xF -- "${relative}" >/dev/null || continue
      seen["${ts}"]=1
    done
  done
  if ((${#seen[@]} > 0)); then
    printf '%s\n' "${!seen[@]}" | sort
  fi
}

set_is_complete() {
  [[ -f "${ROOT_DIR}/$(set_file sums "$1")" ]]
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
