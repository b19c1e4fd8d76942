"""`inv backups --offsite`: the sets in the off-host restic repository.

restic runs on the host, in the backup image (the offsite compose service), with
the settings and secrets the deploy put there: nothing secret travels over SSH
or lands on argv. The host prints restic's snapshot JSON and each snapshot's
size; this module trusts none of it before checking every field.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tracker_deployer import compose, offsite, paths
from tracker_deployer.backup_layout import is_set_id
from tracker_deployer.config.model import Env
from tracker_deployer.errors import DeployError, RemoteError
from tracker_deployer.remote.backups import HostDataError, human_size
from tracker_deployer.remote.ssh import SshHost

LISTING_TIMEOUT_SECONDS = 1800
MAX_LISTING_BYTES = 16 * 1024 * 1024
_SNAPSHOT_ID = re.compile(r"[0-9a-f]{64}")
# "?": restic gave no size (offsite.sh prints what it found, the set is listed without).
_SIZE_LINE = re.compile(r"SIZE ([0-9a-f]{64}) ([0-9]{1,19}|\?)")
# ASCII digits only (``\\d`` takes any Unicode digit); the calendar is checked on parsing.
_TIME = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})"
)

# offsite.sh's exit codes, in words (the hint says what to do).
_CAUSES: dict[int, tuple[str, str]] = {
    offsite.OFFSITE_SH_EXIT["CONFIG"]: (
        "the offsite settings on the host are incomplete",
        "deploy again (`inv deploy` / `inv push`); for sftp: see docs/user-guide/offsite.md",
    ),
    offsite.OFFSITE_SH_EXIT["UNREACHABLE"]: (
        "the repository is unreachable from the host, or holds no restic repository",
        "check backup.offsite.repository, the credentials and the host's network",
    ),
    offsite.OFFSITE_SH_EXIT["PASSWORD"]: (
        "the repository password is wrong",
        "backup.offsite.password must be the password the repository was made with",
    ),
}


@dataclass(frozen=True, slots=True)
class OffsiteSet:
    set_id: str
    snapshot: str  # restic's full snapshot id
    time: datetime
    size: int | None  # restored size in bytes

    @property
    def short_id(self) -> str:
        return self.snapshot[:8]


def listing_script(deploy_dir: str = str(paths.DEPLOY_DIR)) -> str:
    """The host side: offsite.sh `sets` in the offsite service (as root)."""
    return (
        "set -o errexit -o nounset -o pipefail\n"
        f"{offsite.hostname_export()}"
        f"cd {shlex.quote(deploy_dir)}\n"
        f"exec timeout {LISTING_TIMEOUT_SECONDS} {compose.command(deploy_dir)} --profile backup run --rm "
        f"--no-deps -T {offsite.SERVICE} sets\n"
    )


def list_sets(
    host: SshHost, env: Env, *, deploy_dir: str = str(paths.DEPLOY_DIR)
) -> list[OffsiteSet]:
    if env.backup is None or env.backup.offsite is None:
        raise DeployError(
            f"environment {env.name} has no backup.offsite",
            "add a backup.offsite section (docs/user-guide/offsite.md) and deploy",
        )
    result = host.run_script(listing_script(deploy_dir))
    if result.exit_code != 0:
        raise listing_error(result.exit_code, result.stderr)
    return parse_listing(result.stdout, env.name)


def listing_error(code: int, stderr: str) -> RemoteError:
    said = [
        line.split("offsite: error: ", 1)[1]
        for line in stderr.splitlines()
        if "offsite: error: " in line
    ]
    detail = said[-1][:300] if said else (stderr.strip().splitlines() or [""])[-1][:300]
    cause, hint = _CAUSES.get(
        code,
        (
            f"listing the off-host repository failed (exit {code})",
            "see the message; `inv backups` shows the host's last runs",
        ),
    )
    return RemoteError(f"{cause}: {detail}" if detail else cause, hint)


def parse_listing(output: str, env_name: str) -> list[OffsiteSet]:
    """The host's `sets` output, every field checked; anything else is refused."""
    if len(output) > MAX_LISTING_BYTES:
        raise _bad("the listing is larger than this tool ever asks for")
    lines = output.removesuffix("\n").split("\n")  # "\n" only, as parse_inventory
    if not lines or not lines[0].startswith("SNAPSHOTS "):
        raise _bad("it does not start with the snapshot list")
    try:
        snapshots: Any = json.loads(lines[0][len("SNAPSHOTS ") :])
    except (ValueError, RecursionError):
        raise _bad("the snapshot list is not JSON") from None
    if not isinstance(snapshots, list):
        raise _bad("the snapshot list is not a list")
    sizes: dict[str, int] = {}
    for line in lines[1:]:
        match = _SIZE_LINE.fullmatch(line)
        if not match:
            raise _bad(f"unexpected line {line[:80]!r}")
        if match.group(2) != "?":
            sizes[match.group(1)] = int(match.group(2))
    found = [_snapshot(item, env_name, sizes) for item in snapshots]
    return sorted(found, key=lambda item: (item.set_id, item.snapshot))


def _snapshot(item: object, env_name: str, sizes: dict[str, int]) -> OffsiteSet:
    if not isinstance(item, dict):
        raise _bad("a snapshot is not an object")
    snapshot, when, tags = item.get("id"), item.get("time"), item.get("tags")
    if not isinstance(snapshot, str) or not _SNAPSHOT_ID.fullmatch(snapshot):
        raise _bad("a snapshot id is not 64 hex digits")
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise _bad(f"snapshot {snapshot[:8]} has no tag list")
    if f"env={env_name}" not in tags:
        raise _bad(f"snapshot {snapshot[:8]} is not tagged env={env_name}")
    set_ids = [tag[len("set=") :] for tag in tags if tag.startswith("set=")]
    if len(set_ids) != 1 or not is_set_id(set_ids[0]):
        raise _bad(f"snapshot {snapshot[:8]} has no set=YYYYMMDD_HHMMSS tag")
    match = _TIME.fullmatch(when) if isinstance(when, str) else None
    if match is None:
        raise _bad(f"snapshot {snapshot[:8]} has no time")
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    try:
        time = datetime.fromisoformat(match.group(1) + zone).astimezone(UTC)
    except (ValueError, OverflowError):  # month 13, offset +99:00, year 1 east of UTC
        raise _bad(f"snapshot {snapshot[:8]} has no valid time") from None
    return OffsiteSet(set_ids[0], snapshot, time, sizes.get(snapshot))


def _bad(what: str) -> HostDataError:
    return HostDataError(
        f"the host's off-host listing is not what offsite.sh prints ({what}); "
        "nothing was used from it",
        "check the backup image on the host (`inv status`) and the repository",
    )


def format_sets(sets: list[OffsiteSet], env_name: str) -> str:
    if not sets:
        return f"no sets of {env_name} in the off-host repository"
    lines = [
        f"off-host sets of {env_name} ({len(sets)}):",
        "  set              time (UTC)           size       snapshot",
    ]
    for item in sets:
        size = human_size(item.size) if item.size is not None else "?"
        lines.append(f"  {item.set_id}  {item.time:%Y-%m-%d %H:%M:%S}  {size:>9}  {item.short_id}")
    return "\n".join(lines)


def sets_json(sets: list[OffsiteSet]) -> str:
    data = [
        {
            "set": item.set_id,
            "snapshot": item.snapshot,
            "time": item.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "size_bytes": item.size,
        }
        for item in sets
    ]
    return json.dumps(data, indent=2, sort_keys=True)
