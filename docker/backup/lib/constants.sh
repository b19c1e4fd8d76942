# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# The tool's fixed values: version, exit codes, default paths, markers, backup.conf keys.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# The image's version (the set's tool_version): the build writes it from its
# VERSION build argument, which `inv build-image` takes from BACKUP_IMAGE_VERSION
# in lib/tracker_deployer/config/model.py. BACKUP_VERSION_FILE overrides the
# path (the bats tests run this script from the repository).
readonly DEFAULT_VERSION_FILE="/usr/share/tracker-backup/version"

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
