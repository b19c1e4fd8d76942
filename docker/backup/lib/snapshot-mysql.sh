# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# The MySQL snapshot: a row-count session and mariadb-dump in consistent views.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

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
# Only InnoDB tables get a read view: should the database hold a table of
# another engine (MyISAM, Aria, MEMORY: a server whose default engine is not
# InnoDB, an old import), the tracker's writes after the signal would reach the
# counts and the dump of that table, and the set would mix two moments. Then
# the signal waits until the counts and the dump are complete (HOLD_TABLES):
# the window is as long as the whole dump, and the log says which tables.
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
  # The FIFO is opened first: should dump.sql fail to open (no inode left), the
  # reader below still gets its EOF instead of waiting for a writer forever.
  "${MYSQL_DUMP[@]}" "$@" "${CONFIG[DB_NAME]}" 2>"${dir}/dump.err" >"${dir}/dump.sql" \
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
HOLD_TABLES="" # "name engine, ...": tables no consistent snapshot covers
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
  if ! session_query "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;" "${dir}/session.txt" \
    || ! session_query "SELECT table_name, engine FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' AND UPPER(COALESCE(engine, '')) <> 'INNODB' ORDER BY table_name;" "${dir}/not-innodb"; then
    die_cannot_query
  fi
  HOLD_TABLES="$(tr '\t\n' ' ,' <"${dir}/not-innodb" | sed 's/,$//; s/ ,/,/g; s/,/, /g')"
  rm -f -- "${dir}/not-innodb"
  if [[ -n "${HOLD_TABLES}" ]]; then
    log "WARNING: tables not in InnoDB (table engine: ${HOLD_TABLES}): a consistent snapshot does not cover them, so the tracker stays stopped until the whole dump is complete; convert them (ALTER TABLE name ENGINE=InnoDB) for a short window"
  fi
  log "dumping MySQL database ${CONFIG[DB_NAME]} from ${CONFIG[DB_HOST]}:${CONFIG[DB_PORT]}"
}

snapshot_mysql() {
  local dir="$1"
  if ! session_query "START TRANSACTION WITH CONSISTENT SNAPSHOT;" "${dir}/session.txt" \
    || ! session_query "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY table_name;" "${dir}/tables"; then
    die_cannot_query
  fi
  dump_until_snapshot_open "${dir}" "${DUMP_OPTIONS[@]}"
  [[ -n "${HOLD_TABLES}" ]] || snapshot_is_open
  session_row_counts "${dir}/rows" "${dir}/tables"
  session_close
  rm -f -- "${dir}/tables" "${dir}/session.txt"
  dump_wait "${dir}"
  log "dump complete"
  [[ -z "${HOLD_TABLES}" ]] || snapshot_is_open
}
