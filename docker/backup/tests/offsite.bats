#!/usr/bin/env bats
# shellcheck disable=SC2154
# (status/stderr/output come from bats' run)
# offsite.sh against a real restic (Debian's package) and a local-path
# repository; the network backends (sftp, rest, s3) are covered by
# tests/integration/test_offsite.py with real servers.

bats_require_minimum_version 1.7.0

setup() {
  load test_helper
  common_setup
  use_sqlite_config 20
  # Never skipped: run.sh refuses to start without restic, and so does this.
  command -v restic >/dev/null || fail "restic is not installed (scripts/setup.sh installs it)"
  OFFSITE_SH="$(cd "${BATS_TEST_DIRNAME}/.." && pwd)/offsite.sh"
  export OFFSITE_BACKUP_SH="${BACKUP_SH}"
  export RESTIC_REPOSITORY="${BATS_TEST_TMPDIR}/repo"
  export RESTIC_PASSWORD_FILE="${BATS_TEST_TMPDIR}/etc/offsite.password"
  export OFFSITE_ENV_NAME="bats-env"
  export OFFSITE_KEEP="--keep-last 2"
  export OFFSITE_CHECK_READ_DATA="100"
  unset RESTIC_PASSWORD RESTIC_PASSWORD_COMMAND
  printf '%s' "p a'ss\"w\$(x)\`;#\\ ü" >"${RESTIC_PASSWORD_FILE}"
}

# The set ids in the repository (restic's own listing).
repository_sets() {
  restic --no-cache snapshots --json 2>/dev/null | grep -o '"set=[0-9_]*"' | tr -d '"' | sed 's/^set=//' | sort
}

@test "offsite: the first upload creates the repository and uploads every complete set" {
  backup_ok run
  local first="${SET_TS}"
  backup_ok run
  run --separate-stderr "${OFFSITE_SH}" upload
  assert_success
  assert_output "uploaded=${first} ${SET_TS}"
  run repository_sets
  assert_output "$(printf '%s\n%s' "${first}" "${SET_TS}")"
}

@test "offsite: the uploaded files are the set's files, byte for byte" {
  backup_ok run
  run --separate-stderr "${OFFSITE_SH}" upload
  assert_success
  restic --no-cache restore latest --target "${BATS_TEST_TMPDIR}/restored" >/dev/null 2>&1
  (cd "${BATS_TEST_TMPDIR}/restored${BACKUP_ROOT}" && sha256sum --check --strict "manifests/set_${SET_TS}.sha256")
}

@test "offsite: a second upload only sends the sets the repository lacks" {
  backup_ok run
  run --separate-stderr "${OFFSITE_SH}" upload
  assert_success
  backup_ok run
  run --separate-stderr "${OFFSITE_SH}" upload
  assert_success
  assert_output "uploaded=${SET_TS}"
}

@test "offsite: a set named while the clock was ahead stops no later upload, nor makes the policy forget it" {
  # A policy of one: the set named after the clock is the newest by time and
  # would take that one place, so every later set would be forgotten at once.
  export OFFSITE_KEEP="--keep-last 1"
  clock_ahead 31536000 # a year
  PATH="${AHEAD_PATH}" backup_ok run
  local future="${SET_TS}"
  run --separate-stderr "${OFFSITE_SH}" upload
  assert_success
  assert_stderr --partial "(each rule keeps 1 more: the set(s) named after this host's clock take a place)"
  # The clock is right again: the next sets sort before the one in the repository.
  backup_ok run
  run --separate-stderr "${OFFSITE_SH}" upload
  assert_success
  assert_output "uploaded=${SET_TS}"
  assert_stderr --partial "WARNING: the repository holds set ${future}, named after this host's clock"
  run repository_sets
  assert_output "$(printf '%s\n%s' "${SET_TS}" "${future}")"
}

@test "offsite: forget --prune applies the keep policy to this environment's snapshots" {
  local index
  for index in 1 2 3; do backup_ok run; done
  run --separate-stderr "${OFFSITE_SH}" upload
  assert_success
  run repository_sets
  assert_equal "${#lines[@]}" 2
  assert_equal "${lines[1]}" "${SET_TS}"
}

@test "offsite: a second host uploading as the same environment is a failure, and nothing is forgotten" {
  backup_ok run
  local mine="${SET_TS}"
  sleep 1.1 # set ids are by the second
  # The other host (an old host back after inv recover): its own backup directory.
  BACKUP_ROOT="${BATS_TEST_TMPDIR}/other-host" backup_ok run
  local theirs="${SET_TS}"
  BACKUP_ROOT="${BATS_TEST_TMPDIR}/other-host" run --separate-stderr "${OFFSITE_SH}" upload
  assert_success
  # Before, this host said "nothing to upload" (exit 0): its set was never uploaded,
  # and its next upload's forget could drop the other host's.
  run --separate-stderr "${OFFSITE_SH}" upload
  assert_equal "${status}" 23
  assert_stderr --partial "the repository holds set ${theirs} of bats-env, newer than this host's newest set ${mine}, which it lacks: another host uploads as bats-env"
  run repository_sets
  assert_output "${theirs}"
}

# backup_and_upload_on DIR MACHINE: a backup run into DIR (a second after the last
# set: set ids are by the second), then its upload as MACHINE.
backup_and_upload_on() {
  sleep 1.1
  BACKUP_ROOT="$1" backup_ok run
  BACKUP_ROOT="$1" OFFSITE_UPLOADER="$2" run --separate-stderr "${OFFSITE_SH}" upload
}

@test "offsite: a host recovered from an older set goes on uploading" {
  local old="${BATS_TEST_TMPDIR}/old-host" new="${BATS_TEST_TMPDIR}/new-host"
  export OFFSITE_KEEP="--keep-last 5"
  BACKUP_ROOT="${old}" backup_ok run
  local older="${SET_TS}"
  mkdir -p "${new}"
  cp -r -- "${old}/." "${new}/" # inv recover --set OLDER: only that set there
  backup_and_upload_on "${old}" old-machine
  assert_success
  backup_and_upload_on "${new}" new-machine
  assert_success
  assert_output "uploaded=${SET_TS}"
  [[ "${older}" < "${SET_TS}" ]]
}

@test "offsite: a host back after a recover onto another is refused, though its set is the newest" {
  local old="${BATS_TEST_TMPDIR}/old-host" new="${BATS_TEST_TMPDIR}/new-host"
  export OFFSITE_KEEP="--keep-daily 7"
  backup_and_upload_on "${old}" old-machine
  assert_success
  local restored="${SET_TS}"
  # inv recover onto a new machine: the set fetched there, then its own runs.
  mkdir -p "${new}"
  cp -r -- "${old}/." "${new}/"
  backup_and_upload_on "${new}" new-machine
  assert_success
  local recovered="${SET_TS}"
  assert_output "uploaded=${recovered}"
  run repository_sets
  assert_output "${recovered}" # one a day (both sets were taken today)
  # The old machine is back, its cron still there: its set is seconds newer.
  backup_and_upload_on "${old}" old-machine
  local stale="${SET_TS}"
  assert_equal "${status}" 23
  assert_stderr --partial "the repository's newest set ${recovered} of bats-env was uploaded by new-machine, not by this host (old-machine), which holds no set of that machine's"
  assert_stderr --partial "inv destroy --env bats-env --host ADDRESS retires the one at ADDRESS"
  # Before, it uploaded its set and forget kept it in place of the recovered one.
  run repository_sets
  assert_output "${recovered}"
  [[ "${restored}" < "${recovered}" ]]
  # The recovered machine goes on.
  backup_and_upload_on "${new}" new-machine
  assert_success
  assert_output "uploaded=${SET_TS}"
  [[ "${stale}" < "${SET_TS}" ]]
}

@test "offsite: a wrong password exits 21 and names the cause" {
  backup_ok run
  run --separate-stderr "${OFFSITE_SH}" upload
  assert_success
  printf 'not the password' >"${RESTIC_PASSWORD_FILE}"
  run --separate-stderr "${OFFSITE_SH}" upload
  assert_failure 21
  assert_stderr --partial "wrong repository password"
}

@test "offsite: a corrupt local set is not uploaded, and the run fails with 23" {
  backup_ok run
  printf 'x' >>"${BACKUP_ROOT}/$(db_file "${SET_TS}")"
  run --separate-stderr "${OFFSITE_SH}" upload
  assert_failure 23
  assert_stderr --partial "${SET_TS} fail verification"
  run repository_sets
  assert_output ""
}

@test "offsite: a set file that vanishes during the upload leaves no snapshot that looks whole" {
  backup_ok run
  # restic, with a file of the set moved away while it reads the list (as if
  # deleted meanwhile): it skips the file, exits 0 and writes the snapshot.
  local real
  real="$(command -v restic)"
  mkdir -p -- "${BATS_TEST_TMPDIR}/bin"
  cat >"${BATS_TEST_TMPDIR}/bin/restic" <<EOF
#!/usr/bin/env bash
if [[ " \$* " == *" backup "* ]]; then
  for arg in "\$@"; do
    [[ "\${previous:-}" != --files-from-verbatim ]] || list="\${arg}"
    previous="\${arg}"
  done
  meta="\$(grep '[.]meta\$' "\${list}")"
  mv -- "\${meta}" "\${meta}.away"
  rc=0
  "${real}" "\$@" || rc=\$?
  mv -- "\${meta}.away" "\${meta}"
  exit "\${rc}"
fi
exec "${real}" "\$@"
EOF
  chmod +x -- "${BATS_TEST_TMPDIR}/bin/restic"
  PATH="${BATS_TEST_TMPDIR}/bin:${PATH}" run --separate-stderr "${OFFSITE_SH}" upload
  assert_failure 23
  assert_stderr --partial "does not exist, skipping"
  assert_stderr --partial "restic stored 3 of its 4 files"
  run repository_sets
  assert_output ""
  # The next upload sends the whole set.
  run --separate-stderr "${OFFSITE_SH}" upload
  assert_success
  assert_output "uploaded=${SET_TS}"
  restic --no-cache restore latest --target "${BATS_TEST_TMPDIR}/restored" >/dev/null 2>&1
  (cd "${BATS_TEST_TMPDIR}/restored${BACKUP_ROOT}" && sha256sum --check --strict "manifests/set_${SET_TS}.sha256")
}

@test "offsite: the local sets are never changed" {
  backup_ok run
  local before
  before="$(cd "${BACKUP_ROOT}" && find . -type f -print0 | sort -z | xargs -0 sha256sum)"
  run --separate-stderr "${OFFSITE_SH}" upload
  assert_success
  assert_equal "$(cd "${BACKUP_ROOT}" && find . -type f -print0 | sort -z | xargs -0 sha256sum)" "${before}"
}

@test "offsite: check reads the data and passes on a sound repository" {
  backup_ok run
  "${OFFSITE_SH}" upload 2>/dev/null
  run --separate-stderr "${OFFSITE_SH}" check
  assert_success
  assert_stderr --partial "--read-data"
  assert_stderr --partial "check passed"
}

@test "offsite: check exits 24 when a pack file is damaged" {
  backup_ok run
  "${OFFSITE_SH}" upload 2>/dev/null
  local pack
  pack="$(find "${RESTIC_REPOSITORY}/data" -type f | head -n 1)"
  chmod u+w "${pack}"
  printf 'garbage' | dd of="${pack}" bs=1 seek=20 conv=notrunc 2>/dev/null
  run --separate-stderr "${OFFSITE_SH}" check
  assert_failure 24
}

@test "offsite: bad settings exit 2 before restic runs" {
  OFFSITE_KEEP="" run --separate-stderr "${OFFSITE_SH}" upload
  assert_failure 2
  RESTIC_PASSWORD_FILE="${BATS_TEST_TMPDIR}/missing" run --separate-stderr "${OFFSITE_SH}" upload
  assert_failure 2
  assert_stderr --partial "password file"
  run --separate-stderr "${OFFSITE_SH}" delete
  assert_failure 2
}

@test "offsite: fetch restores a set into the fetch directory in the set layout, verified" {
  backup_ok run
  "${OFFSITE_SH}" upload 2>/dev/null
  export OFFSITE_FETCH_DIR="${BATS_TEST_TMPDIR}/fetch"
  mkdir -p "${OFFSITE_FETCH_DIR}"
  run --separate-stderr "${OFFSITE_SH}" fetch "${SET_TS}"
  assert_success
  assert_output "fetched=${SET_TS}"
  (cd "${OFFSITE_FETCH_DIR}/set" && sha256sum --check --strict "manifests/set_${SET_TS}.sha256")
  run bash -c "cd '${OFFSITE_FETCH_DIR}' && find . -type f | sort"
  assert_output "$(printf '%s\n' "./set/config/config_${SET_TS}.tar.gz" "./set/manifests/set_${SET_TS}.meta" \
    "./set/manifests/set_${SET_TS}.sha256" "./set/$(db_file "${SET_TS}")")"
}

@test "offsite: fetch refuses a snapshot holding a symbolic link and moves nothing from where it points" {
  backup_ok run
  # A snapshot this tool never makes: the set's config directory is a link to
  # a directory outside, which holds a file of the set's name.
  mkdir -p "${BATS_TEST_TMPDIR}/outside"
  mv "${BACKUP_ROOT}/config" "${BATS_TEST_TMPDIR}/outside/config"
  ln -s "${BATS_TEST_TMPDIR}/outside/config" "${BACKUP_ROOT}/config"
  restic --no-cache init >/dev/null 2>&1
  restic --no-cache backup --quiet --host bats-env --tag env=bats-env --tag "set=${SET_TS}" \
    "${BACKUP_ROOT}/config" "${BACKUP_ROOT}/manifests" "${BACKUP_ROOT}/$(db_file "${SET_TS}")" >/dev/null 2>&1
  export OFFSITE_FETCH_DIR="${BATS_TEST_TMPDIR}/fetch"
  mkdir -p "${OFFSITE_FETCH_DIR}"
  run --separate-stderr "${OFFSITE_SH}" fetch "${SET_TS}"
  assert_failure 23
  assert_stderr --partial "holds a symbolic link"
  assert [ -f "${BATS_TEST_TMPDIR}/outside/config/config_${SET_TS}.tar.gz" ]
  refute [ -e "${OFFSITE_FETCH_DIR}/set/$(set_file sums "${SET_TS}")" ]
}

@test "offsite: fetch of a set the repository lacks exits 26; a bad id or a used directory exits 2" {
  backup_ok run
  "${OFFSITE_SH}" upload 2>/dev/null
  export OFFSITE_FETCH_DIR="${BATS_TEST_TMPDIR}/fetch"
  mkdir -p "${OFFSITE_FETCH_DIR}"
  run --separate-stderr "${OFFSITE_SH}" fetch 20000101_000000
  assert_failure 26
  assert_stderr --partial "holds no set 20000101_000000 of bats-env"
  run --separate-stderr "${OFFSITE_SH}" fetch "../../etc"
  assert_failure 2
  run --separate-stderr "${OFFSITE_SH}" fetch
  assert_failure 2
  mkdir "${OFFSITE_FETCH_DIR}/set"
  run --separate-stderr "${OFFSITE_SH}" fetch "${SET_TS}"
  assert_failure 2
  assert_stderr --partial "is not empty"
}

@test "offsite: fetch refuses a set whose copy in the repository does not verify" {
  backup_ok run
  # A set whose checksums do not match its files, uploaded as it is (restic directly).
  printf 'x' >>"${BACKUP_ROOT}/$(db_file "${SET_TS}")"
  restic --no-cache init >/dev/null 2>&1
  restic --no-cache backup --host bats-env --tag "env=bats-env" --tag "set=${SET_TS}" \
    "${BACKUP_ROOT}/sqlite" "${BACKUP_ROOT}/config" "${BACKUP_ROOT}/manifests" >/dev/null 2>&1
  export OFFSITE_FETCH_DIR="${BATS_TEST_TMPDIR}/fetch"
  mkdir -p "${OFFSITE_FETCH_DIR}"
  run --separate-stderr "${OFFSITE_SH}" fetch "${SET_TS}"
  assert_failure 23
  assert_stderr --partial "fails verification"
}

@test "offsite: a password in the repository URL is printed by no command" {
  backup_ok run
  mkdir -p "${BATS_TEST_TMPDIR}/fetch"
  # Nothing listens on loopback port 1 (tcpmux): every command fails as unreachable,
  # and restic's error names the URL. restic hides a user:password itself, but a
  # token as the URL's user it prints as is: only offsite.sh's redaction hides that.
  local repository command
  for repository in "rest:http://user:s3cr3t@127.0.0.1:1/repo" "rest:http://s3cr3t@127.0.0.1:1/repo"; do
    export RESTIC_REPOSITORY="${repository}"
    for command in upload check snapshots sets "fetch ${SET_TS}"; do
      # shellcheck disable=SC2086
      OFFSITE_FETCH_DIR="${BATS_TEST_TMPDIR}/fetch" run --separate-stderr "${OFFSITE_SH}" ${command}
      assert_failure 20
      assert_stderr --partial "//***@127.0.0.1:1/repo"
      refute_output --partial "s3cr3t"
      refute_stderr --partial "s3cr3t"
    done
  done
}

@test "offsite: a wrong password names the repository without its userinfo" {
  backup_ok run
  local repository="${BATS_TEST_TMPDIR}/x//user:s3cr3t@y/repo"
  RESTIC_REPOSITORY="${repository}" run --separate-stderr "${OFFSITE_SH}" upload
  assert_success
  printf 'not the password' >"${RESTIC_PASSWORD_FILE}"
  RESTIC_REPOSITORY="${repository}" run --separate-stderr "${OFFSITE_SH}" upload
  assert_failure 21
  assert_stderr --regexp 'wrong repository password.*//\*\*\*@y/repo'
  refute_output --partial "s3cr3t"
  refute_stderr --partial "s3cr3t"
}

@test "offsite: check gives an unreachable repository 20 and a wrong password 21, not 24" {
  backup_ok run
  "${OFFSITE_SH}" upload 2>/dev/null
  printf 'not the password' >"${RESTIC_PASSWORD_FILE}"
  run --separate-stderr "${OFFSITE_SH}" check
  assert_failure 21
  RESTIC_REPOSITORY="${BATS_TEST_TMPDIR}/missing" run --separate-stderr "${OFFSITE_SH}" check
  assert_failure 20
}
