"""Sets back from the off-host repository (``inv restore --from offsite``, ``inv recover``,
``inv verify --offsite``, ``inv fetch-backup --offsite``).

The host script makes a staging directory inside the backup directory (so the
final renames stay on one filesystem), runs ``offsite.sh fetch SET`` in the
offsite compose service with only that directory writable, and, once the set
verified there, renames its files into the backup directory: payload first,
``.meta``, then ``.sha256``, the file that makes a set complete. A set already
complete on the host is left as it is. Any failure removes the staging
directory; the local sets are never touched. Secrets stay in the env and
password files the deploy put on the host: nothing secret is on argv.

``inv verify --offsite`` and ``inv fetch-backup --offsite`` use the same fetch
into a scratch directory instead, which never becomes a set of the host:
verify runs today's verify drill (templates/operations/verify.sh.j2) on the
scratch copy under the same lock and removes it; fetch-backup leaves it for
the checked download (:func:`tracker_deployer.remote.backups.fetch`) and
removes it afterwards. Both change nothing else on the host.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

from tracker_deployer import compose, exit_codes, offsite, paths
from tracker_deployer.backup_layout import checksum_manifest, is_set_id, set_layout
from tracker_deployer.config.model import Env
from tracker_deployer.errors import DeployError, RemoteError
from tracker_deployer.remote import backups as operations
from tracker_deployer.remote.backups import (
    VerificationFailed,
    host_clock,
    refuse_latest_after_clock,
)
from tracker_deployer.remote.offsite import list_sets, listing_error
from tracker_deployer.remote.ssh import SshHost
from tracker_deployer.render.tree import KILL_AFTER_SECONDS
from tracker_deployer.say import Say
from tracker_deployer.topology import APP_GID, APP_UID

FETCH_TIMEOUT_SECONDS = 6 * 3600
# How long the fetch waits for the host's backup lock (a backup run or an
# off-host check holding it) before it gives up with exit_codes.LOCK_BUSY.
FETCH_LOCK_WAIT_SECONDS = 120
STAGING_PREFIX = ".offsite-fetch."
# `inv verify --offsite`: the scratch copy, one name per set (used only under the lock).
VERIFY_SCRATCH_PREFIX = ".offsite-verify-"
# `inv fetch-backup --offsite`: scratch copies left for the download (mktemp names).
DOWNLOAD_PREFIX = ".offsite-download."
_DOWNLOAD_NAME = re.compile(re.escape(DOWNLOAD_PREFIX) + r"[A-Za-z0-9]{6}")
# A download scratch older than this is the leftover of an interrupted
# fetch-backup; the next one removes it.
DOWNLOAD_STALE_MINUTES = 24 * 60
FETCH_DIR_IN_CONTAINER = "/fetch"
# The host script's own exit codes (besides offsite.sh's).
EXIT_PARTIAL_SET = 3
# What it prints, with the signal's number, when a signal stops it (exit 128 + N).
STOPPED = "the fetch was stopped by signal"
SIGNALS = {1: "SIGHUP", 2: "SIGINT", 15: "SIGTERM"}
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
    offsite.OFFSITE_SH_EXIT["LOCKED"]: (
        "the off-host repository is locked (an earlier off-host container of this stack "
        "still runs, or another restic process or host holds the repository's lock); "
        "nothing was fetched",
        "see the lines above: wait until it has ended (or remove the container named there: "
        "docker rm -f NAME), then again",
    ),
    exit_codes.TIMEOUT: (
        f"the fetch did not finish within {FETCH_TIMEOUT_SECONDS} s and was stopped; "
        "nothing was kept",
        "check the repository's reachability and speed from the host, then again",
    ),
    128 + 9: (  # timeout --kill-after: the compose client did not end on SIGTERM
        f"the fetch did not finish within {FETCH_TIMEOUT_SECONDS} s and was killed; "
        "nothing was kept",
        "check the repository's reachability and speed from the host, then again",
    ),
}
# offsite.sh's codes that mean the same for a fetch as for a listing (settings,
# reachability, password): remote.offsite.listing_error says them.
_LISTING_CODES = frozenset(
    offsite.OFFSITE_SH_EXIT[name] for name in ("CONFIG", "UNREACHABLE", "PASSWORD")
)

# The checksum manifest of the set in the host scripts' $set_id (from the owner).
MANIFEST_OF_SET_ID = checksum_manifest("${set_id}")


@dataclass(frozen=True, slots=True)
class Fetched:
    set_id: str
    already_present: bool


def _prelude(at: dict[str, str], lock_wait_seconds: int) -> str:
    """Check the set id (the one argument), then take the host's backup lock."""
    return f"""set -o errexit -o nounset -o pipefail
set_id="$1"
backup_dir={shlex.quote(at["backup_dir"])}
lock_file={shlex.quote(at["lock_file"])}
[[ "$set_id" =~ ^[0-9]{{8}}_[0-9]{{6}}$ ]] || {{ echo "not a set id: $set_id" >&2; exit 2; }}
mkdir -p -- "$(dirname -- "$lock_file")"
exec 9>>"$lock_file"
if ! flock --wait {int(lock_wait_seconds)} 9; then
  echo "the backup lock $lock_file is still held after {int(lock_wait_seconds)} s (a backup run, \
an off-host check, a deploy or a restore); nothing was changed" >&2
  exit {exit_codes.LOCK_BUSY}
fi
"""


def _fetch_into_staging(deploy_dir: str) -> str:
    """offsite.sh fetch into "$staging" (made by the caller, removed by its trap):
    the set verified in "$staging/set", or exit with offsite.sh's code."""
    # mktemp -d and mkdir -m 0700 made it 0700; -h: should uid 1000 (which owns the
    # backup directory) swap it for a link, only the link changes owner.
    return f"""chown -h {APP_UID}:{APP_GID} -- "$staging"
{offsite.hostname_export()}{offsite.still_running_check()}cd {shlex.quote(deploy_dir)}
if busy="$(offsite_busy {compose.command(deploy_dir)})"; then
  echo "$busy; nothing was fetched" >&2
  exit {offsite.OFFSITE_SH_EXIT["LOCKED"]}
fi
rc=0
container="tracker-backup-$$-offsite-fetch"
# Its output goes to root's own temporary file: root never opens a path in the
# staging directory, which uid 1000 can change.
fetch_out="$(mktemp)"
kept="nothing was kept"
# A signal is a failure, handled at once (the fetch runs in the background: bash
# would put a trap off until a foreground command ends, hours with a stalled
# repository): the container goes first, then the staging directory (EXIT trap).
stop_fetch() {{
  trap '' HUP INT TERM
  [[ -z "$fetch_pid" ]] || kill "$fetch_pid" 2>/dev/null || :
  timeout 60 docker rm --force "$container" >/dev/null 2>&1 || :
  rm -f -- "$fetch_out"
  echo "{STOPPED} $1; $kept" >&2
  exit $((128 + $1))
}}
timeout --kill-after={KILL_AFTER_SECONDS} {FETCH_TIMEOUT_SECONDS} {compose.command(deploy_dir)} \\
  --profile backup run --rm --no-deps -T --name "$container" \\
  -v "$staging:{FETCH_DIR_IN_CONTAINER}" -e OFFSITE_FETCH_DIR={FETCH_DIR_IN_CONTAINER} \\
  {offsite.SERVICE} fetch "$set_id" >"$fetch_out" </dev/null &
fetch_pid=$!
trap 'stop_fetch 1' HUP
trap 'stop_fetch 2' INT
trap 'stop_fetch 15' TERM
wait "$fetch_pid" || rc=$?
fetch_pid=""  # reaped: its number may be another process's from now on
fetched=0
if grep -qx "fetched=$set_id" "$fetch_out"; then fetched=1; fi
rm -f -- "$fetch_out"
if (( rc == 124 || rc == 137 )); then
  # Timed out: the compose client is gone, its container may still run.
  timeout 60 docker rm --force "$container" >/dev/null 2>&1 || :
  echo "the fetch did not finish within {FETCH_TIMEOUT_SECONDS} s and was stopped" >&2
fi
if (( rc != 0 )); then
  exit "$rc"
fi
(( fetched == 1 )) || {{ echo "offsite.sh did not fetch $set_id" >&2; exit 1; }}
"""


def fetch_script(
    *, lock_wait_seconds: int = FETCH_LOCK_WAIT_SECONDS, **where: Unpack[paths.HostPaths]
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
    signalled = "|".join(str(128 + number) for number in SIGNALS)
    at = paths.host_paths(where)
    return (
        _prelude(at, lock_wait_seconds)
        + f"""if [[ -f "$backup_dir/{MANIFEST_OF_SET_ID}" ]]; then
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
# A staging directory exists only while a fetch holds the lock: any found now is
# a killed fetch's (a whole restored set, on the database's disk).
find "$backup_dir" -mindepth 1 -maxdepth 1 -type d -name '{STAGING_PREFIX}*' \
  -exec rm -rf -- {{}} + || :
staging="$(mktemp -d "$backup_dir/{STAGING_PREFIX}XXXXXX")"
moving=0
# Any failure once the moves began leaves files without the set's .sha256: say so,
# whatever ended the script (an errexit, a failed mv); stop_fetch's exits
# ({signalled}) have said it already.
finish() {{
  local rc=$?
  rm -rf -- "$staging"
  case "$rc" in
    0|{signalled}) ;;
    *) if (( moving == 1 )); then echo "moving set $set_id into place failed (exit $rc); $kept" >&2; fi ;;
  esac
}}
trap finish EXIT
"""
        + _fetch_into_staging(at["deploy_dir"])
        + f"""# Into place as the backup directory's owner (uid {APP_UID}), not as root: a link
# that user planted can lead it nowhere it could not go itself.
# Relative paths from inside the backup directory: that user need not be able to
# reach it from / (tests keep it under a directory only root may enter).
as_owner() {{ setpriv --reuid={APP_UID} --regid={APP_GID} --clear-groups -- "$@"; }}
cd -- "$backup_dir"
staged="${{staging##*/}}/set"
kept="the files moved so far are without the set's .sha256, an incomplete set: remove them, \\
then fetch again"
moving=1
for relative in {relatives}; do
  if [[ -f "$staged/$relative" && ! -L "$staged/$relative" ]]; then
    if [[ ! -d "${{relative%/*}}" ]]; then
      as_owner mkdir -- "${{relative%/*}}"
    fi
    as_owner mv -T -- "$staged/$relative" "$relative"
    as_owner touch -c -- "$relative"
  fi
done
echo "fetched=$set_id"
"""
    )


def verify_scratch(set_id: str) -> str:
    """`inv verify --offsite`'s scratch directory of a set, relative to the backup directory."""
    return f"{VERIFY_SCRATCH_PREFIX}{set_id}"


def verify_script(
    *, lock_wait_seconds: int = FETCH_LOCK_WAIT_SECONDS, **where: Unpack[paths.HostPaths]
) -> str:
    """`inv verify --offsite`'s host side (as root; the set id is its one argument).

    Under the backup lock: the set from the repository into a scratch directory
    in the backup directory (offsite.sh verifies its checksums and archives),
    then verify.sh, uploaded next to this script and rendered for that scratch
    directory (:func:`verify_scratch`), runs today's verify drill on it. The
    scratch directory is removed on every way out; no set of the host is
    read or written.
    """
    at = paths.host_paths(where)
    return (
        _prelude(at, lock_wait_seconds)
        + f"""if [[ -f "$backup_dir/{MANIFEST_OF_SET_ID}" ]]; then
  echo "the host holds set $set_id too; verifying the repository's copy (the host's is not read)"
fi
mkdir -p -- "$backup_dir"
staging="$backup_dir/{VERIFY_SCRATCH_PREFIX}$set_id"
# Leftovers of interrupted verifies, of any set (a whole restored set each, on the
# database's disk; the names are only ever used under this lock). find does not
# follow links, nor does rm -rf (a link swapped in meanwhile goes, not its target).
find "$backup_dir" -mindepth 1 -maxdepth 1 -type d -name '{VERIFY_SCRATCH_PREFIX}*' \\
  -exec rm -rf -- {{}} + || :
rm -rf -- "$staging"
trap 'rm -rf -- "$staging"' EXIT
mkdir -m 0700 -- "$staging"
"""
        + _fetch_into_staging(at["deploy_dir"])
        + f"""echo "set $set_id: fetched from the off-host repository; checksums and archives ok"
rc=0
bash "$(dirname -- "${{BASH_SOURCE[0]}}")/verify.sh" || rc=$?
if (( rc != 0 )); then
  echo "the verify drill of the repository's copy of set $set_id failed (exit $rc)" >&2
  exit {exit_codes.NOT_VERIFIED}
fi
echo "verified=$set_id"
"""
    )


def download_script(
    *,
    lock_wait_seconds: int = FETCH_LOCK_WAIT_SECONDS,
    stale_minutes: int = DOWNLOAD_STALE_MINUTES,
    **where: Unpack[paths.HostPaths],
) -> str:
    """`inv fetch-backup --offsite`'s host side (as root; the set id is its one argument).

    Under the backup lock: the set from the repository into a new scratch
    directory in the backup directory, verified; on success it stays there for
    the download and its name is printed (``scratch=NAME``), on failure it is
    removed. Scratch directories of downloads interrupted more than
    ``stale_minutes`` ago are removed first.
    """
    at = paths.host_paths(where)
    return (
        _prelude(at, lock_wait_seconds)
        + f"""mkdir -p -- "$backup_dir"
find "$backup_dir" -mindepth 1 -maxdepth 1 -type d -name '{DOWNLOAD_PREFIX}*' \\
  -mmin +{int(stale_minutes)} -exec rm -rf -- {{}} + || :
staging="$(mktemp -d "$backup_dir/{DOWNLOAD_PREFIX}XXXXXX")"
trap 'rm -rf -- "$staging"' EXIT
"""
        + _fetch_into_staging(at["deploy_dir"])
        + """trap - EXIT
echo "scratch=${staging##*/}"
echo "fetched=$set_id"
"""
    )


def resolve(
    host: SshHost, env: Env, wanted: str, *, deploy_dir: str = str(paths.DEPLOY_DIR)
) -> str:
    """A set id of the repository: ``latest`` is its newest set of this env."""
    if wanted != "latest":
        if not is_set_id(wanted):
            raise DeployError(f"--set {wanted!r} is not a set id", "use YYYYMMDD_HHMMSS or latest")
        return wanted
    found = list_sets(host, env, deploy_dir=deploy_dir)
    if not found:
        raise DeployError(
            f"the off-host repository holds no sets of {env.name}",
            "check backup.offsite.repository; `inv backups --offsite` lists what it holds",
        )
    newest = found[-1]
    refuse_latest_after_clock(
        newest.set_id, newest.time, host_clock(host), "inv backups --env NAME --offsite"
    )
    return newest.set_id


def fetch(host: SshHost, env: Env, set_id: str, say: Say) -> Fetched:
    """Set ``set_id`` from the repository into the host's backup directory, verified."""
    _require_offsite(env, set_id)
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


def _detail(stderr: str) -> str:
    """offsite.sh's last error line (its own words, the repository's userinfo redacted)."""
    said = [
        line.split("offsite: error: ", 1)[1]
        for line in stderr.splitlines()
        if "offsite: error: " in line
    ]
    return said[-1][:300] if said else ""


def fetch_error(code: int, stderr: str, set_id: str) -> RemoteError:
    if code - 128 in SIGNALS:
        said = [line for line in stderr.splitlines() if line.startswith(STOPPED)]
        return RemoteError(
            f"set {set_id}: the host script was stopped by {SIGNALS[code - 128]}"
            + (f" ({said[-1][:300]})" if said else ""),
            "run it again once whatever stopped it (a shutdown, an operator) is over",
        )
    if code in _FETCH_CAUSES:
        cause, hint = _FETCH_CAUSES[code]
        detail = _detail(stderr)
        message = f"set {set_id}: {cause}" + (f" ({detail})" if detail else "")
        return RemoteError(message, hint)
    if code in _LISTING_CODES:
        error = listing_error(code, stderr)
        return RemoteError(f"fetching set {set_id}: {error.message}", error.hint)
    last = (stderr.strip().splitlines() or [""])[-1]
    # The host's words: printable characters only (no terminal escapes).
    detail = _detail(stderr) or "".join(c for c in last if c.isprintable())[:300]
    return RemoteError(
        f"fetching set {set_id} failed (exit {code})" + (f": {detail}" if detail else ""),
        "see the lines above, fix the cause, then again",
    )


def require_offsite(env: Env) -> None:
    """Refuse an --offsite operation for an environment without backup.offsite."""
    if env.backup is None or env.backup.offsite is None:
        raise DeployError(
            f"environment {env.name} has no backup.offsite: there is no off-host repository",
            "add a backup.offsite section (docs/user-guide/offsite.md) and deploy",
        )


def _require_offsite(env: Env, set_id: str) -> None:
    require_offsite(env)
    if not is_set_id(set_id):
        raise DeployError(f"--set {set_id!r} is not a set id", "use YYYYMMDD_HHMMSS or latest")


def _last_line(stdout: str) -> str:
    return (stdout.strip().splitlines() or [""])[-1]


def verify(
    host: SshHost,
    env: Env,
    set_id: str,
    say: Say,
    *,
    drill: bool = True,
    **where: Unpack[paths.HostPaths],
) -> str:
    """The repository's copy of ``set_id``: fetched into scratch on the host, then
    today's verify drill on it; raise when either fails. Returns the set id.

    The scratch copy is removed whatever happens; the host's own sets are not
    read or written (a set the host holds too is not what is checked).
    """
    _require_offsite(env, set_id)
    scratch = verify_scratch(set_id)
    backup_dir = paths.host_paths(where)["backup_dir"]
    say(
        f"verifying set {set_id} from the off-host repository (in scratch "
        f"{backup_dir}/{scratch}, removed afterwards)"
    )
    companion = operations.verify_script(
        env, set_id, drill=drill, sets_subdir=f"{scratch}/set", **where
    )
    result = host.run_script(
        verify_script(**where),
        set_id,
        stream=say,
        companions={"verify.sh": companion},
    )
    if result.exit_code == 0:
        if _last_line(result.stdout) != f"verified={set_id}":
            raise RemoteError(
                f"verifying set {set_id} from the off-host repository printed no result line",
                "look at the lines above",
            )
        return set_id
    raise verify_error(result.exit_code, result.stderr, set_id)


def verify_error(code: int, stderr: str, set_id: str) -> DeployError:
    """`inv verify --offsite`'s error for the host script's exit code."""
    hint = (
        "see the lines above; do not rely on this copy: pick another set from "
        "`inv backups --offsite`, and run `restic check --read-data` on the repository"
    )
    if code == exit_codes.NOT_VERIFIED:
        return VerificationFailed(
            f"the off-host repository's copy of set {set_id} FAILED the verify drill "
            "(restore, integrity or row counts); the scratch copy was removed, the local "
            "sets were not touched",
            hint,
        )
    if code == offsite.OFFSITE_SH_EXIT["FAILED"]:
        detail = _detail(stderr)
        return VerificationFailed(
            f"the off-host repository's copy of set {set_id} FAILED verification: it could "
            "not be restored intact" + (f" ({detail})" if detail else "") + "; nothing was "
            "kept, the local sets were not touched",
            hint,
        )
    return fetch_error(code, stderr, set_id)


def download(
    host: SshHost,
    env: Env,
    set_id: str,
    destination: Path,
    say: Say,
    **where: Unpack[paths.HostPaths],
) -> operations.Fetched:
    """The repository's set ``set_id`` into ``destination/SET_ID`` on this machine.

    On the host: fetched into a scratch directory and verified there (under the
    backup lock), then downloaded with :func:`backups.fetch` (names checked
    against the set layout, sizes bounded, every file's sha256 compared,
    resumable, the checksum manifest written last), and the scratch directory
    removed. No set of the host is read or written.
    """
    _require_offsite(env, set_id)
    say(f"fetching set {set_id} from the off-host repository into scratch on the host")
    backup_dir = paths.host_paths(where)["backup_dir"]
    result = host.run_script(download_script(**where), set_id, stream=say)
    if result.exit_code != 0:
        raise fetch_error(result.exit_code, result.stderr, set_id)
    lines = result.stdout.strip().splitlines()
    names = [line.removeprefix("scratch=") for line in lines if line.startswith("scratch=")]
    if (
        lines[-1:] != [f"fetched={set_id}"]
        or len(names) != 1
        or not _DOWNLOAD_NAME.fullmatch(names[0])
    ):
        raise RemoteError(
            f"fetching set {set_id} into scratch on the host printed no result line",
            f"look at {backup_dir}/{DOWNLOAD_PREFIX}* on the host (the next "
            "fetch-backup --offsite removes scratch copies older than a day)",
        )
    scratch = f"{backup_dir}/{names[0]}"
    say(f"set {set_id} fetched and verified on the host; downloading it")
    try:
        return operations.fetch(host, env, set_id, destination, say, backup_dir=f"{scratch}/set")
    finally:
        _remove_scratch(host, scratch, say)


def _remove_scratch(host: SshHost, scratch: str, say: Say) -> None:
    """Remove a download's scratch copy; a failure is said, not raised (it would hide
    the download's own result), and the next download removes it after a day."""
    try:
        removed = host.run(f"rm -rf -- {shlex.quote(scratch)}")
        problem = "" if removed.ok else removed.stderr.strip()[:200]
    except RemoteError as error:
        problem = error.message
    if problem:
        say(
            f"could not remove the scratch copy {scratch} on the host ({problem}); the next "
            "fetch-backup --offsite removes it once it is a day old"
        )
