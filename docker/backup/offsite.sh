#!/usr/bin/env bash
#
# Off-host, encrypted copies of the backup sets with restic (backup.offsite).
#
#   offsite.sh upload     upload every complete, verified local set newer than
#                         the repository's newest one for this environment
#                         (tagged env=NAME, set=ID and uploader=OFFSITE_UPLOADER,
#                         dated at the set's time), then `restic forget --prune`
#                         with the keep policy
#   offsite.sh check      `restic check`, reading OFFSITE_CHECK_READ_DATA percent
#   offsite.sh snapshots  this environment's snapshots, as restic's JSON
#   offsite.sh sets       the same JSON on a line "SNAPSHOTS <json>", then one
#                         line "SIZE <snapshot id> <bytes>" per snapshot (the
#                         restored size, `restic stats --mode restore-size`)
#   offsite.sh fetch TS   restore set TS (the newest snapshot tagged env=NAME and
#                         set=TS) into OFFSITE_FETCH_DIR/set in the set layout
#                         (mysql/, sqlite/, config/, manifests/), only the set's
#                         own file names, then verify it as backup.sh does; prints
#                         "fetched=TS". OFFSITE_FETCH_DIR (default /fetch) is the
#                         only place it writes.
#
# It never writes, renames or deletes anything under BACKUP_ROOT: the local
# sets are read only (the compose service mounts them read-only). The set
# layout and the verification come from backup.sh, which this script sources
# (one owner for both).
#
# Settings come from the environment (the compose service's env_file,
# /etc/backup/offsite.env, mode 0640): RESTIC_REPOSITORY, RESTIC_PASSWORD_FILE
# (the password itself sits in that file, never on argv or in an environment
# variable), OFFSITE_ENV_NAME, OFFSITE_KEEP ("--keep-daily 7 --keep-weekly 4"),
# OFFSITE_CHECK_READ_DATA (0-100) and the backend's credentials (e.g.
# AWS_ACCESS_KEY_ID). OFFSITE_UPLOADER names this machine in the snapshots it
# makes (default: the container's hostname, which the deployer makes of the
# host's name and machine id). For sftp: repositories, the SSH key and known_hosts are
# read from OFFSITE_SSH_DIR (default /etc/backup/offsite-ssh: files `id` and
# `known_hosts`).
#
# Exit codes (docs/reference/backup-format.md; the deployer holds a copy in
# lib/tracker_deployer/offsite.py, checked by a test):
#   0 done; 2 bad settings; 20 repository unreachable (or not a restic
#   repository); 21 wrong repository password; 22 the repository is locked by
#   a live process (stale locks are removed and the step retried once);
#   23 the upload or forget failed otherwise; 24 `restic check` found errors;
#   25 no space left on a device (the repository's or this container's);
#   26 `fetch`: the repository holds no set TS for this environment;
#   27 `upload` with OFFSITE_ALLOW_INIT=0 (uploads to this repository have
#   succeeded before) finds no repository there: it is gone, or its storage is
#   not mounted; nothing is created in its place.

set -o errexit -o nounset -o pipefail

readonly OFFSITE_EXIT_CONFIG=2
readonly OFFSITE_EXIT_UNREACHABLE=20
readonly OFFSITE_EXIT_PASSWORD=21
readonly OFFSITE_EXIT_LOCKED=22
readonly OFFSITE_EXIT_FAILED=23
readonly OFFSITE_EXIT_CHECK=24
readonly OFFSITE_EXIT_NO_SPACE=25
readonly OFFSITE_EXIT_NO_SET=26
readonly OFFSITE_EXIT_GONE=27

readonly OFFSITE_BACKUP_SH="${OFFSITE_BACKUP_SH:-/usr/local/bin/backup.sh}"
UPLOADER="${OFFSITE_UPLOADER:-$(hostname 2>/dev/null || printf unknown)}"
readonly UPLOADER
readonly ONE_HOST="keep one host per environment: inv destroy --env ${OFFSITE_ENV_NAME:-NAME} --host ADDRESS retires the one at ADDRESS (without --host it removes the recorded host)"
# backup.sh is checked on its own (nox -s shellcheck lists it); not followed here.
# shellcheck source=/dev/null
source "${OFFSITE_BACKUP_SH}"

readonly KEEP_REGEX='^(--keep-(last|daily|weekly|monthly|yearly) [1-9][0-9]{0,5}( |$))+$'
readonly PERCENT_REGEX='^(100([.]0+)?|[0-9]{1,2}([.][0-9]+)?)$'
readonly ENV_NAME_REGEX='^[a-z0-9]([a-z0-9-]*[a-z0-9])?$'

WORK_DIR=""
ERROR_FILE=""
declare -ga RESTIC=()

# redact: stdin to stdout with any URL userinfo ("//user:password@") shown as
# "//***@". Everything this script prints about the repository (its own lines
# and restic's) goes through it: a rest:, s3: or sftp: URL may carry a password,
# and these lines end up in 0644 status files, the log and cron mail.
# Up to the last "@" before the host: a password may hold a raw "@" (restic takes
# it). The deployer's own copy (config/model.py _USERINFO) is held to this one by
# tests/unit/test_offsite.py.
redact() {
  sed -E 's#//[^/[:space:]]*@#//***@#g'
}

# redact_repository: RESTIC_REPOSITORY without its query and userinfo.
redact_repository() {
  printf '%s\n' "${RESTIC_REPOSITORY%%\?*}" | redact
}

say() {
  printf '%s offsite: %s\n' "$(utc_now)" "$*" | redact >&2
}

# fail CODE MESSAGE: the one line the maintenance script reports, then exit.
fail() {
  local code="$1"
  shift
  printf '%s offsite: error: %s\n' "$(utc_now)" "$*" | redact >&2
  exit "${code}"
}

cleanup() {
  [[ -z "${WORK_DIR}" ]] || rm -rf -- "${WORK_DIR}"
}

check_settings() {
  [[ -n "${RESTIC_REPOSITORY:-}" ]] || fail "${OFFSITE_EXIT_CONFIG}" "RESTIC_REPOSITORY is not set (backup.offsite.repository)"
  [[ -n "${RESTIC_PASSWORD_FILE:-}" && -f "${RESTIC_PASSWORD_FILE}" && -r "${RESTIC_PASSWORD_FILE}" ]] \
    || fail "${OFFSITE_EXIT_CONFIG}" "the password file ${RESTIC_PASSWORD_FILE:-(RESTIC_PASSWORD_FILE unset)} is missing or unreadable by uid $(id -u); deploy again"
  [[ -z "${RESTIC_PASSWORD:-}" && -z "${RESTIC_PASSWORD_COMMAND:-}" ]] \
    || fail "${OFFSITE_EXIT_CONFIG}" "RESTIC_PASSWORD/RESTIC_PASSWORD_COMMAND are set; the password comes from RESTIC_PASSWORD_FILE only"
  [[ "${OFFSITE_ENV_NAME:-}" =~ ${ENV_NAME_REGEX} ]] \
    || fail "${OFFSITE_EXIT_CONFIG}" "OFFSITE_ENV_NAME '${OFFSITE_ENV_NAME:-}' is not an environment name"
  [[ "${UPLOADER}" =~ ^[A-Za-z0-9._-]{1,128}$ ]] \
    || fail "${OFFSITE_EXIT_CONFIG}" "OFFSITE_UPLOADER '${UPLOADER}' is not a host name (letters, digits, '.', '_', '-')"
  command -v restic >/dev/null 2>&1 || fail "${OFFSITE_EXIT_CONFIG}" "restic is not installed"
  WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/offsite.XXXXXX")" || fail "${OFFSITE_EXIT_NO_SPACE}" "cannot create a temporary directory"
  ERROR_FILE="${WORK_DIR}/restic.err"
  RESTIC=(restic --cache-dir "${WORK_DIR}/cache")
  if [[ "${RESTIC_REPOSITORY}" == sftp:* ]]; then
    RESTIC+=(-o "sftp.command=$(sftp_command "${RESTIC_REPOSITORY}")")
  fi
}

# The ssh command restic's sftp backend runs: the key and known_hosts from
# OFFSITE_SSH_DIR, strict host key checking, never a prompt. Both URL forms:
# sftp:[USER@]HOST:PATH and sftp://[USER@]HOST[:PORT]/PATH.
sftp_command() {
  local location="${1#sftp:}" authority user="" host port=""
  local ssh_dir="${OFFSITE_SSH_DIR:-/etc/backup/offsite-ssh}"
  if [[ "${location}" == //* ]]; then
    authority="${location#//}"
    authority="${authority%%/*}"
    if [[ "${authority}" == *:* ]]; then
      port="${authority##*:}"
      authority="${authority%:*}"
    fi
  else
    authority="${location%%:*}"
  fi
  if [[ "${authority}" == *@* ]]; then
    user="${authority%@*}"
    host="${authority##*@}"
  else
    host="${authority}"
  fi
  [[ "${host}" =~ ^[A-Za-z0-9._-]+$ && "${user}" =~ ^[A-Za-z0-9._-]*$ && "${port}" =~ ^[0-9]*$ ]] \
    || fail "${OFFSITE_EXIT_CONFIG}" "cannot read user, host and port from the sftp: repository"
  [[ -r "${ssh_dir}/id" && -r "${ssh_dir}/known_hosts" ]] \
    || fail "${OFFSITE_EXIT_CONFIG}" "an sftp: repository needs the SSH key ${ssh_dir}/id and ${ssh_dir}/known_hosts (see docs/user-guide/offsite.md)"
  local -a ssh=(ssh -F /dev/null -i "${ssh_dir}/id" -o IdentitiesOnly=yes -o BatchMode=yes
    -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=${ssh_dir}/known_hosts" -o ConnectTimeout=30)
  [[ -z "${port}" ]] || ssh+=(-p "${port}")
  [[ -z "${user}" ]] || ssh+=(-l "${user}")
  ssh+=("${host}" -s sftp)
  printf "%s" "${ssh[*]}"
}

# run_restic ARGS...: restic with its stderr kept in ERROR_FILE (and shown).
run_restic() {
  local rc=0
  "${RESTIC[@]}" "$@" 2>"${ERROR_FILE}" || rc=$?
  if [[ -s "${ERROR_FILE}" ]]; then
    sed 's/^/restic: /' -- "${ERROR_FILE}" | redact >&2 || :
  fi
  return "${rc}"
}

# The offsite exit code (and its message) for the restic error in ERROR_FILE:
# classify_known fails with the code of a cause it recognises and returns
# otherwise; classify fails with OFFSITE_EXIT_FAILED for anything else.
classify() {
  classify_known "$1"
  local text
  text="$(head -c 65536 -- "${ERROR_FILE}" 2>/dev/null | tr '\n' ' ')" || text=""
  fail "${OFFSITE_EXIT_FAILED}" "$1 failed (${text:0:300})"
}

classify_known() {
  local what="$1" text
  text="$(head -c 65536 -- "${ERROR_FILE}" 2>/dev/null | tr '\n' ' ')" || text=""
  case "${text}" in
    *"no space left on device"* | *"No space left on device"*)
      fail "${OFFSITE_EXIT_NO_SPACE}" "${what}: no space left on a device (the repository's disk, or this host's temporary space)" ;;
    *"wrong password or no key found"*)
      fail "${OFFSITE_EXIT_PASSWORD}" "${what}: wrong repository password (backup.offsite.password does not open $(redact_repository))" ;;
    *"repository is already locked"* | *"unable to create lock"*)
      fail "${OFFSITE_EXIT_LOCKED}" "${what}: the repository is locked by another restic process that is still alive, or by another host within the last 30 minutes (only stale locks are removed); try again later, or see 'restic list locks'" ;;
    *"unable to open config file"* | *"dial tcp"* | *"connection refused"* | *"Connection refused"* \
      | *"no such host"* | *"ssh command exited"* | *"unable to start the sftp session"* \
      | *"Host key verification failed"* | *"Permission denied"* | *"timeout"* | *"Access Denied"*)
      fail "${OFFSITE_EXIT_UNREACHABLE}" "${what}: the repository is unreachable or not a restic repository (${text:0:300})" ;;
  esac
}

is_locked_error() {
  grep -q -e 'repository is already locked' -e 'unable to create lock' -- "${ERROR_FILE}" 2>/dev/null
}

is_missing_repository() {
  grep -q 'unable to open config file' -- "${ERROR_FILE}" 2>/dev/null \
    && grep -q -e 'no such file or directory' -e 'does not exist' -- "${ERROR_FILE}" 2>/dev/null \
    && ! grep -q -e 'dial tcp' -e 'onnection refused' -e 'no such host' -- "${ERROR_FILE}" 2>/dev/null
}

# restic_retry WHAT ARGS...: run restic; on a lock, `restic unlock` (it removes
# stale locks only) and one more try. Returns restic's status.
restic_retry() {
  local what="$1"
  shift
  run_restic "$@" && return 0
  is_locked_error || return 1
  remove_stale_locks "${what}"
  run_restic "$@"
}

# restic_locked WHAT ARGS...: restic_retry, and a failure ends the script.
restic_locked() {
  restic_retry "$@" || classify "$1"
}

# remove_stale_locks WHAT: after WHAT met a lock.
remove_stale_locks() {
  say "$1: the repository is locked; removing stale locks (restic unlock removes only locks of dead processes or older than 30 minutes)"
  run_restic unlock >&2 || classify "restic unlock"
}

# This environment's snapshots (JSON) into $1; creates the repository on the
# very first run (a location that holds no repository yet), unless
# OFFSITE_ALLOW_INIT is 0: uploads to it have succeeded before, so it is gone.
list_snapshots() {
  local out="$1"
  if run_restic snapshots --no-lock --json --host "${OFFSITE_ENV_NAME}" --tag "env=${OFFSITE_ENV_NAME}" >"${out}"; then
    return 0
  fi
  if is_missing_repository; then
    if [[ "${OFFSITE_ALLOW_INIT:-1}" == 0 ]]; then
      fail "${OFFSITE_EXIT_GONE}" "there is no restic repository at the location, though uploads to it have succeeded before: it was deleted, or its storage is not mounted. Nothing was uploaded, and no new repository is created in its place (to start one anew there, see docs/user-guide/offsite.md)"
    fi
    say "no repository at the location yet: creating it (restic init)"
    run_restic init | redact >&2 || classify "restic init"
    printf '[]\n' >"${out}"
    return 0
  fi
  classify "opening the repository"
}

# Set ids in restic's snapshot JSON on stdin (tags set=ID), sorted.
uploaded_sets() {
  { grep -o '"set=[0-9]\{8\}_[0-9]\{6\}"' || :; } | tr -d '"' | sed 's/^set=//' | sort -u
}

# uploader_of TS: the uploader tag of set TS's snapshots in the JSON on stdin
# (nothing for snapshots from before the tag).
uploader_of() {
  { grep -o '"tags":\[[^]]*\]' || :; } | { grep -F "\"set=$1\"" || :; } \
    | { grep -o '"uploader=[^"]*"' || :; } | tr -d '"' | sed 's/^uploader=//' | sort -u | head -n 1
}

# sets_of UPLOADER: the sets whose snapshots in the JSON on stdin UPLOADER made.
sets_of() {
  { grep -o '"tags":\[[^]]*\]' || :; } | { grep -F "\"uploader=$1\"" || :; } \
    | { grep -o '"set=[0-9]\{8\}_[0-9]\{6\}"' || :; } | tr -d '"' | sed 's/^set=//' | sort -u
}

set_time() {
  local ts="$1"
  printf '%s-%s-%s %s:%s:%s' "${ts:0:4}" "${ts:4:2}" "${ts:6:2}" "${ts:9:2}" "${ts:11:2}" "${ts:13:2}"
}

# upload_set TS: 1 when the local set fails verification (nothing uploaded);
# a restic failure ends the script with its offsite exit code.
upload_set() {
  local ts="$1" list="${WORK_DIR}/files-$1" relative
  (verify_set "${ts}") || return 1
  while IFS= read -r relative; do
    printf '%s/%s\n' "${ROOT_DIR}" "${relative}"
  done < <(set_files "${ts}") >"${list}"
  say "uploading set ${ts} ($(wc -l <"${list}") files)"
  snapshot_set "${ts}" "${list}"
  say "set ${ts} uploaded"
}

# snapshot_set TS LIST: restic backup of the files in LIST as set TS. It fails
# (the offsite code) unless the snapshot holds every file of the list: restic
# skips a file that vanished (exit 0) or could not be read (exit 3) and still
# writes the snapshot, which every later upload would take for the whole set.
# Such a snapshot is forgotten. A lock is met as restic_retry does.
snapshot_set() {
  local ts="$1" list="$2" summary="${WORK_DIR}/summary-$1" rc=0 snapshot processed files
  restic_retry "uploading set ${ts}" backup --quiet --json \
    --host "${OFFSITE_ENV_NAME}" --tag "env=${OFFSITE_ENV_NAME}" --tag "set=${ts}" \
    --tag "uploader=${UPLOADER}" --time "$(set_time "${ts}")" --files-from-verbatim "${list}" >"${summary}" || rc=$?
  files="$(wc -l <"${list}")"
  snapshot="$(summary_value snapshot_id '"\([0-9a-f]\{8,64\}\)"' <"${summary}")"
  processed="$(summary_value total_files_processed '\([0-9]\{1,12\}\)' <"${summary}")"
  if ((rc == 0)) && [[ -n "${snapshot}" && "${processed}" == "${files}" ]]; then
    return 0
  fi
  [[ -n "${snapshot}" ]] || classify "uploading set ${ts}"
  say "the snapshot ${snapshot} of set ${ts} holds ${processed:-none} of its ${files} files: forgetting it"
  local stored="restic stored ${processed:-none} of its ${files} files (one vanished or could not be read; see restic's lines above)"
  if ! restic_retry "forgetting snapshot ${snapshot}" forget --quiet "${snapshot}" >&2; then
    fail "${OFFSITE_EXIT_FAILED}" "uploading set ${ts}: ${stored}, and its snapshot ${snapshot} could not be forgotten: until it is (restic forget ${snapshot}), the set counts as uploaded"
  fi
  fail "${OFFSITE_EXIT_FAILED}" "uploading set ${ts}: ${stored}; the snapshot was forgotten and the next upload sends the set again"
}

# summary_value KEY REGEX: KEY's value (REGEX, one group) in restic's JSON summary on stdin.
summary_value() {
  sed -n "s/^{\"message_type\":\"summary\".*\"$1\":$2.*/\1/p" | tail -n 1
}

cmd_upload() {
  local keep="${OFFSITE_KEEP:-}"
  [[ "${keep}" =~ ${KEEP_REGEX} ]] || fail "${OFFSITE_EXIT_CONFIG}" "OFFSITE_KEEP '${keep}' is not a keep policy (e.g. '--keep-daily 7')"
  local -a keep_args
  read -r -a keep_args <<<"${keep}"
  [[ -d "${ROOT_DIR}" ]] || fail "${OFFSITE_EXIT_CONFIG}" "BACKUP_ROOT ${ROOT_DIR} does not exist"

  local snapshots="${WORK_DIR}/snapshots.json" there="${WORK_DIR}/in-repository" newest="" ts now
  list_snapshots "${snapshots}"
  uploaded_sets <"${snapshots}" >"${there}"
  # The sets newer than the repository's newest are uploaded (older ones the
  # repository lacks were forgotten by its policy). A set named after this
  # host's clock (taken while the clock was ahead) does not count as the newest:
  # every set taken since sorts before it, and none would ever be uploaded.
  now="$(date -u '+%Y%m%d_%H%M%S')"
  while IFS= read -r ts; do
    if [[ "${ts}" > "${now}" ]]; then
      say "WARNING: the repository holds set ${ts}, named after this host's clock (now ${now} UTC): the clock was ahead when it was taken; the sets taken since are uploaded all the same (check the clock: timedatectl)"
    else
      newest="${ts}"
    fi
  done <"${there}"
  say "repository opened; newest set there for ${OFFSITE_ENV_NAME}: ${newest:-none}"

  local -a pending=() uploaded=() corrupt=()
  local newest_local=""
  while IFS= read -r ts; do
    set_is_complete "${ts}" || continue
    newest_local="${ts}"
    [[ -z "${newest}" || "${ts}" > "${newest}" ]] || continue
    ! grep -qxF -- "${ts}" "${there}" || continue
    pending+=("${ts}")
  done < <(all_set_timestamps)
  # This host's newest set is neither there nor newer than the repository's newest:
  # another host uploads as this environment (an old host back after a recover, a
  # copied config). Its sets would never be uploaded, and forget would drop them:
  # nothing is uploaded or forgotten.
  if [[ -n "${newest_local}" ]] && ! grep -qxF -- "${newest_local}" "${there}" \
    && [[ -n "${newest}" && ! "${newest_local}" > "${newest}" ]]; then
    fail "${OFFSITE_EXIT_FAILED}" "the repository holds set ${newest} of ${OFFSITE_ENV_NAME}, newer than this host's newest set ${newest_local}, which it lacks: another host uploads as ${OFFSITE_ENV_NAME} (an old host back after inv recover, or a copied config?); nothing was uploaded or forgotten: ${ONE_HOST}"
  fi
  # The repository's newest set came from another machine, and this host holds no
  # set of that machine's: the other one uploads as this environment now (a host
  # back after an inv recover onto a new one, whose sets it never had). Its own
  # sets, newer by a few seconds each day, would pass the check above, and forget
  # would keep them in place of the other's. A host that holds one (a set `inv
  # recover` fetched, the newest or an older one) carries that machine's history on.
  local newest_by="" theirs held=""
  [[ -z "${newest}" ]] || newest_by="$(uploader_of "${newest}" <"${snapshots}")"
  if [[ -n "${newest_by}" && "${newest_by}" != "${UPLOADER}" ]]; then
    while IFS= read -r theirs; do
      if set_is_complete "${theirs}"; then
        held="${theirs}"
        break
      fi
    done < <(sets_of "${newest_by}" <"${snapshots}")
    [[ -n "${held}" ]] || fail "${OFFSITE_EXIT_FAILED}" "the repository's newest set ${newest} of ${OFFSITE_ENV_NAME} was uploaded by ${newest_by}, not by this host (${UPLOADER}), which holds no set of that machine's: another host uploads as ${OFFSITE_ENV_NAME} (this one is back after inv recover onto another?); nothing was uploaded or forgotten: ${ONE_HOST}; if this host is to take that machine's place, inv recover (or inv restore --from offsite) one of its sets here first"
  fi
  if ((${#pending[@]} == 0)); then
    say "nothing to upload: the repository has every complete local set"
  fi
  for ts in "${pending[@]}"; do
    if upload_set "${ts}"; then
      uploaded+=("${ts}")
    else
      corrupt+=("${ts}")
      say "set ${ts} fails verification; not uploaded"
    fi
  done

  # A set named after the clock (there before, or uploaded now) is the newest by
  # time, so it takes a place of every rule (one place each): each rule keeps
  # that many more, or a policy of one would forget the sets taken since.
  local i ahead=0
  for ts in $(cat -- "${there}") "${uploaded[@]}"; do
    [[ ! "${ts}" > "${now}" ]] || ahead=$((ahead + 1))
  done
  if ((ahead > 0)); then
    for ((i = 1; i < ${#keep_args[@]}; i += 2)); do
      keep_args[i]=$((keep_args[i] + ahead))
    done
    say "forget --prune: ${keep} (each rule keeps ${ahead} more: the set(s) named after this host's clock take a place)"
  else
    say "forget --prune: ${keep}"
  fi
  restic_locked "restic forget --prune" forget --prune --quiet --host "${OFFSITE_ENV_NAME}" \
    --tag "env=${OFFSITE_ENV_NAME}" --group-by host "${keep_args[@]}" >&2
  printf 'uploaded=%s\n' "${uploaded[*]}"
  if ((${#corrupt[@]} > 0)); then
    fail "${OFFSITE_EXIT_FAILED}" "local set(s) ${corrupt[*]} fail verification and were not uploaded"
  fi
  say "done: ${#uploaded[@]} set(s) uploaded"
}

cmd_check() {
  local percent="${OFFSITE_CHECK_READ_DATA:-0}"
  [[ "${percent}" =~ ${PERCENT_REGEX} ]] || fail "${OFFSITE_EXIT_CONFIG}" "OFFSITE_CHECK_READ_DATA '${percent}' is not a percentage"
  local -a read_args=()
  if [[ "${percent}" =~ ^100 ]]; then
    read_args=(--read-data)
  elif [[ ! "${percent}" =~ ^0+([.]0+)?$ ]]; then
    read_args=("--read-data-subset=${percent}%")
  fi
  local snapshots="${WORK_DIR}/snapshots.json"
  run_restic snapshots --no-lock --json >"${snapshots}" || classify "opening the repository"
  say "restic check ${read_args[*]:-(structure only)}"
  if run_restic check "${read_args[@]}" >&2; then
    say "check passed"
    return 0
  fi
  # A lock: stale locks removed and one more check, whose failure is read below
  # like the first one's (restic_locked would call found errors a failed check).
  if is_locked_error; then
    remove_stale_locks "restic check"
    if run_restic check "${read_args[@]}" >&2; then
      say "check passed"
      return 0
    fi
  fi
  # Unreachable, locked, wrong password, no space: their own codes. 24 only
  # when restic says it found errors; anything else is a failed check (23).
  classify_known "restic check"
  if grep -q -e 'repository contains errors' -e 'errors were found' -- "${ERROR_FILE}"; then
    fail "${OFFSITE_EXIT_CHECK}" "restic check found errors in the repository (see the lines above)"
  fi
  classify "restic check"
}

cmd_snapshots() {
  local snapshots="${WORK_DIR}/snapshots.json"
  run_restic snapshots --no-lock --json --host "${OFFSITE_ENV_NAME}" --tag "env=${OFFSITE_ENV_NAME}" >"${snapshots}" \
    || classify "listing the snapshots"
  cat -- "${snapshots}"
}

cmd_sets() {
  local snapshots="${WORK_DIR}/snapshots.json" id size
  run_restic --no-lock snapshots --json --host "${OFFSITE_ENV_NAME}" --tag "env=${OFFSITE_ENV_NAME}" >"${snapshots}" \
    || classify "listing the snapshots"
  printf 'SNAPSHOTS %s\n' "$(tr -d '\n' <"${snapshots}")"
  while IFS= read -r id; do
    run_restic --no-lock stats --json --mode restore-size "${id}" >"${WORK_DIR}/stats.json" \
      || classify "measuring snapshot ${id:0:8}"
    size="$(grep -o '"total_size":[0-9]*' "${WORK_DIR}/stats.json" | head -n 1 | cut -d: -f2)"
    printf 'SIZE %s %s\n' "${id}" "${size:-?}"
  done < <(grep -o '"id":"[0-9a-f]\{64\}"' "${snapshots}" | cut -d'"' -f4)
}

cmd_fetch() {
  local ts="$1" fetch_dir="${OFFSITE_FETCH_DIR:-/fetch}" snapshots="${WORK_DIR}/snapshots.json"
  local id restored relative
  [[ "${ts}" =~ ${TS_REGEX} ]] || fail "${OFFSITE_EXIT_CONFIG}" "'${ts}' is not a set id (YYYYMMDD_HHMMSS)"
  [[ -d "${fetch_dir}" && -w "${fetch_dir}" ]] || fail "${OFFSITE_EXIT_CONFIG}" "the fetch directory ${fetch_dir} is missing or not writable by uid $(id -u)"
  [[ ! -e "${fetch_dir}/restore" && ! -e "${fetch_dir}/set" ]] || fail "${OFFSITE_EXIT_CONFIG}" "the fetch directory ${fetch_dir} is not empty"
  run_restic snapshots --no-lock --json --host "${OFFSITE_ENV_NAME}" --tag "env=${OFFSITE_ENV_NAME},set=${ts}" >"${snapshots}" \
    || classify "listing the snapshots"
  id="$(grep -o '"id":"[0-9a-f]\{64\}"' "${snapshots}" | cut -d'"' -f4 | tail -n 1)" || id=""
  [[ -n "${id}" ]] || fail "${OFFSITE_EXIT_NO_SET}" "the repository holds no set ${ts} of ${OFFSITE_ENV_NAME} (see 'inv backups --offsite')"
  say "restoring set ${ts} (snapshot ${id:0:8}) into ${fetch_dir}"
  restic_locked "restoring set ${ts}" restore "${id}" --target "${fetch_dir}/restore" >&2
  # The snapshot holds the set's files at their paths under BACKUP_ROOT.
  restored="${fetch_dir}/restore${ROOT_DIR}"
  [[ -d "${restored}" ]] || fail "${OFFSITE_EXIT_FAILED}" "snapshot ${id:0:8} holds no files under ${ROOT_DIR}"
  # Uploads hold regular files and their directories only: a link (a directory
  # of the set's name pointing elsewhere) would have the moves below reach out.
  local link
  link="$(find "${fetch_dir}/restore" -type l -print -quit)" || link="?"
  if [[ -n "${link}" ]]; then
    rm -rf -- "${fetch_dir}/restore" # the link itself, never what it points to
    fail "${OFFSITE_EXIT_FAILED}" "snapshot ${id:0:8} holds a symbolic link (${link#"${fetch_dir}/restore"}): not a set this tool uploaded; nothing was kept"
  fi
  mkdir -p -- "${fetch_dir}/set" || fail "${OFFSITE_EXIT_NO_SPACE}" "cannot create ${fetch_dir}/set"
  while IFS= read -r relative; do
    if [[ -f "${restored}/${relative}" && ! -L "${restored}/${relative}" ]]; then
      if ! mkdir -p -- "${fetch_dir}/set/${relative%/*}" \
        || ! mv -- "${restored}/${relative}" "${fetch_dir}/set/${relative}"; then
        fail "${OFFSITE_EXIT_NO_SPACE}" "cannot move ${relative} into ${fetch_dir}/set"
      fi
    fi
  done < <(set_layout "${ts}")
  rm -rf -- "${fetch_dir}/restore"
  [[ -f "${fetch_dir}/set/$(set_file sums "${ts}")" ]] \
    || fail "${OFFSITE_EXIT_FAILED}" "snapshot ${id:0:8} holds no $(set_file sums "${ts}"): not a complete set"
  if ! (ROOT_DIR="${fetch_dir}/set" && verify_set "${ts}"); then
    fail "${OFFSITE_EXIT_FAILED}" "set ${ts} from the repository fails verification (checksums or archives); nothing was kept"
  fi
  printf 'fetched=%s\n' "${ts}"
}

offsite_main() {
  umask 077
  export TZ=UTC
  trap cleanup EXIT
  init_paths
  local command="${1:-}"
  case "${command}:$#" in
    upload:1 | check:1 | snapshots:1 | sets:1 | fetch:2) ;;
    *) fail "${OFFSITE_EXIT_CONFIG}" "usage: offsite.sh upload|check|snapshots|sets, or offsite.sh fetch SET_ID" ;;
  esac
  check_settings
  shift
  "cmd_${command}" "$@"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  offsite_main "$@"
fi
