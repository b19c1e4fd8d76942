# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# Retention: delete old sets, never the newest complete one.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# --- retention ----------------------------------------------------------------

# Delete sets whose files are all older than $1 days (by mtime), never the
# newest complete set, only files with this tool's exact names.
apply_retention() {
  local days="$1" now cutoff keep ts relative mtime newest deleted=0
  now="$(date +%s)"
  cutoff=$((now - days * 86400))
  keep="$(latest_complete_set)"
  local -a files=()
  while IFS= read -r ts; do
    [[ "${ts}" != "${keep}" ]] || continue
    mapfile -t files < <(set_files "${ts}")
    ((${#files[@]} > 0)) || continue
    newest=0
    for relative in "${files[@]}"; do
      mtime="$(stat -c %Y -- "${ROOT_DIR}/${relative}")"
      ((mtime > newest)) && newest="${mtime}"
    done
    ((newest < cutoff)) || continue
    log "retention: deleting set ${ts} (older than ${days} days)"
    # The manifest goes first, so an interrupted deletion leaves an
    # incomplete set, never a "complete" one with missing files.
    rm -f -- "${ROOT_DIR}/$(set_file sums "${ts}")" || die "${EXIT_BACKUP}" "retention: cannot delete set ${ts}"
    for relative in "${files[@]}"; do
      rm -f -- "${ROOT_DIR:?}/${relative}" || die "${EXIT_BACKUP}" "retention: cannot delete ${relative}"
    done
    deleted=$((deleted + 1))
  done < <(all_set_timestamps)
  log "retention: ${deleted} set(s) deleted, keeping sets younger than ${days} days${keep:+ and newest complete set ${keep}}"
}
