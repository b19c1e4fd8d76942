#!/usr/bin/env bash
# Build the test-double images from test-doubles/images/ (idempotent): the
# tracker stand-in and MariaDB that the sandbox and e2e environments run.
#
# Usage: scripts/e2e-setup.sh [--force] [NAME...]
#   NAME     mariadb | tracker-standin | prometheus | node-exporter (default: all)
#   --force  rebuild even when the image is up to date
#
# Each image is tagged tracker-deployer-test/NAME:e2e and labelled with a hash
# of its build context (files, modes, the staged compose .deb) and of the base
# image's id; an image whose label matches is not rebuilt. Needs dockerd and
# the debian:bookworm-slim base image: run scripts/setup.sh first.
#
# Output: progress on stderr; the last line on stdout is machine-readable:
#   images=tracker-deployer-test/mariadb:e2e,tracker-deployer-test/tracker-standin:e2e,...
set -o errexit -o nounset -o pipefail

readonly E2E_LOG_NAME="e2e-setup"
# shellcheck source=SCRIPTDIR/e2e-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e-common.sh"

readonly BUILD_TIMEOUT_SECONDS=900

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# Copies an image's sources into a fresh build context, plus generated inputs.
stage_context() {
  local name="$1" stage="$2"
  cp -a "${E2E_IMAGES_DIR}/${name}/." "${stage}/"
  find "${stage}" \( -name __pycache__ -o -name '*.pyc' \) -prune -exec rm -rf {} +
}

# Hash of a staged context: every file's path, mode and content, and the base
# image's id (a new base image means a rebuild).
context_hash() {
  local stage="$1" base_id
  base_id="$(docker image inspect -f '{{.Id}}' "${E2E_BASE_IMAGE}")"
  {
    printf 'base %s\n' "${base_id}"
    (cd "${stage}" && find . -type f -printf '%m %p\n' | LC_ALL=C sort)
    (cd "${stage}" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -d' ' -f1
}

build_image() {
  local name="$1" force="$2" stage_root="$3"
  local ref stage hash current log_file
  ref="$(e2e_image_ref "${name}")"
  [[ -d "${E2E_IMAGES_DIR}/${name}" ]] || e2e_die "no image sources at ${E2E_IMAGES_DIR}/${name}"
  stage="${stage_root}/${name}"
  mkdir "${stage}"
  stage_context "${name}" "${stage}"
  hash="$(context_hash "${stage}")"
  current="$(docker image inspect -f "{{ index .Config.Labels \"${E2E_HASH_LABEL}\" }}" "${ref}" 2>/dev/null || true)"
  if [[ "${force}" != "1" && "${current}" == "${hash}" ]]; then
    e2e_log "${ref}: up to date"
    return
  fi
  log_file="${E2E_STATE_DIR}/build-${name}.log"
  e2e_log "${ref}: building (log: ${log_file})"
  local started=${SECONDS}
  if ! timeout "${BUILD_TIMEOUT_SECONDS}" docker build --label "${E2E_HASH_LABEL}=${hash}" \
      -t "${ref}" "${stage}" >"${log_file}" 2>&1; then
    tail -n 30 "${log_file}" >&2
    e2e_die "building ${ref} failed (log: ${log_file})"
  fi
  e2e_log "${ref}: built in $((SECONDS - started)) s"
}

main() {
  local force=0
  local -a names=()
  while (($# > 0)); do
    case "$1" in
      --force) force=1 ;;
      -h | --help) usage ;;
      -*) e2e_die "unknown option $1 (see --help)" ;;
      *) names+=("$1") ;;
    esac
    shift
  done
  if ((${#names[@]} == 0)); then
    names=("${E2E_IMAGE_NAMES[@]}")
  fi
  e2e_require_docker
  docker image inspect "${E2E_BASE_IMAGE}" >/dev/null 2>&1 \
    || e2e_die "base image ${E2E_BASE_IMAGE} is missing; run scripts/setup.sh first"
  mkdir -p "${E2E_STATE_DIR}"
  local stage_root
  stage_root="$(mktemp -d -p "${E2E_STATE_DIR}" contexts.XXXXXX)"
  # shellcheck disable=SC2064  # expand now: remove exactly this directory
  trap "rm -rf '${stage_root}'" EXIT
  local name
  local -a refs=()
  for name in "${names[@]}"; do
    build_image "${name}" "${force}" "${stage_root}"
    refs+=("$(e2e_image_ref "${name}")")
  done
  local IFS=,
  printf 'images=%s\n' "${refs[*]}"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
