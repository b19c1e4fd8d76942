#!/usr/bin/env bash
# Install and start everything this project needs on a fresh Debian 12 machine.
#
# Idempotent: a second run only checks. Run as root (or with sudo).
#   scripts/setup.sh            system packages, dockerd, compose v2, base image, .venv
#   SETUP_SKIP_SYSTEM=1 ...     skip system packages and daemons
#   SETUP_SKIP_IMAGES=1 ...     skip building the test and backup images
#
# What and why (measured recipes: ../shared/INFRA.md in the steering repo):
# - docker.io from Debian, dockerd started by hand (no systemd on our machines)
# - Compose v2 from Debian trixie's .deb (not in bookworm), installed without
#   adding trixie to the system's sources
# - debian:bookworm-slim imported from debootstrap when no registry has it
# - bats + bats-assert + bats-support, shellcheck, cron, sshd, pigz, sqlite3,
#   mariadb client/server for the backup tests
# - restic and rclone (off-host copies: the tests' restic client, and
#   `rclone serve restic`, the REST server they upload to)
# - LXD (the lxd provider: `inv provision`, the sandbox, e2e) and nftables
#   (`nft -c` checks the host firewall `inv configure` writes)
# - promtool (Debian's prometheus package) for `nox -s rules`, and
#   docker-registry (the publish tests push to one on loopback); their daemons
#   are never started
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
readonly VENV="${REPO_ROOT}/.venv"
readonly STATE_DIR="${SETUP_STATE_DIR:-/var/tmp/tracker-deployer-setup}"
readonly BASE_IMAGE="debian:bookworm-slim"
readonly COMPOSE_DEB_VERSION="2.26.1-4"

log() { printf '[setup %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

debian_mirror() {
  local mirror=""
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    mirror="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  fi
  printf '%s\n' "${mirror:-http://deb.debian.org/debian}"
}

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  local -a wanted=(
    docker.io debootstrap ca-certificates iptables
    bats bats-assert bats-support shellcheck
    openssh-server openssh-client cron sudo logrotate util-linux
    sqlite3 pigz gzip zstd tar jq curl time strace
    mariadb-client mariadb-server
    lxd lxd-client dnsmasq-base nftables
    restic rclone
  )
  local -a missing=()
  local package
  for package in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "${package}" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("${package}")
    fi
  done
  if ((${#missing[@]} == 0)); then
    log "system packages: all present"
    return
  fi
  log "system packages: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Packages that bring a daemon we only want the tools of: promtool ships in
# Debian's prometheus package (with the server), the publish tests start their
# own `docker-registry serve` on a free loopback port (never the package's
# service on :5000). A policy-rc.d that refuses every start keeps the install
# from starting the daemon (our images have one already; a machine with an init
# system may not), and on a systemd machine the unit is disabled so a reboot
# does not start it either.
#   install_without_daemon PACKAGE COMMAND SERVICE
install_without_daemon() {
  local package="$1" command="$2" service="$3"
  if command -v "${command}" >/dev/null 2>&1; then
    log "${command}: present (${package})"
    return
  fi
  local policy=/usr/sbin/policy-rc.d added=0
  if [[ ! -e "${policy}" ]]; then
    as_root sh -c "printf '#!/bin/sh\\nexit 101\\n' >'${policy}' && chmod 0755 '${policy}'"
    added=1
  fi
  log "${command}: installing Debian's ${package} package (daemon not started)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${package}" >/dev/null \
    || { ((added == 0)) || as_root rm -f "${policy}"; die "installing the ${package} package failed"; }
  ((added == 0)) || as_root rm -f "${policy}"
  if [[ -d /run/systemd/system ]]; then
    as_root systemctl disable --now "${service}" >/dev/null 2>&1 || true
  fi
  command -v "${command}" >/dev/null || die "the ${package} package is installed but ${command} is not on PATH"
}

install_compose_v2() {
  if docker compose version >/dev/null 2>&1 \
      && docker compose version --short 2>/dev/null | grep -q '^v\?2'; then
    log "compose v2: $(docker compose version --short)"
    return
  fi
  local mirror aptq
  mirror="$(debian_mirror)"
  aptq="${STATE_DIR}/aptq"
  mkdir -p "${aptq}/lists/partial" "${aptq}/cache/archives/partial"
  printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' "${mirror}" \
    >"${aptq}/sources.list"
  local -a opts=(
    -o "Dir::Etc::SourceList=${aptq}/sources.list"
    -o "Dir::Etc::SourceParts=/nonexistent"
    -o "Dir::State::Lists=${aptq}/lists"
    -o "Dir::Cache=${aptq}/cache"
  )
  log "compose v2: downloading docker-compose ${COMPOSE_DEB_VERSION} from trixie"
  as_root apt-get "${opts[@]}" update -qq
  (cd "${aptq}" && as_root apt-get "${opts[@]}" download "docker-compose=${COMPOSE_DEB_VERSION}")
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    "${aptq}/docker-compose_${COMPOSE_DEB_VERSION}_$(dpkg --print-architecture).deb" >/dev/null
  docker compose version >/dev/null || die "compose v2 installed but 'docker compose' does not run"
  log "compose v2: $(docker compose version --short)"
}

start_dockerd() {
  if docker info >/dev/null 2>&1; then
    log "dockerd: running"
    return
  fi
  log "dockerd: starting"
  mkdir -p "${STATE_DIR}"
  as_root sh -c "nohup /usr/sbin/dockerd >'${STATE_DIR}/dockerd.log' 2>&1 & echo \$! >'${STATE_DIR}/dockerd.pid'"
  local i
  for ((i = 0; i < 60; i++)); do
    docker info >/dev/null 2>&1 && { log "dockerd: up"; return; }
    sleep 1
  done
  tail -n 20 "${STATE_DIR}/dockerd.log" >&2 || true
  die "dockerd did not come up within 60 s (log: ${STATE_DIR}/dockerd.log)"
}

ensure_base_image() {
  if docker image inspect "${BASE_IMAGE}" >/dev/null 2>&1; then
    log "base image ${BASE_IMAGE}: present"
    return
  fi
  if timeout 60 docker pull -q "${BASE_IMAGE}" >/dev/null 2>&1; then
    log "base image ${BASE_IMAGE}: pulled"
    return
  fi
  local rootfs="${STATE_DIR}/rootfs-bookworm"
  log "base image ${BASE_IMAGE}: no registry, debootstrapping"
  as_root rm -rf "${rootfs}"
  as_root debootstrap --variant=minbase bookworm "${rootfs}" "$(debian_mirror)" >"${STATE_DIR}/debootstrap.log" 2>&1 \
    || { tail -n 20 "${STATE_DIR}/debootstrap.log" >&2; die "debootstrap failed (log: ${STATE_DIR}/debootstrap.log)"; }
  # Same clean-up as the official slim image: no apt lists, docs or man pages.
  as_root rm -rf "${rootfs}/var/lib/apt/lists/"* "${rootfs}/usr/share/doc/"* "${rootfs}/usr/share/man/"* \
    "${rootfs}/var/cache/apt/"*.bin
  as_root tar -C "${rootfs}" -c . | docker import - "${BASE_IMAGE}" >/dev/null
  as_root rm -rf "${rootfs}"
  log "base image ${BASE_IMAGE}: imported"
}

ensure_mariadb() {
  if mariadb -h127.0.0.1 -uroot -e 'SELECT 1' >/dev/null 2>&1; then
    log "mariadb: reachable on 127.0.0.1:3306"
    return
  fi
  log "mariadb: starting a local server"
  as_root mkdir -p /run/mysqld
  as_root chown mysql:mysql /run/mysqld
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    as_root mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  local i
  for ((i = 0; i < 60; i++)); do
    if mariadb -h127.0.0.1 -uroot -e 'SELECT 1' >/dev/null 2>&1; then
      log "mariadb: up"
      return
    fi
    # A fresh Debian install authenticates root by unix socket only: allow the
    # empty-password TCP login our tests expect (this is a throw-away machine).
    as_root mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('')" >/dev/null 2>&1 || true
    sleep 1
  done
  die "MariaDB is not reachable on 127.0.0.1:3306 as root with an empty password; start one or set MARIADB_HOST/MARIADB_PORT/MARIADB_USER/MARIADB_PASSWORD"
}

setup_venv() {
  if [[ ! -x "${VENV}/bin/python" ]]; then
    log "venv: creating ${VENV}"
    python3 -m venv "${VENV}"
  fi
  local stamp="${VENV}/.setup-stamp"
  local want
  want="$(sha256sum "${REPO_ROOT}/pyproject.toml" | cut -d' ' -f1)"
  if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]]; then
    log "venv: up to date"
    return
  fi
  log "venv: installing the project and its dev tools"
  "${VENV}/bin/python" -m pip install -q --upgrade pip
  "${VENV}/bin/python" -m pip install -q -e "${REPO_ROOT}" --group "${REPO_ROOT}/pyproject.toml:dev"
  printf '%s\n' "${want}" >"${stamp}"
}

# The images the tests and the sandbox run: the test doubles (MariaDB, the
# tracker stand-in, from test-doubles/images) and the backup image (its bats stage runs
# during the build). Both steps skip work that is already done.
build_images() {
  bash "${REPO_ROOT}/scripts/e2e-setup.sh" >/dev/null
  "${VENV}/bin/inv" --search-root "${REPO_ROOT}" build-image >"${STATE_DIR}/build-image.log" 2>&1 \
    || { tail -n 40 "${STATE_DIR}/build-image.log" >&2; die "building the backup image failed (log: ${STATE_DIR}/build-image.log)"; }
  log "images: test images and $(tail -n 2 "${STATE_DIR}/build-image.log" | head -n 1 | sed 's/^ *tagged //') ready"
}

main() {
  mkdir -p "${STATE_DIR}"
  if [[ "${SETUP_SKIP_SYSTEM:-0}" != "1" ]]; then
    install_packages
    install_without_daemon prometheus promtool prometheus
    install_without_daemon docker-registry docker-registry docker-registry
    start_dockerd
    install_compose_v2
    ensure_base_image
    ensure_mariadb
  fi
  setup_venv
  if [[ "${SETUP_SKIP_IMAGES:-0}" != "1" ]]; then
    build_images
  fi
  log "done"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
