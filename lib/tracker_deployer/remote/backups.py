"""Operating backups on a host: list, verify (with a restore drill), restore, fetch.

The host side is a script from templates/operations/, run as root over SSH;
parsing its output and deciding what to show or refuse is plain Python here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Unpack

from tracker_deployer import exit_codes, paths
from tracker_deployer.backup_layout import (
    EVIDENCE,
    LIST_FORMAT,
    PARTS,
    SET_ID_FORMAT,
    checksum_manifest,
    is_set_id,
    set_layout,
)
from tracker_deployer.config.model import Env
from tracker_deployer.errors import DeployError, RemoteError
from tracker_deployer.remote.ssh import SshHost
from tracker_deployer.render import inventory_script, operation_script
from tracker_deployer.render.tree import verify_script as render_verify_script
from tracker_deployer.say import Say, printable

NUMBER = re.compile(r"[0-9]{1,18}")
ISO_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A checksum manifest lists three files; anything much larger is not one.
MAX_MANIFEST_BYTES = 16 * 1024


class HostDataError(RemoteError):
    """The host answered with something this tool's host scripts never print."""


def _shown(text: str, limit: int = 160) -> str:
    """A host-supplied value for a message: escaped, cut short."""
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")


class VerificationFailed(DeployError):
    """A backup set did not verify (checksums, archives or the restore drill)."""

    exit_code = 4


@dataclass(slots=True)
class BackupSet:
    set_id: str
    complete: bool = False
    checksums: str = "-"  # ok | FAILED | unchecked | -
    files: dict[str, int] = field(default_factory=dict)  # relative path -> bytes
    newest_mtime: int = 0
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def parts(self) -> list[str]:
        return [part for part in PARTS if any(p.startswith(part + "/") for p in self.files)]

    @property
    def size(self) -> int:
        return sum(self.files.values())

    @property
    def taken_at(self) -> datetime:
        return datetime.strptime(self.set_id, SET_ID_FORMAT).replace(tzinfo=UTC)

    @property
    def rows(self) -> dict[str, int]:
        return {
            key[len("rows.") :]: int(value)
            for key, value in self.meta.items()
            if key.startswith("rows.") and NUMBER.fullmatch(value)
        }


@dataclass(frozen=True, slots=True)
class DrillRecord:
    """One scheduled restore drill, from its evidence file on the host."""

    evidence: str  # file name in paths.DRILL_DIR
    set_id: str
    result: str  # success | failure
    exit_code: str
    duration_seconds: str

    @property
    def ran_at(self) -> datetime:
        named = EVIDENCE.fullmatch(self.evidence)
        assert named is not None, "parse_inventory checked the name"
        return datetime.strptime(named.group(1), SET_ID_FORMAT).replace(tzinfo=UTC)


@dataclass(slots=True)
class Inventory:
    sets: list[BackupSet]
    last_run: dict[str, str]
    failure_log: list[str]
    host_now: int | None = None
    missing_dir: bool = False
    drills: list[DrillRecord] = field(default_factory=list)
    last_drill: dict[str, str] = field(default_factory=dict)

    @property
    def complete_sets(self) -> list[BackupSet]:
        return [s for s in self.sets if s.complete]

    def resolve(self, wanted: str) -> BackupSet:
        """``latest`` (newest complete set) or an exact set id."""
        complete = self.complete_sets
        if wanted == "latest":
            if not complete:
                raise DeployError(
                    "there is no complete backup set on the host",
                    "run `inv backup --env NAME` first, or check `inv backups --env NAME`",
                )
            newest = complete[-1]
            refuse_latest_after_clock(
                newest.set_id, newest.taken_at, self.host_now, "inv backups --env NAME"
            )
            return newest
        if not is_set_id(wanted):
            raise DeployError(
                f"{_shown(wanted)} is not a backup set id",
                "use 'latest' or a set id as shown by `inv backups`, e.g. 20261127_030000",
            )
        for backup_set in self.sets:
            if backup_set.set_id == wanted:
                if not backup_set.complete:
                    raise DeployError(
                        f"backup set {wanted} is incomplete (no checksum manifest)",
                        "pick a complete set from `inv backups --env NAME`",
                    )
                return backup_set
        raise DeployError(
            f"backup set {wanted} is not on the host", "list the sets with `inv backups --env NAME`"
        )


def parse_inventory(output: str) -> Inventory:
    """The inventory script's records; anything it would never print is refused
    (the host is not trusted: ids, paths and numbers are checked before use)."""
    sets: dict[str, BackupSet] = {}
    last_run: dict[str, str] = {}
    failure_log: list[str] = []
    inventory = Inventory([], last_run, failure_log)

    def get(set_id: str) -> BackupSet:
        return sets.setdefault(set_id, BackupSet(set_id))

    # Records end with "\n" only: str.splitlines() also splits at "\r", U+2028 and
    # the like, which a value (a failed run's log line, its reason) may hold, and
    # what follows one would be read as a record of its own (a review).
    for number, line in enumerate(output.removesuffix("\n").split("\n"), 1):
        fields = line.split("\t")
        kind = fields[0]
        if kind == "FILE" and len(fields) == 6:
            _, set_id, part, relative, size, mtime = fields
            if not (
                is_set_id(set_id)
                and set_layout(set_id).get(relative) == part
                and NUMBER.fullmatch(size)
                and NUMBER.fullmatch(mtime)
            ):
                raise _bad_listing(number, line)
            backup_set = get(set_id)
            backup_set.files[relative] = int(size)
            backup_set.newest_mtime = max(backup_set.newest_mtime, int(mtime))
        elif kind == "SET" and len(fields) == 4:
            _, set_id, state, checksums = fields
            if not (
                is_set_id(set_id)
                and state in ("complete", "incomplete")
                and checksums in ("ok", "FAILED", "unchecked", "-")
            ):
                raise _bad_listing(number, line)
            backup_set = get(set_id)
            backup_set.complete = state == "complete"
            backup_set.checksums = checksums
        elif kind == "META" and len(fields) == 4:
            if not is_set_id(fields[1]):
                raise _bad_listing(number, line)
            get(fields[1]).meta[fields[2]] = fields[3]
        elif kind == "STATUS" and len(fields) >= 3:  # a value may hold a tab
            last_run[fields[1]] = "\t".join(fields[2:])
        elif kind == "FAILLOG" and len(fields) >= 2:
            failure_log.append("\t".join(fields[1:]))
        elif kind == "NOW" and len(fields) == 2:
            if not NUMBER.fullmatch(fields[1]):
                raise _bad_listing(number, line)
            inventory.host_now = int(fields[1])
        elif kind == "DRILL":
            # Host data: every field checked before it is shown or used.
            named = EVIDENCE.fullmatch(fields[1]) if len(fields) == 6 else None
            if not (
                named is not None
                and is_set_id(named.group(1))  # its time, in the set id's form
                and is_set_id(named.group(2))
                and named.group(2) == fields[2]
                and fields[3] in ("success", "failure", "?")
                and all(NUMBER.fullmatch(f) or f == "?" for f in fields[4:6])
            ):
                raise _bad_listing(number, line)
            inventory.drills.append(DrillRecord(*fields[1:]))
        elif kind == "DRILLSTATUS" and len(fields) == 3:
            inventory.last_drill[fields[1]] = fields[2]
        elif kind == "LIST" and len(fields) == 2:
            if fields[1] != LIST_FORMAT:
                raise HostDataError(
                    f"the host's backup.sh lists sets in format {_shown(fields[1])}; this "
                    f"deployer reads format {LIST_FORMAT}; nothing was used from it",
                    "use the backup image this deployer pins (images.backup), or a deployer "
                    "of the image's version",
                )
        elif kind == "NODIR":
            inventory.missing_dir = True
        elif kind in ("LIST", "FILE", "SET", "META", "STATUS", "NOW"):
            raise _bad_listing(number, line)
    inventory.sets = [sets[key] for key in sorted(sets)]
    return inventory


def _bad_listing(number: int, line: str) -> HostDataError:
    return HostDataError(
        f"the host's backup listing has a line this tool never writes (line {number}: "
        f"{_shown(line)}); nothing was used from it",
        f"the backup directory {paths.BACKUP_DIR} on the host holds unexpected names or the "
        "host is not trustworthy: inspect it there before fetching or restoring",
    )


# --------------------------------------------------------------------------- presentation


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def human_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400 * 2:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


# The host's clock and this machine's may differ this much before it is shown.
CLOCK_SKEW_SECONDS = 300


def format_inventory(inventory: Inventory, now: datetime) -> str:
    lines: list[str] = []
    skew = None if inventory.host_now is None else inventory.host_now - now.timestamp()
    if skew is not None and abs(skew) > CLOCK_SKEW_SECONDS:
        lines.append(
            f"WARNING: the host's clock is {human_age(abs(skew))} "
            f"{'ahead of' if skew > 0 else 'behind'} this machine's: set times, ages and "
            "retention follow the host's clock (check it: timedatectl)"
        )
    if inventory.missing_dir:
        lines.append(
            f"no backup directory on the host ({paths.BACKUP_DIR}): backups are not deployed"
        )
    elif not inventory.sets:
        lines.append("no backup sets on the host yet")
    else:
        header = f"{'SET (UTC)':19} {'PARTS':18} {'SIZE':>10} {'AGE':>7}  {'STATE':10} CHECKSUMS"
        lines.append(header)
        for backup_set in inventory.sets:
            age = human_age((now - backup_set.taken_at).total_seconds())
            state = "complete" if backup_set.complete else "INCOMPLETE"
            lines.append(
                f"{backup_set.taken_at:%Y-%m-%d %H:%M:%S} {'+'.join(backup_set.parts):18} "
                f"{human_size(backup_set.size):>10} {age:>7}  {state:10} {backup_set.checksums}"
            )
        lines.append(
            f"{len(inventory.complete_sets)} complete set(s); ids for --set: "
            + ", ".join(s.set_id for s in inventory.complete_sets[-3:])
        )
    lines.append("")
    lines += format_last_run(inventory)
    lines += format_drills(inventory)
    return "\n".join(lines)


def status_warnings(run: Mapping[str, str]) -> list[str]:
    """What keeps the host from being healthy, from its status records: each a line
    for `inv backups` (which then exits 1) and `inv status`."""
    lines: list[str] = []
    if run.get("status_dir_unsafe"):
        lines.append(
            f"WARNING: {run['status_dir_unsafe']}: every backup run refuses it (exit 77) and "
            "records nothing, so the last run shown below may be old; fix: chown root:root "
            f"and chmod 0755 {paths.BACKUP_STATUS_DIR}"
        )
    if run.get("restore_incomplete"):
        lines.append(
            f"WARNING: a restore of set {run['restore_incomplete']} left the MySQL database "
            f"partly restored ({paths.RESTORE_INCOMPLETE_MARKER}): the tracker is not started "
            "on it and no backup is taken of it; finish it: inv restore --env NAME --set SET --yes"
        )
    if run.get("deploy_failed"):
        lines.append(
            f"WARNING: a deploy failed after it pushed files that may hold a MySQL password the "
            f"server does not have yet ({paths.DEPLOY_MARKER}): every backup run refuses "
            "(exit 77) until a deploy succeeds; run: inv deploy --env NAME"
        )
    if run.get("recover_unfinished"):
        lines.append(
            f"WARNING: an `inv recover` of this host has not finished ({paths.RECOVER_MARKER}): "
            "its database holds no restored data yet, so no tracker is started and no backup "
            "is taken; finish it: inv recover --env NAME (it continues on this host)"
        )
    if run.get("tracker_stopped_by"):
        # The maintenance script's marker: a run was cut off (SIGKILL, reboot) with
        # the tracker stopped; the next run or --recover at boot starts it again.
        lines.append(
            f"WARNING: the tracker was stopped by {run['tracker_stopped_by']} and not "
            "started again (the run was killed or the host rebooted); the next run "
            f"starts it, or now: sudo {paths.MAINTENANCE_SCRIPT} --recover"
        )
    return [printable(line) for line in lines]


def overdue_warning(inventory: Inventory, missing_after_seconds: int) -> str | None:
    """A warning when no run has finished for longer than the schedule allows (the
    BackupMissing alert's bound): cron does not run it, a run hangs holding the
    lock, or runs are killed outright (they record nothing)."""
    finished = inventory.last_run.get("finished_at", "")
    if inventory.host_now is None or not ISO_TIME.fullmatch(finished):
        return None
    try:
        ended = datetime.strptime(finished, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:  # host data: a date that does not exist
        return None
    late = inventory.host_now - ended.timestamp()
    if late <= missing_after_seconds:
        return None
    return printable(
        f"WARNING: no backup run has finished since {finished}, {human_age(late)} ago by the "
        f"host's clock: longer than backup.schedule allows ({human_age(missing_after_seconds)}). "
        f"Does cron run it ({paths.CRON_FILE}, pgrep cron)? Does a run hang holding the lock, "
        f"or were runs killed? See {paths.BACKUP_LOG} on the host"
    )


def format_last_run(inventory: Inventory) -> list[str]:
    run = inventory.last_run
    lines: list[str] = status_warnings(run)
    if "result" not in run:
        lines.append("last run: none recorded yet")
    else:
        result = run["result"].upper()
        line = (
            f"last run: {result} at {run.get('started_at', '?')} "
            f"(exit {run.get('exit_code', '?')}, {run.get('duration_seconds', '?')} s"
        )
        if run.get("downtime_seconds"):
            line += f", tracker down {run['downtime_seconds']} s"
        line += ")"
        lines.append(line)
        if run.get("result") == "failure":
            lines.append(f"  reason: {run.get('reason') or 'see the log'}")
            lines += ["  " + entry for entry in inventory.failure_log]
        elif run.get("set"):
            lines.append(f"  set: {run['set']}")
    # A run that found the lock busy did not run: it never replaces the last
    # run's result, and is shown only when it came after that run.
    busy_at = run.get("lock_busy_at", "")
    if busy_at and busy_at >= run.get("started_at", ""):
        lines.append(
            f"a later run did not start at {busy_at}: "
            f"{run.get('lock_busy_reason') or 'the backup lock was busy'}"
        )
    return [printable(line) for line in lines]


_SEE_LOG = f"see {paths.BACKUP_LOG}"
# The last drill's result -> what the listing says of it, and the reason if none is given.
_LAST_DRILL = {
    "failure": ("FAILED", _SEE_LOG),
    "no_set": ("found nothing to drill", "no complete backup set"),
    "skipped": ("skipped", _SEE_LOG),
}


def format_drills(inventory: Inventory) -> list[str]:
    """The scheduled restore drills whose evidence is on the host, newest last."""
    last = inventory.last_drill
    if not inventory.drills and not last:
        return ["restore drills: none recorded yet"]
    lines = ["restore drills (evidence in " + str(paths.DRILL_DIR) + "):"]
    for drill in sorted(inventory.drills, key=lambda d: d.evidence):
        lines.append(
            f"  {drill.ran_at:%Y-%m-%d %H:%M:%S}  set {drill.set_id}  {drill.result.upper():8} "
            f"(exit {drill.exit_code}, {drill.duration_seconds} s)  {drill.evidence}"
        )
    # A drill that found no complete set, or did not run (a lock stayed busy), is
    # not a failed one.
    said = _LAST_DRILL.get(last.get("result", ""))
    if said is not None:
        what, fallback = said
        lines.append(
            f"  last drill {what} (exit {last.get('exit_code', '?')}): "
            f"{last.get('reason') or fallback}"
        )
    return [printable(line) for line in lines]


def inventory_json(inventory: Inventory) -> str:
    data: dict[str, Any] = {
        "sets": [
            {
                "set": s.set_id,
                "taken_at": s.taken_at.isoformat().replace("+00:00", "Z"),
                "complete": s.complete,
                "checksums": s.checksums,
                "parts": s.parts,
                "files": s.files,
                "size": s.size,
                "rows": s.rows,
            }
            for s in inventory.sets
        ],
        "last_run": inventory.last_run or None,
        "last_failure_log": inventory.failure_log,
        "drills": [
            {
                "evidence": d.evidence,
                "ran_at": d.ran_at.isoformat().replace("+00:00", "Z"),
                "set": d.set_id,
                "result": d.result,
                "exit_code": int(d.exit_code) if d.exit_code.isdigit() else None,
                "duration_seconds": int(d.duration_seconds)
                if d.duration_seconds.isdigit()
                else None,
            }
            for d in sorted(inventory.drills, key=lambda d: d.evidence)
        ],
        "last_drill": inventory.last_drill or None,
    }
    return json.dumps(data, indent=2, sort_keys=True)


# --------------------------------------------------------------------------- host operations


def inventory(
    host: SshHost, env: Env, *, verify: bool = True, **where: Unpack[paths.HostPaths]
) -> Inventory:
    """The host's sets (from ``backup.sh list --records`` in the env's backup image),
    last run and drills."""
    script = inventory_script(verify=verify, backup_image=env.images.backup, **where)
    result = host.run_script(script)
    if not result.ok:
        raise RemoteError(
            f"listing backups on {host.target.host} failed: {result.stderr.strip()}",
            "check that the SSH user can run commands as root",
        )
    return parse_inventory(result.stdout)


def _require_backups(env: Env) -> None:
    if env.backup is None:
        raise DeployError(
            f"backups are off for {env.name}",
            'add a "backup" section to the environment config and deploy',
        )


def verify_script(
    env: Env,
    set_id: str,
    *,
    drill: bool,
    sets_subdir: str = "",
    lock_wait_seconds: int | None = None,
    **where: Unpack[paths.HostPaths],
) -> str:
    """templates/operations/verify.sh.j2 for one set (``lock_wait_seconds``: it takes
    the backup lock itself; None: its caller holds it)."""
    return render_verify_script(
        env,
        set_id=set_id,
        drill=drill,
        sets_subdir=sets_subdir,
        lock_wait_seconds=lock_wait_seconds,
        **where,
    ).decode()


# How long `inv verify` waits for the backup lock (a backup run, a restore, the drill).
VERIFY_LOCK_WAIT_SECONDS = 600


def verify(host: SshHost, env: Env, wanted: str, say: Say, *, drill: bool = True) -> BackupSet:
    """Checksums, archives and a restore drill of one set, under the host's backup
    lock; raise when it fails."""
    _require_backups(env)
    backup_set = inventory(host, env, verify=False).resolve(wanted)
    script = verify_script(
        env, backup_set.set_id, drill=drill, lock_wait_seconds=VERIFY_LOCK_WAIT_SECONDS
    )
    result = host.run_script(script, stream=say)
    if result.exit_code != 0:
        raise verify_failure(result.exit_code, backup_set.set_id, host.target.host)
    return backup_set


def verify_failure(code: int, set_id: str, where: str) -> DeployError:
    """What the verify script's exit ``code`` means: a set that failed, or a set that
    was not checked at all (a lock)."""
    if code == exit_codes.LOCK_BUSY:
        return RemoteError(
            f"backup set {set_id} was not verified: the backup lock {paths.BACKUP_LOCK} on "
            f"{where} stayed busy for {VERIFY_LOCK_WAIT_SECONDS} s; nothing was changed",
            f"wait for the backup run ({paths.BACKUP_LOG}), restore, deploy or drill to "
            "finish, then run `inv verify` again",
        )
    if code == exit_codes.BACKUP_SH_LOCKED:
        return RemoteError(
            f"backup set {set_id} was not verified: another backup.sh run holds the backup "
            f"directory's own lock ({paths.BACKUP_DIR}/.lock) on {where}; nothing was changed",
            "one not under the host's backup lock (started by hand?): find it with "
            "`pgrep -af backup.sh` on the host, let it end, then run `inv verify` again",
        )
    if code == exit_codes.NO_SET:
        return RemoteError(
            f"backup set {set_id} was not verified: it was deleted on {where} while this "
            "waited for the backup lock (retention, in a backup run); nothing was changed",
            "pick a set that is there: `inv backups`, then `inv verify --set SET`",
        )
    return VerificationFailed(
        f"backup set {set_id} FAILED verification (exit {code})",
        "see the lines above; do not rely on this set — take a new backup with "
        "`inv backup` and verify that",
    )


SKIP_SAFETY_BACKUP_FLAG = "--skip-safety-backup"


def restore_script(
    env: Env,
    set_id: str,
    only: str,
    *,
    verify_first: bool,
    skip_safety_backup: bool = False,
    new_host: bool = False,
    **where: Unpack[paths.HostPaths],
) -> str:
    """templates/operations/restore.sh.j2."""
    return operation_script(
        "restore",
        paths.TEMPLATES_DIR,
        **paths.host_paths(where),
        set_id=set_id,
        db_type="mysql" if env.uses_mysql else "sqlite",
        only=only,
        verify_first=verify_first,
        safety_backup=env.uses_mysql,
        skip_safety_backup=skip_safety_backup,
        new_host=new_host,
        sqlite_name="" if env.uses_mysql else env.database.database_name,
        env_name=env.name,
    )


def restore(
    host: SshHost,
    env: Env,
    wanted: str,
    only: str,
    say: Say,
    *,
    force: bool = False,
    skip_safety_backup: bool = False,
    new_host: bool = False,
) -> BackupSet:
    """Verify and restore a set in one host script that holds the backup lock throughout.

    ``new_host`` (inv recover): the host's database holds nothing yet, so there is
    nothing for a safety backup to keep (it would only add a set of an empty database).
    """
    _require_backups(env)
    check_only(only)
    backup_set = inventory(host, env, verify=False).resolve(wanted)
    set_id = backup_set.set_id
    if force:
        say(f"--force: skipping the restore drill of set {set_id} (checksums are still checked)")
    if skip_safety_backup and not new_host:
        if env.uses_mysql and only != "config":
            say(
                f"WARNING: {SKIP_SAFETY_BACKUP_FLAG}: the current database is replaced without a "
                "copy of it; it cannot be brought back"
            )
        else:
            say(
                f"{SKIP_SAFETY_BACKUP_FLAG}: nothing to skip (only a MySQL database restore takes "
                "a safety backup; SQLite keeps the replaced file next to the new one)"
            )
    companions = {} if force else {"verify.sh": verify_script(env, set_id, drill=True)}
    script = restore_script(
        env,
        set_id,
        only,
        verify_first=not force,
        skip_safety_backup=skip_safety_backup,
        new_host=new_host,
    )
    result = host.run_script(script, stream=say, companions=companions)
    code = result.exit_code
    if code == 0:
        return backup_set
    raise restore_failure(code, set_id, host.target.host, env.name, new_host=new_host)


def restore_failure(
    code: int, set_id: str, where: str, env_name: str, *, new_host: bool = False
) -> DeployError:
    """What the restore script's exit ``code`` means for the operator; with ``new_host``
    (`inv recover`) the way on is recover's, never `inv restore`'s."""
    error = _restore_failure(code, set_id, where, env_name)
    if new_host:
        hint = _RECOVER_HINTS.get(code)
        if hint is not None:
            error.hint = hint.format(env=env_name)
    return error


# `inv recover`'s way on after its restore step failed, where `inv restore`'s would
# mislead: no safety set exists (the new host held no data), and `inv backups`
# lists the new host's sets, not the repository's.
_RECOVER_HINTS = {
    exit_codes.PARTLY_RESTORED: (
        "run `inv recover --env {env}` again: it continues on this host and restores the "
        "set again (no safety set is needed: the new host held no data)"
    ),
    exit_codes.NOT_VERIFIED: (
        "see the lines above; list the repository's sets with `inv backups --env {env} "
        "--offsite`, then recover another one: `inv recover --env {env} --set OTHER` (it "
        "continues on this host)"
    ),
    exit_codes.LOCK_BUSY: (
        "wait for the backup run, verify or deploy on the host to finish, then run "
        "`inv recover --env {env}` again (it continues on this host)"
    ),
}


def _restore_failure(code: int, set_id: str, where: str, env_name: str) -> DeployError:
    if code == exit_codes.LOCK_BUSY:
        return RemoteError(
            f"a backup lock on {where} is busy ({paths.BACKUP_LOCK}, held by the process named "
            "above, or the backup directory's own); nothing was changed",
            f"wait for the backup run ({paths.BACKUP_LOG}), deploy, verify, drill or restore to "
            "finish, then run `inv restore` again",
        )
    if code == exit_codes.UNSAFE:
        return RemoteError(
            f"set {set_id} was not restored: a deploy on {where} failed after it pushed files "
            "that may hold a MySQL password the server lacks; nothing was changed",
            f"run `inv deploy --env {env_name}` first (its success removes the marker), then "
            "the restore",
        )
    if code == exit_codes.NOT_VERIFIED:
        return VerificationFailed(
            f"backup set {set_id} was not restored: it did not verify or is gone; nothing was "
            "changed",
            "see the lines above; pick another set from `inv backups --env NAME`",
        )
    if code == exit_codes.SAFETY_BACKUP_FAILED:
        return RemoteError(
            f"the safety backup before restoring set {set_id} failed on {where}; nothing was "
            "restored and the tracker runs as before",
            "fix its cause (see the lines above: disk space, a damaged database), or run again "
            f"with {SKIP_SAFETY_BACKUP_FLAG} to restore over the current data without a copy",
        )
    if code == exit_codes.ROLLED_BACK:
        return RemoteError(
            f"restoring set {set_id} failed on {where}; the data from before was put back from "
            "the safety set, and the tracker runs as before",
            "see the lines above for why the set did not load; "
            f"`inv verify --env {env_name} --set {set_id}` runs its restore drill",
        )
    if code == exit_codes.PARTLY_RESTORED:
        return RemoteError(
            f"restoring set {set_id} failed on {where}; its MySQL database may be partly "
            "restored, so the tracker stays stopped (and backup runs refuse to run)",
            f"restore again: `inv restore --env {env_name} --set SET --yes` with the safety set "
            "named above (the data from before) or another set; it starts the tracker once it "
            "has succeeded",
        )
    if code == exit_codes.TRACKER:
        return RemoteError(
            f"restoring set {set_id} on {where}: the tracker could not be started again",
            f"see the lines above; on the host: cd {paths.DEPLOY_DIR} && docker compose logs "
            "tracker, then docker compose start tracker",
        )
    return RemoteError(
        f"restoring set {set_id} failed (exit {code})",
        "see the lines above; the tracker was started again if it had been running",
    )


def refuse_latest_after_clock(
    set_id: str, taken_at: datetime, host_now: int | None, lister: str
) -> None:
    """As backup.sh's refuse_latest_after_now: a newest set named after the host's
    clock means the sets taken since sort before it, so ``latest`` may not be the
    newest data. ``lister`` is the command that lists the sets to name one."""
    if host_now is None or taken_at.timestamp() <= host_now:
        return
    now = datetime.fromtimestamp(host_now, UTC).strftime(SET_ID_FORMAT)
    raise DeployError(
        f"the newest set {set_id} is named after the host's clock (now {now} UTC): the "
        "clock was ahead when it was taken, or is behind now, so 'latest' may not be the "
        "newest data",
        f"check the host's clock (timedatectl), then name the set: --set SET_ID (`{lister}` "
        "lists them)",
    )


def host_clock(host: SshHost) -> int | None:
    """The host's clock (seconds since the epoch), None when it cannot be read."""
    result = host.run("date +%s", root=False)
    text = result.stdout.strip()
    if result.ok and text.isascii() and text.isdigit() and len(text) <= 12:
        return int(text)
    return None


def check_set(wanted: str) -> None:
    """``--set``: latest or a set id, checked before anything connects."""
    if wanted != "latest" and not is_set_id(wanted):
        raise DeployError(
            f"--set {wanted!r} is not a set id",
            "use --set latest or --set YYYYMMDD_HHMMSS (`inv backups` lists the sets)",
        )


def check_only(only: str) -> None:
    """``--only``: all (the default), db or config."""
    if only not in ("all", "db", "config"):
        raise DeployError(f"--only {only!r} is not db or config", "use --only db or --only config")


def restore_plan(
    env: Env, wanted: str, only: str, force: bool, *, skip_safety_backup: bool = False
) -> str:
    """What `inv restore` would do (for --dry-run; no connection)."""
    steps = [
        f"take the host's backup lock {paths.BACKUP_LOCK} for the whole restore (refuse, "
        "changing nothing, while a backup run, deploy or restore holds it)"
    ]
    if not force:
        steps.append(
            "verify the set: checksums, archives and a restore drill into a scratch target"
        )
    else:
        steps.append("check the set's checksums and archives (--force skips the restore drill)")
    if only != "config":
        steps.append("stop the tracker")
        if env.uses_mysql:
            if skip_safety_backup:
                steps.append(
                    f"NO safety backup ({SKIP_SAFETY_BACKUP_FLAG}): the current database is "
                    "replaced without a copy"
                )
            else:
                steps.append(
                    "safety backup of the current database (a new backup set; prunes nothing)"
                )
            steps.append("load the dump into the database; compare row counts with the set")
        else:
            steps.append(
                "unpack the database, check integrity and row counts, swap it in atomically "
                "(the old file is kept as tracker.db.before-restore-TIME)"
            )
        steps.append("start the tracker and wait until it is healthy")
    if only != "db":
        steps.append(f"extract the configuration under {paths.BACKUP_DIR}/restore-SET/")
    steps.append("release the backup lock")
    lines = [f"restore plan for {env.name}: set {wanted}, parts: {only}"]
    lines += [f"  {number}. {step}" for number, step in enumerate(steps, start=1)]
    lines.append("nothing is changed: this is a dry run")
    return "\n".join(lines)


# --------------------------------------------------------------------------- fetch


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_checksums(text: str, set_id: str) -> dict[str, str]:
    """A set's ``sha256sum`` manifest -> {relative path: sha256}, checked line by line.

    Exactly what backup.sh writes (and its ``verify`` accepts): one database
    file, one config archive and the .meta, each under its name in the set
    layout, with a lower-case hex sha256. Anything else is refused.
    """
    layout = set_layout(set_id)
    name = checksum_manifest(set_id)
    sums: dict[str, str] = {}
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    for number, line in enumerate(lines, 1):
        digest, separator, relative = line.partition("  ")
        if not (
            separator
            and SHA256_HEX.fullmatch(digest)
            and relative in layout
            and relative != name
            and relative not in sums
        ):
            raise _bad_manifest(set_id, f"line {number} is {_shown(line)}")
        sums[relative] = digest
    parts = sorted(layout[relative] for relative in sums)
    if parts not in (["config", "manifests", "mysql"], ["config", "manifests", "sqlite"]):
        raise _bad_manifest(
            set_id, "it does not list exactly one database file, one config archive and one .meta"
        )
    return sums


def _bad_manifest(set_id: str, what: str) -> HostDataError:
    return HostDataError(
        f"the host's checksum manifest of set {set_id} is not one backup.sh writes: {what}; "
        "nothing was fetched",
        f"run `inv verify --env NAME --set {set_id}` and inspect "
        f"{paths.BACKUP_DIR}/{checksum_manifest(set_id)} on the host",
    )


@dataclass(frozen=True, slots=True)
class Fetched:
    set_id: str
    directory: Path
    downloaded: tuple[str, ...]
    kept: tuple[str, ...]


def local_destination(destination: Path) -> Path:
    """--to as an absolute, resolved directory (it may be a link the operator made);
    checked before anything connects: it, or the nearest of its parents that exists
    (where it will be made), must be a directory this user can write. Otherwise the
    failure came only after the host's work (a review)."""
    root = destination.expanduser().absolute()
    hint = "pass a directory for --to that exists or can be made, e.g. --to ./backups"
    try:
        if root.exists() and not root.is_dir():
            raise DeployError(f"--to {destination} is not a directory", "pass a directory for --to")
        resolved = root.resolve(strict=False)
        existing = resolved
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise DeployError(
                f"--to {destination} cannot be made: {existing} is not a directory", hint
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            made = "written" if existing == resolved else f"made in {existing}"
            raise DeployError(
                f"--to {destination} cannot be {made}: no write permission there",
                f"{hint}, in a directory you can write",
            )
        return resolved
    except (OSError, RuntimeError) as error:  # a loop of links, for one
        raise DeployError(
            f"--to {destination} cannot be used: {error}", "pass a directory for --to"
        ) from None


def _inside(root: Path, relative: str) -> Path:
    """``root/relative``, refused unless it stays inside ``root`` with no link on the way."""
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts or not parts:
        raise DeployError(f"{relative!r} would land outside {root}", "this is a bug; report it")
    current = root
    for component in parts:
        current = current / component
        try:
            info = current.lstat()
        except FileNotFoundError:
            break
        if stat.S_ISLNK(info.st_mode):
            raise DeployError(
                f"{current} is a symbolic link; refusing to write through it",
                "remove the link (fetch-backup only writes real files and directories inside --to)",
            )
    local = root.joinpath(*parts)
    if not local.resolve().is_relative_to(root):
        raise DeployError(f"{relative!r} would land outside {root}", "this is a bug; report it")
    return local


def _directory(root: Path, relative: str) -> Path:
    local = _inside(root, relative)
    try:
        local.mkdir(mode=0o700, parents=False, exist_ok=True)
    except FileExistsError:
        raise DeployError(
            f"{local} exists and is not a directory", "move it away or pick another --to"
        ) from None
    if not local.is_dir():
        raise DeployError(f"{local} is not a directory", "move it away or pick another --to")
    return local


def _fresh(path: Path) -> None:
    """Remove a leftover ``.part`` file (callers have refused links with _inside)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        raise DeployError(f"{path} is a directory", "move it away or pick another --to")
    path.unlink()


def fetch(
    host: SshHost,
    env: Env,
    wanted: str,
    destination: Path,
    say: Say,
    *,
    backup_dir: str = str(paths.BACKUP_DIR),
) -> Fetched:
    """Download a set and its manifests (from ``backup_dir`` on the host) into
    ``destination/SET_ID``.

    Nothing the host says is used unchecked: the set id and every name must fit
    the set layout, sizes bound each download, and every file is compared with
    its sha256 before it gets its name. Files already there with the right
    sha256 are kept (resumable). The checksum manifest is written last, so a
    local set with a manifest is a complete one.
    """
    _require_backups(env)
    backup_set = inventory(host, env, verify=False, backup_dir=backup_dir).resolve(wanted)
    set_id = backup_set.set_id
    if not is_set_id(set_id):  # parse_inventory checked it; a second look costs nothing
        raise _bad_manifest(set_id, "its id is not YYYYMMDD_HHMMSS")
    manifest_name = checksum_manifest(set_id)
    source = PurePosixPath(backup_dir)
    raw = host.read_bytes(str(source / manifest_name), limit=MAX_MANIFEST_BYTES)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise _bad_manifest(set_id, "it is not ASCII text") from None
    sums = parse_checksums(text, set_id)
    for relative in sums:
        if relative not in backup_set.files:
            raise _bad_manifest(set_id, f"{relative} is not in the host's listing")

    root = local_destination(destination)
    try:
        return _fetch_into(host, source, backup_set, sums, raw, root, say)
    except OSError as error:
        raise DeployError(
            f"writing the set into {root} failed: {error.strerror or error}"
            + (f" ({error.filename})" if error.filename else ""),
            "check free space and permissions of --to; run the fetch again to resume",
        ) from None


def _fetch_into(
    host: SshHost,
    source: PurePosixPath,
    backup_set: BackupSet,
    sums: dict[str, str],
    manifest: bytes,
    root: Path,
    say: Say,
) -> Fetched:
    set_id = backup_set.set_id
    root.mkdir(parents=True, exist_ok=True)
    target = _directory(root, set_id)
    target.chmod(0o700)
    # A local manifest other than the host's (a different set under this id, a
    # damaged one) goes before any file is replaced: until the new one is written
    # last, the local set is incomplete, never a mix that looks complete.
    manifest_name = checksum_manifest(set_id)
    _directory(target, manifest_name.split("/")[0])
    present = _inside(target, manifest_name)
    if present.is_symlink() or (present.is_file() and present.read_bytes() != manifest):
        present.unlink()
    downloaded: list[str] = []
    kept: list[str] = []
    for relative, digest in sorted(sums.items()):
        _directory(target, relative.split("/")[0])
        local = _inside(target, relative)
        if local.exists() and not local.is_file():
            raise DeployError(f"{local} is not a regular file", "move it away and fetch again")
        if local.is_file() and sha256_of(local) == digest:
            kept.append(relative)
            continue
        partial = _inside(target, relative + ".part")
        _fresh(partial)
        try:
            host.download(str(source / relative), partial, limit=backup_set.files[relative])
            matches = sha256_of(partial) == digest
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if not matches:
            partial.unlink()
            raise VerificationFailed(
                f"{relative} does not match its checksum after download",
                f"the file on the host may be corrupt: run `inv verify --env NAME --set {set_id}`",
            )
        partial.replace(local)
        downloaded.append(relative)
        say(f"  fetched {relative} ({human_size(local.stat().st_size)})")
    # The checksum manifest last: a local set that has one is complete.
    partial = _inside(target, manifest_name + ".part")
    _fresh(partial)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(manifest)
    partial.replace(_inside(target, manifest_name))
    return Fetched(set_id, target, tuple(downloaded), tuple(kept))
