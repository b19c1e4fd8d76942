# shellcheck shell=bash disable=SC2034  # constants are used by the sourcing scripts
# Shared by scripts/e2e-setup.sh and scripts/lxd-host.sh. Source it; it defines constants and helpers
# only and runs nothing.
#
# Callers set E2E_LOG_NAME before sourcing (the prefix of log lines).

E2E_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly E2E_REPO_ROOT
# Test doubles: images that stand in for ones no registry here can give us.
readonly E2E_IMAGES_DIR="${E2E_REPO_ROOT}/test-doubles/images"
# Caches that survive between runs (debootstrapped rootfs, build logs).
readonly E2E_STATE_DIR="${E2E_STATE_DIR:-/var/tmp/tracker-deployer-e2e}"
readonly E2E_IMAGE_REPOSITORY="tracker-deployer-test"
readonly E2E_IMAGE_TAG="e2e"
# The images that scripts/e2e-setup.sh builds, in build order.
readonly E2E_IMAGE_NAMES=(mariadb tracker-standin prometheus node-exporter)
readonly E2E_BASE_IMAGE="debian:bookworm-slim"
readonly E2E_HASH_LABEL="org.tracker-deployer.e2e.context-sha256"

e2e_log() { printf '[%s %(%H:%M:%S)T] %s\n' "${E2E_LOG_NAME:-e2e}" -1 "$*" >&2; }
e2e_die() {
  printf '[%s] error: %s\n' "${E2E_LOG_NAME:-e2e}" "$*" >&2
  exit 1
}

# tracker-deployer-test/NAME:e2e
e2e_image_ref() { printf '%s/%s:%s\n' "${E2E_IMAGE_REPOSITORY}" "$1" "${E2E_IMAGE_TAG}"; }

e2e_debian_mirror() {
  local mirror=""
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    mirror="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  fi
  printf '%s\n' "${mirror:-http://deb.debian.org/debian}"
}

e2e_require_root() {
  [[ "$(id -u)" -eq 0 ]] || e2e_die "run as root (docker, LXD and iptables need it)"
}

e2e_require_docker() {
  docker info >/dev/null 2>&1 || e2e_die "docker is not reachable; run scripts/setup.sh first (it starts dockerd)"
}
