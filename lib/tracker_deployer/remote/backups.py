"""Operating backups on a host: list, verify (with a restore drill), restore, fetch.

The host side is a script from templates/operations/, run as root over SSH;
parsing its output and deciding what to show or refuse is plain Python here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracker_deployer import paths
from tracker_deployer.config.model import Env
from tracker_deployer.errors import DeployError, RemoteError
from tracker_deployer.remote.deploy import run_script
from tracker_deployer.remote.ssh import SshHost
from tracker_deployer.render import operation_script
from tracker_deployer.topology import APP_GID, APP_UID

Say = Callable[[str], None]

SET_ID = re.compile(r"^\d{8}_\d{6}$")
DRILL_EVIDENCE = re.compile(r"^drill_\d{8}_\d{6}_set_\d{8}_\d{6}\.json$")
PARTS = ("mysql", "sqlite", "config")


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
        return datetime.strptime(self.set_id, "%Y%m%d_%H%M%S").replace(tzinfo=UTC)

    @property
    def rows(self) -> dict[str, int]:
        return {
            key[len("rows.") :]: int(value)
            for key, value in self.meta.items()
            if key.startswith("rows.") and value.isdigit()
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
        stamp = self.evidence[len("drill_") : len("drill_") + 15]
        return datetime.strptime(stamp, "%Y%m%d_%H%M%S").replace(tzinfo=UTC)


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
            return complete[-1]
        if not SET_ID.fullmatch(wanted):
            raise DeployError(
                f"{wanted!r} is not a backup set id",
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
    sets: dict[str, BackupSet] = {}
    last_run: dict[str, str] = {}
    failure_log: list[str] = []
    inventory = Inventory([], last_run, failure_log)

    def get(set_id: str) -> BackupSet:
        return sets.setdefault(set_id, BackupSet(set_id))

    for line in output.splitlines():
        fields = line.split("\t")
        kind = fields[0]
        if kind == "FILE" and len(fields) == 6:
            backup_set = get(fields[1])
            backup_set.files[fields[3]] = int(fields[4])
            backup_set.newest_mtime = max(backup_set.newest_mtime, int(fields[5]))
        elif kind == "SET" and len(fields) == 4:
            backup_set = get(fields[1])
            backup_set.complete = fields[2] == "complete"
            backup_set.checksums = fields[3]
        elif kind == "META" and len(fields) == 4:
            get(fields[1]).meta[fields[2]] = fields[3]
        elif kind == "STATUS" and len(fields) == 3:
            last_run[fields[1]] = fields[2]
        elif kind == "FAILLOG" and len(fields) >= 2:
            failure_log.append("\t".join(fields[1:]))
        elif kind == "NOW" and len(fields) == 2 and fields[1].isdigit():
            inventory.host_now = int(fields[1])
        elif kind == "DRILL" and len(fields) == 6 and DRILL_EVIDENCE.fullmatch(fields[1]):
            inventory.drills.append(DrillRecord(*fields[1:]))
        elif kind == "DRILLSTATUS" and len(fields) == 3:
            inventory.last_drill[fields[1]] = fields[2]
        elif kind == "NODIR":
            inventory.missing_dir = True
    inventory.sets = [sets[key] for key in sorted(sets)]
    return inventory


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


def format_inventory(inventory: Inventory, now: datetime) -> str:
    lines: list[str] = []
    if inventory.missing_dir:
        return f"no backup directory on the host ({paths.BACKUP_DIR}): backups are not deployed"
    if not inventory.sets:
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


def format_last_run(inventory: Inventory) -> list[str]:
    run = inventory.last_run
    if not run:
        return ["last run: none recorded yet"]
    result = run.get("result", "?").upper()
    line = (
        f"last run: {result} at {run.get('started_at', '?')} "
        f"(exit {run.get('exit_code', '?')}, {run.get('duration_seconds', '?')} s"
    )
    if run.get("downtime_seconds"):
        line += f", tracker down {run['downtime_seconds']} s"
    line += ")"
    lines = [line]
    if run.get("result") == "failure":
        lines.append(f"  reason: {run.get('reason') or 'see the log'}")
        lines += ["  " + entry for entry in inventory.failure_log]
    elif run.get("set"):
        lines.append(f"  set: {run['set']}")
    return lines


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
    if last.get("result") == "failure":
        lines.append(
            f"  last drill FAILED (exit {last.get('exit_code', '?')}): "
            f"{last.get('reason') or 'see ' + str(paths.BACKUP_LOG)}"
        )
    return lines


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


def inventory(host: SshHost, *, verify: bool = True) -> Inventory:
    script = operation_script("inventory", backup_dir=str(paths.BACKUP_DIR), verify=verify)
    result = run_script(host, script)
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


def verify(host: SshHost, env: Env, wanted: str, say: Say, *, drill: bool = True) -> BackupSet:
    """Checksums, archives and a restore drill of one set; raise when it fails."""
    _require_backups(env)
    backup_set = inventory(host, verify=False).resolve(wanted)
    script = operation_script(
        "verify",
        deploy_dir=str(paths.DEPLOY_DIR),
        backup_dir=str(paths.BACKUP_DIR),
        set_id=backup_set.set_id,
        db_type="mysql" if env.uses_mysql else "sqlite",
        drill=drill,
        backup_image=env.images.backup,
        mysql_image=env.images.mysql,
        app_uid=APP_UID,
        app_gid=APP_GID,
    )
    result = run_script(host, script, stream=say)
    if result.exit_code != 0:
        raise VerificationFailed(
            f"backup set {backup_set.set_id} FAILED verification (exit {result.exit_code})",
            "see the lines above; do not rely on this set — take a new backup with "
            "`inv backup` and verify that",
        )
    return backup_set


def restore(
    host: SshHost,
    env: Env,
    wanted: str,
    only: str,
    say: Say,
    *,
    force: bool = False,
) -> BackupSet:
    _require_backups(env)
    if only not in ("all", "db", "config"):
        raise DeployError(f"--only {only!r} is not db or config", "use --only db or --only config")
    backup_set = inventory(host, verify=False).resolve(wanted)
    if force:
        say(
            f"--force: skipping the restore drill of set {backup_set.set_id} (checksums are still checked)"
        )
    else:
        verify(host, env, backup_set.set_id, say)
    database = env.database
    sqlite_name = "" if env.uses_mysql else database.database_name
    script = operation_script(
        "restore",
        deploy_dir=str(paths.DEPLOY_DIR),
        backup_dir=str(paths.BACKUP_DIR),
        set_id=backup_set.set_id,
        db_type="mysql" if env.uses_mysql else "sqlite",
        only=only,
        safety_backup=env.uses_mysql,
        maintenance_script=str(paths.MAINTENANCE_SCRIPT),
        sqlite_dir=str(paths.sqlite_on_host(sqlite_name or "x").parent),
        sqlite_name=sqlite_name,
    )
    result = run_script(host, script, stream=say)
    if result.exit_code != 0:
        raise RemoteError(
            f"restoring set {backup_set.set_id} failed (exit {result.exit_code})",
            "see the lines above; the tracker was started again if it had been running",
        )
    return backup_set


def restore_plan(env: Env, wanted: str, only: str, force: bool) -> str:
    """What `inv restore` would do (for --dry-run; no connection)."""
    steps = [f"restore plan for {env.name}: set {wanted}, parts: {only}"]
    if not force:
        steps.append(
            "  1. verify the set: checksums, archives and a restore drill into a scratch target"
        )
    else:
        steps.append(
            "  1. check the set's checksums and archives (--force skips the restore drill)"
        )
    if only != "config":
        if env.uses_mysql:
            steps.append("  2. safety backup of the current database (a new backup set)")
        steps.append("  3. stop the tracker")
        if env.uses_mysql:
            steps.append("  4. load the dump into the database; compare row counts with the set")
        else:
            steps.append(
                "  4. unpack the database, check integrity and row counts, swap it in atomically "
                "(the old file is kept as tracker.db.before-restore-TIME)"
            )
        steps.append("  5. start the tracker and wait until it is healthy")
    if only != "db":
        steps.append(f"  6. extract the configuration under {paths.BACKUP_DIR}/restore-SET/")
    steps.append("nothing is changed: this is a dry run")
    return "\n".join(steps)


# --------------------------------------------------------------------------- fetch


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_checksums(text: str) -> dict[str, str]:
    """``sha256sum`` lines -> {relative path: sha256}."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        sums[name.strip()] = digest.strip()
    return sums


@dataclass(frozen=True, slots=True)
class Fetched:
    set_id: str
    directory: Path
    downloaded: tuple[str, ...]
    kept: tuple[str, ...]


def fetch(host: SshHost, env: Env, wanted: str, destination: Path, say: Say) -> Fetched:
    """Download a set and its manifests; files already there with the right sha256 are kept."""
    _require_backups(env)
    backup_set = inventory(host, verify=False).resolve(wanted)
    target = destination / backup_set.set_id
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o700)
    manifest = f"manifests/set_{backup_set.set_id}.sha256"
    manifest_local = target / manifest
    host.download(str(paths.BACKUP_DIR / manifest), manifest_local)
    sums = parse_checksums(manifest_local.read_text(encoding="utf-8"))
    downloaded: list[str] = []
    kept: list[str] = []
    for relative, digest in sorted(sums.items()):
        local = target / relative
        if local.is_file() and sha256_of(local) == digest:
            kept.append(relative)
            continue
        partial = local.with_name(local.name + ".part")
        host.download(str(paths.BACKUP_DIR / relative), partial)
        if sha256_of(partial) != digest:
            partial.unlink()
            raise VerificationFailed(
                f"{relative} does not match its checksum after download",
                "the file on the host may be corrupt: run `inv verify --env NAME --set "
                f"{backup_set.set_id}`",
            )
        partial.replace(local)
        downloaded.append(relative)
        say(f"  fetched {relative} ({human_size(local.stat().st_size)})")
    return Fetched(backup_set.set_id, target, tuple(downloaded), tuple(kept))
