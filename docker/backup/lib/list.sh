# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# `list --records`: the sets as versioned, tab-separated records for programs
# (the deployer's inventory). Needs only layout.sh, ROOT_DIR and TS_REGEX.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# The records' format version: the first line is "LIST<TAB>1". A reader refuses
# another version (lib/tracker_deployer/backup_layout.py LIST_FORMAT).
readonly LIST_FORMAT=1

# One record per line, fields separated by tabs:
#   LIST    FORMAT
#   SET     TS  complete|incomplete  ok|FAILED|unchecked|-
#   FILE    TS  PART  RELATIVE  BYTES  MTIME
#   META    TS  KEY  VALUE          (the set's .meta, one per line)
# PART is the file's directory (mysql, sqlite, config, manifests). $1 = yes:
# check a complete set's checksums (ok or FAILED), else "unchecked"; an
# incomplete set has "-".
list_records() {
  local checksums="$1" ts relative sums state key value
  local -a files=()
  printf 'LIST\t%s\n' "${LIST_FORMAT}"
  while IFS= read -r ts; do
    mapfile -t files < <(set_files "${ts}")
    sums="$(set_file sums "${ts}")"
    state="incomplete -"
    if set_is_complete "${ts}"; then
      state="complete unchecked"
      if [[ "${checksums}" == yes ]]; then
        state="complete ok"
        (cd -- "${ROOT_DIR}" && sha256sum --check --quiet --strict -- "${sums}") >/dev/null 2>&1 \
          || state="complete FAILED"
      fi
    fi
    printf 'SET\t%s\t%s\t%s\n' "${ts}" "${state% *}" "${state#* }"
    for relative in "${files[@]}"; do
      printf 'FILE\t%s\t%s\t%s\t%s\n' "${ts}" "${relative%%/*}" "${relative}" \
        "$(stat --printf '%s\t%Y' -- "${ROOT_DIR}/${relative}")"
    done
    relative="$(set_file meta "${ts}")"
    if [[ -f "${ROOT_DIR}/${relative}" ]]; then
      while IFS='=' read -r key value; do
        [[ -z "${key}" ]] || printf 'META\t%s\t%s\t%s\n' "${ts}" "${key}" "${value}"
      done <"${ROOT_DIR}/${relative}"
    fi
  done < <(all_set_timestamps)
}
