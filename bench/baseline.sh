#!/usr/bin/env bash
#
# The naive backup the benchmark compares against: everything happens while
# the tracker is stopped, and the compression is single-threaded gzip. No
# integrity check, no row counts, no checksums, no config archive: it does
# less work than backup.sh, which only makes the comparison harder for us.
#
#   baseline.sh sqlite DB_PATH OUT.db.gz LEVEL      .backup to a copy, gzip the copy
#   baseline.sh mysql OPTION_FILE DATABASE OUT.sql.gz LEVEL
#                                                   mariadb-dump | gzip (same dump
#                                                   options as backup.sh)

set -o errexit -o nounset -o pipefail

die() {
  printf 'baseline.sh: %s\n' "$*" >&2
  exit 2
}

baseline_sqlite() {
  local database="$1" out="$2" level="$3"
  local directory="${out%/*}" copy="baseline-copy.db"
  [[ "${out}" == */* ]] || directory="."
  # In the output directory, so the copy's name needs no quoting for .backup.
  (cd -- "${directory}" && sqlite3 -bail -readonly -cmd '.timeout 10000' "${database}" ".backup ${copy}")
  gzip -c -n "-${level}" <"${directory}/${copy}" >"${out}"
  rm -f -- "${directory:?}/${copy}"
}

baseline_mysql() {
  local option_file="$1" database="$2" out="$3" level="$4"
  mariadb-dump "--defaults-extra-file=${option_file}" --single-transaction --quick \
    --no-tablespaces --hex-blob --routines --triggers --events "${database}" \
    | gzip -c -n "-${level}" >"${out}"
}

main() {
  local engine="${1:-}"
  (($# > 0)) && shift
  case "${engine}" in
    sqlite)
      (($# == 3)) || die "usage: baseline.sh sqlite DB_PATH OUT.db.gz LEVEL"
      baseline_sqlite "$@"
      ;;
    mysql)
      (($# == 4)) || die "usage: baseline.sh mysql OPTION_FILE DATABASE OUT.sql.gz LEVEL"
      baseline_mysql "$@"
      ;;
    *) die "usage: baseline.sh sqlite|mysql ..." ;;
  esac
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
