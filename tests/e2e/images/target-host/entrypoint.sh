#!/usr/bin/env bash
# Entrypoint of tracker-deployer-test/target-host:e2e: install the authorized
# key given at run time, generate host keys, start cron, run sshd.
set -o errexit -o nounset -o pipefail

readonly MOUNTED_KEYS="/etc/target-host/authorized_keys"

log() { printf '[target-host] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

install_authorized_keys() {
  install -d -m 700 /root/.ssh
  if [[ -s "${MOUNTED_KEYS}" ]]; then
    install -m 600 "${MOUNTED_KEYS}" /root/.ssh/authorized_keys
  elif [[ -n "${SSH_AUTHORIZED_KEYS:-}" ]]; then
    printf '%s\n' "${SSH_AUTHORIZED_KEYS}" >/root/.ssh/authorized_keys
    chmod 600 /root/.ssh/authorized_keys
  else
    die "no authorized key: set SSH_AUTHORIZED_KEYS or mount a file at ${MOUNTED_KEYS}"
  fi
}

main() {
  install_authorized_keys
  ssh-keygen -A >/dev/null
  mkdir -p /run/sshd
  /usr/sbin/sshd -t
  /usr/sbin/cron
  log "cron started; sshd listening on port 22"
  exec /usr/sbin/sshd -D -e
}

main "$@"
