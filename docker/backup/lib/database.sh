# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# Database access: MySQL credentials, row counts, the dump's completion marker.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

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

# The MySQL server did not answer a query (the client said why on stderr).
die_cannot_query() {
  die "${EXIT_BACKUP}" "cannot query database ${CONFIG[DB_NAME]} at ${CONFIG[DB_HOST]}:${CONFIG[DB_PORT]} as ${CONFIG[DB_USER]} (see the client's error above)"
}

# Write "table=count" for every base table of the MySQL database to $1.
mysql_row_counts() {
  local out="$1" work="$1.work"
  local -a tables=()
  if ! "${MYSQL_CLIENT[@]}" --batch --skip-column-names -e \
    "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY table_name" \
    >"${work}"; then
    die_cannot_query
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

# Before a restore: drop the database's base tables that the set (meta $1) does
# not list. Made after the set was taken (by a newer tracker), they would stay
# next to the restored tables, holding data from after the set; the dump
# replaces only its own tables.
drop_tables_not_in_set() {
  local meta="$1" work="${STAGING_DIR}/restore-tables.$$" line table
  local -A listed=()
  local -a extra=()
  while IFS= read -r line; do
    [[ "${line}" == rows.* ]] || continue
    line="${line#rows.}"
    listed["${line%=*}"]=1
  done <"${meta}"
  CLEANUP_FILES+=("${work}")
  if ! "${MYSQL_CLIENT[@]}" --batch --skip-column-names -e \
    "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY table_name" \
    >"${work}"; then
    die_cannot_query
  fi
  while IFS= read -r table; do
    [[ -n "${listed[${table}]:-}" ]] || extra+=("${table}")
  done <"${work}"
  ((${#extra[@]} > 0)) || return 0
  log "dropping the table(s) the set does not have (made after it was taken): ${extra[*]}"
  {
    printf 'SET FOREIGN_KEY_CHECKS=0;\n'
    for table in "${extra[@]}"; do
      # shellcheck disable=SC2016  # backticks quote a MySQL identifier
      printf 'DROP TABLE `%s`;\n' "${table//\`/\`\`}"
    done
  } | "${MYSQL_CLIENT[@]}" --batch || die "${EXIT_BACKUP}" "cannot drop the table(s) ${extra[*]} (see the client's error above)"
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
  local meta="$1" actual="$2" line table count mismatches=0 tables
  local -A now=()
  while IFS= read -r line; do
    now["${line%=*}"]="${line##*=}"
  done <"${actual}"
  tables="${#now[@]}"
  while IFS= read -r line; do
    [[ "${line}" == rows.* ]] || continue
    line="${line#rows.}"
    table="${line%=*}"
    count="${line##*=}"
    if [[ "${now[${table}]-missing}" != "${count}" ]]; then
      log "row count mismatch in ${table}: set has ${count}, restored database has ${now[${table}]-no such table}"
      mismatches=$((mismatches + 1))
    fi
    unset 'now[${table}]'
  done <"${meta}"
  for table in "${!now[@]}"; do
    log "table ${table} is in the restored database but not in the set (${now[${table}]} rows)"
    mismatches=$((mismatches + 1))
  done
  if ((mismatches > 0)); then
    die "${EXIT_VERIFY}" "${mismatches} table(s) differ from the set's row counts"
  fi
  log "row counts match the set (${tables} tables)"
}

# $1 holds the last bytes of a mariadb-dump output: its last line must be the
# completion marker, which a cut-off dump never has.
check_dump_marker() {
  local last_line="${1%$'\n'}"
  last_line="${last_line##*$'\n'}"
  [[ "${last_line}" == "${DUMP_MARKER}"* ]]
}
