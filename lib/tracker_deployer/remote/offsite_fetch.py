"""Sets back from the off-host repository (``inv restore --from offsite``, ``inv recover``).

The host script makes a staging directory inside the backup directory (so the
final renames stay on one filesystem), runs ``offsite.sh fetch SET`` in the
offsite compose service with only that directory writable, and, once the set
verified there, renames its files into the backup directory: payload first,
``.meta``, then ``.sha256``, the file that makes a set complete. A set already
complete on the host is left as it is. Any failure removes the staging
directory; the local sets are never touched. Secrets stay in the env and
password files the deploy put on the host: nothing secret is on argv.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from tracker_deployer import compose, exit_codes, offsite, paths
from tracker_deployer.config.model import Env
from tracker_deployer.errors import DeployError, RemoteError
from tracker_deployer.remote.backups import is_set_id, set_layout
from tracker_deployer.remote.offsite import list_sets, listing_error
from tracker_deployer.remote.ssh import SshHost
from tracker_deployer.say import Say
from tracker_deployer.topology import APP_GID, APP_UID

FETCH_TIMEOUT_SECONDS = 6 * 3600
# How long the fetch waits for the host's backup lock (a backup run or an
# off-host check holding it) before it gives up with exit_codes.LOCK_BUSY.
FETCH_LOCK_WAIT_SECONDS = 120
STAGING_PREFIX = ".offsite-fetch."
FETCH_DIR_IN_CONTAINER = "/fetch"
# The host script's own exit codes (besides offsite.sh's).
EXIT_PARTIAL_SET = 3
_RESULT = re.compile(r"(fetched|present)=([0-9]{8}_[0-9]{6})")

_FETCH_CAUSES: dict[int, tuple[str, str]] = {
    offsite.OFFSITE_SH_EXIT["NO_SET"]: (
        "the off-host repository holds no such set",
        "`inv backups --offsite --env NAME` lists the sets it holds",
    ),
    offsite.OFFSITE_SH_EXIT["NO_SPACE"]: (
        "no space left on the host while fetching the set; the local sets are intact "
        "and the partial copy was removed",
        "free space in the backup directory (`df -h /opt/torrust/storage/backup`), then again",
    ),
    offsite.OFFSITE_SH_EXIT["FAILED"]: (
        "the set from the off-host repository failed (restore or verification); nothing was kept",
        "see the lines above; pick another set from `inv backups --offsite`",
    ),
    exit_codes.LOCK_BUSY: (
        "the host's backup lock is held (a backup run, an off-host check, a deploy or a "
        "restore is in progress); nothing was changed",
        "wait until it has finished (`inv status`), then again",
    ),
    EXIT_PARTIAL_SET: (
        "the host holds an incomplete copy of this set (files without its .sha256); "
        "nothing was changed",
        "look at the backup directory on the host: remove the incomplete set's files, then again",
    ),
}


@dataclass(frozen=True, slots=True)
class Fetched:
    set_id: str
    already_present: bool


def fetch_script(
    deploy_dir: str = str(paths.DEPLOY_DIR),
    backup_dir: str = str(paths.BACKUP_DIR),
    lock_file: str = str(paths.BACKUP_LOCK),
    lock_wait_seconds: int = FETCH_LOCK_WAIT_SECONDS,
) -> str:
    """The host side (as root); the set id is its one argument, checked again there.

    It holds the host's backup lock (the one the maintenance script, the
    off-host check and the restore take) from before it looks at the backup
    directory until it exits, so no upload's ``forget --prune`` and no
    retention runs meanwhile; the fetched files get the current time (restic
    restores the set's old times), so the next run's retention keeps them.
    """
    # Payload first, the .sha256 (what makes a set complete) last.
    relatives = " ".join(f'"{relative}"' for relative in set_layout("${set_id}"))
    return f"""set -o errexit -o nounset -o pipefail
set_id="$1"
backup_dir={shlex.quote(backup_dir)}
lock_file={shlex.quote(lock_file)}
[[ "$set_id" =~ ^[0-9]{{8}}_[0-9]{{6}}$ ]] || {{ echo "not a set id: $set_id" >&2; exit 2; }}
mkdir -p -- "$(dirname -- "$lock_file")"
exec 9>>"$lock_file"
if ! flock --wait {int(lock_wait_seconds)} 9; then
  echo "the backup lock $lock_file is still held after {int(lock_wait_seconds)} s (a backup run, \
an off-host check, a deploy or a restore); nothing was changed" >&2
  exit {exit_codes.LOCK_BUSY}
fi
if [[ -f "$backup_dir/manifests/set_$set_id.sha256" ]]; then
  echo "present=$set_id"
  exit 0
fi
for relative in {relatives}; do
  if [[ -e "$backup_dir/$relative" || -L "$backup_dir/$relative" ]]; then
    echo "the host holds $backup_dir/$relative but no complete set $set_id" >&2
    exit {EXIT_PARTIAL_SET}
  fi
done
mkdir -p -- "$backup_dir"
staging="$(mktemp -d "$backup_dir/{STAGING_PREFIX}XXXXXX")"
trap 'rm -rf -- "$staging"' EXIT
chown {APP_UID}:{APP_GID} "$staging"
chmod 0700 "$staging"
{offsite.hostname_export()}cd {shlex.quote(deploy_dir)}
rc=0
container="tracker-backup-$$-offsite-fetch"
timeout --kill-after=10 {FETCH_TIMEOUT_SECONDS} {compose.command(deploy_dir)} \\
  --profile backup run --rm --no-deps -T --name "$container" \\
  -v "$staging:{FETCH_DIR_IN_CONTAINER}" -e OFFSITE_FETCH_DIR={FETCH_DIR_IN_CONTAINER} \\
  {offsite.SERVICE} fetch "$set_id" >"$staging/fetch.out" || rc=$?
if (( rc == 124 || rc == 137 )); then
  # Timed out: the compose client is gone, its container may still run.
  timeout 60 docker rm --force "$container" >/dev/null 2>&1 || :
  echo "the fetch did not finish within {FETCH_TIMEOUT_SECONDS} s and was stopped" >&2
fi
if (( rc != 0 )); then
  exit "$rc"
fi
grep -qx "fetched=$set_id" "$staging/fetch.out" || {{ echo "offsite.sh did not fetch $set_id" >&2; exit 1; }}
for relative in {relatives}; do
  if [[ -f "$staging/set/$relative" && ! -L "$staging/set/$relative" ]]; then
    directory="$backup_dir/${{relative%/*}}"
    if [[ ! -d "$directory" ]]; then
      mkdir -- "$directory"
      chown {APP_UID}:{APP_GID} "$directory"
    fi
    mv -T -- "$staging/set/$relative" "$backup_dir/$relative"
    touch -c -- "$backup_dir/$relative"
  fi
done
echo "fetched=$set_id"
"""


def resolve(host: SshHost, env: Env, wanted: str) -> str:
    """A set id of the repository: ``latest`` is its newest set of this env."""
    if wanted != "latest":
        if not is_set_id(wanted):
            raise DeployError(f"--set {wanted!r} is not a set id", "use YYYYMMDD_HHMMSS or latest")
        return wanted
    found = list_sets(host, env)
    if not found:
        raise DeployError(
            f"the off-host repository holds no sets of {env.name}",
            "check backup.offsite.repository; `inv backups --offsite` lists what it holds",
        )
    return found[-1].set_id


def fetch(host: SshHost, env: Env, set_id: str, say: Say) -> Fetched:
    """Set ``set_id`` from the repository into the host's backup directory, verified."""
    if env.backup is None or env.backup.offsite is None:
        raise DeployError(
            f"environment {env.name} has no backup.offsite",
            "add a backup.offsite section (docs/user-guide/offsite.md) and deploy",
        )
    if not is_set_id(set_id):
        raise DeployError(f"--set {set_id!r} is not a set id", "use YYYYMMDD_HHMMSS or latest")
    say(f"fetching set {set_id} from the off-host repository into {paths.BACKUP_DIR}")
    result = host.run_script(fetch_script(), set_id, stream=say)
    if result.exit_code == 0:
        match = _RESULT.fullmatch((result.stdout.strip().splitlines() or [""])[-1])
        if match is None or match.group(2) != set_id:
            raise RemoteError(
                f"fetching set {set_id} printed no result line",
                "look at the host's backup directory",
            )
        present = match.group(1) == "present"
        say(f"set {set_id} {'is already on the host' if present else 'fetched and verified'}")
        return Fetched(set_id, present)
    raise fetch_error(result.exit_code, result.stderr, set_id)


def fetch_error(code: int, stderr: str, set_id: str) -> RemoteError:
    if code in _FETCH_CAUSES:
        cause, hint = _FETCH_CAUSES[code]
        said = [
            line.split("offsite: error: ", 1)[1]
            for line in stderr.splitlines()
            if "offsite: error: " in line
        ]
        detail = said[-1][:300] if said else ""
        message = f"set {set_id}: {cause}" + (f" ({detail})" if detail else "")
        return RemoteError(message, hint)
    error = listing_error(code, stderr)
    return RemoteError(f"fetching set {set_id}: {error.message}", error.hint)
