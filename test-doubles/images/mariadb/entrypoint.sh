#!/usr/bin/env bash
# Entrypoint of tracker-deployer-test/mariadb:e2e (Debian's mariadb-server).
#
# Behaves like the official mysql image's entrypoint for what our compose file
# uses: on the first start (empty /var/lib/mysql) it initialises the data dir,
# sets the root password (MYSQL_ROOT_PASSWORD, or MYSQL_ALLOW_EMPTY_PASSWORD=yes),
# and creates MYSQL_DATABASE and MYSQL_USER/MYSQL_PASSWORD with all privileges
# on that database. Later starts keep the data as it is.
#
# The passwords go into the SQL as the official image puts them: pasted
# unescaped between single quotes (docker-library/mysql, docker_setup_db), read
# with backslash escapes; the deployer escapes them for that
# (render/quoting.py, mysql_image_env). They never reach a command line. The
# names go in as hex literals, quoted by the server (QUOTE(), prepared
# statements). Initialisation runs on a
# temporary server without networking, so a TCP healthcheck
# (`mysqladmin ping -h 127.0.0.1`) only passes once the real server is up.
set -o errexit -o nounset -o pipefail

readonly DATA_DIR="/var/lib/mysql"
readonly INIT_SOCKET="/run/mysqld/init.sock"
readonly START_TIMEOUT_SECONDS=60

log() { printf '[mariadb-entrypoint] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Hex digits of a value's bytes. printf is a shell builtin, so the value is
# never an argument of another process (no /proc/*/cmdline leak).
hex_of() {
  printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'
}

# An SQL expression that evaluates to the value, as utf8mb4 text.
sql_text() {
  printf "CONVERT(X'%s' USING utf8mb4)" "$(hex_of "$1")"
}

# Prints the SQL that sets up users and the database. Every statement that
# needs a user-supplied name or secret is built by the server with QUOTE()
# (string literal) or backtick doubling (identifier) and run as a prepared
# statement.
init_sql() {
  local root_password="${MYSQL_ROOT_PASSWORD:-}"
  # utf8mb4 throughout: the session charset also decides how PREPARE reads
  # the statement text (a latin1 session turns '€' into '?').
  cat <<SQL
SET NAMES utf8mb4;
SET @root_password = '${root_password}';
SET @database = $(sql_text "${MYSQL_DATABASE:-}");
SET @user = $(sql_text "${MYSQL_USER:-}");
SET @password = '${MYSQL_PASSWORD:-}';
SET @stmt = CONCAT('ALTER USER ''root''@''localhost'' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(', QUOTE(@root_password), ')');
PREPARE stmt FROM @stmt; EXECUTE stmt; DEALLOCATE PREPARE stmt;
SET @stmt = CONCAT('CREATE USER ''root''@''%'' IDENTIFIED BY ', QUOTE(@root_password));
PREPARE stmt FROM @stmt; EXECUTE stmt; DEALLOCATE PREPARE stmt;
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
SQL
  if [[ -n "${MYSQL_DATABASE:-}" ]]; then
    cat <<'SQL'
SET @stmt = CONCAT('CREATE DATABASE IF NOT EXISTS `', REPLACE(@database, '`', '``'), '`');
PREPARE stmt FROM @stmt; EXECUTE stmt; DEALLOCATE PREPARE stmt;
SQL
  fi
  if [[ -n "${MYSQL_USER:-}" ]]; then
    cat <<'SQL'
SET @stmt = CONCAT('CREATE USER ', QUOTE(@user), '@''%'' IDENTIFIED BY ', QUOTE(@password));
PREPARE stmt FROM @stmt; EXECUTE stmt; DEALLOCATE PREPARE stmt;
SQL
    if [[ -n "${MYSQL_DATABASE:-}" ]]; then
      cat <<'SQL'
SET @stmt = CONCAT('GRANT ALL PRIVILEGES ON `', REPLACE(@database, '`', '``'), '`.* TO ', QUOTE(@user), '@''%''');
PREPARE stmt FROM @stmt; EXECUTE stmt; DEALLOCATE PREPARE stmt;
SQL
    fi
  fi
  printf 'FLUSH PRIVILEGES;\n'
}

check_environment() {
  if [[ -z "${MYSQL_ROOT_PASSWORD:-}" && "${MYSQL_ALLOW_EMPTY_PASSWORD:-}" != "yes" ]]; then
    die "database is uninitialized and MYSQL_ROOT_PASSWORD is not set (or set MYSQL_ALLOW_EMPTY_PASSWORD=yes)"
  fi
  if [[ -n "${MYSQL_USER:-}" && -z "${MYSQL_PASSWORD:-}" ]]; then
    die "MYSQL_USER is set but MYSQL_PASSWORD is empty"
  fi
  if [[ "${MYSQL_USER:-}" == "root" ]]; then
    die "MYSQL_USER=root is not allowed: root is set up through MYSQL_ROOT_PASSWORD"
  fi
}

wait_for_socket_server() {
  local pid="$1"
  local i
  for ((i = 0; i < START_TIMEOUT_SECONDS * 5; i++)); do
    if mariadb-admin --no-defaults --protocol=socket --socket="${INIT_SOCKET}" -uroot ping >/dev/null 2>&1; then
      return 0
    fi
    kill -0 "${pid}" 2>/dev/null || die "temporary server exited during initialisation"
    sleep 0.2
  done
  die "temporary server did not answer within ${START_TIMEOUT_SECONDS} s"
}

initialise_data_dir() {
  check_environment
  log "initialising ${DATA_DIR}"
  mariadb-install-db --user=mysql --datadir="${DATA_DIR}" --skip-test-db \
    --auth-root-authentication-method=socket >/dev/null
  mariadbd --user=mysql --datadir="${DATA_DIR}" --skip-networking \
    --socket="${INIT_SOCKET}" &
  local pid=$!
  wait_for_socket_server "${pid}"
  init_sql | mariadb --no-defaults --default-character-set=utf8mb4 \
    --protocol=socket --socket="${INIT_SOCKET}" -uroot \
    || { kill "${pid}"; die "setting up users and database failed"; }
  mariadb-admin --no-defaults --protocol=socket --socket="${INIT_SOCKET}" -uroot shutdown
  wait "${pid}" || true
  log "initialised: database '${MYSQL_DATABASE:-}' user '${MYSQL_USER:-}'"
}

main() {
  if [[ "${1:-mariadbd}" == -* ]]; then
    set -- mariadbd "$@"
  fi
  if [[ "${1:-}" != "mariadbd" && "${1:-}" != "mysqld" ]]; then
    exec "$@"
  fi
  shift
  mkdir -p /run/mysqld
  chown mysql:mysql /run/mysqld "${DATA_DIR}"
  if [[ ! -d "${DATA_DIR}/mysql" ]]; then
    initialise_data_dir
  fi
  exec mariadbd --user=mysql --datadir="${DATA_DIR}" --bind-address=0.0.0.0 \
    --skip-name-resolve "$@"
}

main "$@"
