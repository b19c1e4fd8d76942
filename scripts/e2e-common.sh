# shellcheck shell=bash disable=SC2034  # constants are used by the sourcing scripts
# Shared by scripts/e2e-setup.sh, scripts/lxd-target.sh and
# scripts/container-target.sh. Source it; it defines constants and helpers
# only and runs nothing.
#
# Callers set E2E_LOG_NAME before sourcing (the prefix of log lines).

E2E_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly E2E_REPO_ROOT
readonly E2E_IMAGES_DIR="${E2E_REPO_ROOT}/tests/e2e/images"
# Caches that survive between runs (debootstrapped rootfs, build logs).
readonly E2E_STATE_DIR="${E2E_STATE_DIR:-/var/tmp/tracker-deployer-e2e}"
# scripts/setup.sh keeps its trixie apt cache here; we reuse it.
readonly E2E_SETUP_STATE_DIR="${SETUP_STATE_DIR:-/var/tmp/tracker-deployer-setup}"
readonly E2E_IMAGE_REPOSITORY="tracker-deployer-test"
readonly E2E_IMAGE_TAG="e2e"
# The images that scripts/e2e-setup.sh builds, in build order.
readonly E2E_IMAGE_NAMES=(mariadb tracker-standin target-host prometheus node-exporter)
# The images a target host needs to run the stack.
readonly E2E_STACK_IMAGE_NAMES=(mariadb tracker-standin)
readonly E2E_BASE_IMAGE="debian:bookworm-slim"
readonly E2E_COMPOSE_DEB_VERSION="2.26.1-4"
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

# Prints the path of Debian trixie's docker-compose .deb (compose v2),
# downloading it into setup.sh's apt cache when it is not there yet. The
# system's apt sources are not touched (same recipe as scripts/setup.sh).
e2e_compose_deb() {
  local arch aptq deb
  arch="$(dpkg --print-architecture)"
  aptq="${E2E_SETUP_STATE_DIR}/aptq"
  deb="${aptq}/docker-compose_${E2E_COMPOSE_DEB_VERSION}_${arch}.deb"
  if [[ ! -s "${deb}" ]]; then
    e2e_log "downloading docker-compose ${E2E_COMPOSE_DEB_VERSION} from trixie into ${aptq}"
    mkdir -p "${aptq}/lists/partial" "${aptq}/cache/archives/partial"
    printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' \
      "$(e2e_debian_mirror)" >"${aptq}/sources.list"
    local -a opts=(
      -o "Dir::Etc::SourceList=${aptq}/sources.list"
      -o "Dir::Etc::SourceParts=/nonexistent"
      -o "Dir::State::Lists=${aptq}/lists"
      -o "Dir::Cache=${aptq}/cache"
    )
    apt-get "${opts[@]}" update -qq >&2
    (cd "${aptq}" && apt-get "${opts[@]}" download "docker-compose=${E2E_COMPOSE_DEB_VERSION}" >&2)
  fi
  [[ -s "${deb}" ]] || e2e_die "no ${deb} after download"
  printf '%s\n' "${deb}"
}

# Waits until a TCP port on 127.0.0.1 sends an SSH banner. Bounded.
e2e_wait_for_ssh_banner() {
  local host="$1" port="$2" timeout_seconds="$3"
  local deadline=$((SECONDS + timeout_seconds)) banner
  while ((SECONDS < deadline)); do
    # shellcheck disable=SC2016  # $1/$2 expand in the inner bash
    banner="$(timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2" && head -c 4 <&3' _ "${host}" "${port}" 2>/dev/null || true)"
    [[ "${banner}" == "SSH-" ]] && return 0
    sleep 0.5
  done
  return 1
}
