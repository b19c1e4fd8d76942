#!/usr/bin/env bash
#
# Print the backup image's version: BACKUP_IMAGE_VERSION in
# lib/tracker_deployer/config/model.py, its one owner. For what cannot import
# Python: the image workflow (its --build-arg VERSION) and the bats tests run
# from the repository (the version file backup.sh reads). `inv build-image`
# passes the same constant. tests/unit/test_owners.py checks this prints it.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
readonly OWNER="${REPO_ROOT}/lib/tracker_deployer/config/model.py"

main() {
  local version
  version="$(sed -n 's/^BACKUP_IMAGE_VERSION = "\([^"]*\)".*/\1/p' "${OWNER}")"
  if [[ ! "${version}" =~ ^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$ ]]; then
    printf 'backup-image-version.sh: no X.Y.Z BACKUP_IMAGE_VERSION in %s\n' "${OWNER}" >&2
    exit 1
  fi
  printf '%s\n' "${version}"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
