#!/usr/bin/env bats
# shellcheck disable=SC2016,SC1003,SC2030,SC2031,SC2154
# (hostile values are literal on purpose; status/stderr/lines come from bats'
# run; each @test is a subshell by design)
# MySQL backups against a REAL MariaDB server (not a mock).
#
# Server: MARIADB_HOST (127.0.0.1), MARIADB_PORT (3306), MARIADB_USER (root),
# MARIADB_PASSWORD (empty). Each test creates its own database and users and
# drops them in teardown.

bats_require_minimum_version 1.7.0

setup_file() {
  export MARIADB_HOST="${MARIADB_HOST:-127.0.0.1}"
  export MARIADB_PORT="${MARIADB_PORT:-3306}"
  export MARIADB_USER="${MARIADB_USER:-root}"
  export MARIADB_PASSWORD="${MARIADB_PASSWORD:-}"
  export ADMIN_CNF="${BATS_FILE_TMPDIR}/admin.cnf"
  (
    umask 077
    printf '[client]\nhost=%s\nport=%s\nuser=%s\npassword=%s\n' \
      "$(option_quote "${MARIADB_HOST}")" "${MARIADB_PORT}" \
      "$(option_quote "${MARIADB_USER}")" "$(option_quote "${MARIADB_PASSWORD}")" >"${ADMIN_CNF}"
  )
  if ! mariadb --defaults-extra-file="${ADMIN_CNF}" -e 'SELECT 1' >/dev/null; then
    printf 'mysql.bats needs a MariaDB server at %s:%s (user %s); set MARIADB_HOST/PORT/USER/PASSWORD\n' \
      "${MARIADB_HOST}" "${MARIADB_PORT}" "${MARIADB_USER}" >&2
    return 1
  fi
}

# Same quoting as backup.sh uses for option files.
option_quote() {
  local value="$1" backslash="\\" quote='"'
  value="${value//"${backslash}"/"${backslash}${backslash}"}"
  value="${value//"${quote}"/"${backslash}${quote}"}"
  printf '"%s"' "${value}"
}

# A MySQL string literal (default sql_mode: backslash escapes on).
sql_quote() {
  local value="$1" backslash="\\" quote="'"
  value="${value//"${backslash}"/"${backslash}${backslash}"}"
  value="${value//"${quote}"/"${quote}${quote}"}"
  printf "'%s'" "${value}"
}

admin() {
  mariadb --defaults-extra-file="${ADMIN_CNF}" --batch --skip-column-names "$@"
}

setup() {
  load test_helper
  common_setup
  local suffix="${BATS_TEST_NUMBER}_$$_${RANDOM}"
  TEST_DB="bk_db_${suffix}"
  TEST_USER="bk_user_${suffix}"
  TEST_PASSWORD="initial password"
  admin <<SQL
CREATE DATABASE \`${TEST_DB}\` CHARACTER SET utf8mb4;
CREATE USER '${TEST_USER}'@'%' IDENTIFIED BY $(sql_quote "${TEST_PASSWORD}");
CREATE USER '${TEST_USER}'@'localhost' IDENTIFIED BY $(sql_quote "${TEST_PASSWORD}");
GRANT ALL ON \`${TEST_DB}\`.* TO '${TEST_USER}'@'%';
GRANT ALL ON \`${TEST_DB}\`.* TO '${TEST_USER}'@'localhost';
USE \`${TEST_DB}\`;
CREATE TABLE torrents (id INT PRIMARY KEY AUTO_INCREMENT, info_hash BINARY(20) NOT NULL UNIQUE, completed INT NOT NULL) ENGINE=InnoDB;
CREATE TABLE whitelist (id INT PRIMARY KEY AUTO_INCREMENT, info_hash VARCHAR(40) NOT NULL UNIQUE) ENGINE=InnoDB;
CREATE TABLE \`keys\` (id INT PRIMARY KEY AUTO_INCREMENT, \`key\` VARCHAR(64) NOT NULL, valid_until BIGINT NULL) ENGINE=InnoDB;
INSERT INTO torrents (info_hash, completed) SELECT UNHEX(SHA1(seq)), seq % 97 FROM seq_1_to_500;
INSERT INTO torrents (info_hash, completed) VALUES (UNHEX('00ff0a0d5c27220900ff0a0d5c27220900ff0a0d'), 0);
INSERT INTO whitelist (info_hash) VALUES ('abc'), ('d''quote'), ('back\\\\slash');
INSERT INTO \`keys\` (\`key\`, valid_until) VALUES ('ключ ☃ 密钥', 1700000000), ('tab\there', NULL), ('', 0);
SQL
  use_mysql_config
}

use_mysql_config() {
  write_config BACKUP_MODE=single BACKUP_RETENTION_DAYS=7 "BACKUP_PATHS_FILE=${PATHS_FILE}" \
    DB_TYPE=mysql "DB_HOST=${MARIADB_HOST}" "DB_PORT=${MARIADB_PORT}" "DB_USER=${TEST_USER}" \
    "DB_PASSWORD=${TEST_PASSWORD}" "DB_NAME=${TEST_DB}"
}

set_password() {
  TEST_PASSWORD="$1"
  # Through stdin, so the password is on no command line here either.
  admin <<SQL
ALTER USER '${TEST_USER}'@'%' IDENTIFIED BY $(sql_quote "${TEST_PASSWORD}");
ALTER USER '${TEST_USER}'@'localhost' IDENTIFIED BY $(sql_quote "${TEST_PASSWORD}");
SQL
  use_mysql_config
}

teardown() {
  stop_gated_snapshot
  if [[ -n "${BG_PID:-}" ]] && kill -0 "${BG_PID}" 2>/dev/null; then
    kill -9 -- "-${BG_PID}" 2>/dev/null || true
  fi
  release_lock
  local id
  for id in $(admin -e "SELECT id FROM information_schema.processlist WHERE user IN ('${TEST_USER}', '${TEST_USER}_ro')"); do
    admin -e "KILL ${id}" 2>/dev/null || true
  done
  admin <<SQL || true
DROP DATABASE IF EXISTS \`${TEST_DB}\`;
DROP USER IF EXISTS '${TEST_USER}'@'%', '${TEST_USER}'@'localhost', '${TEST_USER}_ro'@'%', '${TEST_USER}_ro'@'localhost';
SQL
}

# One checksum per table over all rows in primary-key order, plus the schema.
table_sums() {
  local table
  for table in keys torrents whitelist; do
    printf '%s %s\n' "${table}" "$(admin -e "SHOW CREATE TABLE \`${TEST_DB}\`.\`${table}\`; SELECT * FROM \`${TEST_DB}\`.\`${table}\` ORDER BY id" | sed 's/AUTO_INCREMENT=[0-9]* //' | sha256sum | cut -d' ' -f1)"
  done
}

staged_dump_started() {
  local dump
  for dump in "${BACKUP_ROOT}"/.staging/*/dump.sql; do
    [[ -s "${dump}" ]] && return 0
  done
  return 1
}

lock_taken() {
  grep -qx locked "${BATS_TEST_TMPDIR}/lock.out" 2>/dev/null
}

release_lock() {
  if [[ -n "${LOCK_CONNECTION:-}" ]]; then
    admin -e "KILL ${LOCK_CONNECTION}" 2>/dev/null || true
    LOCK_CONNECTION=""
  fi
  if [[ -n "${LOCK_PID:-}" ]]; then
    kill "${LOCK_PID}" 2>/dev/null || true
    wait "${LOCK_PID}" 2>/dev/null || true
    LOCK_PID=""
  fi
}

# Start `backup.sh run` in its own process group and stop its dump half-way:
# a_big (~50 MB) is dumped first; once the dump has started, another session
# takes LOCK TABLES z_locked WRITE, so mariadb-dump waits at z_locked until
# release_lock. Fails loudly if the dump got past z_locked first.
start_blocked_dump() {
  admin "${TEST_DB}" <<SQL
CREATE TABLE a_big (id INT PRIMARY KEY, payload VARCHAR(255)) ENGINE=InnoDB;
INSERT INTO a_big SELECT seq, REPEAT(MD5(seq), 6) FROM seq_1_to_250000;
CREATE TABLE z_locked (id INT PRIMARY KEY) ENGINE=InnoDB;
INSERT INTO z_locked VALUES (1), (2);
SQL
  setsid "${BACKUP_SH}" run >"${BATS_TEST_TMPDIR}/bg.out" 2>"${BATS_TEST_TMPDIR}/bg.err" 3>&- &
  BG_PID=$!
  wait_for 60 staged_dump_started || fail "the dump did not start: $(cat "${BATS_TEST_TMPDIR}/bg.err")"
  mariadb --defaults-extra-file="${ADMIN_CNF}" --batch --skip-column-names --unbuffered "${TEST_DB}" \
    -e "SELECT CONNECTION_ID(); LOCK TABLES z_locked WRITE; SELECT 'locked'; SELECT SLEEP(120);" \
    >"${BATS_TEST_TMPDIR}/lock.out" 2>&1 3>&- &
  LOCK_PID=$!
  wait_for 30 lock_taken || fail "could not lock z_locked: $(cat "${BATS_TEST_TMPDIR}/lock.out")"
  LOCK_CONNECTION="$(head -n 1 "${BATS_TEST_TMPDIR}/lock.out")"
  # The dump must now get stuck at z_locked, with the run still going.
  if ! wait_for 30 dump_waits_for_lock; then
    fail "mariadb-dump is not waiting for the lock (finished first? then raise a_big): $(admin -e 'SHOW PROCESSLIST')"
  fi
  kill -0 "${BG_PID}" 2>/dev/null || fail "the backup finished before the lock"
}

dump_waits_for_lock() {
  assert_equal "$(admin -e "SELECT COUNT(*) FROM information_schema.processlist WHERE user = '${TEST_USER}' AND state LIKE '%metadata lock%'")" 1
}

@test "mysql: run writes a complete set; .meta row counts equal the database" {
  backup_ok run
  local ts="${SET_TS}"
  run final_files
  assert_output "$(printf '%s\n' "config/config_${ts}.tar.gz" "manifests/set_${ts}.meta" \
    "manifests/set_${ts}.sha256" "mysql/mysql_${ts}.sql.zst")"
  (cd "${BACKUP_ROOT}" && sha256sum --check --strict "manifests/set_${ts}.sha256")
  run cat "${BACKUP_ROOT}/manifests/set_${ts}.meta"
  assert_line "db_type=mysql"
  assert_line "rows.torrents=501"
  assert_line "rows.whitelist=3"
  assert_line "rows.keys=3"
  run bash -c 'zstd -q -d -c -- "$1" | tail -n 1' _ "${BACKUP_ROOT}/mysql/mysql_${ts}.sql.zst"
  assert_output --partial "-- Dump completed"
  run staging_entries
  assert_output ""
}

@test "mysql: hostile passwords work end to end (backup and restore)" {
  local -a passwords=(
    "p a'ss\"w\$(x)\`;#\\"
    ' leading and trailing '
    '#starts-with-hash'
    ';starts;with;semicolon'
    'ends with backslash\'
    '\n\t\\ not escapes'
    '"double"quoted"'
    "'single'quoted'"
    '$(touch pwned) and `touch pwned`'
    'ünïcödé пароль ☃ 密码'
    '[client] password=evil'
    '!@%^&*()_+-={}[]|:<>?,./~'
  )
  local password index=0
  for password in "${passwords[@]}"; do
    index=$((index + 1))
    set_password "${password}"
    export BACKUP_ROOT="${BATS_TEST_TMPDIR}/backups-${index}"
    run --separate-stderr "${BACKUP_SH}" run
    [[ "${status}" == 0 ]] || fail "backup with password #${index} failed (${status}): ${stderr}"
    [[ "${stderr}" != *"${password}"* ]] || fail "password #${index} appears in the log"
    run --separate-stderr "${BACKUP_SH}" restore latest --yes --only db
    [[ "${status}" == 0 ]] || fail "restore with password #${index} failed (${status}): ${stderr}"
  done
  refute [ -e pwned ]
  refute [ -e "${BATS_TEST_TMPDIR}/pwned" ]
}

@test "mysql: backup then restore gives identical rows (content checksums)" {
  local before
  before="$(table_sums)"
  backup_ok run
  admin "${TEST_DB}" <<'SQL'
DELETE FROM torrents WHERE id % 3 = 0;
UPDATE torrents SET completed = completed + 1;
INSERT INTO whitelist (info_hash) VALUES ('added after the backup');
DROP TABLE `keys`;
SQL
  assert_not_equal "$(admin "${TEST_DB}" -e 'SELECT COUNT(*) FROM torrents')" 501
  run --separate-stderr "${BACKUP_SH}" restore "${SET_TS}" --yes
  assert_success
  assert_stderr --partial "row counts match the set (3 tables)"
  assert_equal "$(table_sums)" "${before}"
  # The config archive went to the default restore directory.
  assert [ -f "${BACKUP_ROOT}/restore-${SET_TS}/${CONFIG_TREE#/}/tracker/etc/tracker.toml" ]
}

@test "mysql: a restore drops the tables the set does not have" {
  backup_ok run
  # A newer tracker's table, made after the set was taken: the dump replaces
  # only its own tables, so it stayed, with data from after the set.
  admin "${TEST_DB}" <<'SQL'
CREATE TABLE torrent_aggregate_metrics (id INT PRIMARY KEY, metric_name VARCHAR(50) NOT NULL, value INT NOT NULL) ENGINE=InnoDB;
INSERT INTO torrent_aggregate_metrics VALUES (1, 'after the set', 9000);
CREATE TABLE `odd ``name` (id INT PRIMARY KEY, torrent INT, FOREIGN KEY (torrent) REFERENCES torrents (id)) ENGINE=InnoDB;
SQL
  run --separate-stderr "${BACKUP_SH}" restore "${SET_TS}" --yes --only db
  assert_success
  assert_stderr --partial "dropping the table(s) the set does not have (made after it was taken): odd \`name torrent_aggregate_metrics"
  assert_stderr --partial "row counts match the set (3 tables)"
  run admin "${TEST_DB}" --skip-column-names -e "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY table_name"
  assert_output "$(printf '%s\n' keys torrents whitelist)"
}

@test "mysql: a restored database with a table the set lacks does not pass the row count check" {
  backup_ok run
  local meta="${BACKUP_ROOT}/manifests/set_${SET_TS}.meta" actual="${BATS_TEST_TMPDIR}/actual"
  grep '^rows[.]' "${meta}" | sed 's/^rows[.]//' >"${actual}"
  printf 'extra=7\n' >>"${actual}"
  run --separate-stderr bash -c "source '${BACKUP_SH}'; compare_row_counts '${meta}' '${actual}'"
  assert_failure
  assert_stderr --partial "table extra is in the restored database but not in the set (7 rows)"
}

@test "mysql: a zstd set (BACKUP_COMPRESSION=zstd) verifies and restores identical rows" {
  printf "BACKUP_COMPRESSION='zstd'\nBACKUP_COMPRESSION_LEVEL='19'\n" >>"${CONFIG_FILE}"
  local before
  before="$(table_sums)"
  backup_ok run
  assert_stderr --partial "finishing (zstd level 19)"
  zstd -q -t "${BACKUP_ROOT}/mysql/mysql_${SET_TS}.sql.zst"
  refute [ -e "${BACKUP_ROOT}/mysql/mysql_${SET_TS}.sql.gz" ]
  # The config archive stays a .tar.gz.
  gzip -t "${BACKUP_ROOT}/config/config_${SET_TS}.tar.gz"
  admin "${TEST_DB}" -e 'DELETE FROM torrents WHERE id % 2 = 0'
  run --separate-stderr "${BACKUP_SH}" verify "${SET_TS}"
  assert_success
  run --separate-stderr "${BACKUP_SH}" restore "${SET_TS}" --yes
  assert_success
  assert_stderr --partial "row counts match the set (3 tables)"
  assert_equal "$(table_sums)" "${before}"
}

@test "mysql: snapshot stages an uncompressed dump; finish completes the set" {
  backup_ok snapshot
  local ts="${SET_TS}" staged="${BACKUP_ROOT}/.staging/${SET_TS}"
  run tail -n 1 "${staged}/dump.sql"
  assert_output --partial "-- Dump completed"
  run cat "${staged}/rows"
  assert_line "torrents=501"
  # No password file left behind by the snapshot.
  run find "${staged}" -name '*.cnf'
  assert_output ""
  run final_files
  assert_output ""
  # Writes after the snapshot do not change the set.
  admin "${TEST_DB}" -e 'DELETE FROM torrents'
  backup_ok finish "${ts}"
  run cat "${BACKUP_ROOT}/manifests/set_${ts}.meta"
  assert_line "rows.torrents=501"
  run --separate-stderr "${BACKUP_SH}" verify "${ts}"
  assert_success
}

@test "mysql: snapshot --gate connects before the ready line and dumps only after go" {
  start_gated_snapshot 30
  local ts
  ts="$(cd "${BACKUP_ROOT}/.staging" && echo *)"
  run find "${BACKUP_ROOT}/.staging" -name 'dump.sql*'
  assert_output ""
  # the row-count session is connected already, without a transaction
  run admin -e "SELECT COUNT(*) FROM information_schema.processlist WHERE user = '${TEST_USER}'"
  assert_output "1"
  run admin -e "SELECT COUNT(*) FROM information_schema.innodb_trx t JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id WHERE p.user = '${TEST_USER}'"
  assert_output "0"
  # the tracker writes on while it waits; the set has the rows of "go"
  admin "${TEST_DB}" -e 'DELETE FROM torrents WHERE id > 100'
  go_and_finish "${ts}" 100
}

@test "mysql: snapshot --gate: a wrong password fails before the ready line; EOF ends the session" {
  write_config "BACKUP_PATHS_FILE=${PATHS_FILE}" DB_TYPE=mysql "DB_HOST=${MARIADB_HOST}" \
    "DB_PORT=${MARIADB_PORT}" "DB_USER=${TEST_USER}" "DB_PASSWORD=wrong" "DB_NAME=${TEST_DB}"
  run --separate-stderr "${BACKUP_SH}" snapshot --gate 30 </dev/null
  assert_equal "${status}" 3
  assert_output ""
  [[ "${stderr}" == *"Access denied"* ]]
  run staging_entries
  assert_output ""
  use_mysql_config
  start_gated_snapshot 30
  exec {GATE_FD}>&-
  wait_gated_snapshot
  assert_equal "${GATE_STATUS}" 3
  run staging_entries
  assert_output ""
  wait_for 10 session_gone || fail "the row-count session is still connected"
}

@test "mysql: with a MyISAM table the tracker stays stopped until the dump is complete" {
  admin "${TEST_DB}" -e 'CREATE TABLE keys_myisam (id INT PRIMARY KEY) ENGINE=MyISAM; INSERT INTO keys_myisam VALUES (1), (2), (3)'
  start_gated_snapshot 60
  local ts
  ts="$(cd "${BACKUP_ROOT}/.staging" && echo *)"
  run cat "${BATS_TEST_TMPDIR}/gate.err"
  assert_output --partial "WARNING: tables not in InnoDB (table engine: keys_myisam MyISAM)"
  # Another session holds the MyISAM table for 4 s: the counts and the dump wait
  # for it, and so must the signal that lets the tracker start (no read view
  # keeps the tracker's next writes out of this table).
  admin "${TEST_DB}" -e 'LOCK TABLES keys_myisam WRITE; SELECT SLEEP(4); INSERT INTO keys_myisam VALUES (4); UNLOCK TABLES' &
  local holder=$!
  wait_for 10 table_locked || fail "the table was not locked"
  printf 'go\n' >&"${GATE_FD}"
  exec {GATE_FD}>&-
  sleep 2
  run cat "${BATS_TEST_TMPDIR}/gate.out"
  assert_output "snapshot-ready"
  wait "${holder}"
  finish_gated "${ts}" 4 keys_myisam
}

table_locked() {
  [[ "$(admin -e "SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE 'SELECT SLEEP(4)%'")" == 1 ]]
}

session_gone() {
  [[ "$(admin -e "SELECT COUNT(*) FROM information_schema.processlist WHERE user = '${TEST_USER}'")" == 0 ]]
}

@test "mysql: an app user without EVENT/PROCESS privileges still gets a complete dump" {
  admin <<SQL
CREATE USER '${TEST_USER}_ro'@'%' IDENTIFIED BY 'read only';
CREATE USER '${TEST_USER}_ro'@'localhost' IDENTIFIED BY 'read only';
GRANT SELECT, SHOW VIEW ON \`${TEST_DB}\`.* TO '${TEST_USER}_ro'@'%';
GRANT SELECT, SHOW VIEW ON \`${TEST_DB}\`.* TO '${TEST_USER}_ro'@'localhost';
SQL
  write_config "BACKUP_PATHS_FILE=${PATHS_FILE}" DB_TYPE=mysql "DB_HOST=${MARIADB_HOST}" \
    "DB_PORT=${MARIADB_PORT}" "DB_USER=${TEST_USER}_ro" "DB_PASSWORD=read only" "DB_NAME=${TEST_DB}"
  backup_ok run
  assert_stderr --partial "events are not dumped"
  run cat "${BACKUP_ROOT}/manifests/set_${SET_TS}.meta"
  assert_line "rows.torrents=501"
}

@test "mysql: an unreachable database exits 3 and writes no files" {
  # Nothing listens on port 1 of the loopback address.
  write_config "BACKUP_PATHS_FILE=${PATHS_FILE}" DB_TYPE=mysql DB_HOST=127.0.0.1 DB_PORT=1 \
    "DB_USER=${TEST_USER}" "DB_PASSWORD=${TEST_PASSWORD}" "DB_NAME=${TEST_DB}"
  run --separate-stderr "${BACKUP_SH}" run
  assert_equal "${status}" 3
  assert_stderr --partial "cannot query database"
  run final_files
  assert_output ""
  run staging_entries
  assert_output ""
}

@test "mysql: a wrong password exits 3 and writes no files" {
  write_config "BACKUP_PATHS_FILE=${PATHS_FILE}" DB_TYPE=mysql "DB_HOST=${MARIADB_HOST}" \
    "DB_PORT=${MARIADB_PORT}" "DB_USER=${TEST_USER}" "DB_PASSWORD=wrong" "DB_NAME=${TEST_DB}"
  run --separate-stderr "${BACKUP_SH}" run
  assert_equal "${status}" 3
  assert_stderr --partial "Access denied"
  run final_files
  assert_output ""
  run staging_entries
  assert_output ""
}

@test "mysql: the password is not visible in ps (or the environment) during a dump" {
  set_password "ps-secret $(date +%s%N) 'q'"
  start_blocked_dump
  local snapshot pid
  snapshot="$(ps -eww -o pid=,args=)"
  [[ "${snapshot}" == *"mariadb-dump --defaults-extra-file="* ]] || fail "no mariadb-dump in ps: ${snapshot}"
  [[ "${snapshot}" != *"${TEST_PASSWORD}"* ]] || fail "password visible in ps"
  [[ "${snapshot}" != *"ps-secret"* ]] || fail "password visible in ps"
  for pid in $(pgrep -g "${BG_PID}"); do
    if tr '\0' '\n' <"/proc/${pid}/environ" 2>/dev/null | grep -qF "ps-secret"; then
      fail "password in the environment of ${pid}"
    fi
  done
  # The option file is private while it exists...
  local -a option_files=("${BACKUP_ROOT}"/.staging/*/client.*.cnf)
  assert_equal "${#option_files[@]}" 1
  run stat -c '%a' "${option_files[0]}"
  assert_output "600"
  # ...and gone once the (unblocked) run has finished.
  release_lock
  wait "${BG_PID}"
  run find "${BACKUP_ROOT}" -name '*.cnf'
  assert_output ""
  run final_files
  assert_output --partial "mysql/mysql_"
}

@test "mysql: kill -9 during a dump leaves no final-named file; the next run cleans staging" {
  start_blocked_dump
  kill -9 -- "-${BG_PID}"
  wait "${BG_PID}" || true
  BG_PID=""
  run final_files
  assert_output ""
  # The partial dump and the option file stay in staging until the next run.
  local -a dumps=("${BACKUP_ROOT}"/.staging/*/dump.sql)
  assert_equal "${#dumps[@]}" 1
  run tail -c 200 "${dumps[0]}"
  refute_output --partial "-- Dump completed"
  local killed_ts="${dumps[0]%/dump.sql}"
  killed_ts="${killed_ts##*/}"
  release_lock
  backup_ok run
  assert_stderr --partial "removing stale staging ${killed_ts}"
  run staging_entries
  assert_output ""
  run final_files
  assert_equal "${#lines[@]}" 4
  refute_output --partial "${killed_ts}"
  run --separate-stderr "${BACKUP_SH}" verify latest
  assert_success
}
