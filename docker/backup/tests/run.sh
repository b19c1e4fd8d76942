#!/usr/bin/env bash
#
# Run the backup.sh bats tests and print a one-line summary.
#
#   tests/run.sh                      every tests/*.bats (mysql.bats needs MariaDB)
#   tests/run.sh --skip-mysql         every file except mysql.bats
#   tests/run.sh FILE.bats...         only these files
#   tests/run.sh ... -- BATS_ARGS...  pass the rest to bats (e.g. -- --filter retention)
#   tests/run.sh --record FILE ...    when every test passed or was skipped, write
#                                     FILE: the summary line, then one
#                                     "skipped: NAME # REASON" line per skipped test
#                                     (the image's tests-passed marker)
#
# MariaDB for mysql.bats: MARIADB_HOST (127.0.0.1), MARIADB_PORT (3306),
# MARIADB_USER (root), MARIADB_PASSWORD (empty). bats-support/bats-assert are
# looked up in BATS_LIB_PATH (default /usr/lib/bats, Debian's packages).
# Exit status: bats' own (0 only when every test passed or was skipped).

set -o errexit -o nounset -o pipefail

TESTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly TESTS_DIR

die() {
  printf 'tests/run.sh: %s\n' "$*" >&2
  exit 2
}

check_tools() {
  local tool
  for tool in bats sqlite3 gzip zstd tar flock sha256sum setsid restic; do
    command -v "${tool}" >/dev/null 2>&1 || die "missing tool: ${tool}"
  done
  local library
  for library in bats-support bats-assert; do
    [[ -f "${BATS_LIB_PATH}/${library}/load.bash" ]] \
      || die "missing ${library} in BATS_LIB_PATH=${BATS_LIB_PATH} (apt-get install ${library})"
  done
}

main() {
  local skip_mysql="no" record=""
  local -a files=() bats_args=()
  while (($# > 0)); do
    case "$1" in
      --skip-mysql) skip_mysql="yes" ;;
      --record)
        (($# > 1)) || die "--record needs a FILE"
        record="$2"
        shift
        ;;
      --)
        shift
        bats_args=("$@")
        break
        ;;
      -h | --help)
        sed -n '3,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        return 0
        ;;
      -*) die "unknown option $1 (bats options go after --)" ;;
      *) files+=("$1") ;;
    esac
    shift
  done
  export BATS_LIB_PATH="${BATS_LIB_PATH:-/usr/lib/bats}"
  check_tools
  if ((${#files[@]} == 0)); then
    local file
    for file in "${TESTS_DIR}"/*.bats; do
      if [[ "${skip_mysql}" == "yes" && "${file##*/}" == "mysql.bats" ]]; then
        continue
      fi
      files+=("${file}")
    done
  fi
  ((${#files[@]} > 0)) || die "no test files"

  local log
  log="$(mktemp)"
  # shellcheck disable=SC2064  # expand now: the path is fixed
  trap "rm -f -- '${log}'" EXIT
  local status=0
  bats --formatter tap --print-output-on-failure "${bats_args[@]}" "${files[@]}" | tee "${log}" || status=$?

  local total passed failed skipped summary
  total="$(grep -cE '^(not )?ok ' "${log}" || true)"
  failed="$(grep -cE '^not ok ' "${log}" || true)"
  skipped="$(grep -cE '^ok .* # skip' "${log}" || true)"
  passed=$((total - failed - skipped))
  summary="$(printf 'bats summary: %s tests, %s passed, %s failed, %s skipped' \
    "${total}" "${passed}" "${failed}" "${skipped}")"
  printf '\n%s (%s)\n' "${summary}" "${files[*]##*/}"
  if ((status == 0 && failed > 0)); then
    status=1
  fi
  if ((status == 0 && total > 0)) && [[ -n "${record}" ]]; then
    {
      printf '%s\n' "${summary}"
      sed -nE 's/^ok [0-9]+ (.*) # skip ?(.*)$/skipped: \1 # \2/p' "${log}"
    } >"${record}"
  fi
  return "${status}"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
