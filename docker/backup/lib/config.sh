# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# backup.conf: its grammar (parsed, never executed), defaults and validation.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

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
  CONFIG[BACKUP_COMPRESSION]="$(config_get BACKUP_COMPRESSION zstd)"
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
