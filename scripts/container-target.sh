#!/usr/bin/env bash
# A disposable "remote host" for the e2e tests: a container running sshd +
# cron with the docker CLI and compose v2, driving the HOST's docker daemon
# through the mounted socket (tests/e2e/images/target-host, INFRA.md §3).
#
# Usage:
#   scripts/container-target.sh up NAME --key PUBKEY_FILE [--port P] [--deploy-dir DIR]
#   scripts/container-target.sh status NAME
#   scripts/container-target.sh down NAME [--keep-stack]
#
# up      (re)creates container NAME from tracker-deployer-test/target-host:e2e
#         (build it with scripts/e2e-setup.sh), root login with PUBKEY_FILE,
#         sshd published on 127.0.0.1:P (default: a free port), DIR (default
#         /opt/torrust) created on the host and bind-mounted at the SAME path,
#         because the daemon resolves the stack's bind mounts on the host.
#         Waits until sshd answers (bounded).
# status  prints the same line as up; exit 1 when NAME is not running.
# down    runs `docker compose down --volumes` for a stack found in DIR (its
#         containers live on the host daemon; --keep-stack skips this), then
#         removes NAME. DIR itself is left for the caller.
#
# The last line on stdout is machine-readable:
#   up/status: host=127.0.0.1 port=P user=root name=NAME deploy_dir=DIR
#   down:      name=NAME state=absent
set -o errexit -o nounset -o pipefail

readonly E2E_LOG_NAME="container-target"
# shellcheck source=SCRIPTDIR/e2e-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e-common.sh"

readonly TARGET_LABEL="org.tracker-deployer.e2e.target"
readonly DEPLOY_DIR_LABEL="org.tracker-deployer.e2e.deploy-dir"
readonly SSH_WAIT_SECONDS=30
readonly STACK_DOWN_TIMEOUT_SECONDS=120

usage() {
  sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

container_exists() { docker container inspect "$1" >/dev/null 2>&1; }

is_target() {
  [[ "$(docker container inspect -f "{{ index .Config.Labels \"${TARGET_LABEL}\" }}" "$1" 2>/dev/null)" == "container" ]]
}

print_target() {
  local name="$1" port deploy_dir
  port="$(docker port "${name}" 22/tcp | awk -F: 'NR == 1 {print $NF}')"
  deploy_dir="$(docker container inspect -f "{{ index .Config.Labels \"${DEPLOY_DIR_LABEL}\" }}" "${name}")"
  printf 'host=127.0.0.1 port=%s user=root name=%s deploy_dir=%s\n' "${port}" "${name}" "${deploy_dir}"
}

cmd_up() {
  local name="$1"
  shift
  local port="" key="" deploy_dir="/opt/torrust"
  while (($# > 0)); do
    case "$1" in
      --port) port="${2:?--port needs a value}"; shift ;;
      --key) key="${2:?--key needs a value}"; shift ;;
      --deploy-dir) deploy_dir="${2:?--deploy-dir needs a value}"; shift ;;
      *) e2e_die "unknown argument $1 (see --help)" ;;
    esac
    shift
  done
  [[ -n "${key}" ]] || e2e_die "up needs --key PUBKEY_FILE"
  [[ -s "${key}" ]] || e2e_die "public key file ${key} is missing or empty"
  [[ "${deploy_dir}" == /* ]] || e2e_die "--deploy-dir must be an absolute path (it is the same on host and target)"
  [[ -z "${port}" || "${port}" =~ ^[0-9]+$ ]] || e2e_die "--port must be a number"
  local image
  image="$(e2e_image_ref target-host)"
  docker image inspect "${image}" >/dev/null 2>&1 \
    || e2e_die "image ${image} is missing; run scripts/e2e-setup.sh first"
  if container_exists "${name}"; then
    is_target "${name}" || e2e_die "a container named ${name} exists and is not an e2e target; not touching it"
    e2e_log "replacing existing target ${name}"
    docker rm -f "${name}" >/dev/null
  fi
  mkdir -p "${deploy_dir}"
  local authorized_keys
  authorized_keys="$(<"${key}")"
  e2e_log "starting ${name} (ssh on 127.0.0.1:${port:-auto}, deploy dir ${deploy_dir})"
  docker run -d --name "${name}" --hostname "${name}" --init \
    --label "${TARGET_LABEL}=container" --label "${DEPLOY_DIR_LABEL}=${deploy_dir}" \
    -p "127.0.0.1:${port}:22" \
    -v /var/run/docker.sock:/var/run/docker.sock \
    -v "${deploy_dir}:${deploy_dir}" \
    -e SSH_AUTHORIZED_KEYS="${authorized_keys}" \
    "${image}" >/dev/null
  port="$(docker port "${name}" 22/tcp | awk -F: 'NR == 1 {print $NF}')"
  if ! e2e_wait_for_ssh_banner 127.0.0.1 "${port}" "${SSH_WAIT_SECONDS}"; then
    docker logs --tail 20 "${name}" >&2 || true
    e2e_die "sshd in ${name} did not answer on 127.0.0.1:${port} within ${SSH_WAIT_SECONDS} s"
  fi
  e2e_log "${name} is up"
  print_target "${name}"
}

cmd_status() {
  local name="$1"
  if container_exists "${name}" && is_target "${name}" \
      && [[ "$(docker container inspect -f '{{.State.Running}}' "${name}")" == "true" ]]; then
    print_target "${name}"
    return 0
  fi
  printf 'name=%s state=absent\n' "${name}"
  return 1
}

cmd_down() {
  local name="$1"
  shift
  local keep_stack=0
  while (($# > 0)); do
    case "$1" in
      --keep-stack) keep_stack=1 ;;
      *) e2e_die "unknown argument $1 (see --help)" ;;
    esac
    shift
  done
  if ! container_exists "${name}"; then
    e2e_log "${name}: not there"
    printf 'name=%s state=absent\n' "${name}"
    return 0
  fi
  is_target "${name}" || e2e_die "container ${name} is not an e2e target; not touching it"
  local deploy_dir
  deploy_dir="$(docker container inspect -f "{{ index .Config.Labels \"${DEPLOY_DIR_LABEL}\" }}" "${name}")"
  if ((keep_stack == 0)) && [[ "$(docker container inspect -f '{{.State.Running}}' "${name}")" == "true" ]] \
      && docker exec "${name}" test -f "${deploy_dir}/docker-compose.yml"; then
    e2e_log "${name}: removing the stack deployed in ${deploy_dir}"
    # From inside the target: same compose version, .env and project name as the deploy.
    timeout "${STACK_DOWN_TIMEOUT_SECONDS}" docker exec -w "${deploy_dir}" "${name}" \
      docker compose down --volumes --remove-orphans --timeout 5 >&2 \
      || e2e_log "warning: 'docker compose down' in ${deploy_dir} failed; containers may be left on the host"
  fi
  docker rm -f "${name}" >/dev/null
  e2e_log "${name}: removed"
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
  [[ "${name}" =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ ]] || e2e_die "invalid container name '${name}'"
  e2e_require_docker
  "cmd_${command}" "${name}" "$@"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
