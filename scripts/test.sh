#!/usr/bin/env bash
# The whole test suite, as CI runs it: install/start what the tests need
# (scripts/setup.sh, idempotent), then every nox session.
#   scripts/test.sh                 everything (lint, typecheck, tests, rules, shellcheck, bats, e2e)
#   scripts/test.sh -s tests        one session (any nox arguments)
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT

main() {
  cd "${REPO_ROOT}"
  bash scripts/setup.sh
  .venv/bin/nox "$@"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
