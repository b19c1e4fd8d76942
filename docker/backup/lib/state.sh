# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# Mutable state, set by main and the commands.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# --- mutable state (set by main and the commands) --------------------------
declare -gA CONFIG=()          # backup.conf, parsed
ROOT_DIR=""                    # BACKUP_ROOT
STAGING_DIR=""                 # BACKUP_ROOT/.staging
LOCK_FD=""
ON_ERROR_EXIT="${EXIT_INTERNAL}"  # exit code for unexpected failures
declare -ga CLEANUP_FILES=()   # removed on every exit (option files, temps)
declare -ga ROLLBACK_FILES=()  # final-named files of this run, removed on failure
declare -ga FAILURE_DIRS=()    # staging directories removed on failure
declare -ga MYSQL_CLIENT=()    # mariadb client + option file + database
declare -ga MYSQL_DUMP=()      # mariadb-dump + option file
declare -ga COMPRESSOR=()      # the database file's: pigz/gzip or zstd with level, stdin -> stdout
declare -ga CONFIG_COMPRESSOR=()  # the config archive's: always pigz/gzip (.tar.gz)
SET_TS=""                      # set chosen by new_set_ts / resolve_set
CONFIG_PATH=""                 # CONFIG_FILE
declare -ga VERIFIED_FILES=()  # payload of the set verify_set checked
