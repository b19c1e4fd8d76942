#!/usr/bin/env bats
# shellcheck disable=SC2016,SC2154
# (bash -c scripts are single-quoted on purpose; status/stderr come from bats' run)
# Retention by age (file mtime, set with touch -d), with real SQLite sets.

bats_require_minimum_version 1.7.0

setup() {
  load test_helper
  common_setup
  use_sqlite_config 10
}

# Make $1 complete sets; their TS go to SETS (oldest first).
make_sets() {
  local count="$1" index
  SETS=()
  for ((index = 0; index < count; index++)); do
    backup_ok run
    SETS+=("${SET_TS}")
  done
}

set_exists() {
  [[ -n "$(compgen -G "${BACKUP_ROOT}/*/*_$1.*")" ]]
}

# Apply retention the way `finish` does, without writing a new set first.
retain() {
  run --separate-stderr bash -c 'source "$1" && init_paths && apply_retention "$2"' _ "${BACKUP_SH}" "$1"
  assert_success
}

@test "retention: a run deletes sets older than BACKUP_RETENTION_DAYS, keeps younger ones" {
  make_sets 3
  age_set "${SETS[0]}" "10 days ago"
  age_set "${SETS[1]}" "8 days ago"
  age_set "${SETS[2]}" "6 days ago"
  backup_ok run
  assert_stderr --partial "retention: deleting set ${SETS[0]}"
  refute set_exists "${SETS[0]}"
  refute set_exists "${SETS[1]}"
  assert set_exists "${SETS[2]}"
  assert set_exists "${SET_TS}"
  run final_files
  assert_equal "${#lines[@]}" 8
}

@test "retention: keeps the newest complete set when all sets are old" {
  make_sets 2
  age_set "${SETS[0]}" "30 days ago"
  age_set "${SETS[1]}" "20 days ago"
  retain 7
  refute set_exists "${SETS[0]}"
  assert set_exists "${SETS[1]}"
  run --separate-stderr "${BACKUP_SH}" verify latest
  assert_success
  assert_stderr --partial "set ${SETS[1]}: verified"
}

@test "retention: an incomplete newest set does not count as the newest complete set" {
  make_sets 2
  rm "${BACKUP_ROOT}/manifests/set_${SETS[1]}.sha256"
  age_set "${SETS[0]}" "30 days ago"
  age_set "${SETS[1]}" "20 days ago"
  retain 7
  # The complete one survives; the old incomplete one is deleted.
  assert set_exists "${SETS[0]}"
  refute set_exists "${SETS[1]}"
  run --separate-stderr "${BACKUP_SH}" verify latest
  assert_success
}

@test "retention: a recent incomplete set is kept until it is old" {
  make_sets 2
  rm "${BACKUP_ROOT}/manifests/set_${SETS[1]}.sha256"
  age_set "${SETS[0]}" "30 days ago"
  retain 7
  assert set_exists "${SETS[0]}"
  assert set_exists "${SETS[1]}"
}

@test "retention: age is the newest mtime of a set's files" {
  make_sets 2
  age_set "${SETS[0]}" "30 days ago"
  touch "${BACKUP_ROOT}/config/config_${SETS[0]}.tar.gz"
  age_set "${SETS[1]}" "30 days ago"
  retain 7
  assert set_exists "${SETS[0]}"
  assert set_exists "${SETS[1]}"
}

@test "retention: the boundary is exact days (7 days + 1 hour goes, 7 days - 1 hour stays)" {
  make_sets 3
  age_set "${SETS[0]}" "-7 days -1 hour"
  age_set "${SETS[1]}" "-7 days +1 hour"
  retain 7
  refute set_exists "${SETS[0]}"
  assert set_exists "${SETS[1]}"
  assert set_exists "${SETS[2]}"
}

@test "retention: only files with this tool's exact names are touched" {
  make_sets 2
  local ts="${SETS[0]}"
  local -a foreign=(
    "sqlite/sqlite_${ts}.db.gz.bak"
    "sqlite/sqlite_${ts}.db.zst.orig"
    "sqlite/my-copy.db.gz"
    "sqlite/sqlite_2020.db.gz"
    "mysql/mysql_${ts}.sql"
    "config/notes.txt"
    "manifests/set_${ts}.sha256.orig"
    "old-dump.sql.gz"
  )
  local relative
  for relative in "${foreign[@]}"; do
    mkdir -p "$(dirname "${BACKUP_ROOT}/${relative}")"
    printf 'not ours\n' >"${BACKUP_ROOT}/${relative}"
    touch -d "400 days ago" "${BACKUP_ROOT}/${relative}"
  done
  local db
  db="$(db_file "${ts}")"
  age_set "${ts}" "400 days ago"
  retain 7
  refute [ -e "${BACKUP_ROOT}/${db}" ]
  for relative in "${foreign[@]}"; do
    [[ -f "${BACKUP_ROOT}/${relative}" ]] || fail "deleted a foreign file: ${relative}"
  done
  assert set_exists "${SETS[1]}"
}

# The safety backup before a restore: restoring the oldest set (from before a
# corruption) must not delete it through the safety backup's own retention.
@test "hardening 03: run --no-prune deletes no set, not even the only set older than retention" {
  make_sets 1
  local old="${SETS[0]}"
  age_set "${old}" "30 days ago"
  backup_ok run --no-prune
  assert_stderr --partial "retention: skipped (--no-prune); no set was deleted"
  refute_stderr --partial "retention: deleting"
  assert set_exists "${old}"
  assert set_exists "${SET_TS}"
  run --separate-stderr "${BACKUP_SH}" verify "${old}"
  assert_success
  # Without the option the same situation prunes it: the option is what keeps it.
  backup_ok run
  refute set_exists "${old}"
}

@test "hardening 03: finish TS --no-prune deletes no set" {
  make_sets 2
  age_set "${SETS[0]}" "30 days ago"
  age_set "${SETS[1]}" "20 days ago"
  backup_ok snapshot
  local ts="${SET_TS}"
  backup_ok finish --no-prune "${ts}"
  assert_equal "${SET_TS}" "${ts}"
  assert set_exists "${SETS[0]}"
  assert set_exists "${SETS[1]}"
  run --separate-stderr "${BACKUP_SH}" verify "${ts}"
  assert_success
}

@test "hardening 03: run and finish refuse an unknown option or a stray argument" {
  run --separate-stderr "${BACKUP_SH}" run --no-purge
  assert_equal "${status}" 2
  assert_stderr --partial "unknown option --no-purge"
  run --separate-stderr "${BACKUP_SH}" run extra
  assert_equal "${status}" 2
  assert_stderr --partial "usage: backup.sh run [--no-prune]"
  run --separate-stderr "${BACKUP_SH}" finish
  assert_equal "${status}" 2
  assert_stderr --partial "usage: backup.sh finish TS [--no-prune]"
  run final_files
  assert_equal "${#lines[@]}" 0
}

@test "clock: a set named after the clock now makes 'latest' refuse, and a run says why" {
  make_sets 1
  clock_ahead 31536000 # a year
  PATH="${AHEAD_PATH}" backup_ok run
  future="${SET_TS}"
  [[ "${future}" > "${SETS[0]}" ]]
  # The clock is right again: the next run's set sorts before the one named ahead.
  backup_ok run
  assert_stderr --partial "WARNING: set ${future} is named after this run's set ${SET_TS}"
  assert set_exists "${SET_TS}"
  run --separate-stderr "${BACKUP_SH}" verify latest
  assert_failure 4
  assert_stderr --partial "the newest set ${future} is named after this host's clock"
  assert_stderr --partial "name the set to use"
  run --separate-stderr "${BACKUP_SH}" restore --yes
  assert_failure 6
  assert_stderr --partial "the newest set ${future} is named after this host's clock"
  # Named, every set still verifies.
  run --separate-stderr "${BACKUP_SH}" verify "${SET_TS}"
  assert_success
}

# grep -q stopped reading at its match, set_layout died of SIGPIPE and, under
# pipefail, a real file was skipped: incomplete sets came and went in `list`
# and retention (44 to 48 of 50 here, each run).
@test "layout: every incomplete set is listed, every time" {
  local index ts
  mkdir -p "${BACKUP_ROOT}/mysql"
  for ((index = 10; index < 60; index++)); do
    ts="20260101_0000${index}"
    : >"${BACKUP_ROOT}/mysql/mysql_${ts}.sql.gz"
  done
  for index in 1 2 3 4 5; do
    run bash -c 'source "$1" && init_paths && all_set_timestamps | wc -l' _ "${BACKUP_SH}"
    assert_success
    assert_output "50"
  done
}
