#!/usr/bin/env bats
# shellcheck disable=SC2030,SC2031,SC2154
# (status/stderr/lines come from bats' run; each @test is a subshell by design)
# Backup sets, verify, restore, failures and locking with real SQLite files.

bats_require_minimum_version 1.7.0

setup() {
  load test_helper
  common_setup
  use_sqlite_config
}

teardown() {
  stop_gated_snapshot
  local mount
  for mount in "${TMPFS_MOUNT:-}" "${READ_ONLY_MOUNT:-}"; do
    if [[ -n "${mount}" ]] && mountpoint -q "${mount}"; then
      umount "${mount}"
    fi
  done
  [[ -z "${READ_ONLY_MOUNT:-}" ]] || chmod u+w -- "${READ_ONLY_MOUNT}"
}

@test "run: writes one complete set, all files sharing one UTC timestamp" {
  backup_ok run
  local ts="${SET_TS}"
  assert_regex "${ts}" '^[0-9]{8}_[0-9]{6}$'
  assert_stderr --partial "set ${ts} (UTC)"
  run final_files
  assert_output "$(printf '%s\n' "config/config_${ts}.tar.gz" "manifests/set_${ts}.meta" \
    "manifests/set_${ts}.sha256" "sqlite/sqlite_${ts}.db.zst")"
  assert_stderr --partial "finishing (zstd level 6)"
  # The manifest checks the set with plain sha256sum, paths relative to BACKUP_ROOT.
  (cd "${BACKUP_ROOT}" && sha256sum --check --strict "manifests/set_${ts}.sha256")
  run cat "${BACKUP_ROOT}/manifests/set_${ts}.meta"
  assert_line "set=${ts}"
  assert_line "db_type=sqlite"
  assert_line "tool_version=${IMAGE_VERSION}"
  assert_line --regexp '^started_at=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z$'
  assert_line --regexp '^snapshot_finished_at=.*Z$'
  assert_line --regexp '^finished_at=.*Z$'
  assert_line "rows.torrents=100"
  assert_line "rows.whitelist=3"
  assert_line "rows.keys=2"
  # Nothing left in staging; files are private (umask 077).
  run staging_entries
  assert_output ""
  run stat -c '%a' "${BACKUP_ROOT}/sqlite/sqlite_${ts}.db.zst"
  assert_output "600"
}

@test "run: the compressed database is a consistent copy (integrity ok, same content)" {
  backup_ok run
  decompressed "${BACKUP_ROOT}/$(db_file "${SET_TS}")" >"${BATS_TEST_TMPDIR}/copy.db"
  run sqlite3 "${BATS_TEST_TMPDIR}/copy.db" 'PRAGMA integrity_check;'
  assert_output "ok"
  assert_equal "$(sqlite_content_sum "${BATS_TEST_TMPDIR}/copy.db")" "$(sqlite_content_sum "${SQLITE_DB}")"
}

@test "run: BACKUP_COMPRESSION=gzip uses its level and writes a plain gzip .db.gz" {
  printf "BACKUP_COMPRESSION='gzip'\nBACKUP_COMPRESSION_LEVEL='1'\n" >>"${CONFIG_FILE}"
  backup_ok run
  assert_stderr --partial "level 1)"
  gzip -t "${BACKUP_ROOT}/sqlite/sqlite_${SET_TS}.db.gz"
  refute [ -e "${BACKUP_ROOT}/sqlite/sqlite_${SET_TS}.db.zst" ]
}

@test "a gzip set written before the default became zstd lists, verifies and restores next to a zstd set" {
  printf "BACKUP_COMPRESSION='gzip'\n" >>"${CONFIG_FILE}"
  backup_ok run
  local old="${SET_TS}" old_sum
  old_sum="$(sqlite_content_sum "${SQLITE_DB}")"
  sqlite3 "${SQLITE_DB}" 'DELETE FROM torrents WHERE id <= 10'
  use_sqlite_config
  backup_ok run
  local new="${SET_TS}" new_sum
  new_sum="$(sqlite_content_sum "${SQLITE_DB}")"
  assert_equal "$(db_file "${old}")" "sqlite/sqlite_${old}.db.gz"
  assert_equal "$(db_file "${new}")" "sqlite/sqlite_${new}.db.zst"
  run --separate-stderr "${BACKUP_SH}" list
  assert_line --index 0 --partial "${old} complete sqlite/sqlite_${old}.db.gz "
  assert_line --index 1 --partial "${new} complete sqlite/sqlite_${new}.db.zst "
  run --separate-stderr "${BACKUP_SH}" verify "${old}"
  assert_success
  run --separate-stderr "${BACKUP_SH}" verify "${new}"
  assert_success
  run --separate-stderr "${BACKUP_SH}" restore "${old}" --yes --only db
  assert_success
  assert_equal "$(sqlite_content_sum "${SQLITE_DB}")" "${old_sum}"
  # The copy kept aside is named by the second; another restore in it would refuse.
  rm -- "${SQLITE_DB}".before-restore-*
  run --separate-stderr "${BACKUP_SH}" restore "${new}" --yes --only db
  assert_success
  assert_equal "$(sqlite_content_sum "${SQLITE_DB}")" "${new_sum}"
}

@test "run: BACKUP_COMPRESSION=zstd writes a .db.zst that verifies and restores" {
  printf "BACKUP_COMPRESSION='zstd'\nBACKUP_COMPRESSION_LEVEL='2'\n" >>"${CONFIG_FILE}"
  backup_ok run
  assert_stderr --partial "finishing (zstd level 2)"
  zstd -q -t "${BACKUP_ROOT}/sqlite/sqlite_${SET_TS}.db.zst"
  run --separate-stderr "${BACKUP_SH}" list
  assert_output --partial "${SET_TS} complete sqlite/sqlite_${SET_TS}.db.zst config/config_${SET_TS}.tar.gz"
  run --separate-stderr "${BACKUP_SH}" verify latest
  assert_success
  local before
  before="$(sqlite_content_sum "${SQLITE_DB}")"
  sqlite3 "${SQLITE_DB}" 'DELETE FROM torrents'
  run --separate-stderr "${BACKUP_SH}" restore latest --yes --only db
  assert_success
  assert_equal "$(sqlite_content_sum "${SQLITE_DB}")" "${before}"
}

@test "verify: a truncated .db.zst exits 4 (zstd -t)" {
  printf "BACKUP_COMPRESSION='zstd'\n" >>"${CONFIG_FILE}"
  backup_ok run
  local file="${BACKUP_ROOT}/sqlite/sqlite_${SET_TS}.db.zst"
  chmod u+w "${file}"
  truncate -s -10 "${file}"
  # Keep the checksum right, so that zstd's own test is what fails.
  (cd "${BACKUP_ROOT}" && sha256sum "sqlite/sqlite_${SET_TS}.db.zst" "config/config_${SET_TS}.tar.gz" \
    "manifests/set_${SET_TS}.meta" >"manifests/set_${SET_TS}.sha256")
  run --separate-stderr "${BACKUP_SH}" verify "${SET_TS}"
  assert_equal "${status}" 4
  assert_stderr --partial "fails zstd -t"
}

@test "snapshot: writers wait while the database file is copied (read lock)" {
  # A cp that says when it starts and takes a while: a write meanwhile must
  # fail on the lock (the CLI has no busy timeout) and the set keeps all rows.
  local real_cp
  real_cp="$(command -v cp)"
  mkdir -p "${BATS_TEST_TMPDIR}/bin"
  printf '#!/bin/sh\n: >"%s"\nsleep 2\nexec "%s" "$@"\n' \
    "${BATS_TEST_TMPDIR}/cp.started" "${real_cp}" >"${BATS_TEST_TMPDIR}/bin/cp"
  chmod +x "${BATS_TEST_TMPDIR}/bin/cp"
  PATH="${BATS_TEST_TMPDIR}/bin:${PATH}" "${BACKUP_SH}" snapshot \
    >"${BATS_TEST_TMPDIR}/snapshot.out" 2>"${BATS_TEST_TMPDIR}/snapshot.err" 3>&- &
  local pid=$! waited
  for ((waited = 0; waited < 100; waited++)); do
    [[ -f "${BATS_TEST_TMPDIR}/cp.started" ]] && break
    sleep 0.05
  done
  assert [ -f "${BATS_TEST_TMPDIR}/cp.started" ]
  run sqlite3 "${SQLITE_DB}" "DELETE FROM torrents WHERE id > 10;"
  assert_failure
  assert_output --partial "database is locked"
  wait "${pid}"
  backup_ok finish "$(tail -n 1 "${BATS_TEST_TMPDIR}/snapshot.out")"
  run cat "${BACKUP_ROOT}/manifests/set_${SET_TS}.meta"
  assert_line "rows.torrents=100"
}

@test "snapshot: a WAL database is copied with the online backup API, -wal content included" {
  sqlite3 "${SQLITE_DB}" 'PRAGMA journal_mode=WAL;' >/dev/null
  # An open reader keeps the next write in the -wal file (no checkpoint
  # past it), so a copy of the main file alone would miss those rows.
  # (it says when its snapshot is open: a fixed sleep raced with it under load)
  local started="${BATS_TEST_TMPDIR}/reader-started"
  sqlite3 "${SQLITE_DB}" 'BEGIN' 'SELECT count(*) FROM keys' ".shell touch ${started}" \
    '.shell sleep 5' 'COMMIT' >/dev/null 2>&1 3>&- &
  local reader=$!
  wait_for 30 test -e "${started}"
  sqlite3 "${SQLITE_DB}" "INSERT INTO torrents (info_hash, completed) VALUES ('wal-only', 1);"
  assert [ -s "${SQLITE_DB}-wal" ]
  backup_ok run
  assert_stderr --partial "journal mode 'wal'"
  run cat "${BACKUP_ROOT}/manifests/set_${SET_TS}.meta"
  assert_line "rows.torrents=101"
  wait "${reader}"
}

@test "snapshot: a WAL database closed cleanly is copied from a read-only directory" {
  sqlite3 "${SQLITE_DB}" 'PRAGMA journal_mode=WAL;' >/dev/null
  sqlite3 "${SQLITE_DB}" "INSERT INTO torrents (info_hash, completed) VALUES ('after-wal', 1);"
  # The last connection closed: its -wal is checkpointed and gone (the tracker,
  # stopped for the snapshot). The backup container mounts the storage
  # read-only, where SQLite cannot create the -shm file to open it.
  refute [ -e "${SQLITE_DB}-wal" ]
  local data="${SQLITE_DB%/*}"
  READ_ONLY_MOUNT="${data}" # teardown unmounts it, or makes it writable again
  if [[ "$(id -u)" == 0 ]]; then
    mount --bind -o ro -- "${data}" "${data}" 2>/dev/null \
      || skip "cannot bind-mount a directory read-only here (needs CAP_SYS_ADMIN)"
  else
    chmod a-w -- "${data}"
  fi
  run sqlite3 -readonly "${SQLITE_DB}" 'SELECT count(*) FROM torrents;'
  assert_output --partial "unable to open database file"
  backup_ok run
  assert_stderr --partial "WAL database closed cleanly (no tracker.db-wal) on a read-only mount"
  run cat "${BACKUP_ROOT}/manifests/set_${SET_TS}.meta"
  assert_line "rows.torrents=101"
  decompressed "${BACKUP_ROOT}/$(db_file "${SET_TS}")" >"${BATS_TEST_TMPDIR}/copy.db"
  run sqlite3 "${BATS_TEST_TMPDIR}/copy.db" 'PRAGMA integrity_check;'
  assert_output "ok"
}

@test "snapshot --gate: ready before any snapshot file, the database writable meanwhile; go takes the set" {
  start_gated_snapshot 30
  local ts
  ts="$(cd "${BACKUP_ROOT}/.staging" && echo *)"
  [[ "${ts}" =~ ^[0-9]{8}_[0-9]{6}$ ]] || fail "no staging directory of the set: ${ts}"
  run find "${BACKUP_ROOT}/.staging" -name 'snapshot*'
  assert_output ""
  run final_files
  assert_output ""
  # It holds the lock while it waits, but no database lock: the tracker writes on.
  run lock_is_free
  assert_failure
  sqlite3 "${SQLITE_DB}" "DELETE FROM torrents WHERE id > 10;"
  go_and_finish "${ts}" 10
}

@test "snapshot --gate: EOF on stdin aborts: exit 3, no set, staging removed, lock released" {
  start_gated_snapshot 30
  exec {GATE_FD}>&-
  wait_gated_snapshot
  assert_equal "${GATE_STATUS}" 3
  run cat "${BATS_TEST_TMPDIR}/gate.out"
  assert_output "snapshot-ready"
  run cat "${BATS_TEST_TMPDIR}/gate.err"
  assert_output --partial "stdin ended before 'go'; no snapshot taken"
  assert_gate_left_nothing
  # nothing of it runs on (its sqlite3, started before the wait)
  run pgrep -f -- "${SQLITE_DB}"
  assert_failure
  backup_ok run
}

@test "snapshot --gate: another line, or no line within SECONDS, aborts with exit 3" {
  run --separate-stderr "${BACKUP_SH}" snapshot --gate 30 <<<"stop"
  assert_equal "${status}" 3
  assert_output "snapshot-ready"
  assert_stderr --partial "expected 'go' on stdin, got another line; no snapshot taken"
  start_gated_snapshot 1
  wait_gated_snapshot
  assert_equal "${GATE_STATUS}" 3
  run cat "${BATS_TEST_TMPDIR}/gate.err"
  assert_output --partial "no 'go' on stdin within 1 s; no snapshot taken"
  exec {GATE_FD}>&-
  assert_gate_left_nothing
}

@test "snapshot --gate: a missing database fails before the ready line (exit 3)" {
  rm "${SQLITE_DB}"
  run --separate-stderr "${BACKUP_SH}" snapshot --gate 30 </dev/null
  assert_equal "${status}" 3
  assert_output ""
  [[ "${stderr}" == *"does not exist"* ]]
  run staging_entries
  assert_output ""
}

@test "snapshot --gate: a bad SECONDS or option exits 2" {
  local bad
  for bad in "--gate" "--gate 0" "--gate x" "--gate 1000000" "--gate 5 extra" "--wait 5"; do
    # shellcheck disable=SC2086  # split on purpose
    run --separate-stderr "${BACKUP_SH}" snapshot ${bad} </dev/null
    assert_equal "${status}" 2
    [[ "${stderr}" == *"usage: backup.sh snapshot [--gate SECONDS]"* ]] || fail "${bad}: ${stderr}"
  done
  run staging_entries
  assert_output ""
}

@test "snapshot + finish: the snapshot waits in staging until its finish" {
  backup_ok snapshot
  local ts="${SET_TS}"
  assert [ -f "${BACKUP_ROOT}/.staging/${ts}/snapshot.db" ]
  run final_files
  assert_output ""
  # The tracker may write again between the phases; the set keeps the snapshot.
  sqlite3 "${SQLITE_DB}" "DELETE FROM torrents WHERE id > 10;"
  backup_ok finish "${ts}"
  assert_equal "${SET_TS}" "${ts}"
  run cat "${BACKUP_ROOT}/manifests/set_${ts}.meta"
  assert_line "rows.torrents=100"
  run staging_entries
  assert_output ""
  run --separate-stderr "${BACKUP_SH}" finish "${ts}"
  assert_equal "${status}" 2
}

@test "snapshot: a new snapshot removes an older unfinished one" {
  backup_ok snapshot
  local first="${SET_TS}"
  backup_ok snapshot
  local second="${SET_TS}"
  assert_not_equal "${first}" "${second}"
  assert_stderr --partial "removing stale staging ${first}"
  refute [ -e "${BACKUP_ROOT}/.staging/${first}" ]
  assert [ -d "${BACKUP_ROOT}/.staging/${second}" ]
  run --separate-stderr "${BACKUP_SH}" finish "${first}"
  assert_equal "${status}" 2
  backup_ok finish "${second}"
}

@test "run: the next run removes staging and final-named files of a killed run" {
  backup_ok run
  local good="${SET_TS}"
  # What a run killed with -9 in the middle of its renames leaves behind.
  local dead="20200101_000000"
  mkdir -p "${BACKUP_ROOT}/.staging/${dead}/out"
  printf 'partial' >"${BACKUP_ROOT}/.staging/${dead}/snapshot.db"
  printf 'partial' >"${BACKUP_ROOT}/sqlite/sqlite_${dead}.db.gz"
  printf 'partial' >"${BACKUP_ROOT}/config/config_${dead}.tar.gz"
  backup_ok run
  assert_stderr --partial "removing stale staging ${dead}"
  run staging_entries
  assert_output ""
  run final_files
  refute_output --partial "${dead}"
  assert_output --partial "set_${good}.sha256"
  assert_output --partial "set_${SET_TS}.sha256"
}

@test "config paths: comments, blanks and missing paths; the tar listing is exact" {
  cat >"${PATHS_FILE}" <<EOF
# config files of the stack

${CONFIG_TREE}/tracker/etc/tracker.toml
   ${CONFIG_TREE}/prometheus/etc
# ${CONFIG_TREE}/commented/out
${CONFIG_TREE}/does/not/exist

EOF
  backup_ok run
  assert_stderr --partial "config path ${CONFIG_TREE}/does/not/exist does not exist; skipped"
  run tar --list --gzip --file="${BACKUP_ROOT}/config/config_${SET_TS}.tar.gz"
  local relative="${CONFIG_TREE#/}"
  assert_output "$(printf '%s\n' "${relative}/tracker/etc/tracker.toml" "${relative}/prometheus/etc/" \
    "${relative}/prometheus/etc/prometheus.yml")"
}

@test "run: without a version file the set records tool_version=unknown and says so" {
  export BACKUP_VERSION_FILE="${BATS_TEST_TMPDIR}/no-such-version"
  backup_ok run
  assert_equal "${status}" 0
  assert_stderr --partial "warning: no image version in ${BACKUP_VERSION_FILE}; the set records tool_version=unknown"
  run cat "${BACKUP_ROOT}/manifests/set_${SET_TS}.meta"
  assert_line "tool_version=unknown"
}

@test "config paths: a path containing BACKUP_ROOT never archives the backups" {
  export BACKUP_ROOT="${CONFIG_TREE}/backup"
  printf '%s\n' "${CONFIG_TREE}" >"${PATHS_FILE}"
  backup_ok run
  backup_ok run
  run tar --list --gzip --file="${BACKUP_ROOT}/config/config_${SET_TS}.tar.gz"
  assert_output --partial "tracker/etc/tracker.toml"
  refute_output --partial "storage/backup"
}

@test "config paths: a relative path exits 2 naming the line" {
  printf '# x\ntracker/etc/tracker.toml\n' >"${PATHS_FILE}"
  run --separate-stderr "${BACKUP_SH}" run
  assert_equal "${status}" 2
  assert_stderr --partial "${PATHS_FILE}:2: not an absolute path"
  run final_files
  assert_output ""
}

@test "config paths: a tar error fails the backup with exit 3 and is shown" {
  # Unreadable even for root: the kernel refuses reads of write-only sysctls.
  local unreadable=/proc/sys/vm/compact_memory
  [[ -e "${unreadable}" ]] && ! cat "${unreadable}" >/dev/null 2>&1 \
    || skip "no file unreadable for $(id -un) on this kernel"
  if [[ "$(id -u)" != 0 ]]; then
    unreadable="${CONFIG_TREE}/tracker/etc/tracker.toml"
    chmod 000 "${unreadable}"
  fi
  printf '%s\n' "${CONFIG_TREE}/prometheus/etc" "${unreadable}" >"${PATHS_FILE}"
  run --separate-stderr "${BACKUP_SH}" run
  assert_equal "${status}" 3
  assert_stderr --regexp 'tar: .*Permission denied'
  assert_stderr --partial "archiving config files failed"
  run final_files
  assert_output ""
  run staging_entries
  assert_output ""
}

@test "failure: a missing SQLite database exits 3 and writes no files" {
  rm "${SQLITE_DB}"
  run --separate-stderr "${BACKUP_SH}" run
  assert_equal "${status}" 3
  assert_stderr --partial "does not exist"
  run final_files
  assert_output ""
  run staging_entries
  assert_output ""
  refute [ -e "${SQLITE_DB}" ]
}

@test "failure: a corrupt SQLite database fails quick_check (exit 4)" {
  # Valid header, garbage pages: the snapshot copies it, quick_check catches it.
  rm "${SQLITE_DB}"
  make_sqlite_db "${SQLITE_DB}" 2000
  local size
  size="$(stat -c %s "${SQLITE_DB}")"
  dd if=/dev/urandom of="${SQLITE_DB}" bs=1 seek=4096 count=$((size - 8192)) conv=notrunc status=none
  run --separate-stderr "${BACKUP_SH}" run
  assert_equal "${status}" 4
  assert_stderr --partial "quick_check of the SQLite snapshot failed"
  run staging_entries
  assert_output ""
  run final_files
  assert_output ""
}

@test "lock: a run while another holds the lock exits 5 and changes nothing" {
  backup_ok run
  local before
  before="$(final_files)"
  exec {lock_fd}>>"${BACKUP_ROOT}/.lock"
  flock --nonblock "${lock_fd}"
  run --separate-stderr "${BACKUP_SH}" run
  assert_equal "${status}" 5
  assert_stderr --partial "another backup.sh run holds"
  run --separate-stderr "${BACKUP_SH}" restore latest --yes
  assert_equal "${status}" 5
  exec {lock_fd}>&-
  assert_equal "$(final_files)" "${before}"
}

@test "list: one line per set with its state and files" {
  backup_ok run
  local first="${SET_TS}"
  backup_ok run
  local second="${SET_TS}"
  rm "${BACKUP_ROOT}/manifests/set_${second}.sha256"
  run --separate-stderr "${BACKUP_SH}" list
  assert_success
  assert_equal "${#lines[@]}" 2
  assert_line --index 0 "${first} complete sqlite/sqlite_${first}.db.zst config/config_${first}.tar.gz manifests/set_${first}.meta manifests/set_${first}.sha256"
  assert_line --index 1 "${second} incomplete sqlite/sqlite_${second}.db.zst config/config_${second}.tar.gz manifests/set_${second}.meta"
}

@test "list --records: versioned records with sizes, checksums and meta; only the layout's names" {
  backup_ok run
  local first="${SET_TS}"
  backup_ok run
  local second="${SET_TS}"
  rm "${BACKUP_ROOT}/manifests/set_${second}.sha256"
  # A name that only looks like a set's is no set file.
  : >"${BACKUP_ROOT}/sqlite/sqlite_20200101_000000.x.db.gz"
  printf 'x' >>"${BACKUP_ROOT}/config/config_${first}.tar.gz"
  run --separate-stderr "${BACKUP_SH}" list --records --checksums
  assert_success
  assert_line --index 0 "$(printf 'LIST\t1')"
  assert_line "$(printf 'SET\t%s\tcomplete\tFAILED' "${first}")"
  assert_line "$(printf 'SET\t%s\tincomplete\t-' "${second}")"
  local size mtime db
  db="$(db_file "${first}")"
  size="$(stat -c %s "${BACKUP_ROOT}/${db}")"
  mtime="$(stat -c %Y "${BACKUP_ROOT}/${db}")"
  assert_line "$(printf 'FILE\t%s\tsqlite\t%s\t%s\t%s' "${first}" "${db}" "${size}" "${mtime}")"
  assert_line "$(printf 'META\t%s\tdb_type\tsqlite' "${first}")"
  refute_output --partial "20200101_000000"
  assert_equal "$(grep -c '^FILE' <<<"${output}")" 7
  run --separate-stderr "${BACKUP_SH}" list --records
  assert_line "$(printf 'SET\t%s\tcomplete\tunchecked' "${first}")"
}

@test "verify: a complete set passes; latest is the newest complete set" {
  backup_ok run
  run --separate-stderr "${BACKUP_SH}" verify
  assert_success
  assert_stderr --partial "set ${SET_TS}: verified"
  run --separate-stderr "${BACKUP_SH}" verify "${SET_TS}"
  assert_success
}

@test "verify: a flipped byte exits 4 and restore refuses it" {
  backup_ok run
  local file
  file="${BACKUP_ROOT}/$(db_file "${SET_TS}")"
  # Flip one byte in the middle of the file.
  local offset=$(($(stat -c %s "${file}") / 2)) byte
  byte="$(od -An -tu1 -j "${offset}" -N1 "${file}" | tr -d ' ')"
  printf '%b' "\\$(printf '%03o' $(((byte + 1) % 256)))" \
    | dd of="${file}" bs=1 seek="${offset}" count=1 conv=notrunc status=none
  run --separate-stderr "${BACKUP_SH}" verify "${SET_TS}"
  assert_equal "${status}" 4
  assert_stderr --partial "checksum mismatch"
  local before
  before="$(sqlite_content_sum "${SQLITE_DB}")"
  sqlite3 "${SQLITE_DB}" "DELETE FROM torrents;"
  local after_delete
  after_delete="$(sqlite_content_sum "${SQLITE_DB}")"
  run --separate-stderr "${BACKUP_SH}" restore "${SET_TS}" --yes
  assert_equal "${status}" 4
  assert_equal "$(sqlite_content_sum "${SQLITE_DB}")" "${after_delete}"
  assert_not_equal "${before}" "${after_delete}"
  refute compgen -G "${SQLITE_DB}.before-restore-*"
}

@test "verify: a tampered manifest line exits 4" {
  backup_ok run
  local sums="${BACKUP_ROOT}/manifests/set_${SET_TS}.sha256" name
  cp "${sums}" "${BATS_TEST_TMPDIR}/sums"
  # Names outside the set's layout: another path, the manifest itself, another
  # set's file, nothing.
  for name in ../../etc/passwd "manifests/set_${SET_TS}.sha256" \
    "config/config_20200101_000000.tar.gz" ""; do
    cp "${BATS_TEST_TMPDIR}/sums" "${sums}"
    printf '%064d  %s\n' 0 "${name}" >>"${sums}"
    run --separate-stderr "${BACKUP_SH}" verify latest
    assert_equal "${status}" 4
    [[ "${stderr}" == *"unexpected line"* ]] || fail "manifest line '${name}': ${stderr}"
  done
}

@test "verify: no complete set exits 4; an unknown set name or BACKUP_ROOT exits 2" {
  run --separate-stderr "${BACKUP_SH}" verify
  assert_equal "${status}" 2
  assert_stderr --partial "BACKUP_ROOT ${BACKUP_ROOT} does not exist"
  mkdir -p "${BACKUP_ROOT}"
  run --separate-stderr "${BACKUP_SH}" verify
  assert_equal "${status}" 4
  run --separate-stderr "${BACKUP_SH}" verify nonsense
  assert_equal "${status}" 2
}

@test "restore: refused without --yes (exit 6), nothing changes" {
  backup_ok run
  local before
  before="$(sqlite_content_sum "${SQLITE_DB}")"
  run --separate-stderr "${BACKUP_SH}" restore latest
  assert_equal "${status}" 6
  assert_stderr --partial "--yes"
  run --separate-stderr "${BACKUP_SH}" restore
  assert_equal "${status}" 6
  assert_equal "$(sqlite_content_sum "${SQLITE_DB}")" "${before}"
  refute [ -e "${BACKUP_ROOT}/restore-${SET_TS}" ]
}

@test "restore: backup then restore gives identical content; the old file is kept aside" {
  backup_ok run
  local ts="${SET_TS}" original
  original="$(sqlite_content_sum "${SQLITE_DB}")"
  sqlite3 "${SQLITE_DB}" "DELETE FROM torrents WHERE id % 2 = 0; UPDATE keys SET valid_until = 1; INSERT INTO whitelist (info_hash) VALUES ('new');"
  local changed
  changed="$(sqlite_content_sum "${SQLITE_DB}")"
  assert_not_equal "${changed}" "${original}"
  chmod 0640 "${SQLITE_DB}"
  run --separate-stderr "${BACKUP_SH}" restore "${ts}" --yes
  assert_success
  assert_equal "$(sqlite_content_sum "${SQLITE_DB}")" "${original}"
  run stat -c '%a' "${SQLITE_DB}"
  assert_output "640"
  local -a aside=("${SQLITE_DB}".before-restore-*)
  assert_equal "${#aside[@]}" 1
  assert_equal "$(sqlite_content_sum "${aside[0]}")" "${changed}"
  # Config files went to the default restore directory, not over the live ones.
  local relative="${CONFIG_TREE#/}"
  cmp "${BACKUP_ROOT}/restore-${ts}/${relative}/tracker/etc/tracker.toml" "${CONFIG_TREE}/tracker/etc/tracker.toml"
  cmp "${BACKUP_ROOT}/restore-${ts}/${relative}/prometheus/etc/prometheus.yml" "${CONFIG_TREE}/prometheus/etc/prometheus.yml"
  # No temporary left next to the database.
  run find "${SQLITE_DB%/*}" -name '.*restore*'
  assert_output ""
}

@test "restore: a -wal left by a database deleted after a crash is moved aside, never replayed" {
  sqlite3 "${SQLITE_DB}" 'PRAGMA journal_mode=WAL;' >/dev/null
  backup_ok run
  local original
  original="$(sqlite_content_sum "${SQLITE_DB}")"
  # A crashed writer: a row only in the -wal. A reader holding a snapshot from
  # before keeps the writer's close from checkpointing it into the file.
  local started="${BATS_TEST_TMPDIR}/reader-started"
  { printf 'BEGIN;\nSELECT count(*) FROM torrents;\n.shell touch %s\n' "${started}"; sleep 5; } \
    | sqlite3 "${SQLITE_DB}" >/dev/null &
  local reader=$!
  wait_for 30 test -e "${started}"
  sqlite3 "${SQLITE_DB}" "INSERT INTO torrents(info_hash, completed) VALUES ('FOREIGN', 9);"
  cp -- "${SQLITE_DB}-wal" "${BATS_TEST_TMPDIR}/saved-wal"
  kill "${reader}" 2>/dev/null || true
  wait "${reader}" || true
  # (the saved -wal does hold the row: replayed on a copy of the file)
  mkdir "${BATS_TEST_TMPDIR}/check"
  cp -- "${SQLITE_DB}" "${BATS_TEST_TMPDIR}/check/t.db"
  cp -- "${BATS_TEST_TMPDIR}/saved-wal" "${BATS_TEST_TMPDIR}/check/t.db-wal"
  run sqlite3 "${BATS_TEST_TMPDIR}/check/t.db" "SELECT count(*) FROM torrents WHERE info_hash = 'FOREIGN'"
  assert_output "1"
  # The database is deleted by hand; its -wal stays.
  rm -f -- "${SQLITE_DB}" "${SQLITE_DB}-wal" "${SQLITE_DB}-shm"
  cp -- "${BATS_TEST_TMPDIR}/saved-wal" "${SQLITE_DB}-wal"
  run --separate-stderr "${BACKUP_SH}" restore latest --yes --only db
  assert_success
  refute [ -e "${SQLITE_DB}-wal" ]
  local -a aside=("${SQLITE_DB}".before-restore-*-wal)
  assert_equal "${#aside[@]}" 1
  assert_equal "$(sqlite_content_sum "${SQLITE_DB}")" "${original}"
  run sqlite3 "${SQLITE_DB}" "SELECT count(*) FROM torrents WHERE info_hash = 'FOREIGN'"
  assert_output "0"
}

@test "restore: a rename that fails puts the old database's journals back next to it" {
  backup_ok run
  printf 'the old database'"'"'s -wal\n' >"${SQLITE_DB}-wal"
  local real
  real="$(command -v mv)"
  mkdir -p -- "${BATS_TEST_TMPDIR}/bin"
  cat >"${BATS_TEST_TMPDIR}/bin/mv" <<EOF
#!/usr/bin/env bash
for arg in "\$@"; do
  if [[ "\${arg}" == *.restore-*.tmp ]]; then
    echo "mv: simulated failure" >&2
    exit 1
  fi
done
exec "${real}" "\$@"
EOF
  chmod +x -- "${BATS_TEST_TMPDIR}/bin/mv"
  PATH="${BATS_TEST_TMPDIR}/bin:${PATH}" run --separate-stderr "${BACKUP_SH}" restore latest --yes --only db
  assert_failure
  assert_stderr --partial "cannot rename the restored database into place; nothing was restored"
  run cat -- "${SQLITE_DB}-wal"
  assert_output "the old database's -wal"
  local -a aside=("${SQLITE_DB}".before-restore-*-wal)
  refute [ -e "${aside[0]}" ]
}

@test "restore: --only db and --only config, RESTORE_DB_PATH and RESTORE_CONFIG_ROOT" {
  backup_ok run
  local original
  original="$(sqlite_content_sum "${SQLITE_DB}")"
  export RESTORE_DB_PATH="${BATS_TEST_TMPDIR}/data/elsewhere.db"
  export RESTORE_CONFIG_ROOT="${BATS_TEST_TMPDIR}/restored-config"
  run --separate-stderr "${BACKUP_SH}" restore latest --yes --only db
  assert_success
  assert_equal "$(sqlite_content_sum "${RESTORE_DB_PATH}")" "${original}"
  refute [ -e "${RESTORE_CONFIG_ROOT}" ]
  run --separate-stderr "${BACKUP_SH}" restore --only config --yes
  assert_success
  assert [ -f "${RESTORE_CONFIG_ROOT}/${CONFIG_TREE#/}/tracker/etc/tracker.toml" ]
}

@test "restore: an unknown or incomplete set is refused (exit 6)" {
  backup_ok run
  run --separate-stderr "${BACKUP_SH}" restore 20200101_000000 --yes
  assert_equal "${status}" 6
  rm "${BACKUP_ROOT}/manifests/set_${SET_TS}.sha256"
  run --separate-stderr "${BACKUP_SH}" restore "${SET_TS}" --yes
  assert_equal "${status}" 6
  assert_stderr --partial "incomplete"
  run --separate-stderr "${BACKUP_SH}" restore latest --yes
  assert_equal "${status}" 6
}

@test "restore: a sqlite set is refused when DB_TYPE is mysql (exit 6)" {
  backup_ok run
  write_config DB_TYPE=mysql DB_HOST=127.0.0.1 DB_USER=u DB_NAME=d "BACKUP_PATHS_FILE=${PATHS_FILE}"
  run --separate-stderr "${BACKUP_SH}" restore latest --yes --only db
  assert_equal "${status}" 6
  assert_stderr --partial "has no mysql backup"
}

# Disk full: BACKUP_ROOT on a 1 MiB tmpfs (needs root and mount rights, which a
# docker build step does not have).
mount_small_tmpfs() {
  TMPFS_MOUNT="${BATS_TEST_TMPDIR}/small"
  mkdir -p "${TMPFS_MOUNT}"
  mount -t tmpfs -o size=1m,mode=0755 tmpfs "${TMPFS_MOUNT}" 2>/dev/null || skip "cannot mount a tmpfs here (needs root + CAP_SYS_ADMIN)"
  export BACKUP_ROOT="${TMPFS_MOUNT}"
}

grow_database() {
  sqlite3 "${SQLITE_DB}" "CREATE TABLE IF NOT EXISTS blobs (data BLOB); INSERT INTO blobs VALUES (randomblob($1));"
}

@test "disk full during the snapshot: exit 3, no partial file, older sets intact" {
  mount_small_tmpfs
  backup_ok run
  local old="${SET_TS}" before
  before="$(final_files)"
  grow_database 2000000
  run --separate-stderr "${BACKUP_SH}" run
  assert_equal "${status}" 3
  assert_equal "$(final_files)" "${before}"
  run staging_entries
  assert_output ""
  run --separate-stderr "${BACKUP_SH}" verify "${old}"
  assert_success
}

@test "disk full while compressing: exit 3, no partial file, older sets intact" {
  mount_small_tmpfs
  backup_ok run
  local old="${SET_TS}" before
  before="$(final_files)"
  # Fits into staging once, but not twice (snapshot + its incompressible .zst).
  grow_database 600000
  run --separate-stderr "${BACKUP_SH}" run
  assert_equal "${status}" 3
  assert_stderr --regexp 'No space left on device|disk is full'
  assert_equal "$(final_files)" "${before}"
  run staging_entries
  assert_output ""
  run --separate-stderr "${BACKUP_SH}" verify "${old}"
  assert_success
  # Space is back after the failure: a smaller database backs up fine again.
  sqlite3 "${SQLITE_DB}" "DROP TABLE blobs; VACUUM;"
  backup_ok run
}

@test "restore: a config extraction that fails leaves nothing under restore-TS; a second one keeps the first aside" {
  backup_ok run
  local ts="${SET_TS}"
  # A tar that extracts, then fails (as on a full disk): the files are written.
  mkdir -p "${BATS_TEST_TMPDIR}/failing"
  printf '#!/bin/sh\ncase " $* " in *" --extract "*) /usr/bin/tar "$@"; exit 2 ;; esac\nexec /usr/bin/tar "$@"\n' \
    >"${BATS_TEST_TMPDIR}/failing/tar"
  chmod +x "${BATS_TEST_TMPDIR}/failing/tar"
  PATH="${BATS_TEST_TMPDIR}/failing:${PATH}" run --separate-stderr "${BACKUP_SH}" restore "${ts}" --yes --only config
  assert_failure 3
  assert_stderr --partial "nothing was left under ${BACKUP_ROOT}/restore-${ts}"
  refute [ -e "${BACKUP_ROOT}/restore-${ts}" ]
  run compgen -G "${BACKUP_ROOT}/restore-${ts}*"
  assert_output ""
  # Whole: renamed into place; a second restore keeps the first aside.
  run --separate-stderr "${BACKUP_SH}" restore "${ts}" --yes --only config
  assert_success
  echo edited >>"${BACKUP_ROOT}/restore-${ts}/${CONFIG_TREE#/}/tracker/etc/tracker.toml"
  sleep 1
  run --separate-stderr "${BACKUP_SH}" restore "${ts}" --yes --only config
  assert_success
  assert_stderr --partial "the earlier ${BACKUP_ROOT}/restore-${ts} is kept as"
  cmp "${BACKUP_ROOT}/restore-${ts}/${CONFIG_TREE#/}/tracker/etc/tracker.toml" "${CONFIG_TREE}/tracker/etc/tracker.toml"
  local -a aside=("${BACKUP_ROOT}/restore-${ts}".before-*)
  assert_equal "${#aside[@]}" 1
  run tail -n 1 "${aside[0]}/${CONFIG_TREE#/}/tracker/etc/tracker.toml"
  assert_output "edited"
}

@test "root: restore, run and finish refuse a backup or database directory another user owns" {
  [[ "$(id -u)" == 0 ]] || skip "needs root"
  backup_ok run
  chown 1000:1000 "${BACKUP_ROOT}"
  run --separate-stderr "${BACKUP_SH}" restore latest --yes
  assert_failure 2
  assert_stderr --partial "running as root, but ${BACKUP_ROOT} belongs to uid 1000"
  assert_stderr --partial "--user 1000:1000"
  run --separate-stderr "${BACKUP_SH}" run
  assert_failure 2
  assert_stderr --partial "belongs to uid 1000"
  chown 0:0 "${BACKUP_ROOT}"
  # The database's directory counts too: root would write its temporary there.
  chown 1000:1000 "${SQLITE_DB%/*}"
  run --separate-stderr "${BACKUP_SH}" restore latest --yes --only db
  assert_failure 2
  assert_stderr --partial "running as root, but ${SQLITE_DB%/*} belongs to uid 1000"
}

@test "root: runs and restores refuse directories others may write, and links planted in the config's destination" {
  [[ "$(id -u)" == 0 ]] || skip "needs root"
  backup_ok run
  # Root's, but writable by everybody: anyone could plant the lock as a link.
  chmod 0777 "${BACKUP_ROOT}"
  run --separate-stderr "${BACKUP_SH}" run
  assert_failure 2
  assert_stderr --partial "running as root, but ${BACKUP_ROOT} (mode 777) may be written by users other than root"
  chmod 0755 "${BACKUP_ROOT}"
  # A directory in it that root writes into, owned by another user.
  chown 1000:1000 "${BACKUP_ROOT}/.staging"
  run --separate-stderr "${BACKUP_SH}" run
  assert_failure 2
  assert_stderr --partial "running as root, but ${BACKUP_ROOT}/.staging belongs to uid 1000"
  chown 0:0 "${BACKUP_ROOT}/.staging"
  # The config's destination, owned by another user who planted a link in it:
  # tar would extract through it into a directory of root's.
  local parent="${BATS_TEST_TMPDIR}/parent" victim="${BATS_TEST_TMPDIR}/victim"
  mkdir -p "${parent}/config" "${victim}"
  chmod 0700 "${victim}"
  local top="${CONFIG_TREE#/}"
  ln -s "${victim}" "${parent}/config/${top%%/*}"
  chown -h -R 1000:1000 "${parent}/config"
  config_restore_refused "${parent}/config" "running as root, but ${parent}/config belongs to uid 1000" "${victim}"
  # A link further up the way, in a directory another user owns.
  local owner="${BATS_TEST_TMPDIR}/owner"
  mkdir -p "${owner}"
  ln -s "${victim}" "${owner}/x"
  chown -h -R 1000:1000 "${owner}"
  config_restore_refused "${owner}/x/y/cfg" \
    "running as root, but ${owner} belongs to uid 1000 (on the way to ${owner}/x/y/cfg)" "${victim}"
}

# config_restore_refused DEST MESSAGE VICTIM: a root restore of the config into
# DEST exits 2 saying MESSAGE, and nothing reached VICTIM.
config_restore_refused() {
  export RESTORE_CONFIG_ROOT="$1"
  run --separate-stderr "${BACKUP_SH}" restore latest --yes --only config
  assert_failure 2
  assert_stderr --partial "$2"
  run find "$3" -mindepth 1
  assert_output ""
}

# The MySQL snapshot's dump, driven directly with a stand-in for mariadb-dump
# (no server needed): its output file cannot be created (here: a directory
# there; on a host: no inode left). It failed to open before its error FIFO,
# and the reader waited for a writer forever, with the tracker stopped.
@test "snapshot: a dump whose output cannot be created fails at once, never hangs" {
  local dir="${BATS_TEST_TMPDIR}/dump"
  mkdir -p "${dir}/dump.sql"
  run --separate-stderr timeout 20 bash -c '
    source "$1" && init_paths
    CONFIG[DB_NAME]=tracker
    MYSQL_DUMP=(sh -c "echo never reached")
    exec {SESSION_IN_FD}>/dev/null {SESSION_OUT_FD}</dev/null
    dump_until_snapshot_open "$2"' _ "${BACKUP_SH}" "${dir}"
  assert_failure 3
  assert_stderr --partial "mariadb-dump failed"
}

@test "restore: a signal while the journals move aside waits until the restored database is in place" {
  backup_ok run
  sqlite3 "${SQLITE_DB}" "INSERT INTO torrents (info_hash, completed) VALUES ('after-the-set', 1);"
  printf 'the old database'"'"'s -wal\n' >"${SQLITE_DB}-wal"
  local real
  real="$(command -v mv)"
  mkdir -p -- "${BATS_TEST_TMPDIR}/bin"
  # The move of the -wal aside: backup.sh gets SIGTERM meanwhile (before, it then
  # ended with the old database in place and its -wal moved away from it).
  cat >"${BATS_TEST_TMPDIR}/bin/mv" <<EOF
#!/usr/bin/env bash
if [[ "\${*: -1}" == *.before-restore-*-wal ]]; then
  kill -TERM "\${PPID}"
fi
exec "${real}" "\$@"
EOF
  chmod +x -- "${BATS_TEST_TMPDIR}/bin/mv"
  PATH="${BATS_TEST_TMPDIR}/bin:${PATH}" run --separate-stderr "${BACKUP_SH}" restore latest --yes --only db
  assert_equal "${status}" 143
  assert_stderr --partial "SQLite database ${SQLITE_DB} restored from set"
  assert_stderr --partial "failed (exit 143)"
  # The restored database is in place, without the old -wal; the old one has it.
  refute [ -e "${SQLITE_DB}-wal" ]
  run sqlite3 "${SQLITE_DB}" "SELECT count(*) FROM torrents WHERE info_hash = 'after-the-set';"
  assert_output 0
  local -a aside=("${SQLITE_DB}".before-restore-*-wal)
  run cat -- "${aside[0]}"
  assert_output "the old database's -wal"
}

@test "snapshot + finish: a finish that fails removes its snapshot (it would keep a full disk full)" {
  backup_ok snapshot
  local ts="${SET_TS}"
  mkdir -p -- "${BATS_TEST_TMPDIR}/bin"
  printf '#!/bin/sh\necho "zstd: No space left on device" >&2\nexit 1\n' >"${BATS_TEST_TMPDIR}/bin/zstd"
  chmod +x -- "${BATS_TEST_TMPDIR}/bin/zstd"
  PATH="${BATS_TEST_TMPDIR}/bin:${PATH}" run --separate-stderr "${BACKUP_SH}" finish "${ts}"
  assert_equal "${status}" 3
  assert_stderr --partial "No space left on device"
  run staging_entries
  assert_output ""
  run final_files
  assert_output ""
}

@test "restore: a row count that fails leaves no file of its own beside the live database" {
  backup_ok run
  local real
  real="$(command -v sqlite3)"
  mkdir -p -- "${BATS_TEST_TMPDIR}/bin"
  # The count (SQL on stdin: no statement among the arguments) fails, as on a full disk.
  cat >"${BATS_TEST_TMPDIR}/bin/sqlite3" <<EOF
#!/usr/bin/env bash
if [[ "\$#" == 3 && "\$3" == *.restore-*.tmp ]]; then
  echo "Error: disk I/O error" >&2
  exit 1
fi
exec "${real}" "\$@"
EOF
  chmod +x -- "${BATS_TEST_TMPDIR}/bin/sqlite3"
  PATH="${BATS_TEST_TMPDIR}/bin:${PATH}" run --separate-stderr "${BACKUP_SH}" restore latest --yes --only db
  assert_equal "${status}" 3
  assert_stderr --partial "cannot count rows"
  run ls -A -- "${SQLITE_DB%/*}"
  assert_output "${SQLITE_DB##*/}"
}

@test "run: the config archive's entries are counted without a file (a listing the disk could not hold failed as a broken archive, exit 4)" {
  local many="${CONFIG_TREE}/many" i
  mkdir -p -- "${many}"
  for ((i = 0; i < 3000; i++)); do
    : >"${many}/a-long-file-name-that-makes-the-listing-larger-than-the-archive-${i}"
  done
  printf '%s\n' "${many}" >"${PATHS_FILE}"
  # Files of at most 150 KiB (the listing is about 280 KiB; the archive, the database
  # and its copy are far smaller): as a disk that the listing would fill.
  run --separate-stderr bash -c 'ulimit -f 150; exec "$0" run' "${BACKUP_SH}"
  assert_success
  assert_stderr --partial "config archive holds 3001 entries"
}
