#!/usr/bin/env bash
#
# Database + configuration backups for a Torrust Tracker stack, and their
# restore. One run writes one backup set; every file of a set appears under
# its final name only once it is complete and verified.
#
# The contract (file names, backup.conf grammar, exit codes) is
# docs/reference/backup-format.md; usage is in README.md next to this file and
# in `backup.sh --help`.
#
# Runs in the backup container and directly on a host (tests): CONFIG_FILE and
# BACKUP_ROOT override the container paths. Needs bash, coreutils, zstd (for
# BACKUP_COMPRESSION=zstd), gzip (pigz
# is used when present), tar, flock, sqlite3 and/or the mariadb client.

set -o errexit -o nounset -o pipefail -o errtrace

readonly TOOL_VERSION="1.0.0"

readonly EXIT_INTERNAL=1
readonly EXIT_CONFIG=2
readonly EXIT_BACKUP=3
readonly EXIT_VERIFY=4
readonly EXIT_LOCKED=5
readonly EXIT_REFUSED=6

readonly TS_REGEX='^[0-9]{8}_[0-9]{6}$'
readonly DEFAULT_CONFIG_FILE="/etc/backup/backup.conf"
readonly DEFAULT_BACKUP_ROOT="/backups"
# A file with this name in BACKUP_ROOT makes tar skip the backup directory
# when a configured path happens to contain it (e.g. /data/storage, which
# holds storage/backup): backups must never archive backups.
readonly ROOT_TAG=".tracker-backup-root"
readonly DUMP_MARKER="-- Dump completed"
# `snapshot` prints this line on stdout once the consistent view of the database
# exists; the maintenance script starts the tracker again when it reads it.
readonly SNAPSHOT_OPEN_LINE="snapshot-open"
# `snapshot --gate SECONDS` prints SNAPSHOT_READY_LINE once everything that does
# not need the tracker stopped is done, and takes the snapshot only when the
# next line on its stdin is SNAPSHOT_GO_LINE (the maintenance script stops the
# tracker in between).
readonly SNAPSHOT_READY_LINE="snapshot-ready"
readonly SNAPSHOT_GO_LINE="go"
readonly -a KNOWN_KEYS=(
  BACKUP_MODE BACKUP_RETENTION_DAYS BACKUP_PATHS_FILE BACKUP_COMPRESSION BACKUP_COMPRESSION_LEVEL
  DB_TYPE DB_HOST DB_PORT DB_USER DB_PASSWORD DB_NAME DB_PATH
)

# --- mutable state (set by main and the commands) --------------------------
declare -gA CONFIG=()          # backup.conf, parsed
ROOT_DIR=""                    # BACKUP_ROOT
STAGING_DIR=""                 # BACKUP_ROOT/.staging
LOCK_FD=""
ON_ERROR_EXIT="${EXIT_INTERNAL}"  # exit code for unexpected failures
declare -ga CLEANUP_FILES=()   # removed on every exit (option files, temps)
declare -ga ROLLBACK_FILES=()  # final-named files of this run, removed on failure
declare -ga FAILURE_DIRS=()    # staging directories removed on failure
declare -ga MYSQL_CLIENT=()    # mariadb client + option file + database
declare -ga MYSQL_DUMP=()      # mariadb-dump + option file
declare -ga COMPRESSOR=()      # the database file's: pigz/gzip or zstd with level, stdin -> stdout
declare -ga CONFIG_COMPRESSOR=()  # the config archive's: always pigz/gzip (.tar.gz)
SET_TS=""                      # set chosen by new_set_ts / resolve_set
CONFIG_PATH=""                 # CONFIG_FILE
declare -ga VERIFIED_FILES=()  # payload of the set verify_set checked

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

die() {
  local code="$1"
  shift
  log "error: $*"
  exit "${code}"
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

usage() {
  cat <<'EOF'
Usage: backup.sh [COMMAND]

Commands:
  run [--no-prune]           snapshot + finish (the default)
  snapshot [--gate SECONDS]  consistent database snapshot into BACKUP_ROOT/.staging;
                             prints "snapshot-open" once the consistent view exists
                             (MySQL: the dump goes on after it) and the set's TS as
                             the last line of stdout. --gate: prepare everything
                             (config, lock, set TS, staging, database checks), print
                             "snapshot-ready", then wait up to SECONDS for the line
                             "go" on stdin; EOF, another line or the timeout abort
                             (exit 3, no set, staging removed, lock released)
  finish TS [--no-prune]     check, compress, archive config, checksum, rename,
                             then apply retention (--no-prune: delete nothing;
                             the safety backup before a restore uses it)
  list                       one line per set: TS, state (complete|incomplete), files
  verify [TS|latest]         check a set's checksums and gzip/zstd/tar integrity
  restore [TS|latest] --yes [--only db|config]
                             restore a verified set (database and/or config files)

Environment: CONFIG_FILE (default /etc/backup/backup.conf), BACKUP_ROOT (default
/backups), RESTORE_DB_PATH, RESTORE_CONFIG_ROOT.
Exit codes: 0 ok, 1 internal error, 2 configuration/usage, 3 backup or restore
failed, 4 verification failed, 5 locked by another run, 6 restore refused.
EOF
}

# --- backup.conf --------------------------------------------------------------

# Parse one line of backup.conf without executing anything. The grammar is a
# subset of POSIX shell assignments: KEY=VALUE where VALUE concatenates
# single-quoted segments, double-quoted segments (with the escapes bash honours
# there: \\ \" \$ \` and backslash-newline; any other backslash stays), backslash
# escapes and bare characters; whitespace after the value may start a comment.
# A "$" or "`" inside double quotes is refused: bash would expand it. Sets
# PARSED_KIND to skip, assign, continue (a double-quoted segment ends the line
# with a backslash, which joins the next line) or error, plus
# PARSED_KEY/PARSED_VALUE or PARSED_ERROR.
parse_config_line() {
  local LC_ALL=C
  local line="$1"
  PARSED_KIND="error"
  PARSED_KEY=""
  PARSED_VALUE=""
  PARSED_ERROR=""
  local trimmed="${line#"${line%%[! $'\t']*}"}"
  if [[ -z "${trimmed}" || "${trimmed}" == '#'* ]]; then
    PARSED_KIND="skip"
    return 0
  fi
  if [[ ! "${trimmed}" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
    PARSED_ERROR="expected KEY=VALUE"
    return 0
  fi
  PARSED_KEY="${BASH_REMATCH[1]}"
  local rest="${BASH_REMATCH[2]}" value="" char
  while [[ -n "${rest}" ]]; do
    char="${rest:0:1}"
    case "${char}" in
      '"')
        rest="${rest:1}"
        parse_double_quoted || return 0
        ;;
      "'")
        rest="${rest:1}"
        if [[ "${rest}" != *"'"* ]]; then
          PARSED_ERROR="unterminated single quote"
          return 0
        fi
        value+="${rest%%"'"*}"
        rest="${rest#*"'"}"
        ;;
      \\)
        if ((${#rest} < 2)); then
          PARSED_ERROR="backslash at the end of the line"
          return 0
        fi
        value+="${rest:1:1}"
        rest="${rest:2}"
        ;;
      ' ' | $'\t')
        rest="${rest#"${rest%%[! $'\t']*}"}"
        if [[ -n "${rest}" && "${rest}" != '#'* ]]; then
          PARSED_ERROR="unquoted whitespace in the value (quote it)"
          return 0
        fi
        rest=""
        ;;
      '$' | '`' | ';' | '&' | '|' | '<' | '>' | '(' | ')' | '~')
        PARSED_ERROR="unquoted '${char}' in the value (quote it)"
        return 0
        ;;
      [[:cntrl:]])
        if [[ "${char}" == $'\r' ]]; then
          PARSED_ERROR="carriage return in the value (CRLF line endings?)"
        else
          PARSED_ERROR="control character in the value"
        fi
        return 0
        ;;
      *)
        value+="${char}"
        rest="${rest:1}"
        ;;
    esac
  done
  PARSED_KIND="assign"
  PARSED_VALUE="${value}"
}

# The double-quoted segment at the start of $rest (its opening quote already
# taken): appends to $value and leaves $rest after the closing quote. Returns 1
# with PARSED_KIND/PARSED_ERROR set when the segment is refused or goes on past
# the end of the line. Helper of parse_config_line (shares its locals).
parse_double_quoted() {
  local chunk next
  while true; do
    chunk="${rest%%[\"\\\$\`[:cntrl:]]*}"
    value+="${chunk}"
    rest="${rest:${#chunk}}"
    char="${rest:0:1}"
    case "${char}" in
      '"')
        rest="${rest:1}"
        return 0
        ;;
      \\)
        next="${rest:1:1}"
        case "${next}" in
          '') PARSED_KIND="continue" ;;
          \\ | '"' | '$' | '`') value+="${next}" ;;
          [[:cntrl:]]) PARSED_ERROR="control character in the value" ;;
          *) value+="\\${next}" ;;
        esac
        [[ -n "${next}" && -z "${PARSED_ERROR}" ]] || return 1
        rest="${rest:2}"
        ;;
      '$' | '`')
        PARSED_ERROR="'${char}' inside double quotes (bash would expand it; write \\${char} or use single quotes)"
        return 1
        ;;
      '')
        PARSED_ERROR="unterminated double quote"
        return 1
        ;;
      *)
        if [[ "${char}" == $'\r' ]]; then
          PARSED_ERROR="carriage return in the value (CRLF line endings?)"
        else
          PARSED_ERROR="control character in the value"
        fi
        return 1
        ;;
    esac
  done
}

# Read backup.conf into CONFIG. Errors name the file and line, never a value.
load_config() {
  local file="$1"
  if [[ ! -f "${file}" || ! -r "${file}" ]]; then
    die "${EXIT_CONFIG}" "config file ${file} does not exist or is not readable (set CONFIG_FILE?)"
  fi
  CONFIG=()
  local line next number=0 start
  while IFS= read -r line || [[ -n "${line}" ]]; do
    number=$((number + 1))
    start="${number}"
    parse_config_line "${line}"
    # Inside double quotes a backslash-newline joins the next line, as in bash.
    while [[ "${PARSED_KIND}" == continue ]]; do
      if ! IFS= read -r next && [[ -z "${next}" ]]; then
        PARSED_KIND="error"
        PARSED_ERROR="unterminated double quote (a backslash ends the file)"
        break
      fi
      number=$((number + 1))
      line="${line%?}${next}"
      parse_config_line "${line}"
    done
    case "${PARSED_KIND}" in
      skip) ;;
      assign) CONFIG["${PARSED_KEY}"]="${PARSED_VALUE}" ;;
      *)
        if [[ -n "${PARSED_KEY}" ]]; then
          die "${EXIT_CONFIG}" "${file}:${start}: malformed value for ${PARSED_KEY}: ${PARSED_ERROR}"
        fi
        die "${EXIT_CONFIG}" "${file}:${start}: malformed line: ${PARSED_ERROR}"
        ;;
    esac
  done <"${file}"
  local key known
  for key in "${!CONFIG[@]}"; do
    for known in "${KNOWN_KEYS[@]}"; do
      [[ "${key}" == "${known}" ]] && continue 2
    done
    warn "${file}: unknown key ${key} ignored"
  done
}

config_get() {
  local key="$1" default="${2-}"
  if [[ -n "${CONFIG[${key}]+set}" ]]; then
    printf '%s' "${CONFIG[${key}]}"
  else
    printf '%s' "${default}"
  fi
}

require_key() {
  local key="$1"
  if [[ -z "${CONFIG[${key}]:-}" ]]; then
    die "${EXIT_CONFIG}" "${CONFIG_PATH}: ${key} is required for DB_TYPE=${CONFIG[DB_TYPE]:-?}"
  fi
}

# Check the values a command needs; fill in defaults. $1: backup | restore.
validate_config() {
  local purpose="$1"
  CONFIG[BACKUP_MODE]="$(config_get BACKUP_MODE single)"
  if [[ "${CONFIG[BACKUP_MODE]}" != "single" ]]; then
    die "${EXIT_CONFIG}" "${CONFIG_PATH}: BACKUP_MODE must be 'single'"
  fi
  CONFIG[BACKUP_RETENTION_DAYS]="$(config_get BACKUP_RETENTION_DAYS 7)"
  if [[ ! "${CONFIG[BACKUP_RETENTION_DAYS]}" =~ ^[1-9][0-9]{0,4}$ ]]; then
    die "${EXIT_CONFIG}" "${CONFIG_PATH}: BACKUP_RETENTION_DAYS must be an integer >= 1"
  fi
  CONFIG[BACKUP_COMPRESSION]="$(config_get BACKUP_COMPRESSION gzip)"
  case "${CONFIG[BACKUP_COMPRESSION]}" in
    gzip)
      CONFIG[BACKUP_COMPRESSION_LEVEL]="$(config_get BACKUP_COMPRESSION_LEVEL 6)"
      if [[ ! "${CONFIG[BACKUP_COMPRESSION_LEVEL]}" =~ ^[1-9]$ ]]; then
        die "${EXIT_CONFIG}" "${CONFIG_PATH}: BACKUP_COMPRESSION_LEVEL must be 1-9 for gzip"
      fi
      ;;
    zstd)
      CONFIG[BACKUP_COMPRESSION_LEVEL]="$(config_get BACKUP_COMPRESSION_LEVEL 3)"
      if [[ ! "${CONFIG[BACKUP_COMPRESSION_LEVEL]}" =~ ^([1-9]|1[0-9])$ ]]; then
        die "${EXIT_CONFIG}" "${CONFIG_PATH}: BACKUP_COMPRESSION_LEVEL must be 1-19 for zstd"
      fi
      ;;
    *)
      die "${EXIT_CONFIG}" "${CONFIG_PATH}: BACKUP_COMPRESSION must be 'gzip' or 'zstd'"
      ;;
  esac
  case "${CONFIG[DB_TYPE]:-}" in
    mysql)
      require_key DB_HOST
      require_key DB_USER
      require_key DB_NAME
      CONFIG[DB_PORT]="$(config_get DB_PORT 3306)"
      CONFIG[DB_PASSWORD]="$(config_get DB_PASSWORD)"
      if [[ ! "${CONFIG[DB_PORT]}" =~ ^[1-9][0-9]{0,4}$ ]] || ((CONFIG[DB_PORT] > 65535)); then
        die "${EXIT_CONFIG}" "${CONFIG_PATH}: DB_PORT must be a port number"
      fi
      if [[ "${CONFIG[DB_NAME]}" == -* ]]; then
        die "${EXIT_CONFIG}" "${CONFIG_PATH}: DB_NAME must not start with '-'"
      fi
      ;;
    sqlite)
      require_key DB_PATH
      ;;
    *)
      die "${EXIT_CONFIG}" "${CONFIG_PATH}: DB_TYPE must be 'mysql' or 'sqlite'"
      ;;
  esac
  if [[ "${purpose}" == "backup" ]]; then
    if [[ -z "${CONFIG[BACKUP_PATHS_FILE]:-}" ]]; then
      die "${EXIT_CONFIG}" "${CONFIG_PATH}: BACKUP_PATHS_FILE is required"
    fi
    if [[ ! -f "${CONFIG[BACKUP_PATHS_FILE]}" || ! -r "${CONFIG[BACKUP_PATHS_FILE]}" ]]; then
      die "${EXIT_CONFIG}" "paths file ${CONFIG[BACKUP_PATHS_FILE]} (BACKUP_PATHS_FILE) does not exist or is not readable"
    fi
  fi
}

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

# flock on BACKUP_ROOT/.lock: backup, finish and restore never overlap.
acquire_lock() {
  local lock_file="${ROOT_DIR}/.lock"
  exec {LOCK_FD}>>"${lock_file}" || die "${EXIT_BACKUP}" "cannot open lock file ${lock_file}"
  if ! flock --nonblock "${LOCK_FD}"; then
    die "${EXIT_LOCKED}" "another backup.sh run holds ${lock_file}; not starting"
  fi
}

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

# decompress FILE: its content on stdout, by its suffix (.zst: zstd, else gzip).
decompress() {
  case "$1" in
    *.zst) zstd -q -d -c -- "$1" ;;
    *) gzip -d -c -- "$1" ;;
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

# Choose the new set's TS (UTC): unused in staging (stale staging included, so
# a TS never names two snapshots) and among final files.
new_set_ts() {
  local attempt ts
  for attempt in 1 2 3 4 5 6; do
    ts="$(date -u '+%Y%m%d_%H%M%S')"
    if [[ ! -e "${STAGING_DIR}/${ts}" && -z "$(set_files "${ts}")" ]]; then
      SET_TS="${ts}"
      return 0
    fi
    sleep 0.5
  done
  die "${EXIT_BACKUP}" "no unused set timestamp after ${attempt} attempts"
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

# --- database access ----------------------------------------------------------

# Quote a value for a MySQL option file: double quotes, backslash escapes.
option_quote() {
  local value="$1" backslash="\\" quote='"'
  value="${value//"${backslash}"/"${backslash}${backslash}"}"
  value="${value//"${quote}"/"${backslash}${quote}"}"
  value="${value//$'\t'/"${backslash}t"}"
  REPLY="\"${value}\""
}

# Write the credentials to a 0600 option file in directory $1 (never on a
# command line) and set MYSQL_CLIENT / MYSQL_DUMP. The file is removed on exit;
# after a kill -9 the next run's staging cleanup removes it.
setup_mysql() {
  local directory="$1" client dump option_file
  client="$(command -v mariadb || command -v mysql || true)"
  dump="$(command -v mariadb-dump || command -v mysqldump || true)"
  if [[ -z "${client}" || -z "${dump}" ]]; then
    die "${EXIT_BACKUP}" "mariadb client tools (mariadb, mariadb-dump) are not installed"
  fi
  option_file="${directory}/client.$$.cnf"
  CLEANUP_FILES+=("${option_file}")
  : >"${option_file}" || die "${EXIT_BACKUP}" "cannot create ${option_file}"
  chmod 0600 -- "${option_file}"
  {
    printf '[client]\n'
    option_quote "${CONFIG[DB_HOST]}"
    printf 'host=%s\n' "${REPLY}"
    printf 'port=%s\n' "${CONFIG[DB_PORT]}"
    option_quote "${CONFIG[DB_USER]}"
    printf 'user=%s\n' "${REPLY}"
    option_quote "${CONFIG[DB_PASSWORD]}"
    printf 'password=%s\n' "${REPLY}"
  } >"${option_file}" || die "${EXIT_BACKUP}" "cannot write ${option_file}"
  MYSQL_CLIENT=("${client}" "--defaults-extra-file=${option_file}" "--database=${CONFIG[DB_NAME]}")
  MYSQL_DUMP=("${dump}" "--defaults-extra-file=${option_file}")
}

# Write "table=count" lines to $2 from the tables (args 3...) and the counts in
# "$1.counts" (one per line, in the same order).
pair_counts() {
  local work="$1" out="$2" index
  shift 2
  local -a tables=("$@") counts=()
  mapfile -t counts <"${work}.counts"
  for index in "${!tables[@]}"; do
    printf '%s=%s\n' "${tables[index]}" "${counts[index]:-?}"
  done >"${out}"
}

# Write "table=count" for every base table of the MySQL database to $1.
mysql_row_counts() {
  local out="$1" work="$1.work"
  local -a tables=()
  if ! "${MYSQL_CLIENT[@]}" --batch --skip-column-names -e \
    "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY table_name" \
    >"${work}"; then
    die "${EXIT_BACKUP}" "cannot query database ${CONFIG[DB_NAME]} at ${CONFIG[DB_HOST]}:${CONFIG[DB_PORT]} as ${CONFIG[DB_USER]} (see the client's error above)"
  fi
  mapfile -t tables <"${work}"
  : >"${out}"
  if ((${#tables[@]} > 0)); then
    local table
    for table in "${tables[@]}"; do
      # shellcheck disable=SC2016  # backticks quote a MySQL identifier
      printf 'SELECT COUNT(*) FROM `%s`;\n' "${table//\`/\`\`}"
    done >"${work}"
    if ! "${MYSQL_CLIENT[@]}" --batch --skip-column-names <"${work}" >"${work}.counts"; then
      die "${EXIT_BACKUP}" "cannot count rows in ${CONFIG[DB_NAME]}"
    fi
    pair_counts "${work}" "${out}" "${tables[@]}"
  fi
  rm -f -- "${work}" "${work}.counts"
}

# Write "table=count" for every table of the SQLite database $1 to $2.
sqlite_row_counts() {
  local db="$1" out="$2" work="$2.work"
  local -a tables=()
  if ! sqlite3 -bail -readonly "${db}" \
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name" \
    >"${work}"; then
    die "${EXIT_BACKUP}" "cannot list the tables of ${db}"
  fi
  mapfile -t tables <"${work}"
  : >"${out}"
  if ((${#tables[@]} > 0)); then
    local table
    for table in "${tables[@]}"; do
      printf 'SELECT COUNT(*) FROM "%s";\n' "${table//\"/\"\"}"
    done >"${work}"
    if ! sqlite3 -bail -readonly "${db}" <"${work}" >"${work}.counts"; then
      die "${EXIT_BACKUP}" "cannot count rows in ${db}"
    fi
    pair_counts "${work}" "${out}" "${tables[@]}"
  fi
  rm -f -- "${work}" "${work}.counts"
}

# Compare the rows.* lines of a set's .meta ($1) with "table=count" lines ($2).
compare_row_counts() {
  local meta="$1" actual="$2" line table count mismatches=0
  local -A now=()
  while IFS= read -r line; do
    now["${line%=*}"]="${line##*=}"
  done <"${actual}"
  while IFS= read -r line; do
    [[ "${line}" == rows.* ]] || continue
    line="${line#rows.}"
    table="${line%=*}"
    count="${line##*=}"
    if [[ "${now[${table}]-missing}" != "${count}" ]]; then
      log "row count mismatch in ${table}: set has ${count}, restored database has ${now[${table}]-no such table}"
      mismatches=$((mismatches + 1))
    fi
  done <"${meta}"
  if ((mismatches > 0)); then
    die "${EXIT_VERIFY}" "${mismatches} table(s) differ from the set's row counts"
  fi
  log "row counts match the set (${#now[@]} tables)"
}

# $1 holds the last bytes of a mariadb-dump output: its last line must be the
# completion marker, which a cut-off dump never has.
check_dump_marker() {
  local last_line="${1%$'\n'}"
  last_line="${last_line##*$'\n'}"
  [[ "${last_line}" == "${DUMP_MARKER}"* ]]
}

# --- snapshot -----------------------------------------------------------------

# --- the MySQL snapshot ---------------------------------------------------------
#
# The tracker is stopped only until a consistent view of the database exists,
# not for the whole dump (the maintenance script starts it again when `snapshot`
# prints SNAPSHOT_OPEN_LINE). Two InnoDB read views are opened, both while the
# tracker is stopped, so both see the same committed state:
#   1. the row-count session: one mariadb client whose START TRANSACTION WITH
#      CONSISTENT SNAPSHOT has returned (its SELECT of a sync token is answered
#      only after that statement succeeded; --unbuffered hands the answer over
#      at once);
#   2. the dump: mariadb-dump --single-transaction --verbose. Its main() runs
#      START TRANSACTION WITH CONSISTENT SNAPSHOT (start_transaction(), after
#      printing "-- Starting transaction...") and exits on failure; only then
#      does it dump the database, whose first step prints "-- Setting
#      savepoint..." (dump_all_tables_in_db(), for an empty database too). That
#      line on its stderr is the signal that the dump's view exists. An error
#      line starts with the program's name, never with "-- ".
# Then SNAPSHOT_OPEN_LINE is printed; the counts run in view 1 and the dump goes
# on in view 2 while the tracker writes again: neither sees those writes.
# (Only InnoDB tables get a read view; the tracker's tables are InnoDB.)
readonly DUMP_TRANSACTION_STARTING="-- Starting transaction..."
readonly DUMP_SNAPSHOT_OPEN="-- Setting savepoint..."

SESSION_IN_FD=""               # the row-count session's stdin (a FIFO)
SESSION_OUT_FD=""              # its stdout (a FIFO)
SESSION_TOKEN=""               # the line that ends each answer
SESSION_PID=""                 # the session's client
declare -ga BACKGROUND_PIDS=() # killed on exit: the session, the dump

# Start the row-count session: a mariadb client that reads statements from a
# FIFO in staging directory $1, one answer at a time (session_query).
session_open() {
  local dir="$1"
  mkfifo -m 0600 -- "${dir}/session.in" "${dir}/session.out" \
    || die "${EXIT_BACKUP}" "cannot create FIFOs in ${dir}"
  "${MYSQL_CLIENT[@]}" --batch --skip-column-names --unbuffered \
    <"${dir}/session.in" >"${dir}/session.out" &
  SESSION_PID=$!
  BACKGROUND_PIDS+=("${SESSION_PID}")
  exec {SESSION_IN_FD}>"${dir}/session.in" {SESSION_OUT_FD}<"${dir}/session.out"
  rm -f -- "${dir}/session.in" "${dir}/session.out"
  SESSION_TOKEN="backup.sh-sync-$$-${SRANDOM}"
}

# session_query SQL OUT: run SQL in the session; its output lines go to file
# OUT. Returns 1 when the session ended first (the client's error is on stderr).
session_query() {
  local sql="$1" out="$2" line
  # A subshell: should the client be gone, SIGPIPE ends the subshell only.
  (printf '%s\nSELECT '\''%s'\'';\n' "${sql}" "${SESSION_TOKEN}" >&"${SESSION_IN_FD}") 2>/dev/null || return 1
  : >"${out}"
  while IFS= read -r line <&"${SESSION_OUT_FD}"; do
    [[ "${line}" != "${SESSION_TOKEN}" ]] || return 0
    printf '%s\n' "${line}" >>"${out}"
  done
  return 1
}

# End the session (its transaction rolls back: it only read) and reap it.
session_close() {
  exec {SESSION_IN_FD}>&- {SESSION_OUT_FD}<&-
  wait "${SESSION_PID}" || die "${EXIT_BACKUP}" "the row-count session failed (see the client's error above)"
}

# Row counts of every table listed in file $2, in the session's view, as
# "table=count" lines in $1.
session_row_counts() {
  local out="$1" list="$2" table
  local -a tables=()
  mapfile -t tables <"${list}"
  : >"${out}"
  ((${#tables[@]} > 0)) || return 0
  local sql=""
  for table in "${tables[@]}"; do
    # shellcheck disable=SC2016  # backticks quote a MySQL identifier
    sql+="$(printf 'SELECT COUNT(*) FROM `%s`;' "${table//\`/\`\`}")"$'\n'
  done
  session_query "${sql}" "${out}.counts" || die "${EXIT_BACKUP}" "cannot count rows in ${CONFIG[DB_NAME]}"
  pair_counts "${out}" "${out}" "${tables[@]}"
  rm -f -- "${out}.counts"
}

# Start mariadb-dump (options $2...) into $1/dump.sql and return once its
# consistent snapshot is open (DUMP_SNAPSHOT_OPEN on its stderr) or it has
# ended successfully. Its other stderr lines (errors, warnings) are passed on;
# its progress lines ("-- ...") are dropped. DUMP_PID is the dump.
DUMP_PID=""
DUMP_ERR_FD=""
dump_until_snapshot_open() {
  local dir="$1" line started="no"
  shift
  mkfifo -m 0600 -- "${dir}/dump.err" || die "${EXIT_BACKUP}" "cannot create a FIFO in ${dir}"
  # Without the session's FIFOs: the session must see EOF (and end its
  # transaction) when session_close closes them, not when the dump ends.
  "${MYSQL_DUMP[@]}" "$@" "${CONFIG[DB_NAME]}" >"${dir}/dump.sql" 2>"${dir}/dump.err" \
    {SESSION_IN_FD}>&- {SESSION_OUT_FD}<&- &
  DUMP_PID=$!
  BACKGROUND_PIDS+=("${DUMP_PID}")
  exec {DUMP_ERR_FD}<"${dir}/dump.err"
  rm -f -- "${dir}/dump.err"
  while IFS= read -r line <&"${DUMP_ERR_FD}"; do
    case "${line}" in
      "${DUMP_TRANSACTION_STARTING}"*) started="yes" ;;
      "${DUMP_SNAPSHOT_OPEN}"*)
        if [[ "${started}" == yes ]]; then
          return 0
        fi
        ;;
      "-- "*) ;;
      *) printf '%s\n' "${line}" >&2 ;;
    esac
  done
  # The dump ended before the signal: fine only when it succeeded.
  if ! wait "${DUMP_PID}"; then
    die "${EXIT_BACKUP}" "mariadb-dump failed (see its error above)"
  fi
  [[ "${started}" == yes ]] || die "${EXIT_BACKUP}" "mariadb-dump did not start its transaction (--single-transaction)"
}

# After dump_until_snapshot_open: pass the dump's remaining error lines on,
# wait for it, and check that it is complete.
dump_wait() {
  local dir="$1" line
  while IFS= read -r line <&"${DUMP_ERR_FD}"; do
    [[ "${line}" == "-- "* ]] || printf '%s\n' "${line}" >&2
  done
  exec {DUMP_ERR_FD}<&-
  if ! wait "${DUMP_PID}"; then
    die "${EXIT_BACKUP}" "mariadb-dump failed (see its error above)"
  fi
  local tail_bytes
  tail_bytes="$(tail -c 200 -- "${dir}/dump.sql")"
  if [[ ! -s "${dir}/dump.sql" ]] || ! check_dump_marker "${tail_bytes}"; then
    die "${EXIT_BACKUP}" "the dump is empty or lacks '${DUMP_MARKER}'"
  fi
}

# Before the tracker is stopped (prepare_snapshot): the option file, whether
# events may be dumped, and the row-count session, connected and checked but
# without a transaction yet. A database that does not answer fails the run here.
declare -ga DUMP_OPTIONS=()
prepare_mysql() {
  local dir="$1"
  setup_mysql "${dir}"
  DUMP_OPTIONS=(--single-transaction --quick --no-tablespaces --hex-blob --routines --triggers --verbose)
  if "${MYSQL_CLIENT[@]}" --batch -e 'SHOW EVENTS' >/dev/null 2>&1; then
    DUMP_OPTIONS+=(--events)
  else
    log "events are not dumped: ${CONFIG[DB_USER]} may not list them (no EVENT privilege)"
  fi
  session_open "${dir}"
  if ! session_query "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;" "${dir}/session.txt"; then
    die "${EXIT_BACKUP}" "cannot query database ${CONFIG[DB_NAME]} at ${CONFIG[DB_HOST]}:${CONFIG[DB_PORT]} as ${CONFIG[DB_USER]} (see the client's error above)"
  fi
  log "dumping MySQL database ${CONFIG[DB_NAME]} from ${CONFIG[DB_HOST]}:${CONFIG[DB_PORT]}"
}

snapshot_mysql() {
  local dir="$1"
  if ! session_query "START TRANSACTION WITH CONSISTENT SNAPSHOT;" "${dir}/session.txt" \
    || ! session_query "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY table_name;" "${dir}/tables"; then
    die "${EXIT_BACKUP}" "cannot query database ${CONFIG[DB_NAME]} at ${CONFIG[DB_HOST]}:${CONFIG[DB_PORT]} as ${CONFIG[DB_USER]} (see the client's error above)"
  fi
  dump_until_snapshot_open "${dir}" "${DUMP_OPTIONS[@]}"
  snapshot_is_open
  session_row_counts "${dir}/rows" "${dir}/tables"
  session_close
  rm -f -- "${dir}/tables" "${dir}/session.txt"
  dump_wait "${dir}"
  log "dump complete"
}

# The consistent view of the database exists: tell the maintenance script (on
# stdout) when this is `backup.sh snapshot`, then log it (the line first: the
# tracker waits for it).
SNAPSHOT_SIGNAL="no"
snapshot_is_open() {
  if [[ "${SNAPSHOT_SIGNAL}" == yes ]]; then
    printf '%s\n' "${SNAPSHOT_OPEN_LINE}"
  fi
  log "consistent snapshot open"
}

# Before the tracker is stopped (prepare_snapshot): check the database file,
# link it as source.db into the staging directory $1, and start the sqlite3
# that will copy it, reading its commands from a FIFO (snapshot_sqlite): its
# start-up is then not part of the window. Until its BEGIN it only holds the
# file open, without a lock.
SQLITE_SOURCE=""
SQLITE_PID=""
SQLITE_IN_FD=""
prepare_sqlite() {
  local dir="$1" source="${CONFIG[DB_PATH]}"
  if [[ ! -f "${source}" ]]; then
    die "${EXIT_BACKUP}" "SQLite database ${source} does not exist"
  fi
  if [[ ! -r "${source}" ]]; then
    die "${EXIT_BACKUP}" "SQLite database ${source} is not readable by uid $(id -u)"
  fi
  [[ "${source}" == /* ]] || source="${PWD}/${source}"
  SQLITE_SOURCE="${source}"
  log "SQLite database ${source}: the snapshot is a file copy under a read lock"
  ln -s -- "${source}" "${dir}/source.db" || die "${EXIT_BACKUP}" "cannot create ${dir}/source.db"
  mkfifo -m 0600 -- "${dir}/sqlite.in" || die "${EXIT_BACKUP}" "cannot create a FIFO in ${dir}"
  (cd -- "${dir}" && exec sqlite3 -bail -readonly -cmd '.timeout 10000' "${source}" <sqlite.in >mode) &
  SQLITE_PID=$!
  BACKGROUND_PIDS+=("${SQLITE_PID}")
  exec {SQLITE_IN_FD}>"${dir}/sqlite.in"
  rm -f -- "${dir}/sqlite.in"
}

# cp inside a read transaction: its SHARED lock keeps every writer from changing
# the file until the copy is done, and cp streams large blocks where the online
# backup API copies page by page (3-4x slower for a 1 GB database, see
# bench/README.md). Run in the staging directory, with source.db a symlink to
# the database (prepare_sqlite), so the .shell line needs no quoting; copy.ok
# tells that cp succeeded (sqlite3 ignores .shell's exit status). Nothing
# starts here but the copy's sh and cp: this is the window.
snapshot_sqlite() {
  local dir="$1" source="${SQLITE_SOURCE}" line journal_mode="" rc=0
  # A subshell: should sqlite3 be gone, SIGPIPE ends the subshell only.
  (printf '%s\n' 'BEGIN;' 'SELECT count(*) FROM sqlite_master;' 'PRAGMA journal_mode;' \
    '.shell cp -- source.db snapshot.db && : >copy.ok' 'COMMIT;' >&"${SQLITE_IN_FD}") 2>/dev/null || rc=$?
  exec {SQLITE_IN_FD}>&-
  wait "${SQLITE_PID}" || rc=$?
  if ((rc != 0)); then
    die "${EXIT_BACKUP}" "SQLite copy of ${source} failed (see the error above)"
  fi
  if [[ ! -f "${dir}/copy.ok" ]]; then
    die "${EXIT_BACKUP}" "SQLite copy of ${source} failed (see cp's error above)"
  fi
  # The last line of sqlite3's output: the journal mode.
  while IFS= read -r line || [[ -n "${line}" ]]; do journal_mode="${line}"; done <"${dir}/mode"
  # Only a rollback-journal database is whole in its main file. A WAL database
  # keeps committed pages in its -wal file, which the copy misses: any other
  # journal mode (or unexpected output) is copied with the online backup API.
  case "${journal_mode}" in
    delete | truncate | persist) ;;
    *)
      log "journal mode '${journal_mode}': copying with the online backup API instead"
      rm -f -- "${dir}/snapshot.db"
      if ! (cd -- "${dir}" && sqlite3 -bail -readonly -cmd '.timeout 10000' "${source}" '.backup snapshot.db'); then
        die "${EXIT_BACKUP}" "SQLite backup of ${source} failed (see the error above)"
      fi
      ;;
  esac
}

# Everything of set SET_TS (new_set_ts) that needs no stopped tracker: its
# staging directory and the engine's preparation (prepare_mysql, prepare_sqlite).
prepare_snapshot() {
  local dir="${STAGING_DIR}/${SET_TS}"
  log "set ${SET_TS} (UTC): snapshot of the ${CONFIG[DB_TYPE]} database"
  FAILURE_DIRS+=("${dir}")
  mkdir -- "${dir}" || die "${EXIT_BACKUP}" "cannot create ${dir}"
  case "${CONFIG[DB_TYPE]}" in
    mysql) prepare_mysql "${dir}" ;;
    sqlite) prepare_sqlite "${dir}" ;;
  esac
}

# `snapshot --gate SECONDS`: SNAPSHOT_READY_LINE on stdout, then one line from
# stdin. Only SNAPSHOT_GO_LINE goes on; EOF (the maintenance script is gone),
# another line or SECONDS without a line end the run with EXIT_BACKUP: the
# EXIT trap removes the staging directory and the lock goes with the process.
wait_for_go() {
  local seconds="$1" line="" rc=0
  printf '%s\n' "${SNAPSHOT_READY_LINE}"
  log "ready; waiting for '${SNAPSHOT_GO_LINE}' on stdin (at most ${seconds} s)"
  IFS= read -r -t "${seconds}" line || rc=$?
  if ((rc > 128)); then
    die "${EXIT_BACKUP}" "no '${SNAPSHOT_GO_LINE}' on stdin within ${seconds} s; no snapshot taken"
  fi
  if ((rc != 0)); then
    die "${EXIT_BACKUP}" "stdin ended before '${SNAPSHOT_GO_LINE}'; no snapshot taken"
  fi
  if [[ "${line}" != "${SNAPSHOT_GO_LINE}" ]]; then
    die "${EXIT_BACKUP}" "expected '${SNAPSHOT_GO_LINE}' on stdin, got another line; no snapshot taken"
  fi
}

# Take the consistent database snapshot of set SET_TS into staging (after
# prepare_snapshot).
take_snapshot() {
  local started_at="$1"
  local ts="${SET_TS}" dir="${STAGING_DIR}/${SET_TS}"
  local snapshot_started_at
  TZ=UTC0 printf -v snapshot_started_at '%(%Y-%m-%dT%H:%M:%SZ)T' -1
  case "${CONFIG[DB_TYPE]}" in
    mysql) snapshot_mysql "${dir}" ;;
    sqlite)
      snapshot_sqlite "${dir}"
      snapshot_is_open
      rm -f -- "${dir}/source.db" "${dir}/copy.ok" "${dir}/mode"
      ;;
  esac
  {
    printf 'set=%s\n' "${ts}"
    printf 'db_type=%s\n' "${CONFIG[DB_TYPE]}"
    printf 'tool_version=%s\n' "${TOOL_VERSION}"
    printf 'started_at=%s\n' "${started_at}"
    printf 'snapshot_started_at=%s\n' "${snapshot_started_at}"
    printf 'snapshot_finished_at=%s\n' "$(utc_now)"
  } >"${dir}/meta.partial" || die "${EXIT_BACKUP}" "cannot write ${dir}/meta.partial"
  : >"${dir}/snapshot.ok" || die "${EXIT_BACKUP}" "cannot write ${dir}/snapshot.ok"
  # From here on the snapshot waits for `finish TS`, even if this run fails.
  FAILURE_DIRS=()
  log "set ${ts}: snapshot done in staging"
}

# --- finish -------------------------------------------------------------------

# COMPRESSOR for the database file (BACKUP_COMPRESSION at its level), and
# CONFIG_COMPRESSOR for the config archive, which stays .tar.gz (gzip at the
# level, or at 6 when the database file is zstd's).
setup_compressor() {
  local level="${CONFIG[BACKUP_COMPRESSION_LEVEL]}" gzip_tool="gzip"
  command -v pigz >/dev/null 2>&1 && gzip_tool="pigz"
  if [[ "${CONFIG[BACKUP_COMPRESSION]}" == zstd ]]; then
    command -v zstd >/dev/null 2>&1 || die "${EXIT_BACKUP}" "BACKUP_COMPRESSION=zstd but zstd is not installed"
    COMPRESSOR=(zstd -q -c -T0 "-${level}")
    CONFIG_COMPRESSOR=("${gzip_tool}" -c -n -6)
  else
    COMPRESSOR=("${gzip_tool}" -c -n "-${level}")
    CONFIG_COMPRESSOR=("${COMPRESSOR[@]}")
  fi
}

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

# Compress staging file $1 to $2, testing the compressed stream while it is
# written (tee into gzip -t / zstd -t) rather than in a second pass over the
# file. With $3, gzip -dc / zstd -dc does the test and the stream's last 200
# bytes go to file $3.
compress_to() {
  local source="$1" target="$2" tail_file="${3:-/dev/null}"
  local -a check=(gzip -t)
  [[ "${tail_file}" == /dev/null ]] || check=(gzip -dc)
  if [[ "${COMPRESSOR[0]}" == zstd ]]; then
    check=(zstd -q -t)
    [[ "${tail_file}" == /dev/null ]] || check=(zstd -q -d -c)
  fi
  "${COMPRESSOR[@]}" <"${source}" | tee -- "${target}" | "${check[@]}" | tail -c 200 >"${tail_file}" \
    && return 0
  local -a statuses=("${PIPESTATUS[@]}")
  if ((statuses[0] != 0)); then
    die "${EXIT_BACKUP}" "compressing ${source##*/} failed"
  fi
  if ((statuses[2] != 0)); then
    die "${EXIT_VERIFY}" "${target##*/} fails ${check[0]} -t"
  fi
  die "${EXIT_BACKUP}" "writing ${target##*/} failed (tee/tail exit ${statuses[1]}/${statuses[3]}; see above)"
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
  local out="${dir}/out" db_name config_name="config/config_${ts}.tar.gz"
  local meta_name="manifests/set_${ts}.meta" sums_name="manifests/set_${ts}.sha256"
  db_name="$(db_file_name "${db_type}" "${ts}" "${CONFIG[BACKUP_COMPRESSION]}")" || die "${EXIT_INTERNAL}" "unknown db_type in ${dir}/meta.partial"
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
  if ! gzip -t -- "${out}/${config_name}" || ! tar --list --gzip --file="${out}/${config_name}" >"${dir}/config.list"; then
    die "${EXIT_VERIFY}" "the config archive fails gzip -t or tar --list"
  fi
  log "config archive holds $(wc -l <"${dir}/config.list") entries"

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
    rm -f -- "${ROOT_DIR}/manifests/set_${ts}.sha256" || die "${EXIT_BACKUP}" "retention: cannot delete set ${ts}"
    for relative in "${files[@]}"; do
      rm -f -- "${ROOT_DIR:?}/${relative}" || die "${EXIT_BACKUP}" "retention: cannot delete ${relative}"
    done
    deleted=$((deleted + 1))
  done < <(all_set_timestamps)
  log "retention: ${deleted} set(s) deleted, keeping sets younger than ${days} days${keep:+ and newest complete set ${keep}}"
}

# --- verify -------------------------------------------------------------------

# Resolve TS|latest into SET_TS; $2 is the exit code when there is none.
resolve_set() {
  local wanted="$1" code="$2"
  if [[ "${wanted}" == "latest" ]]; then
    SET_TS="$(latest_complete_set)"
    [[ -n "${SET_TS}" ]] || die "${code}" "no complete backup set in ${ROOT_DIR}"
    return 0
  fi
  if [[ ! "${wanted}" =~ ${TS_REGEX} ]]; then
    die "${EXIT_CONFIG}" "'${wanted}' is not a set name (YYYYMMDD_HHMMSS or latest)"
  fi
  if [[ -z "$(set_files "${wanted}")" ]]; then
    die "${code}" "no backup set ${wanted} in ${ROOT_DIR}"
  fi
  if ! set_is_complete "${wanted}"; then
    die "${code}" "set ${wanted} is incomplete (no manifests/set_${wanted}.sha256)"
  fi
  SET_TS="${wanted}"
}

# Check checksums, names and gzip/tar integrity of complete set $1.
verify_set() {
  local ts="$1" sums="manifests/set_$1.sha256" line number=0 relative
  local -a payload=()
  local -A kinds=()
  local line_regex="^[0-9a-f]{64}  (mysql/mysql_${ts}[.]sql[.](gz|zst)|sqlite/sqlite_${ts}[.]db[.](gz|zst)"
  line_regex+="|config/config_${ts}[.]tar[.]gz|manifests/set_${ts}[.]meta)$"
  while IFS= read -r line || [[ -n "${line}" ]]; do
    number=$((number + 1))
    if [[ ! "${line}" =~ ${line_regex} ]]; then
      die "${EXIT_VERIFY}" "${sums}:${number}: unexpected line (corrupt manifest)"
    fi
    relative="${BASH_REMATCH[1]}"
    payload+=("${relative}")
    kinds["${relative%%/*}"]=$((${kinds[${relative%%/*}]:-0} + 1))
  done <"${ROOT_DIR}/${sums}"
  if [[ "${kinds[config]:-0}" != 1 || "${kinds[manifests]:-0}" != 1 ]] \
    || (("${kinds[mysql]:-0}" + "${kinds[sqlite]:-0}" != 1)); then
    die "${EXIT_VERIFY}" "${sums} does not list exactly one database file, one config archive and one .meta"
  fi
  if ! (cd -- "${ROOT_DIR}" && sha256sum --check --strict --quiet -- "${sums}") >&2; then
    die "${EXIT_VERIFY}" "set ${ts}: checksum mismatch or missing file"
  fi
  local tail_bytes
  for relative in "${payload[@]}"; do
    case "${relative}" in
      *.gz)
        gzip -t -- "${ROOT_DIR}/${relative}" || die "${EXIT_VERIFY}" "${relative} fails gzip -t"
        ;;&
      *.zst)
        zstd -q -t -- "${ROOT_DIR}/${relative}" || die "${EXIT_VERIFY}" "${relative} fails zstd -t"
        ;;&
      *.tar.gz)
        tar --list --gzip --file="${ROOT_DIR}/${relative}" >/dev/null \
          || die "${EXIT_VERIFY}" "${relative} is not a readable tar archive"
        ;;
      *.sql.gz | *.sql.zst)
        if ! tail_bytes="$(decompress "${ROOT_DIR}/${relative}" | tail -c 200)" || ! check_dump_marker "${tail_bytes}"; then
          die "${EXIT_VERIFY}" "${relative} does not end with '${DUMP_MARKER}'"
        fi
        ;;
    esac
  done
  log "set ${ts}: verified (${#payload[@]} files + manifest)"
  VERIFIED_FILES=("${payload[@]}")
}

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
  sqlite_row_counts "${temporary}" "${temporary}.rows"
  CLEANUP_FILES+=("${temporary}.rows")
  compare_row_counts "${meta}" "${temporary}.rows"
  if [[ -e "${target}" ]]; then
    local stamp aside suffix
    stamp="$(date -u '+%Y%m%d_%H%M%S')"
    aside="${target}.before-restore-${stamp}"
    if [[ -e "${aside}" ]]; then
      die "${EXIT_BACKUP}" "${aside} already exists; retry in a second"
    fi
    chmod --reference="${target}" -- "${temporary}"
    if [[ "$(id -u)" == 0 ]]; then
      chown --reference="${target}" -- "${temporary}"
    fi
    # Keep the old database (and any journal of it) aside; a hard link keeps
    # the target in place until the atomic rename below.
    ln -- "${target}" "${aside}" 2>/dev/null || cp -p -- "${target}" "${aside}" \
      || die "${EXIT_BACKUP}" "cannot keep the old database aside as ${aside}"
    for suffix in -wal -shm -journal; do
      if [[ -e "${target}${suffix}" ]]; then
        mv -- "${target}${suffix}" "${aside}${suffix}" || die "${EXIT_BACKUP}" "cannot move ${target}${suffix} aside"
      fi
    done
    log "the old database is kept as ${aside}"
  fi
  mv -f -- "${temporary}" "${target}" || die "${EXIT_BACKUP}" "cannot rename the restored database into place"
  log "SQLite database ${target} restored from set ${ts}"
}

restore_mysql() {
  local ts="$1" file="$2" meta="$3"
  mkdir -p -- "${STAGING_DIR}" || die "${EXIT_BACKUP}" "cannot create ${STAGING_DIR}"
  setup_mysql "${STAGING_DIR}"
  if ! "${MYSQL_CLIENT[@]}" --batch -e 'SELECT 1' >/dev/null; then
    die "${EXIT_BACKUP}" "cannot connect to ${CONFIG[DB_NAME]} at ${CONFIG[DB_HOST]}:${CONFIG[DB_PORT]} (see the client's error above)"
  fi
  log "restoring MySQL database ${CONFIG[DB_NAME]} at ${CONFIG[DB_HOST]}:${CONFIG[DB_PORT]} from ${file}"
  if ! decompress "${ROOT_DIR}/${file}" | "${MYSQL_CLIENT[@]}" --batch; then
    die "${EXIT_BACKUP}" "loading the dump failed (decompress/mariadb exit ${PIPESTATUS[*]}; see above)"
  fi
  local counts_file="${STAGING_DIR}/restore-rows.$$"
  CLEANUP_FILES+=("${counts_file}")
  mysql_row_counts "${counts_file}"
  compare_row_counts "${meta}" "${counts_file}"
  log "MySQL database ${CONFIG[DB_NAME]} restored from set ${ts}"
}

restore_config() {
  local ts="$1" file="$2"
  local destination="${RESTORE_CONFIG_ROOT:-${ROOT_DIR}/restore-${ts}}"
  mkdir -p -- "${destination}" || die "${EXIT_BACKUP}" "cannot create ${destination}"
  log "extracting ${file} into ${destination}"
  tar --extract --gzip --file="${ROOT_DIR}/${file}" --directory="${destination}" \
    || die "${EXIT_BACKUP}" "extracting ${file} failed"
  log "config files of set ${ts} restored under ${destination}"
}

# --- commands -----------------------------------------------------------------

cmd_snapshot() {
  local started_at gate_seconds=""
  if (($# > 0)); then
    if (($# != 2)) || [[ "$1" != --gate || ! "$2" =~ ^[1-9][0-9]{0,5}$ ]]; then
      die "${EXIT_CONFIG}" "usage: backup.sh snapshot [--gate SECONDS] (SECONDS: 1-999999)"
    fi
    gate_seconds="$2"
  fi
  started_at="$(utc_now)"
  load_config "${CONFIG_PATH}"
  validate_config backup
  prepare_root
  acquire_lock
  ON_ERROR_EXIT="${EXIT_BACKUP}"
  new_set_ts
  clean_stale_staging
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
  prepare_root
  acquire_lock
  ON_ERROR_EXIT="${EXIT_BACKUP}"
  finish_set "${ts}"
  retention_unless_no_prune
  printf '%s\n' "${ts}"
}

cmd_run() {
  parse_prune_option "$@"
  ((${#PRUNE_ARGS[@]} == 0)) || die "${EXIT_CONFIG}" "usage: backup.sh run [--no-prune]"
  local started_at
  started_at="$(utc_now)"
  load_config "${CONFIG_PATH}"
  validate_config backup
  prepare_root
  acquire_lock
  ON_ERROR_EXIT="${EXIT_BACKUP}"
  new_set_ts
  clean_stale_staging
  prepare_snapshot
  take_snapshot "${started_at}"
  # Nobody retries the finish of a failed run: drop the whole staging then.
  FAILURE_DIRS+=("${STAGING_DIR}/${SET_TS}")
  finish_set "${SET_TS}"
  retention_unless_no_prune
  printf '%s\n' "${SET_TS}"
}

cmd_list() {
  local ts state
  local -a files=()
  [[ -d "${ROOT_DIR}" ]] || die "${EXIT_CONFIG}" "BACKUP_ROOT ${ROOT_DIR} does not exist"
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
  acquire_lock
  resolve_set "${wanted:-latest}" "${EXIT_REFUSED}"
  local ts="${SET_TS}"
  log "restoring set ${ts} (${only})"
  verify_set "${ts}"
  ON_ERROR_EXIT="${EXIT_BACKUP}"
  local meta="${ROOT_DIR}/manifests/set_${ts}.meta" db_file config_file="config/config_${ts}.tar.gz"
  if [[ "${only}" != config ]]; then
    # The set's database file, whichever its compression (verify_set allows one).
    local relative found="no" compression
    for compression in gzip zstd; do
      for relative in "${VERIFIED_FILES[@]}"; do
        if [[ "${relative}" == "$(db_file_name "${CONFIG[DB_TYPE]}" "${ts}" "${compression}")" ]]; then
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

main() {
  umask 077
  trap 'on_err "$?" "${LINENO}" "${BASH_COMMAND}"' ERR
  trap on_exit EXIT
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
  init_paths
  local command="run"
  if (($# > 0)); then
    command="$1"
    shift
  fi
  case "${command}" in
    list)
      (($# == 0)) || die "${EXIT_CONFIG}" "${command} takes no arguments (see --help)"
      cmd_list
      ;;
    snapshot)
      cmd_snapshot "$@"
      ;;
    run)
      cmd_run "$@"
      ;;
    finish)
      cmd_finish "$@"
      ;;
    verify)
      (($# <= 1)) || die "${EXIT_CONFIG}" "usage: backup.sh verify [TS|latest]"
      cmd_verify "${1:-latest}"
      ;;
    restore)
      cmd_restore "$@"
      ;;
    -h | --help | help)
      usage
      ;;
    *)
      usage >&2
      die "${EXIT_CONFIG}" "unknown command '${command}'"
      ;;
  esac
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
