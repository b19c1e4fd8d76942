# shellcheck shell=bash disable=SC2034,SC2154  # variables cross files; see backup.sh
# Compressing (gzip/pigz or zstd, tested while written) and decompressing.
# Part of backup.sh, which sources it; nox -s shellcheck also checks the whole program as one file.

# decompress FILE: its content on stdout, by its suffix (.zst: zstd, else gzip).
decompress() {
  case "$1" in
    *.zst) zstd -q -d -c -- "$1" ;;
    *) gzip -d -c -- "$1" ;;
  esac
}

# --- finish -------------------------------------------------------------------

# COMPRESSOR for the database file (BACKUP_COMPRESSION at its level), and
# CONFIG_COMPRESSOR for the config archive, which stays .tar.gz (gzip at the
# level, or at 6 when the database file is zstd's).
setup_compressor() {
  local level="${CONFIG[BACKUP_COMPRESSION_LEVEL]}" gzip_tool="gzip"
  command -v pigz >/dev/null 2>&1 && gzip_tool="pigz"
  if [[ "${CONFIG[BACKUP_COMPRESSION]}" == zstd ]]; then
    command -v zstd >/dev/null 2>&1 || die "${EXIT_BACKUP}" "BACKUP_COMPRESSION=zstd but zstd is not installed"
    COMPRESSOR=(zstd -q -c -T0 "-${level}")
    CONFIG_COMPRESSOR=("${gzip_tool}" -c -n -6)
  else
    COMPRESSOR=("${gzip_tool}" -c -n "-${level}")
    CONFIG_COMPRESSOR=("${COMPRESSOR[@]}")
  fi
}

# Compress staging file $1 to $2, testing the compressed stream while it is
# written (tee into gzip -t / zstd -t) rather than in a second pass over the
# file. With $3, gzip -dc / zstd -dc does the test and the stream's last 200
# bytes go to file $3.
compress_to() {
  local source="$1" target="$2" tail_file="${3:-/dev/null}"
  local -a check=(gzip -t)
  [[ "${tail_file}" == /dev/null ]] || check=(gzip -dc)
  if [[ "${COMPRESSOR[0]}" == zstd ]]; then
    check=(zstd -q -t)
    [[ "${tail_file}" == /dev/null ]] || check=(zstd -q -d -c)
  fi
  "${COMPRESSOR[@]}" <"${source}" | tee -- "${target}" | "${check[@]}" | tail -c 200 >"${tail_file}" \
    && return 0
  local -a statuses=("${PIPESTATUS[@]}")
  if ((statuses[0] != 0)); then
    die "${EXIT_BACKUP}" "compressing ${source##*/} failed"
  fi
  if ((statuses[2] != 0)); then
    die "${EXIT_VERIFY}" "${target##*/} fails ${check[0]} -t"
  fi
  die "${EXIT_BACKUP}" "writing ${target##*/} failed (tee/tail exit ${statuses[1]}/${statuses[3]}; see above)"
}
