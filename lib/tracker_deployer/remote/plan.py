"""What would change on the host: pure Python over plain data (pyinfra's shape).

``desired_state`` turns a rendered tree into the files and directories the host
must have; ``diff`` compares that with what a probe found on the host and
returns a :class:`Plan` of steps; ``render_apply_script`` turns the plan into
the one shell script that applies it. No network here: ``remote.ssh`` is the
only module that talks to a host.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import PurePosixPath

from tracker_deployer import paths
from tracker_deployer.errors import RemoteError
from tracker_deployer.render import Directory, RenderedFile, RenderedTree
from tracker_deployer.render.tree import DEPLOY_PUSHED, ROOT_UID
from tracker_deployer.say import printable

# The deployer's own record of what it put on the host (to remove stale files).
STATE_DIR = paths.DEPLOY_DIR / ".tracker-deployer"
STATE_FILE = STATE_DIR / "deployed-files.txt"
# Services whose bind-mounted config a push changed and that no deploy has
# restarted since (compose up or the restart failed, or never came): the next
# deploy restarts them even when its own push changes nothing.
PENDING_RESTART_FILE = STATE_DIR / "pending-restart.txt"
RESTARTABLE = ("tracker", "prometheus", "grafana", "caddy")

# Files managed by `install-cron`; everything under DEPLOY_DIR is `push`'s.
CRON_FILES = (
    paths.MAINTENANCE_SCRIPT,
    paths.CRON_FILE,
    paths.LOGROTATE_FILE,
    # backup health metrics and the scheduled restore drill
    paths.METRICS_SCRIPT,
    paths.VERIFY_SCRIPT,
    paths.DRILL_SCRIPT,
    paths.DRILL_CRON_FILE,
    # the scheduled check of the off-host repository (backup.offsite)
    paths.OFFSITE_CHECK_SCRIPT,
    paths.OFFSITE_CHECK_CRON_FILE,
)


class Scope(Enum):
    PUSH = "push"  # the /opt/torrust tree
    CRON = "cron"  # maintenance script, cron.d and logrotate files

    def owns(self, path: PurePosixPath) -> bool:
        if self is Scope.PUSH:
            return path.is_relative_to(paths.DEPLOY_DIR)
        return path in CRON_FILES


class Change(Enum):
    CREATE = "create"
    UPDATE = "update"  # content differs
    METADATA = "metadata"  # same content, mode/owner differ
    UNCHANGED = "unchanged"
    REMOVE = "remove"
    ENSURE = "ensure"  # dry run: uploaded only if the host's copy differs


@dataclass(frozen=True, slots=True)
class FileState:
    """What the probe found at a path on the host (``sha256`` None = missing)."""

    path: PurePosixPath
    sha256: str | None
    mode: int = 0
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True)
class FileStep:
    change: Change
    path: PurePosixPath
    file: RenderedFile | None = None  # None for REMOVE

    def describe(self) -> str:
        if self.file is None:
            return f"{self.change.value:9} {self.path}"
        owner = f"{self.file.uid}:{self.file.gid}"
        return f"{self.change.value:9} {self.path}  ({self.file.mode:04o} {owner})"


@dataclass(frozen=True, slots=True)
class Plan:
    scope: Scope
    directories: tuple[Directory, ...]
    steps: tuple[FileStep, ...]
    managed_after: tuple[PurePosixPath, ...] = field(default=())

    def count(self, change: Change) -> int:
        return sum(1 for step in self.steps if step.change is change)

    @property
    def changed_paths(self) -> tuple[PurePosixPath, ...]:
        return tuple(s.path for s in self.steps if s.change is not Change.UNCHANGED)

    @property
    def has_changes(self) -> bool:
        return bool(self.changed_paths)

    def summary(self) -> str:
        parts = [
            f"{self.count(change)} {label}"
            for change, label in (
                (Change.CREATE, "created"),
                (Change.UPDATE, "changed"),
                (Change.METADATA, "mode/owner fixed"),
                (Change.REMOVE, "removed"),
                (Change.UNCHANGED, "unchanged"),
            )
        ]
        return ", ".join(parts)


def desired_files(tree: RenderedTree, scope: Scope) -> tuple[RenderedFile, ...]:
    return tuple(item for item in tree.files if scope.owns(item.path))


def desired_directories(tree: RenderedTree, scope: Scope) -> tuple[Directory, ...]:
    if scope is Scope.CRON:
        return ()
    return tuple(d for d in tree.directories if scope.owns(d.path))


def probe_paths(tree: RenderedTree, scope: Scope, previously: Iterable[PurePosixPath]) -> list[str]:
    """Every path whose state the plan needs: desired files and ones we put there before."""
    wanted = {item.path for item in desired_files(tree, scope)}
    if scope is Scope.CRON:
        wanted.update(CRON_FILES)
    wanted.update(p for p in previously if scope.owns(p))
    return sorted(str(p) for p in wanted)


def diff(
    tree: RenderedTree,
    scope: Scope,
    found: dict[PurePosixPath, FileState],
    previously: Iterable[PurePosixPath] = (),
) -> Plan:
    """Steps that make the host match ``tree`` within ``scope``."""
    steps: list[FileStep] = []
    wanted = desired_files(tree, scope)
    wanted_paths = {item.path for item in wanted}
    for item in wanted:
        state = found.get(item.path)
        if state is None or state.sha256 is None:
            steps.append(FileStep(Change.CREATE, item.path, item))
        elif state.sha256 != item.sha256:
            steps.append(FileStep(Change.UPDATE, item.path, item))
        elif (state.mode, state.uid, state.gid) != (item.mode, item.uid, item.gid):
            steps.append(FileStep(Change.METADATA, item.path, item))
        else:
            steps.append(FileStep(Change.UNCHANGED, item.path, item))
    # Files this tool put there before (or the cron files) that are no longer wanted.
    stale = {p for p in previously if scope.owns(p)}
    if scope is Scope.CRON:
        stale.update(CRON_FILES)
    for path in sorted(stale - wanted_paths, key=str):
        state = found.get(path)
        if state is not None and state.sha256 is not None:
            steps.append(FileStep(Change.REMOVE, path))
    managed = tuple(sorted(wanted_paths, key=str))
    return Plan(scope, desired_directories(tree, scope), tuple(steps), managed)


def dry_run_plan(tree: RenderedTree, scope: Scope) -> Plan:
    """The plan without looking at the host: every desired file is 'ensure'd."""
    steps = tuple(FileStep(Change.ENSURE, item.path, item) for item in desired_files(tree, scope))
    return Plan(scope, desired_directories(tree, scope), steps)


# --------------------------------------------------------------------------- scripts


PROBE_SCRIPT = r"""
set -o nounset
for path in "$@"; do
  if [ -f "$path" ]; then
    sum=$(sha256sum -- "$path" | cut -d' ' -f1)
    meta=$(stat -c '%a %u %g' -- "$path")
    printf 'F\t%s\t%s\t%s\n' "$sum" "$meta" "$path"
  else
    printf 'M\t-\t-\t%s\n' "$path"
  fi
done
"""


# A probe line as PROBE_SCRIPT prints it: anything else (a damaged host, a file
# gone between its test and its stat) is an error, never a traceback or a guess.
PROBE_LINE = re.compile(
    r"F\t(?P<sha>[0-9a-f]{64})\t(?P<mode>[0-7]{1,4}) (?P<uid>[0-9]{1,10}) (?P<gid>[0-9]{1,10})"
    r"\t(?P<path>/[^\t]*)|M\t-\t-\t(?P<missing>/[^\t]*)"
)


def parse_probe(output: str) -> dict[PurePosixPath, FileState]:
    """Read the probe script's output: ``F\\tSHA\\tMODE UID GID\\tPATH`` or ``M``."""
    found: dict[PurePosixPath, FileState] = {}
    for number, line in enumerate(output.split("\n"), 1):
        if not line.strip():
            continue
        match = PROBE_LINE.fullmatch(line)
        if match is None:
            raise RemoteError(
                f"the host's file probe printed a line this tool never writes (line {number}: "
                f"{printable(line[:120])!r})",
                "run the command again; if it repeats, look at the host's /opt/torrust",
            )
        if match["missing"] is not None:
            path = PurePosixPath(match["missing"])
            found[path] = FileState(path, None)
            continue
        path = PurePosixPath(match["path"])
        found[path] = FileState(
            path, match["sha"], int(match["mode"], 8), int(match["uid"]), int(match["gid"])
        )
    return found


def parse_state_file(text: str) -> tuple[PurePosixPath, ...]:
    """The paths an earlier deploy managed: absolute and normal ones only (a line
    such as /opt/torrust/../../etc/shadow would pass a check by prefix)."""
    paths_found = []
    for line in text.split("\n"):
        path = PurePosixPath(line)
        if line.startswith("/") and ".." not in path.parts and str(path) == line:
            paths_found.append(path)
    return tuple(paths_found)


# The pushed files a changed MySQL password reaches (the server gets it later).
PASSWORD_FILES = frozenset({paths.TRACKER_CONFIG, paths.BACKUP_CONF, paths.DOTENV_FILE})


def password_files(plan: Plan, *changes: Change) -> list[str]:
    """The files of :data:`PASSWORD_FILES` that ``plan`` changes (any change unless
    ``changes`` names some), sorted."""
    wanted = changes or tuple(change for change in Change if change is not Change.UNCHANGED)
    return sorted(
        str(s.path) for s in plan.steps if s.path in PASSWORD_FILES and s.change in wanted
    )


# A file an earlier deploy put there and this one drops (an older layout's, say).
# Its directory is reached one part at a time as root, never through a link another
# user made (storage/backup is uid 1000's: a link put on the way would lead root's rm
# to a file of that name anywhere), each part checked to be the one looked at (not
# one swapped in meanwhile); then the name is removed there. Anything else: left.
REMOVE_STALE = r"""remove_stale() {
  (
    cd / || exit 0
    local part want
    local -a parts
    IFS=/ read -r -a parts <<<"${1%/*}"
    for part in "${parts[@]}"; do
      [[ -n "${part}" && "${part}" != . ]] || continue
      [[ "${part}" != .. ]] || exit 0
      if [[ -L "${part}" ]]; then
        [[ "$(stat -c %u -- "${part}")" == 0 ]] || exit 0
        want="$(stat -L -c %d:%i -- "${part}")" || exit 0
      else
        want="$(stat -c %d:%i -- "${part}")" || exit 0
      fi
      cd -P -- "${part}" 2>/dev/null || exit 0
      [[ "$(stat -c %d:%i -- .)" == "${want}" ]] || exit 0
    done
    rm -f -- "./${1##*/}" 2>/dev/null || :
  )
}"""


def render_apply_script(
    plan: Plan,
    upload_dir: str,
    previously: Sequence[PurePosixPath],
    *,
    guard_passwords: bool = False,
) -> str:
    """A shell script (run as root) that applies ``plan``.

    ``guard_passwords`` (a MySQL deploy, which holds the deploy marker): before the
    first file a password reaches changes, the marker becomes DEPLOY_PUSHED + the
    time, on the host: should the deploy end before the server has the passwords
    (its connection dropped, say), runs refuse once it is old, not only skip.

    Uploaded files wait in ``upload_dir`` under their step index; each is
    installed next to its target and renamed over it, so a reader never sees a
    half-written file. Paths are quoted; no file content is in the script.
    """
    q = shlex.quote
    lines = ["set -o errexit -o nounset", "umask 077"]
    owners = {directory.path: directory.uid for directory in plan.directories}
    for directory in plan.directories:
        target = q(str(directory.path))
        parent_owner = owners.get(directory.path.parent, ROOT_UID)
        if parent_owner == ROOT_UID:
            lines.append(
                f"install -d -m {directory.mode:04o} -o {directory.uid} -g {directory.gid} {target}"
            )
            continue
        # In a directory another user owns, who could rename this one and plant a
        # link: root's install -d would chown and chmod the link's target. Made and
        # fixed as that user, it can only touch what the user may touch anyway.
        assert directory.uid == parent_owner, f"{directory.path}: owned as its parent is"
        lines.append(
            f"setpriv --reuid={directory.uid} --regid={directory.gid} --clear-groups "
            f"install -d -m {directory.mode:04o} {target}"
        )
    state_dir = f"install -d -m 0700 -o 0 -g 0 {q(str(STATE_DIR))}"
    restart = services_to_restart(
        step.path for step in plan.steps if step.change in (Change.UPDATE, Change.METADATA)
    )
    if restart:
        # Before the first file changes, so that whatever ends the script after it
        # (a full disk, the uploads removed) leaves it: the next deploy, seeing the
        # new files, would change nothing and restart nothing. Cleared once restarted.
        lines.append(state_dir)
        pending = q(str(PENDING_RESTART_FILE))
        lines.append(f"printf '%s\\n' {' '.join(restart)} >> {pending}")
    if guard_passwords and password_files(plan):
        marker = q(str(paths.DEPLOY_MARKER))
        pushed = q(DEPLOY_PUSHED)
        lines.append(
            f'tmp="$(mktemp {marker}.XXXXXX)" && printf \'%s%s\\n\' {pushed} "$(date +%s)" > "$tmp" '
            f'&& chmod 0644 -- "$tmp" && mv -f -- "$tmp" {marker} '
            f'|| {{ rm -f -- "${{tmp:-}}"; echo "cannot write {paths.DEPLOY_MARKER}" >&2; exit 1; }}'
        )
    if any(step.change is Change.REMOVE for step in plan.steps):
        lines.append(REMOVE_STALE)
    for index, step in enumerate(plan.steps):
        target = q(str(step.path))
        if step.change is Change.REMOVE:
            lines.append(f"remove_stale {target}")
            continue
        item = step.file
        assert item is not None
        if step.change in (Change.CREATE, Change.UPDATE):
            temporary = q(f"{step.path.parent}/.{step.path.name}.tracker-deployer.tmp")
            source = q(f"{upload_dir}/{index}")
            lines.append(f"mkdir -p -- {q(str(step.path.parent))}")
            # A failed install (a full disk) leaves its partial copy: removed, so that
            # it does not keep the disk full.
            lines.append(
                f"install -m {item.mode:04o} -o {item.uid} -g {item.gid} -T {source} {temporary}"
                f" || {{ rm -f -- {temporary}; exit 1; }}"
            )
            lines.append(f"mv -f -T {temporary} {target}")
        elif step.change is Change.METADATA:
            lines.append(f"chown {item.uid}:{item.gid} -- {target}")
            lines.append(f"chmod {item.mode:04o} -- {target}")
    # Remember what we manage, so a later deploy can remove what it drops.
    keep = sorted(
        {str(p) for p in previously if not plan.scope.owns(p)}
        | {str(p) for p in plan.managed_after}
    )
    state = q(str(STATE_FILE))
    lines.append(state_dir)
    lines.append(f"printf '%s\\n' {' '.join(q(p) for p in keep)} > {state}.tmp")
    lines.append(f"chmod 0600 {state}.tmp && mv -f {state}.tmp {state}")
    return "\n".join(lines) + "\n"


def parse_pending_restart(text: str) -> tuple[str, ...]:
    """The pending-restart record as read from the host: known service names only."""
    named = {line.strip() for line in text.splitlines()}
    return tuple(name for name in RESTARTABLE if name in named)


def services_to_restart(changed: Iterable[PurePosixPath]) -> tuple[str, ...]:
    """Services whose bind-mounted config changed (compose does not notice these)."""
    owners = {
        paths.TRACKER_CONFIG: "tracker",
        paths.PROMETHEUS_CONFIG: "prometheus",
        paths.PROMETHEUS_RULES: "prometheus",
        paths.CADDYFILE: "caddy",
    }
    result: set[str] = set()
    for path in changed:
        if path in owners:
            result.add(owners[path])
        elif path.is_relative_to(paths.GRAFANA_PROVISIONING):
            result.add("grafana")
    return tuple(name for name in RESTARTABLE if name in result)
