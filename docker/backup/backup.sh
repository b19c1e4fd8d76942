#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
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
# BACKUP_COMPRESSION=zstd, the default), gzip (pigz
# is used when present), tar, flock, sqlite3 and/or the mariadb client.

set -o errexit -o nounset -o pipefail -o errtrace

# The tool's parts, next to this file (in the image: /opt/backup/lib, with
# /usr/local/bin/backup.sh a link to /opt/backup/backup.sh).
BACKUP_LIB_DIR="$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib"
readonly BACKUP_LIB_DIR
# shellcheck source=lib/constants.sh
source "${BACKUP_LIB_DIR}/constants.sh"
# shellcheck source=lib/state.sh
source "${BACKUP_LIB_DIR}/state.sh"
# shellcheck source=lib/log.sh
source "${BACKUP_LIB_DIR}/log.sh"
# shellcheck source=lib/config.sh
source "${BACKUP_LIB_DIR}/config.sh"
# shellcheck source=lib/root.sh
source "${BACKUP_LIB_DIR}/root.sh"
# shellcheck source=lib/layout.sh
source "${BACKUP_LIB_DIR}/layout.sh"
# shellcheck source=lib/list.sh
source "${BACKUP_LIB_DIR}/list.sh"
# shellcheck source=lib/compression.sh
source "${BACKUP_LIB_DIR}/compression.sh"
# shellcheck source=lib/database.sh
source "${BACKUP_LIB_DIR}/database.sh"
# shellcheck source=lib/snapshot-mysql.sh
source "${BACKUP_LIB_DIR}/snapshot-mysql.sh"
# shellcheck source=lib/snapshot.sh
source "${BACKUP_LIB_DIR}/snapshot.sh"
# shellcheck source=lib/finish.sh
source "${BACKUP_LIB_DIR}/finish.sh"
# shellcheck source=lib/retention.sh
source "${BACKUP_LIB_DIR}/retention.sh"
# shellcheck source=lib/verify.sh
source "${BACKUP_LIB_DIR}/verify.sh"
# shellcheck source=lib/restore.sh
source "${BACKUP_LIB_DIR}/restore.sh"
# shellcheck source=lib/commands.sh
source "${BACKUP_LIB_DIR}/commands.sh"

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
  list --records [--checksums]
                             the sets as versioned, tab-separated records for
                             programs (--checksums: check complete sets' sha256)
  verify [TS|latest]         check a set's checksums and gzip/zstd/tar integrity
  restore [TS|latest] --yes [--only db|config]
                             restore a verified set (database and/or config files)

Environment: CONFIG_FILE (default /etc/backup/backup.conf), BACKUP_ROOT (default
/backups), RESTORE_DB_PATH, RESTORE_CONFIG_ROOT.
Exit codes: 0 ok, 1 internal error, 2 configuration/usage, 3 backup or restore
failed, 4 verification failed, 5 locked by another run, 6 restore refused.
EOF
}

main() {
  umask 077
  trap 'on_err "$?" "${LINENO}" "${BASH_COMMAND}"' ERR
  trap on_exit EXIT
  exit_on_signals
  init_paths
  local command="run"
  if (($# > 0)); then
    command="$1"
    shift
  fi
  case "${command}" in
    snapshot)
      cmd_snapshot "$@"
      ;;
    list)
      cmd_list "$@"
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
