# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# `verify`: a set's manifest, checksums and archive integrity.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# --- verify -------------------------------------------------------------------

# Resolve TS|latest into SET_TS; $2 is the exit code when there is none.
resolve_set() {
  local wanted="$1" code="$2"
  if [[ "${wanted}" == "latest" ]]; then
    SET_TS="$(latest_complete_set)"
    [[ -n "${SET_TS}" ]] || die "${code}" "no complete backup set in ${ROOT_DIR}"
    refuse_latest_after_now "${SET_TS}" "${code}"
    return 0
  fi
  if [[ ! "${wanted}" =~ ${TS_REGEX} ]]; then
    die "${EXIT_CONFIG}" "'${wanted}' is not a set name (YYYYMMDD_HHMMSS or latest)"
  fi
  if [[ -z "$(set_files "${wanted}")" ]]; then
    die "${code}" "no backup set ${wanted} in ${ROOT_DIR}"
  fi
  if ! set_is_complete "${wanted}"; then
    die "${code}" "set ${wanted} is incomplete (no $(set_file sums "${wanted}"))"
  fi
  SET_TS="${wanted}"
}

# `latest` is the set whose name sorts last. A set named after the clock now
# was taken while the clock was ahead, or the clock is behind now: the sets
# taken since sort before it, so `latest` could name older data than the
# newest set. Refuse (exit $2) and have the operator name the set.
refuse_latest_after_now() {
  local ts="$1" code="$2" now
  now="$(date -u '+%Y%m%d_%H%M%S')"
  if [[ "${ts}" > "${now}" ]]; then
    die "${code}" "the newest set ${ts} is named after this host's clock (now ${now} UTC): the clock was ahead when it was taken, or is behind now, so 'latest' may not be the newest data; check the clock (timedatectl), then name the set to use (backup.sh list shows them)"
  fi
}

# Check checksums, names and gzip/tar integrity of complete set $1.
verify_set() {
  local ts="$1" sums line number=0 relative
  sums="$(set_file sums "${ts}")"
  local -a payload=()
  local -A kinds=() listable=()
  # The manifest lists files of the set's layout, the manifest itself excepted.
  while IFS= read -r relative; do
    [[ "${relative}" == "${sums}" ]] || listable["${relative}"]=1
  done < <(set_layout "${ts}")
  while IFS= read -r line || [[ -n "${line}" ]]; do
    number=$((number + 1))
    if [[ ! "${line}" =~ ^[0-9a-f]{64}\ \ (.+)$ || -z "${listable[${BASH_REMATCH[1]}]+set}" ]]; then
      die "${EXIT_VERIFY}" "${sums}:${number}: unexpected line (corrupt manifest)"
    fi
    relative="${BASH_REMATCH[1]}"
    payload+=("${relative}")
    kinds["${relative%%/*}"]=$((${kinds[${relative%%/*}]:-0} + 1))
  done <"${ROOT_DIR}/${sums}"
  if [[ "${kinds[config]:-0}" != 1 || "${kinds[manifests]:-0}" != 1 ]] \
    || (("${kinds[mysql]:-0}" + "${kinds[sqlite]:-0}" != 1)); then
    die "${EXIT_VERIFY}" "${sums} does not list exactly one database file, one config archive and one .meta"
  fi
  if ! (cd -- "${ROOT_DIR}" && sha256sum --check --strict --quiet -- "${sums}") >&2; then
    die "${EXIT_VERIFY}" "set ${ts}: checksum mismatch or missing file"
  fi
  local tail_bytes
  for relative in "${payload[@]}"; do
    case "${relative}" in
      *.gz)
        gzip -t -- "${ROOT_DIR}/${relative}" || die "${EXIT_VERIFY}" "${relative} fails gzip -t"
        ;;&
      *.zst)
        zstd -q -t -- "${ROOT_DIR}/${relative}" || die "${EXIT_VERIFY}" "${relative} fails zstd -t"
        ;;&
      *.tar.gz)
        tar --list --gzip --file="${ROOT_DIR}/${relative}" >/dev/null \
          || die "${EXIT_VERIFY}" "${relative} is not a readable tar archive"
        ;;
      *.sql.gz | *.sql.zst)
        if ! tail_bytes="$(decompress "${ROOT_DIR}/${relative}" | tail -c 200)" || ! check_dump_marker "${tail_bytes}"; then
          die "${EXIT_VERIFY}" "${relative} does not end with '${DUMP_MARKER}'"
        fi
        ;;
    esac
  done
  log "set ${ts}: verified (${#payload[@]} files + manifest)"
  VERIFIED_FILES=("${payload[@]}")
}
