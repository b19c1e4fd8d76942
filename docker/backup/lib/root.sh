# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# BACKUP_ROOT: its paths, the lock, staging, and choosing a new set's TS.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# --- paths, lock, set names -------------------------------------------------

init_paths() {
  CONFIG_PATH="${CONFIG_FILE:-${DEFAULT_CONFIG_FILE}}"
  ROOT_DIR="${BACKUP_ROOT:-${DEFAULT_BACKUP_ROOT}}"
  STAGING_DIR="${ROOT_DIR}/.staging"
}

# Create BACKUP_ROOT's layout (only what this tool owns).
prepare_root() {
  mkdir -p -- "${ROOT_DIR}" || die "${EXIT_BACKUP}" "cannot create BACKUP_ROOT ${ROOT_DIR}"
  if [[ ! -w "${ROOT_DIR}" ]]; then
    die "${EXIT_BACKUP}" "BACKUP_ROOT ${ROOT_DIR} is not writable by uid $(id -u)"
  fi
  mkdir -p -- "${STAGING_DIR}" || die "${EXIT_BACKUP}" "cannot create ${STAGING_DIR}"
  if [[ ! -e "${ROOT_DIR}/${ROOT_TAG}" ]]; then
    printf 'backup.sh: this directory holds backup sets; tar skips it when archiving config.\n' \
      >"${ROOT_DIR}/${ROOT_TAG}" || die "${EXIT_BACKUP}" "cannot write ${ROOT_DIR}/${ROOT_TAG}"
  fi
}

# Root never works in a directory another user owns or may write: that user
# could plant a link where root is about to write (the lock, a temporary file,
# an extracted file) and have root write through it. Refuse, naming the user to
# run as (the stack runs this image as uid 1000, which owns the backup and data
# directories), or the mode to fix.
refuse_root_in_foreign_dirs() {
  local directory owner mode
  [[ "$(id -u)" == 0 ]] || return 0
  for directory in "$@"; do
    [[ -e "${directory}" ]] || continue
    read -r owner mode < <(stat -c '%u %a' -- "${directory}") || die "${EXIT_CONFIG}" "cannot stat ${directory}"
    if [[ "${owner}" != 0 ]]; then
      die "${EXIT_CONFIG}" "running as root, but ${directory} belongs to uid ${owner}, who could plant links there that root would write through; run as that user (docker run --user ${owner}:${owner}, or docker compose run without --user)"
    fi
    if ((8#${mode} & 8#022)); then
      die "${EXIT_CONFIG}" "running as root, but ${directory} (mode ${mode}) may be written by users other than root, who could plant links there that root would write through; chmod go-w ${directory}, or run as the stack's user (docker compose run without --user)"
    fi
  done
}

# Root never writes under a path that passes through a link or a directory that
# another user controls: every existing part of PATH, from /, is root's (a link
# of root's is followed), and none may be written by others unless it is sticky
# (/tmp: nobody may replace what is not theirs there).
refuse_root_in_foreign_path() {
  local path="$1" prefix="" part owner mode
  local -a parts
  [[ "$(id -u)" == 0 && "${path}" == /* ]] || return 0
  IFS=/ read -r -a parts <<<"${path#/}"
  for part in "${parts[@]}"; do
    [[ -n "${part}" ]] || continue
    prefix="${prefix}/${part}"
    [[ -e "${prefix}" || -L "${prefix}" ]] || break
    read -r owner mode < <(stat -c '%u %a' -- "${prefix}") || die "${EXIT_CONFIG}" "cannot stat ${prefix}"
    if [[ "${owner}" != 0 ]]; then
      die "${EXIT_CONFIG}" "running as root, but ${prefix} belongs to uid ${owner} (on the way to ${path}), who could plant links there that root would write through; run as that user (docker run --user ${owner}:${owner}, or docker compose run without --user)"
    fi
    if [[ ! -L "${prefix}" ]] && ((8#${mode} & 8#022 && !(8#${mode} & 8#1000))); then
      die "${EXIT_CONFIG}" "running as root, but ${prefix} (mode ${mode}, on the way to ${path}) may be written by users other than root; chmod go-w ${prefix}, or run as the stack's user (docker compose run without --user)"
    fi
  done
}

# BACKUP_ROOT and the directories in it that root writes into: staging and the
# directories of set_layout.
root_dirs() {
  local relative
  printf '%s\n' "${ROOT_DIR}" "${STAGING_DIR}"
  set_layout x | while IFS= read -r relative; do
    printf '%s/%s\n' "${ROOT_DIR}" "${relative%%/*}"
  done | sort -u
}

# flock on BACKUP_ROOT/.lock: backup, finish and restore never overlap.
acquire_lock() {
  local lock_file="${ROOT_DIR}/.lock"
  exec {LOCK_FD}>>"${lock_file}" || die "${EXIT_BACKUP}" "cannot open lock file ${lock_file}"
  if ! flock --nonblock "${LOCK_FD}"; then
    die "${EXIT_LOCKED}" "another backup.sh run holds ${lock_file}; not starting"
  fi
}

# Choose the new set's TS (UTC): unused in staging (stale staging included, so
# a TS never names two snapshots) and among final files.
new_set_ts() {
  local attempt ts
  for attempt in 1 2 3 4 5 6; do
    ts="$(date -u '+%Y%m%d_%H%M%S')"
    if [[ ! -e "${STAGING_DIR}/${ts}" && -z "$(set_files "${ts}")" ]]; then
      SET_TS="${ts}"
      warn_if_sets_after "${ts}"
      return 0
    fi
    sleep 0.5
  done
  die "${EXIT_BACKUP}" "no unused set timestamp after ${attempt} attempts"
}

# The new set is taken all the same (its data is the newest), but a set named
# after it stays `latest` by name: say so (`verify latest` and `inv restore`
# then refuse until the set is named, see refuse_latest_after_now).
warn_if_sets_after() {
  local ts="$1" newest
  newest="$(all_set_timestamps | tail -n 1)"
  if [[ -n "${newest}" && "${newest}" > "${ts}" ]]; then
    log "WARNING: set ${newest} is named after this run's set ${ts}: this host's clock went back, or was ahead when ${newest} was taken; check the clock (timedatectl); 'latest' names ${newest} until it is moved out of ${ROOT_DIR} or the clock passes it"
  fi
}

# Remove staging left by killed or unfinished runs (.staging is private to
# this tool), and the final-named files such a run may have renamed before it
# died. Called with the lock held, before a new snapshot: a snapshot that was
# never finished is stale by then.
clean_stale_staging() {
  local entry ts relative
  for entry in "${STAGING_DIR}"/* "${STAGING_DIR}"/.[!.]*; do
    [[ -e "${entry}" || -L "${entry}" ]] || continue
    ts="${entry##*/}"
    log "removing stale staging ${ts} (left by an interrupted or unfinished run)"
    rm -rf -- "${entry}" || die "${EXIT_BACKUP}" "cannot remove ${entry}"
    if [[ "${ts}" =~ ${TS_REGEX} ]] && ! set_is_complete "${ts}"; then
      while IFS= read -r relative; do
        log "removing ${relative} (incomplete set ${ts} of an interrupted run)"
        rm -f -- "${ROOT_DIR:?}/${relative}"
      done < <(set_files "${ts}")
    fi
  done
}
