#!/usr/bin/env bash
# The machine side of the lxd provider (lib/tracker_deployer/providers/lxd.py):
# everything an LXD instance needs on this machine, prepared idempotently.
#
# Usage:
#   scripts/lxd-host.sh prepare
#   scripts/lxd-host.sh start
#
# start   only starts the LXD daemon when it does not run, so that what LXD
#         holds (instances made before a reboot or a killed daemon) can be
#         asked about; the provider runs it before any question to LXD.
# prepare starts the LXD daemon when it does not run (no systemd here: by
#         hand, detached), applies a preseed (dir pool, bridge lxdbr0 at
#         TRACKER_DEPLOYER_LXD_BRIDGE, default 10.187.33.1/24), lets lxdbr0
#         through docker's FORWARD policy (DOCKER-USER), and builds and imports
#         the Debian 12 image from debootstrap when it is not cached (rootfs
#         tarballs under /var/tmp/tracker-deployer/lxd, image kept in LXD under
#         an alias naming the recipe's hash). The image is bare: systemd, sshd,
#         sudo, no Docker and no user; `inv configure` installs the rest.
#
# LXD itself comes from scripts/setup.sh (Debian's lxd 5.0). Instances are made
# and removed by the Python provider, never here.
#
# The last line prepare prints on stdout is machine-readable:
#   image=ALIAS network=lxdbr0
set -o errexit -o nounset -o pipefail

readonly E2E_LOG_NAME="lxd-host"
# shellcheck source=SCRIPTDIR/e2e-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e-common.sh"

readonly LXD_DIR="${TRACKER_DEPLOYER_CACHE:-/var/tmp/tracker-deployer}/lxd"
readonly LXD_NETWORK="lxdbr0"
readonly LXD_BRIDGE_ADDRESS="${TRACKER_DEPLOYER_LXD_BRIDGE:-10.187.33.1/24}"
readonly LXD_IMAGE_PREFIX="tracker-deployer-bookworm"
# Marks the bridge this project created (the key predates the provider).
readonly NETWORK_OWNER_KEY="user.tracker-deployer-e2e"
# A bare host: init, network, sshd and sudo. Docker, cron, logrotate and the
# firewall come from `inv configure`, as on any fresh server.
readonly ROOTFS_PACKAGES=(
  systemd-sysv dbus iproute2 openssh-server sudo ca-certificates udev
)
readonly LOCK_FD=9  # literal 9 in the exec and 9>&- redirections below
readonly LOCK_TIMEOUT_SECONDS=900

usage() {
  sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ------------------------------------------------------------------ LXD daemon

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
    ${NETWORK_OWNER_KEY}: "true"
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
    >"${root}/etc/ssh/sshd_config.d/tracker-deployer.conf"
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
  description: Debian 12 (bookworm) for tracker-deployer hosts (recipe ${recipe})
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

# ------------------------------------------------------------------ commands

take_setup_lock() {
  mkdir -p "${LXD_DIR}"
  # One at a time: parallel runs share the daemon, bridge and image.
  exec 9>"${LXD_DIR}/setup.lock"
  flock -w "${LOCK_TIMEOUT_SECONDS}" "${LOCK_FD}" || e2e_die "another lxd-host.sh holds ${LXD_DIR}/setup.lock"
}

cmd_start() {
  take_setup_lock
  ensure_lxd_running
}

cmd_prepare() {
  take_setup_lock
  ensure_lxd_running
  apply_preseed
  docker_user_rules insert
  local alias
  alias="$(ensure_image)"
  printf 'image=%s network=%s\n' "${alias}" "${LXD_NETWORK}"
}

main() {
  (($# >= 1)) || usage
  local command="$1"
  shift
  case "${command}" in
    -h | --help) usage ;;
    prepare | start) ;;
    *) e2e_die "unknown command ${command} (prepare, start)" ;;
  esac
  (($# == 0)) || e2e_die "${command} takes no arguments"
  e2e_require_root
  if ! command -v lxd >/dev/null || ! command -v lxc >/dev/null; then
    e2e_die "LXD is not installed; run scripts/setup.sh (it installs Debian's lxd)"
  fi
  "cmd_${command}"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
