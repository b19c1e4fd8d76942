#!/usr/bin/env bats
# shellcheck disable=SC2016,SC1003,SC2030,SC2031,SC2154
# (hostile values are literal on purpose; status/stderr/lines come from bats'
# run; each @test is a subshell by design)
# backup.conf parsing, validation and command-line usage. No database server.

bats_require_minimum_version 1.7.0

setup() {
  load test_helper
  common_setup
}

# Values a password (or any other value) may hold; each must read back exactly.
hostile_values() {
  printf '%s\0' \
    'plain' \
    '' \
    'with space' \
    ' leading and trailing ' \
    "it's" \
    "''" \
    'dq"inside"' \
    '$(touch pwned)' \
    '`touch pwned`' \
    '${HOME}' \
    'semi;colon && pipe | amp &' \
    '#not a comment' \
    'back\slash\' \
    '\\n\t\' \
    "p a'ss\"w\$(x)\`;#\\" \
    'ünïcödé ☃ 密码' \
    '=equals=' \
    '~tilde' \
    '*glob?[x]' \
    "tab	inside"
}

@test "config: hostile values read back exactly (and as a shell would)" {
  # shellcheck source=/dev/null
  source "${BACKUP_SH}"
  local value got shell_got
  while IFS= read -r -d '' value; do
    write_config DB_TYPE=sqlite "DB_PASSWORD=${value}"
    load_config "${CONFIG_FILE}"
    got="${CONFIG[DB_PASSWORD]}"
    # The contract: `. backup.conf` in a shell yields the same value.
    shell_got="$(bash -c '. "$1"; printf "%s." "${DB_PASSWORD}"' _ "${CONFIG_FILE}")"
    assert_equal "${got}" "${value}"
    assert_equal "${shell_got%.}" "${value}"
  done < <(hostile_values)
  refute [ -e pwned ]
  refute [ -e "${BATS_TEST_TMPDIR}/pwned" ]
}

@test "config: concatenated segments, escapes and bare characters follow shell rules" {
  # shellcheck source=/dev/null
  source "${BACKUP_SH}"
  cat >"${CONFIG_FILE}" <<'EOF'
# a comment

   # an indented comment
A='one'\''two'
B=bare/path_1.2:3@x
C=a\ b\$c\'d
D='quoted'tail\;
E=
F=''
G='value' # trailing comment after whitespace
  H='indented key'
A='last wins'
EOF
  load_config "${CONFIG_FILE}"
  assert_equal "${CONFIG[A]}" "last wins"
  assert_equal "${CONFIG[B]}" "bare/path_1.2:3@x"
  assert_equal "${CONFIG[C]}" "a b\$c'd"
  assert_equal "${CONFIG[D]}" "quotedtail;"
  assert_equal "${CONFIG[E]}" ""
  assert_equal "${CONFIG[F]}" ""
  assert_equal "${CONFIG[G]}" "value"
  assert_equal "${CONFIG[H]}" "indented key"
  # Same values as a shell reads them.
  run bash -c '. "$1"; printf "%s|" "$A" "$B" "$C" "$D" "$E" "$F" "$G" "$H"' _ "${CONFIG_FILE}"
  assert_output "last wins|bare/path_1.2:3@x|a b\$c'd|quotedtail;|||value|indented key|"
}

@test "hardening extra backup_conf_grammar: double-quoted segments read back as bash reads them" {
  # shellcheck source=/dev/null
  source "${BACKUP_SH}"
  cat >"${CONFIG_FILE}" <<'EOF'
A='it'"'"'s'
B="a\\b\"c\$d\`e\xf\\"
C="plain"tail'single'\ x
D="# not a comment" # a comment
E=""
F="over \
two lines"
G="ünï"'ñ'
H=x
EOF
  load_config "${CONFIG_FILE}"
  assert_equal "${CONFIG[A]}" "it's"
  assert_equal "${CONFIG[B]}" 'a\b"c$d`e\xf\'
  assert_equal "${CONFIG[C]}" "plaintailsingle x"
  assert_equal "${CONFIG[D]}" "# not a comment"
  assert_equal "${CONFIG[E]}" ""
  assert_equal "${CONFIG[F]}" "over two lines"
  assert_equal "${CONFIG[G]}" "ünïñ"
  assert_equal "${CONFIG[H]}" "x"
  # Same values as a shell reads them.
  run bash -c '. "$1"; printf "%s|" "$A" "$B" "$C" "$D" "$E" "$F" "$G" "$H"' _ "${CONFIG_FILE}"
  assert_output 'it'\''s|a\b"c$d`e\xf\|plaintailsingle x|# not a comment||over two lines|ünïñ|x|'
}

@test "hardening extra backup_conf_grammar: hostile values quoted as shlex.quote does read back" {
  # shellcheck source=/dev/null
  source "${BACKUP_SH}"
  local value quoted
  while IFS= read -r -d '' value; do
    quoted="'${value//\'/\'\"\'\"\'}'" # shlex.quote: each ' becomes '"'"'
    printf 'DB_PASSWORD=%s\n' "${quoted}" >"${CONFIG_FILE}"
    load_config "${CONFIG_FILE}"
    assert_equal "${CONFIG[DB_PASSWORD]}" "${value}"
  done < <(hostile_values)
}

@test "hardening extra backup_conf_grammar: \$ or a backtick inside double quotes exits 2 naming the line" {
  local line
  for line in 'DB_PASSWORD="a$b"' 'DB_PASSWORD="$(touch pwned)"' 'DB_PASSWORD="x`touch pwned`"' \
    'DB_PASSWORD="${HOME}"'; do
    printf "DB_TYPE='sqlite'\n%s\nDB_PATH='/x'\n" "${line}" >"${CONFIG_FILE}"
    run --separate-stderr "${BACKUP_SH}" run
    assert_equal "${status}" 2
    [[ "${stderr}" == *"${CONFIG_FILE}:2: malformed value for DB_PASSWORD: '"[\$\`]"' inside double quotes (bash would expand it;"* ]] \
      || fail "unclear error for: ${line}"$'\n'"${stderr}"
    [[ "${stderr}" != *"touch pwned"* && "${stderr}" != *HOME* ]] || fail "value echoed: ${stderr}"
  done
  refute [ -e pwned ]
  refute [ -e "${BATS_TEST_TMPDIR}/pwned" ]
}

@test "hardening extra backup_conf_grammar: a backslash-newline at the end of the file exits 2" {
  printf 'DB_TYPE=sqlite\nDB_PASSWORD="abc\\' >"${CONFIG_FILE}"
  run --separate-stderr "${BACKUP_SH}" run
  assert_equal "${status}" 2
  [[ "${stderr}" == *"${CONFIG_FILE}:2: malformed value for DB_PASSWORD: unterminated double quote"* ]] \
    || fail "${stderr}"
}

@test "config: a malformed line exits 2 naming the line, never executing or echoing it" {
  local -a malformed=(
    "DB_PASSWORD='unterminated"
    'DB_PASSWORD=$(touch pwned)'
    'DB_PASSWORD=`touch pwned`'
    'DB_PASSWORD=two words'
    'DB_PASSWORD=semi;touch pwned'
    'DB_PASSWORD="double $(touch pwned) quoted"'
    'DB_PASSWORD="`touch pwned`"'
    'DB_PASSWORD="unterminated'
    'DB_PASSWORD=ends-with-backslash\'
    $'DB_PASSWORD=\'crlf\'\r'
    'just some text'
    'export DB_PASSWORD=x'
    '1KEY=x'
  )
  local line
  for line in "${malformed[@]}"; do
    printf "DB_TYPE='sqlite'\n# comment\n%s\nDB_PATH='/x'\n" "${line}" >"${CONFIG_FILE}"
    run --separate-stderr "${BACKUP_SH}" run
    assert_equal "${status}" 2
    [[ "${stderr}" == *"${CONFIG_FILE}:3: malformed"* ]] || fail "no line number for: ${line}"$'\n'"${stderr}"
    [[ "${stderr}" != *"touch pwned"* && "${stderr}" != *"words"* ]] || fail "value echoed: ${stderr}"
  done
  refute [ -e pwned ]
  refute [ -e "${BATS_TEST_TMPDIR}/pwned" ]
}

@test "config: missing config file exits 2" {
  export CONFIG_FILE="${BATS_TEST_TMPDIR}/etc/nope.conf"
  run --separate-stderr "${BACKUP_SH}" run
  assert_equal "${status}" 2
  assert_stderr --partial "nope.conf does not exist"
}

@test "config: invalid values exit 2 with the key's name" {
  local -a cases=(
    "DB_TYPE=postgres|DB_TYPE must be"
    "DB_TYPE=sqlite|DB_PATH is required"
    "DB_TYPE=mysql DB_HOST=127.0.0.1 DB_USER=u|DB_NAME is required"
    "DB_TYPE=mysql DB_HOST=h DB_USER=u DB_NAME=d DB_PORT=99999|DB_PORT must be"
    "DB_TYPE=sqlite DB_PATH=/x BACKUP_RETENTION_DAYS=0|BACKUP_RETENTION_DAYS must be"
    "DB_TYPE=sqlite DB_PATH=/x BACKUP_COMPRESSION=gzip BACKUP_COMPRESSION_LEVEL=10|BACKUP_COMPRESSION_LEVEL must be 1-9 for gzip"
    "DB_TYPE=sqlite DB_PATH=/x BACKUP_COMPRESSION_LEVEL=20|BACKUP_COMPRESSION_LEVEL must be 1-19 for zstd"
    "DB_TYPE=sqlite DB_PATH=/x BACKUP_COMPRESSION=zstd BACKUP_COMPRESSION_LEVEL=20|BACKUP_COMPRESSION_LEVEL must be 1-19 for zstd"
    "DB_TYPE=sqlite DB_PATH=/x BACKUP_COMPRESSION=brotli|BACKUP_COMPRESSION must be"
    "DB_TYPE=sqlite DB_PATH=/x BACKUP_MODE=loop|BACKUP_MODE must be"
    "DB_TYPE=sqlite DB_PATH=/x|BACKUP_PATHS_FILE is required"
    "DB_TYPE=sqlite DB_PATH=/x BACKUP_PATHS_FILE=/nonexistent/paths.txt|paths file /nonexistent/paths.txt"
  )
  local case settings expected
  for case in "${cases[@]}"; do
    settings="${case%%|*}"
    expected="${case#*|}"
    # shellcheck disable=SC2086  # word splitting of the settings is intended
    write_config ${settings}
    run --separate-stderr "${BACKUP_SH}" snapshot
    assert_equal "${status}" 2
    [[ "${stderr}" == *"${expected}"* ]] || fail "expected '${expected}' in: ${stderr}"
  done
  # Nothing was written for any of them.
  run final_files
  assert_output ""
}

@test "config: unknown keys are reported and ignored" {
  use_sqlite_config
  printf "FUTURE_KEY='x'\n" >>"${CONFIG_FILE}"
  backup_ok run
  assert_stderr --partial "unknown key FUTURE_KEY ignored"
}

@test "usage: unknown command, stray arguments and bad set names exit 2" {
  use_sqlite_config
  run --separate-stderr "${BACKUP_SH}" frobnicate
  assert_equal "${status}" 2
  assert_stderr --partial "unknown command 'frobnicate'"
  run --separate-stderr "${BACKUP_SH}" run extra
  assert_equal "${status}" 2
  run --separate-stderr "${BACKUP_SH}" finish
  assert_equal "${status}" 2
  run --separate-stderr "${BACKUP_SH}" finish ../../etc
  assert_equal "${status}" 2
  run --separate-stderr "${BACKUP_SH}" finish 20200101_000000
  assert_equal "${status}" 2
  assert_stderr --partial "no completed snapshot 20200101_000000"
  run --separate-stderr "${BACKUP_SH}" restore --yes --only everything
  assert_equal "${status}" 2
  run --separate-stderr "${BACKUP_SH}" restore --yes --bogus
  assert_equal "${status}" 2
}

@test "usage: --help prints the commands and exits 0" {
  run --separate-stderr "${BACKUP_SH}" --help
  assert_success
  assert_output --partial "restore [TS|latest] --yes [--only db|config]"
}
