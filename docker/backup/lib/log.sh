# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# Log lines on stderr, errors with their exit code, and the ERR/EXIT traps.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# --- logging and errors -----------------------------------------------------

utc_now() {
  date -u '+%Y-%m-%dT%H:%M:%SZ'
}

# Log lines go to stderr with a UTC timestamp; stdout is kept for results
# (the TS of `snapshot`/`run`, the lines of `list`).
log() {
  printf '%s backup.sh: %s\n' "$(utc_now)" "$*" >&2
}

warn() {
  log "warning: $*"
}

# The version in the version file, or "unknown" (with a warning) when it has none.
tool_version() {
  local file="${BACKUP_VERSION_FILE:-${DEFAULT_VERSION_FILE}}" version=""
  version="$(cat -- "${file}" 2>/dev/null)" || version=""
  if [[ ! "${version}" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    warn "no image version in ${file}; the set records tool_version=unknown"
    version="unknown"
  fi
  printf '%s\n' "${version}"
}

die() {
  local code="$1"
  shift
  log "error: $*"
  exit "${code}"
}

# A signal ends backup.sh (exit 128+N: HUP 129, INT 130, TERM 143), except
# between defer_signals and resume_signals: renames that must all happen or none
# (a restored database and its old journals) end first, then the signal counts.
SIGNAL_EXIT=0
exit_on_signals() {
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

defer_signals() {
  trap 'SIGNAL_EXIT=129' HUP
  trap 'SIGNAL_EXIT=130' INT
  trap 'SIGNAL_EXIT=143' TERM
}

resume_signals() {
  exit_on_signals
  ((SIGNAL_EXIT == 0)) || exit "${SIGNAL_EXIT}"
}

on_err() {
  local rc="$1" line="$2" command="$3"
  log "error: command failed (exit ${rc}) at line ${line}: ${command}"
  exit "${ON_ERROR_EXIT}"
}

on_exit() {
  local rc="$?"
  set +o errexit
  trap - ERR
  local index
  if ((rc != 0)); then
    for ((index = ${#ROLLBACK_FILES[@]} - 1; index >= 0; index--)); do
      rm -f -- "${ROLLBACK_FILES[index]}"
    done
    for index in "${!FAILURE_DIRS[@]}"; do
      rm -rf -- "${FAILURE_DIRS[index]}"
    done
  fi
  if ((rc != 0)); then
    # The row-count session and the dump of a failed snapshot (none on success:
    # they have been waited for).
    for index in "${!BACKGROUND_PIDS[@]}"; do
      kill -- "${BACKGROUND_PIDS[index]}" 2>/dev/null
    done
  fi
  for index in "${!CLEANUP_FILES[@]}"; do
    rm -f -- "${CLEANUP_FILES[index]}"
  done
  if ((rc != 0)); then
    log "failed (exit ${rc})"
  fi
  exit "${rc}"
}
