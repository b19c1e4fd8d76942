#!/usr/bin/env bash
# Entrypoint of the tracker STAND-IN image (tracker-deployer-test/tracker-standin:e2e).
#
# Mirrors the real Torrust tracker image's entry script where it matters to a
# deployment: it starts as root, makes the tracker's directories belong to
# USER_ID (default 1000) with mode 2770, then drops to that user for the
# program. Files are created with umask 027 (group-readable, not world).
set -o errexit -o nounset -o pipefail

readonly TRACKER_DIRS=(/var/lib/torrust/tracker/database /var/log/torrust/tracker)

log() { printf '[tracker-standin-entrypoint] %s\n' "$*" >&2; }

main() {
  local user_id="${USER_ID:-1000}"
  if [[ ! "${user_id}" =~ ^[0-9]+$ ]] || ((user_id < 1000)); then
    log "error: USER_ID must be a number >= 1000 (got '${user_id}')"
    exit 1
  fi
  umask 027
  if [[ "$(id -u)" -ne 0 ]]; then
    exec "$@"
  fi
  mkdir -p "${TRACKER_DIRS[@]}"
  chown -R "${user_id}:${user_id}" /var/lib/torrust /var/log/torrust
  find /var/lib/torrust /var/log/torrust -type d -exec chmod 2770 {} +
  # Like the real image: try to hand the config dir to the tracker user too.
  # A read-only bind mount refuses that, which is fine.
  chown -R "${user_id}:${user_id}" /etc/torrust 2>/dev/null || true
  exec setpriv --reuid="${user_id}" --regid="${user_id}" --clear-groups -- "$@"
}

main "$@"
