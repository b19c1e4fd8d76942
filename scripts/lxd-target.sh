#!/usr/bin/env bash
# A disposable "remote host" for the e2e tests as an LXD system container: own
# systemd, own dockerd, own IP on a private bridge (INFRA.md §5).
#
# Usage:
#   scripts/lxd-target.sh up NAME --key PUBKEY_FILE [--image REF]...
#   scripts/lxd-target.sh status NAME
#   scripts/lxd-target.sh down NAME [--purge]
#
# up      installs LXD if missing (Debian's lxd 5.0), starts the daemon without
#         systemd, applies a preseed (dir pool, bridge lxdbr0 at
#         E2E_LXD_BRIDGE_ADDRESS, default 10.187.33.1/24), lets lxdbr0 through
#         docker's FORWARD policy (DOCKER-USER), builds and imports a Debian
#         bookworm image from debootstrap (rootfs cached under
#         /var/tmp/tracker-deployer-e2e/lxd, image kept in LXD), then
#         (re)creates instance NAME with security.nesting=true, installs
#         docker.io (bookworm) and compose v2 (trixie .deb) in it, loads the
#         stack's test images (tracker-deployer-test/{mariadb,tracker-standin}:e2e
#         plus every --image REF; build them with scripts/e2e-setup.sh) and
#         authorizes PUBKEY_FILE for root. Bounded waits everywhere.
# status  prints the same line as up; exit 1 when NAME is not running.
# down    deletes NAME; when no instance is left it also removes the bridge
#         and the DOCKER-USER rules. --purge also deletes the cached LXD
#         image and stops the LXD daemon (the rootfs tarball cache stays).
#
# The last line on stdout is machine-readable:
#   up/status: host=10.187.33.X port=22 user=root name=NAME
#   down:      name=NAME state=absent
set -o errexit -o nounset -o pipefail

readonly E2E_LOG_NAME="lxd-target"
# shellcheck source=SCRIPTDIR/e2e-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e-common.sh"

readonly LXD_DIR="${E2E_STATE_DIR}/lxd"
readonly LXD_NETWORK="lxdbr0"
readonly LXD_BRIDGE_ADDRESS="${E2E_LXD_BRIDGE_ADDRESS:-10.187.33.1/24}"
readonly LXD_GATEWAY="${LXD_BRIDGE_ADDRESS%/*}"
readonly LXD_IMAGE_PREFIX="tracker-deployer-e2e-bookworm"
# Marks what this script created (instances, network): down touches only those.
readonly LXD_OWNER_KEY="user.tracker-deployer-e2e"
readonly ROOTFS_PACKAGES=(
  systemd-sysv dbus iproute2 openssh-server cron sudo ca-certificates iptables
  udev logrotate
)
readonly LOCK_FD=9  # literal 9 in the exec and 9>&- redirections below
readonly LOCK_TIMEOUT_SECONDS=900
readonly BOOT_TIMEOUT_SECONDS=120
readonly APT_TIMEOUT_SECONDS=600
readonly LOAD_TIMEOUT_SECONDS=600
readonly SSH_WAIT_SECONDS=60

usage() {
  sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ------------------------------------------------------------------ LXD daemon

ensure_lxd_installed() {
  if command -v lxd >/dev/null && command -v lxc >/dev/null \
      && dpkg-query -W -f='${Status}' dnsmasq-base 2>/dev/null | grep -q 'install ok installed'; then
    return
  fi
  e2e_log "installing lxd, lxd-client, dnsmasq-base"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    lxd lxd-client dnsmasq-base >&2
}

ensure_lxd_running() {
  if lxd waitready --timeout 1 >/dev/null 2>&1; then
    return
  fi
  e2e_log "starting lxd (log: ${LXD_DIR}/lxd.log)"
  # No systemd here: run the daemon by hand, detached from our stdio (so a
  # caller that captures our output does not wait for the daemon) and
  # without our lock's file descriptor.
  nohup setsid lxd --group lxd --logfile "${LXD_DIR}/lxd.log" \
    </dev/null >>"${LXD_DIR}/lxd.out" 2>&1 9>&- &
  printf '%s\n' "$!" >"${LXD_DIR}/lxd.pid"
  lxd waitready --timeout 60 || e2e_die "lxd did not become ready within 60 s (log: ${LXD_DIR}/lxd.log)"
}

# `lxd init --auto` cannot pick a subnet here; a preseed can. Applying it again
# is harmless, and it recreates the bridge after a `down`.
apply_preseed() {
  lxd init --preseed <<EOF
networks:
- name: ${LXD_NETWORK}
  type: bridge
  config:
    ipv4.address: ${LXD_BRIDGE_ADDRESS}
    ipv4.nat: "true"
    ipv6.address: none
    ${LXD_OWNER_KEY}: "true"
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root: {path: /, pool: default, type: disk}
    eth0: {name: eth0, network: ${LXD_NETWORK}, type: nic}
EOF
}

# Docker sets the FORWARD policy to DROP; let the bridge's traffic through.
docker_user_rules() {
  local action="$1"
  iptables -S DOCKER-USER >/dev/null 2>&1 || return 0
  local -a rules=(
    "-i ${LXD_NETWORK} -j ACCEPT"
    "-o ${LXD_NETWORK} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
  )
  local rule
  for rule in "${rules[@]}"; do
    local -a words
    read -r -a words <<<"${rule}"
    if iptables -C DOCKER-USER "${words[@]}" 2>/dev/null; then
      if [[ "${action}" == "delete" ]]; then
        iptables -D DOCKER-USER "${words[@]}"
      fi
    elif [[ "${action}" == "insert" ]]; then
      iptables -I DOCKER-USER "${words[@]}"
    fi
  done
}

# ------------------------------------------------------------------ image

configure_rootfs() {
  local root="$1"
  printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' >"${root}/etc/systemd/network/eth0.network"
  ln -sf /lib/systemd/system/systemd-networkd.service \
    "${root}/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
  mkdir -p "${root}/etc/systemd/system/sockets.target.wants"
  ln -sf /lib/systemd/system/systemd-networkd.socket \
    "${root}/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"
  # Every instance gets its own host keys on first boot.
  rm -f "${root}"/etc/ssh/ssh_host_*
  mkdir -p "${root}/etc/systemd/system/ssh.service.d"
  printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
    >"${root}/etc/systemd/system/ssh.service.d/host-keys.conf"
  printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n' \
    >"${root}/etc/ssh/sshd_config.d/e2e.conf"
  rm -f "${root}/etc/hostname" "${root}/etc/resolv.conf"
  rm -rf "${root}"/var/cache/apt/archives/*.deb "${root}"/var/lib/apt/lists/*
}

write_metadata() {
  local dir="$1" recipe="$2"
  mkdir -p "${dir}/templates"
  cat >"${dir}/metadata.yaml" <<EOF
architecture: $(uname -m)
creation_date: $(date +%s)
properties:
  description: Debian bookworm for tracker-deployer e2e tests (recipe ${recipe})
  os: debian
  release: bookworm
templates:
  /etc/hostname:
    when: [create, copy]
    template: hostname.tpl
  /etc/hosts:
    when: [create, copy]
    template: hosts.tpl
EOF
  printf '{{ container.name }}\n' >"${dir}/templates/hostname.tpl"
  printf '127.0.0.1 localhost\n127.0.1.1 {{ container.name }}\n::1 localhost ip6-localhost ip6-loopback\n' \
    >"${dir}/templates/hosts.tpl"
}

# A hash of everything that shapes the image: package list and the functions
# above. Editing them gives a new image alias and a new cache entry.
image_recipe_hash() {
  { printf '%s\n' "${ROOTFS_PACKAGES[@]}"; declare -f configure_rootfs write_metadata build_rootfs_tarballs; } \
    | sha256sum | cut -c1-12
}

build_rootfs_tarballs() {
  local cache="$1" recipe="$2"
  local work
  work="$(mktemp -d -p "${LXD_DIR}" build.XXXXXX)"
  local packages
  packages="$(IFS=,; printf '%s' "${ROOTFS_PACKAGES[*]}")"
  e2e_log "debootstrapping Debian bookworm (log: ${LXD_DIR}/debootstrap.log)"
  local started=${SECONDS}
  if ! debootstrap --variant=minbase --include="${packages}" bookworm "${work}/rootfs" \
      "$(e2e_debian_mirror)" >"${LXD_DIR}/debootstrap.log" 2>&1; then
    tail -n 20 "${LXD_DIR}/debootstrap.log" >&2
    rm -rf "${work}"
    e2e_die "debootstrap failed (log: ${LXD_DIR}/debootstrap.log)"
  fi
  e2e_log "debootstrap took $((SECONDS - started)) s"
  configure_rootfs "${work}/rootfs"
  write_metadata "${work}/meta" "${recipe}"
  local compress=(gzip -1)
  command -v pigz >/dev/null && compress=(pigz -1)
  tar -C "${work}/rootfs" --numeric-owner -c . | "${compress[@]}" >"${work}/rootfs.tar.gz"
  tar -C "${work}/meta" -cJf "${work}/meta.tar.xz" metadata.yaml templates
  mkdir -p "${cache}"
  mv "${work}/meta.tar.xz" "${cache}/meta.tar.xz"
  mv "${work}/rootfs.tar.gz" "${cache}/rootfs.tar.gz"
  rm -rf "${work}"
}

# Prints the alias of the instance image, building and importing it if needed.
ensure_image() {
  local recipe alias cache
  recipe="$(image_recipe_hash)"
  alias="${LXD_IMAGE_PREFIX}-${recipe}"
  if lxc image info "${alias}" >/dev/null 2>&1; then
    printf '%s\n' "${alias}"
    return
  fi
  cache="${LXD_DIR}/image-${recipe}"
  if [[ -s "${cache}/rootfs.tar.gz" && -s "${cache}/meta.tar.xz" ]]; then
    e2e_log "using cached rootfs ${cache}"
  else
    build_rootfs_tarballs "${cache}" "${recipe}"
  fi
  e2e_log "importing LXD image ${alias}"
  lxc image import -q "${cache}/meta.tar.xz" "${cache}/rootfs.tar.gz" --alias "${alias}" >&2
  printf '%s\n' "${alias}"
}

# ------------------------------------------------------------------ instance

instance_exists() { lxc info "$1" >/dev/null 2>&1; }

is_ours() { [[ "$(lxc config get "$1" "${LXD_OWNER_KEY}" 2>/dev/null)" == "target" ]]; }

instance_ip() {
  lxc exec "$1" -- ip -4 -o addr show dev eth0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}'
}

wait_for_boot() {
  local name="$1" deadline=$((SECONDS + BOOT_TIMEOUT_SECONDS)) state="" ip=""
  while ((SECONDS < deadline)); do
    state="$(lxc exec "${name}" -- systemctl is-system-running 2>/dev/null || true)"
    ip="$(instance_ip "${name}" || true)"
    if [[ ("${state}" == "running" || "${state}" == "degraded") && -n "${ip}" ]]; then
      [[ "${state}" == "running" ]] \
        || e2e_log "warning: systemd in ${name} is degraded: $(lxc exec "${name}" -- systemctl --failed --no-legend --plain | tr '\n' ' ')"
      return 0
    fi
    sleep 1
  done
  e2e_die "${name} did not boot within ${BOOT_TIMEOUT_SECONDS} s (systemd: '${state}', eth0: '${ip}')"
}

install_docker() {
  local name="$1" deb
  deb="$(e2e_compose_deb)"
  lxc file push -q "${deb}" "${name}/root/docker-compose.deb"
  lxc exec "${name}" -- sh -c "printf 'nameserver %s\n' '${LXD_GATEWAY}' >/etc/resolv.conf"
  e2e_log "installing docker.io and compose v2 in ${name}"
  local started=${SECONDS}
  timeout "${APT_TIMEOUT_SECONDS}" lxc exec "${name}" --env DEBIAN_FRONTEND=noninteractive -- \
    apt-get update -qq >&2 || e2e_die "apt-get update in ${name} failed"
  timeout "${APT_TIMEOUT_SECONDS}" lxc exec "${name}" --env DEBIAN_FRONTEND=noninteractive -- \
    apt-get install -y -qq --no-install-recommends docker.io /root/docker-compose.deb >/dev/null \
    || e2e_die "installing docker.io in ${name} failed"
  lxc exec "${name}" -- rm -f /root/docker-compose.deb
  local deadline=$((SECONDS + 60))
  until lxc exec "${name}" -- docker info >/dev/null 2>&1; do
    ((SECONDS < deadline)) || e2e_die "dockerd in ${name} did not start within 60 s"
    sleep 1
  done
  e2e_log "docker ready in ${name} after $((SECONDS - started)) s"
}

load_images() {
  local name="$1"
  shift
  local ref
  for ref in "$@"; do
    docker image inspect "${ref}" >/dev/null 2>&1 \
      || e2e_die "image ${ref} is missing on the host; run scripts/e2e-setup.sh first"
  done
  e2e_log "loading $# images into ${name}: $*"
  local started=${SECONDS}
  docker save "$@" | timeout "${LOAD_TIMEOUT_SECONDS}" lxc exec "${name}" -- docker load -q >&2 \
    || e2e_die "loading images into ${name} failed"
  e2e_log "images loaded in $((SECONDS - started)) s"
}

authorize_key() {
  local name="$1" key="$2"
  lxc exec "${name}" -- install -d -m 700 /root/.ssh
  lxc file push -q "${key}" "${name}/root/.ssh/authorized_keys" --mode 0600 --uid 0 --gid 0
}

print_target() {
  printf 'host=%s port=22 user=root name=%s\n' "$(instance_ip "$1")" "$1"
}

# ------------------------------------------------------------------ commands

cmd_up() {
  local name="$1"
  shift
  local key=""
  local -a images=()
  local image_name
  for image_name in "${E2E_STACK_IMAGE_NAMES[@]}"; do
    images+=("$(e2e_image_ref "${image_name}")")
  done
  while (($# > 0)); do
    case "$1" in
      --key) key="${2:?--key needs a value}"; shift ;;
      --image) images+=("${2:?--image needs a value}"); shift ;;
      *) e2e_die "unknown argument $1 (see --help)" ;;
    esac
    shift
  done
  [[ -n "${key}" ]] || e2e_die "up needs --key PUBKEY_FILE"
  [[ -s "${key}" ]] || e2e_die "public key file ${key} is missing or empty"
  local started=${SECONDS} alias
  mkdir -p "${LXD_DIR}"
  # One setup at a time: parallel `up`s share the daemon, bridge and image.
  exec 9>"${LXD_DIR}/setup.lock"
  flock -w "${LOCK_TIMEOUT_SECONDS}" "${LOCK_FD}" || e2e_die "another lxd-target.sh holds ${LXD_DIR}/setup.lock"
  ensure_lxd_installed
  ensure_lxd_running
  apply_preseed
  docker_user_rules insert
  alias="$(ensure_image)"
  if instance_exists "${name}"; then
    is_ours "${name}" || e2e_die "an LXD instance named ${name} exists and is not an e2e target; not touching it"
    e2e_log "replacing existing instance ${name}"
    lxc delete -f "${name}" >&2
  fi
  e2e_log "launching ${name} from ${alias}"
  lxc launch -q "${alias}" "${name}" -c security.nesting=true -c "${LXD_OWNER_KEY}=target" >&2
  flock -u "${LOCK_FD}"
  wait_for_boot "${name}"
  install_docker "${name}"
  load_images "${name}" "${images[@]}"
  authorize_key "${name}" "${key}"
  local ip
  ip="$(instance_ip "${name}")"
  e2e_wait_for_ssh_banner "${ip}" 22 "${SSH_WAIT_SECONDS}" \
    || e2e_die "sshd in ${name} did not answer on ${ip}:22 within ${SSH_WAIT_SECONDS} s"
  e2e_log "${name} is up at ${ip} ($((SECONDS - started)) s)"
  print_target "${name}"
}

cmd_status() {
  local name="$1"
  if command -v lxc >/dev/null && lxd waitready --timeout 1 >/dev/null 2>&1 \
      && instance_exists "${name}" && is_ours "${name}" \
      && [[ "$(lxc list "${name}" --format csv -c s)" == "RUNNING" ]]; then
    print_target "${name}"
    return 0
  fi
  printf 'name=%s state=absent\n' "${name}"
  return 1
}

remove_network_if_unused() {
  [[ -z "$(lxc list --format csv -c n)" ]] || return 0
  [[ "$(lxc network get "${LXD_NETWORK}" "${LXD_OWNER_KEY}" 2>/dev/null)" == "true" ]] || return 0
  e2e_log "no instance left: removing ${LXD_NETWORK} and its DOCKER-USER rules"
  lxc profile device remove default eth0 >/dev/null 2>&1 || true
  lxc network delete "${LXD_NETWORK}" >&2
  docker_user_rules delete
}

purge() {
  local alias
  for alias in $(lxc image list --format csv -c l | tr ',' '\n' | grep "^${LXD_IMAGE_PREFIX}-" || true); do
    e2e_log "deleting LXD image ${alias}"
    lxc image delete "${alias}" >&2
  done
  e2e_log "stopping lxd"
  lxd shutdown --timeout 60 >&2 || true
  if command -v nft >/dev/null && nft list table inet lxd >/dev/null 2>&1; then
    nft delete table inet lxd
  fi
}

cmd_down() {
  local name="$1"
  shift
  local purge_all=0
  while (($# > 0)); do
    case "$1" in
      --purge) purge_all=1 ;;
      *) e2e_die "unknown argument $1 (see --help)" ;;
    esac
    shift
  done
  if ! command -v lxc >/dev/null || ! lxd waitready --timeout 1 >/dev/null 2>&1; then
    e2e_log "lxd is not running: nothing to remove"
    printf 'name=%s state=absent\n' "${name}"
    return 0
  fi
  if instance_exists "${name}"; then
    is_ours "${name}" || e2e_die "LXD instance ${name} is not an e2e target; not touching it"
    lxc delete -f "${name}" >&2
    e2e_log "${name}: deleted"
  else
    e2e_log "${name}: not there"
  fi
  remove_network_if_unused
  ((purge_all == 0)) || purge
  printf 'name=%s state=absent\n' "${name}"
}

main() {
  (($# >= 1)) || usage
  local command="$1"
  shift
  case "${command}" in
    -h | --help) usage ;;
    up | status | down) ;;
    *) e2e_die "unknown command ${command} (up | status | down)" ;;
  esac
  (($# >= 1)) || e2e_die "${command} needs a NAME"
  local name="$1"
  shift
  [[ "${name}" =~ ^[a-z][a-z0-9-]{0,62}$ ]] || e2e_die "invalid instance name '${name}' (lowercase letters, digits, '-')"
  e2e_require_root
  "cmd_${command}" "${name}" "$@"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
