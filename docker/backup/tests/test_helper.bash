# shellcheck shell=bash disable=SC2154
# (status, stderr and lines are set by bats' run)
#
# Shared setup for the backup.sh bats tests. Everything a test writes lives
# under $BATS_TEST_TMPDIR; databases are real SQLite files (and, in mysql.bats,
# a real MariaDB server).

export BATS_LIB_PATH="${BATS_LIB_PATH:-/usr/lib/bats}"
bats_load_library bats-support
bats_load_library bats-assert

# assert_stderr / refute_stderr [--partial|--regexp] EXPECTED: assert_output on
# the stderr of `run --separate-stderr` (bats-assert 2.2 has them; Debian's 2.1
# does not), so a failure shows the expected and the actual stderr.
if ! declare -F assert_stderr >/dev/null; then
  assert_stderr() {
    # shellcheck disable=SC2034  # read by assert_output
    local output="${stderr}"
    assert_output "$@"
  }
  refute_stderr() {
    # shellcheck disable=SC2034  # read by refute_output
    local output="${stderr}"
    refute_output "$@"
  }
fi

BACKUP_SH="$(cd "${BATS_TEST_DIRNAME}/.." && pwd)/backup.sh"
readonly BACKUP_SH

# The image version backup.sh records (tool_version). In the image build the
# Dockerfile's test stage sets BACKUP_VERSION_FILE to the file it ships; run
# from the repository, the version comes from its owner (BACKUP_IMAGE_VERSION,
# read by scripts/backup-image-version.sh) into a file of this test run.
if [[ -z "${BACKUP_VERSION_FILE:-}" ]]; then
  BACKUP_VERSION_FILE="${BATS_RUN_TMPDIR}/image-version"
  if [[ ! -s "${BACKUP_VERSION_FILE}" ]]; then
    "${BATS_TEST_DIRNAME}/../../../scripts/backup-image-version.sh" >"${BACKUP_VERSION_FILE}.$$"
    mv -f -- "${BACKUP_VERSION_FILE}.$$" "${BACKUP_VERSION_FILE}"
  fi
  export BACKUP_VERSION_FILE
fi
IMAGE_VERSION="$(cat -- "${BACKUP_VERSION_FILE}")"
# shellcheck disable=SC2034  # read by the tests
readonly IMAGE_VERSION

# A fresh BACKUP_ROOT, config directory and TMPDIR per test.
common_setup() {
  export BACKUP_ROOT="${BATS_TEST_TMPDIR}/backups"
  export CONFIG_FILE="${BATS_TEST_TMPDIR}/etc/backup.conf"
  export TMPDIR="${BATS_TEST_TMPDIR}/tmp"
  unset RESTORE_DB_PATH RESTORE_CONFIG_ROOT
  mkdir -p "${BATS_TEST_TMPDIR}/etc" "${BATS_TEST_TMPDIR}/data" "${TMPDIR}"
  # Config files to archive, as the paths file names them.
  CONFIG_TREE="${BATS_TEST_TMPDIR}/storage"
  mkdir -p "${CONFIG_TREE}/tracker/etc" "${CONFIG_TREE}/prometheus/etc"
  printf '[core]\ndb_driver = "sqlite3"\n' >"${CONFIG_TREE}/tracker/etc/tracker.toml"
  printf 'scrape_configs: []\n' >"${CONFIG_TREE}/prometheus/etc/prometheus.yml"
  PATHS_FILE="${BATS_TEST_TMPDIR}/etc/backup-paths.txt"
  printf '%s\n' "${CONFIG_TREE}/tracker/etc/tracker.toml" "${CONFIG_TREE}/prometheus/etc" >"${PATHS_FILE}"
}

# Quote a value the way the renderer writes backup.conf: single quotes, an
# embedded ' as '\'' (what a POSIX shell reads back).
shell_quote() {
  local value="$1"
  printf "'%s'" "${value//\'/\'\\\'\'}"
}

# write_config KEY=VALUE... -> $CONFIG_FILE, every value renderer-quoted.
write_config() {
  local pair
  : >"${CONFIG_FILE}"
  for pair in "$@"; do
    printf '%s=%s\n' "${pair%%=*}" "$(shell_quote "${pair#*=}")" >>"${CONFIG_FILE}"
  done
}

# A tracker-like SQLite database with $2 torrents (default 100).
make_sqlite_db() {
  local db="$1" rows="${2:-100}"
  sqlite3 "${db}" <<SQL
CREATE TABLE torrents (id INTEGER PRIMARY KEY, info_hash TEXT NOT NULL UNIQUE, completed INTEGER NOT NULL);
CREATE TABLE whitelist (id INTEGER PRIMARY KEY, info_hash TEXT NOT NULL UNIQUE);
CREATE TABLE keys (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, valid_until INTEGER);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${rows})
INSERT INTO torrents (info_hash, completed) SELECT lower(hex(randomblob(20))), abs(random() % 1000) FROM n;
INSERT INTO whitelist (info_hash) SELECT info_hash FROM torrents WHERE id <= 3;
INSERT INTO keys (key, valid_until) VALUES ('k€y with ''quotes''', 1700000000), (x'00ff', NULL);
SQL
}

# A checksum of a SQLite database's schema and content.
sqlite_content_sum() {
  sqlite3 "$1" .dump | sha256sum | cut -d' ' -f1
}

use_sqlite_config() {
  SQLITE_DB="${BATS_TEST_TMPDIR}/data/tracker.db"
  [[ -f "${SQLITE_DB}" ]] || make_sqlite_db "${SQLITE_DB}" "${1:-100}"
  write_config BACKUP_MODE=single BACKUP_RETENTION_DAYS=7 "BACKUP_PATHS_FILE=${PATHS_FILE}" \
    BACKUP_COMPRESSION_LEVEL=6 DB_TYPE=sqlite "DB_PATH=${SQLITE_DB}"
}

# Files under the final-name directories (relative to BACKUP_ROOT), sorted.
final_files() {
  if [[ -d "${BACKUP_ROOT}" ]]; then
    (cd "${BACKUP_ROOT}" && find mysql sqlite config manifests -type f 2>/dev/null | sort)
  fi
}

# The database file of set $1 (relative to BACKUP_ROOT), whichever its
# compression: backup.sh's own set layout (set_files) names it.
db_file() {
  bash -c 'source "$1" && init_paths && set_files "$2"' _ "${BACKUP_SH}" "$1" \
    | grep -E '^(mysql|sqlite)/'
}

# A set's database file $1 decompressed to stdout, as backup.sh does (by suffix).
decompressed() {
  bash -c 'source "$1" && decompress "$2"' _ "${BACKUP_SH}" "$1"
}

# Entries left in staging (empty when nothing is pending).
staging_entries() {
  if [[ -d "${BACKUP_ROOT}/.staging" ]]; then
    (cd "${BACKUP_ROOT}/.staging" && find . -mindepth 1 | sort)
  fi
}

# Run backup.sh successfully and set SET_TS to the set it wrote; a second
# set in the same second would wait, so callers may chain runs freely.
backup_ok() {
  run --separate-stderr "${BACKUP_SH}" "$@"
  if ((status != 0)); then
    printf 'backup.sh %s failed with %s:\n%s\n' "$*" "${status}" "${stderr}" >&2
    return 1
  fi
  # shellcheck disable=SC2034  # read by the tests
  SET_TS="${lines[${#lines[@]} - 1]}"
}

# Set all files of set $1 to mtime "$2" (touch -d syntax).
age_set() {
  local ts="$1" when="$2" file
  for file in "${BACKUP_ROOT}"/{mysql,sqlite,config,manifests}/*_"${ts}".*; do
    [[ -e "${file}" ]] && touch -d "${when}" "${file}"
  done
  return 0
}

# wait_for SECONDS COMMAND...: poll every 0.05 s, bounded.
wait_for() {
  local seconds="$1" tries
  shift
  for ((tries = seconds * 20; tries > 0; tries--)); do
    "$@" && return 0
    sleep 0.05
  done
  return 1
}

# Start `backup.sh snapshot --gate SECONDS` (default 30) in the background, as
# the maintenance script does: its stdin a FIFO this test holds on GATE_FD
# (write "go" to it, or close it), stdout and stderr in gate.out and gate.err.
# Returns once the ready line is there (GATE_PID: the snapshot).
start_gated_snapshot() {
  local seconds="${1:-30}" dir="${BATS_TEST_TMPDIR}"
  mkfifo "${dir}/gate.in"
  "${BACKUP_SH}" snapshot --gate "${seconds}" <"${dir}/gate.in" >"${dir}/gate.out" 2>"${dir}/gate.err" 3>&- &
  GATE_PID=$!
  # shellcheck disable=SC2034  # written and closed by the tests
  exec {GATE_FD}>"${dir}/gate.in"
  wait_for 30 grep -qx snapshot-ready "${dir}/gate.out" \
    || fail "no snapshot-ready line: $(cat "${dir}/gate.out" "${dir}/gate.err")"
}

# Wait for the gated snapshot; its exit status in GATE_STATUS.
# shellcheck disable=SC2034  # GATE_STATUS is read by the tests
wait_gated_snapshot() {
  GATE_STATUS=0
  wait "${GATE_PID}" || GATE_STATUS=$?
  GATE_PID=""
}

# Kill a gated snapshot a failed test left behind.
stop_gated_snapshot() {
  if [[ -n "${GATE_PID:-}" ]] && kill -0 "${GATE_PID}" 2>/dev/null; then
    kill "${GATE_PID}" 2>/dev/null || true
    wait "${GATE_PID}" 2>/dev/null || true
  fi
}

# Whether BACKUP_ROOT/.lock is free now.
lock_is_free() {
  flock --nonblock "${BACKUP_ROOT}/.lock" true
}

# Tell the gated snapshot to go, then finish_gated TS ROWS.
go_and_finish() {
  printf 'go\n' >&"${GATE_FD}"
  exec {GATE_FD}>&-
  finish_gated "$@"
}

# Wait for the gated snapshot (told to go), check its stdout, finish set TS and
# check the set's row count of TABLE (default torrents) is ROWS.
finish_gated() {
  local ts="$1" rows="$2" table="${3:-torrents}"
  wait_gated_snapshot
  assert_equal "${GATE_STATUS}" 0
  run cat "${BATS_TEST_TMPDIR}/gate.out"
  assert_output "$(printf '%s\n' snapshot-ready snapshot-open "${ts}")"
  backup_ok finish "${ts}"
  run cat "${BACKUP_ROOT}/manifests/set_${ts}.meta"
  assert_line "rows.${table}=${rows}"
}

# An aborted gated snapshot left no staging, no set file and no lock.
assert_gate_left_nothing() {
  run staging_entries
  assert_output ""
  run final_files
  assert_output ""
  run lock_is_free
  assert_success
}

# A `date` in PATH that runs $1 seconds ahead (every date call of backup.sh
# and offsite.sh is without -d): a host clock that jumped.
clock_ahead() {
  mkdir -p "${BATS_TEST_TMPDIR}/clock"
  printf '#!/bin/sh\nexec /usr/bin/date -d "@$(( $(/usr/bin/date +%%s) + %s ))" "$@"\n' "$1" \
    >"${BATS_TEST_TMPDIR}/clock/date"
  chmod +x "${BATS_TEST_TMPDIR}/clock/date"
  AHEAD_PATH="${BATS_TEST_TMPDIR}/clock:${PATH}"
}
