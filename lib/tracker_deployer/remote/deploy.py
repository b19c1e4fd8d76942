"""Push, install-cron, deploy and backup: plans applied to a host over SSH.

Each operation: probe the host (one command), compute the plan (pure, in
``plan``), upload what changed, apply it with one root script. ``dry_run``
variants print the plan and never connect.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import PurePosixPath

from tracker_deployer import compose, exit_codes, paths
from tracker_deployer.config.model import Env
from tracker_deployer.errors import DeployError, RemoteError
from tracker_deployer.remote.plan import (
    PENDING_RESTART_FILE,
    PROBE_SCRIPT,
    STATE_FILE,
    Change,
    Plan,
    Scope,
    diff,
    dry_run_plan,
    parse_pending_restart,
    parse_probe,
    parse_state_file,
    probe_paths,
    render_apply_script,
)
from tracker_deployer.remote.ssh import SshHost, Target
from tracker_deployer.render import RenderedTree
from tracker_deployer.render.tree import DEPLOY_FAILED, DEPLOY_PUSHED
from tracker_deployer.say import Say, printable
from tracker_deployer.topology import derive

COMPOSE = compose.command()
UP_TIMEOUT_SECONDS = 600
# compose up/restart wait this long for a running backup (the maintenance lock).
LOCK_WAIT_SECONDS = 240


class Masker:
    """Replaces every secret of an environment in text shown to people."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text


# --------------------------------------------------------------------------- dry runs


def describe_plan(plan: Plan, title: str, mask: Masker) -> list[str]:
    lines = [title]
    for directory in plan.directories:
        lines.append(
            f"  directory {directory.path}  ({directory.mode:04o} {directory.uid}:{directory.gid})"
        )
    for step in plan.steps:
        lines.append("  " + mask(step.describe()))
    return lines


def dry_run(tree: RenderedTree, env: Env, target: Target | None, scopes: Sequence[Scope]) -> str:
    """The plan as text, secrets masked; opens no connection."""
    mask = Masker(env.secrets())
    where = str(target) if target else "(no host given)"
    lines = [f"dry run for {env.name} on {where}: nothing is changed, no connection is opened"]
    for scope in scopes:
        plan = dry_run_plan(tree, scope)
        lines += describe_plan(
            plan, f"{scope.value}: ensure (uploaded only where the sha256 differs):", mask
        )
        if scope is Scope.CRON and env.backup is None:
            lines.append(
                "  remove /usr/local/bin/maintenance-backup.sh, /etc/cron.d/tracker-backup,"
            )
            lines.append("         /etc/logrotate.d/tracker-backup (backup is off)")
        if scope is Scope.PUSH:
            lines.append(
                mask(f"then: {COMPOSE} up -d --wait (restart services whose config changed)")
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- apply


def pending_restart(host: SshHost) -> tuple[str, ...]:
    """Services an earlier deploy's push changed and no deploy has restarted since."""
    result = host.run(f"cat {shlex.quote(str(PENDING_RESTART_FILE))} 2>/dev/null || true")
    return parse_pending_restart(result.stdout)


def clear_pending_restart(host: SshHost) -> None:
    """Remove a pending-restart record that names no service the stack still has
    (the restart clears one that does)."""
    host.run(f"rm -f -- {shlex.quote(str(PENDING_RESTART_FILE))}")


def _previously(host: SshHost) -> tuple[PurePosixPath, ...]:
    result = host.run(f"cat {shlex.quote(str(STATE_FILE))} 2>/dev/null || true")
    return parse_state_file(result.stdout)


def plan_on_host(
    host: SshHost, tree: RenderedTree, scope: Scope
) -> tuple[Plan, tuple[PurePosixPath, ...]]:
    previously = _previously(host)
    wanted = probe_paths(tree, scope, previously)
    result = host.run_script(PROBE_SCRIPT, *wanted)
    if not result.ok:
        raise RemoteError(
            f"could not inspect files on {host.target.host}: {result.stderr.strip()}",
            "check that the SSH user can run commands as root",
        )
    return diff(tree, scope, parse_probe(result.stdout), previously), previously


def apply_plan(
    host: SshHost,
    plan: Plan,
    previously: Sequence[PurePosixPath],
    say: Say,
    *,
    guard_passwords: bool = False,
) -> None:
    """``guard_passwords``: a MySQL deploy's (render_apply_script)."""
    recorded = {p for p in previously if plan.scope.owns(p)}
    if not plan.has_changes and recorded == set(plan.managed_after):
        return
    with host.staging() as staging:
        for index, step in enumerate(plan.steps):
            if step.change in (Change.CREATE, Change.UPDATE) and step.file is not None:
                host.put(step.file.content, f"{staging}/{index}")
        script = render_apply_script(plan, staging, previously, guard_passwords=guard_passwords)
        host.put(script.encode(), f"{staging}/apply.sh")
        result = host.run(f"bash {shlex.quote(staging + '/apply.sh')}")
        if not result.ok:
            raise RemoteError(
                f"applying the {plan.scope.value} plan on {host.target.host} failed: "
                f"{result.stderr.strip()}",
                "check free disk space and permissions on the host, then run again",
            )
    for step in plan.steps:
        if step.change is not Change.UNCHANGED:
            say("  " + step.describe())


# The task that applies each scope, as its summary line names it.
TASK_OF_SCOPE = {Scope.PUSH: "push", Scope.CRON: "install-cron"}


def apply_scope(
    host: SshHost, tree: RenderedTree, scope: Scope, say: Say, *, guard_passwords: bool = False
) -> Plan:
    """Probe, plan and apply one scope (``push`` or ``install-cron``); the applied plan."""
    plan, previously = plan_on_host(host, tree, scope)
    apply_plan(host, plan, previously, say, guard_passwords=guard_passwords)
    say(f"{TASK_OF_SCOPE[scope]}: {plan.summary()}")
    return plan


def push(host: SshHost, tree: RenderedTree, say: Say, *, guard_passwords: bool = False) -> Plan:
    """``guard_passwords``: a MySQL deploy's push, which holds the deploy marker."""
    return apply_scope(host, tree, Scope.PUSH, say, guard_passwords=guard_passwords)


def install_cron(host: SshHost, tree: RenderedTree, say: Say) -> Plan:
    return apply_scope(host, tree, Scope.CRON, say)


# --------------------------------------------------------------------------- deploy


def under_backup_lock(command: str) -> str:
    """``command`` holding the maintenance script's lock: compose never recreates or
    restarts services in the middle of a backup run, and a scheduled run that fires
    meanwhile skips (exit 75, logged) instead of stopping a tracker being deployed."""
    lock = paths.BACKUP_LOCK
    return (
        f"mkdir -p {shlex.quote(str(lock.parent))} && flock -E {exit_codes.LOCK_BUSY} "
        f"-w {LOCK_WAIT_SECONDS} {shlex.quote(str(lock))} sh -c {shlex.quote(command)}"
    )


def lock_busy(host: SshHost) -> RemoteError:
    return RemoteError(
        f"a backup run, restore or verify on {host.target.host} held {paths.BACKUP_LOCK} for "
        f"more than {LOCK_WAIT_SECONDS} s; nothing was started or restarted",
        f"see {paths.BACKUP_LOG} on the host, then run the deploy again",
    )


def _run_locked(host: SshHost, command: str, say: Say) -> int:
    """Run a compose command under the backup lock, streaming; return its exit code.
    A script (run-detached): a dropped session does not stop compose half-way."""
    script = under_backup_lock(command) + "\n"
    result = host.run_script(script, stream=say, timeout=UP_TIMEOUT_SECONDS)
    if result.exit_code == exit_codes.LOCK_BUSY:
        raise lock_busy(host)
    return result.exit_code


# The tracker is never started on a MySQL database a restore left partly
# restored (restore.sh writes the marker before its load, removes it after), nor
# on a host an unfinished `inv recover` holds (no data yet: recover removes its
# marker before it starts the tracker). Checked under the lock, where compose runs:
# the check at the start of a deploy may be minutes old.
_MARKERS = [shlex.quote(str(m)) for m in (paths.RESTORE_INCOMPLETE_MARKER, paths.RECOVER_MARKER)]
_REFUSE_MARKED = "".join(
    f"if [ -e {m} ] || [ -L {m} ]; then exit {exit_codes.UNSAFE}; fi; " for m in _MARKERS
)


def partly_restored(host: SshHost, env_name: str) -> RemoteError:
    return RemoteError(
        f"a restore left the MySQL database on {host.target.host} partly restored "
        f"({paths.RESTORE_INCOMPLETE_MARKER}); the tracker was not started on it",
        f"finish the restore first: inv restore --env {env_name} --set SET --yes "
        "(inv backups lists the sets); it starts the tracker",
    )


def compose_up(
    host: SshHost, restart: Sequence[str], say: Say, *, env_name: str, only: Sequence[str] = ()
) -> None:
    """``up -d --wait`` for every service, or for ``only`` (and what they depend on).
    ``env_name`` is for the hint of a refusal."""
    services = "".join(f" {shlex.quote(name)}" for name in only)
    say(f"compose: up -d --wait{services} in {paths.DEPLOY_DIR}")
    # Every service, the tracker too: not on a partly restored or unrecovered database.
    refuse = "" if only else _REFUSE_MARKED
    code = _run_locked(host, f"{refuse}{COMPOSE} up -d --wait --remove-orphans{services}", say)
    if refuse and code == exit_codes.UNSAFE:
        if unfinished_recover(host):
            raise RemoteError(
                f"{host.target.host} holds an unfinished `inv recover` ({paths.RECOVER_MARKER}): "
                "`docker compose up` was not run (its database has no restored data yet)",
                f"finish it first: inv recover --env {env_name} (it continues on this host)",
            )
        raise partly_restored(host, env_name)
    if code != 0:
        raise RemoteError(
            f"`docker compose up` failed on {host.target.host}",
            f"see the output above; on the host: cd {paths.DEPLOY_DIR} && docker compose ps -a "
            "&& docker compose logs --tail 50",
        )
    if restart:
        say(f"compose: restarting {', '.join(restart)} (its configuration changed)")
        # `restart` does not wait for the healthcheck; `up --wait` (a no-op otherwise) does.
        restarted = f"{COMPOSE} restart {' '.join(restart)} && {COMPOSE} up -d --wait"
        done = f"rm -f {shlex.quote(str(PENDING_RESTART_FILE))}"
        if _run_locked(host, f"{restarted} && {done}", say) != 0:
            raise RemoteError(f"restarting {', '.join(restart)} failed on {host.target.host}")


def service_health(host: SshHost) -> list[dict[str, str]]:
    result = host.run(f"{COMPOSE} ps --all --format json")
    if not result.ok:
        raise RemoteError(
            f"`docker compose ps` failed on {host.target.host}: {result.stderr.strip()}"
        )
    return parse_compose_ps(result.stdout)


def service_line(row: dict[str, str]) -> str:
    """One row of :func:`service_health`, as deploy, recover and status print it (the
    host's text made :func:`printable`)."""
    line = f"  {row['service']:12} {row['state']:10} health={row['health']:10} {row['status']}"
    return printable(line)


def unhealthy(services: Sequence[dict[str, str]], env: Env) -> list[str]:
    """The services (rows of :func:`service_health`) not running or not healthy, and
    each of the stack's long-running services the host does not list at all."""
    listed = {row["service"] for row in services}
    return [
        row["service"]
        for row in services
        if row["state"] != "running" or row["health"] not in ("healthy", "-")
    ] + [f"{s.name} (not there)" for s in derive(env).long_running if s.name not in listed]


def parse_compose_ps(output: str) -> list[dict[str, str]]:
    """`docker compose ps --format json`: one JSON array, or one object per line."""
    text = output.strip()
    if not text:
        return []
    records: object
    try:
        if text.startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (ValueError, RecursionError):
        records = None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise RemoteError(
            f"the host's `docker compose ps` output is not what Docker Compose prints "
            f"({text[:80]!r}...); nothing was used from it",
            f"look at the host: cd {paths.DEPLOY_DIR} && docker compose ps",
        )
    rows = []
    for record in records:
        rows.append(
            {
                "service": str(record.get("Service", "")),
                "state": str(record.get("State", "")),
                "health": str(record.get("Health", "")) or "-",
                "status": str(record.get("Status", "")),
            }
        )
    return sorted(rows, key=lambda row: row["service"])


def marker_script(
    marker: PurePosixPath, content: str = '"$(date +%s)"', *, unless: str = ""
) -> str:
    """Write ``marker`` as root, holding ``content`` (a shell word; default: this
    moment in epoch seconds). Its directories are made root's, 0755, as the push
    makes them, never through a link; the file is replaced whole (a temporary file
    renamed over it: nothing another user planted there is opened). ``unless``: sh
    lines run just before the write (they may end the script). POSIX sh."""
    q = shlex.quote
    return f"""set -o errexit
for directory in {q(str(paths.DEPLOY_DIR))} {q(str(marker.parent))}; do
  if [ -L "$directory" ]; then
    echo "$directory is a link; refusing to write {marker.name} through it" >&2
    exit 1
  fi
  install -d -o 0 -g 0 -m 0755 -- "$directory"
done
{unless}tmp="$(mktemp {q(str(marker))}.XXXXXX)"
printf '%s\\n' {content} > "$tmp"
chmod 0644 -- "$tmp"
mv -f -- "$tmp" {q(str(marker))}
"""


def mark_deploying(host: SshHost) -> bool:
    """Scheduled backup runs skip from here until :func:`unmark_deploying` (or until
    the marker is older than the maintenance script's bound): the push may bring a
    MySQL password the server gets only later, and a run would restart the tracker
    on it. Written under the backup lock, so a run in progress ends first.

    A marker an earlier deploy left "failed", or with its push's mark (it never
    ended), stays as it is (runs refuse once it is old): the files may still hold a
    password the server lacks, although this push changes none of them. Returns
    whether it did."""
    marker = shlex.quote(str(paths.DEPLOY_MARKER))
    still_failed = (
        f"if [ -f {marker} ] && [ ! -L {marker} ]; then\n"
        f'  case "$(timeout 5 head -c 32 -- {marker})" in\n'
        f"    {DEPLOY_FAILED} | {DEPLOY_PUSHED}*) echo {DEPLOY_FAILED}; exit 0 ;;\n"
        "  esac\nfi\n"
    )
    script = marker_script(paths.DEPLOY_MARKER, unless=still_failed)
    result = host.run(under_backup_lock(script), timeout=600)
    if result.exit_code == exit_codes.LOCK_BUSY:
        raise lock_busy(host)
    if not result.ok:
        raise RemoteError(
            f"cannot write {paths.DEPLOY_MARKER} on {host.target.host}: "
            f"{result.stderr.strip()[:300]}; nothing was pushed",
            f"make {paths.DEPLOY_DIR} and {paths.DEPLOY_MARKER.parent} directories, not links",
        )
    return result.stdout.strip() == DEPLOY_FAILED


def unmark_deploying(host: SshHost, say: Say, *, failed: bool = False) -> None:
    """Backup runs go on again; ``failed``: the deploy failed while the files may hold
    a MySQL password the server does not have, so runs refuse (exit 77) until a deploy
    succeeds. A failure to do either is said, not raised (it must not hide the
    deploy's own result; an unchanged marker expires)."""
    marker = paths.DEPLOY_MARKER
    command = (
        marker_script(marker, DEPLOY_FAILED) if failed else f"rm -f -- {shlex.quote(str(marker))}"
    )
    try:
        done = host.run(command)
    except (DeployError, OSError) as error:
        say(f"WARNING: could not {'mark' if failed else 'remove'} {marker}: {error}")
        return
    if not done.ok:
        what = "mark" if failed else "remove"
        say(f"WARNING: could not {what} {marker}: {done.stderr.strip()[:200]}")


def unfinished_recover(host: SshHost) -> bool:
    """Whether the host holds `inv recover`'s marker."""
    marker = shlex.quote(str(paths.RECOVER_MARKER))
    return host.run(f"test -e {marker} || test -L {marker}").ok


def refuse_unfinished_recover(host: SshHost, env_name: str, action: str) -> None:
    """A host with `inv recover`'s marker has no data yet: starting its tracker or
    backing it up would make (and upload) sets of an empty database."""
    if unfinished_recover(host):
        raise RemoteError(
            f"{host.target.host} holds an unfinished `inv recover` ({paths.RECOVER_MARKER}): "
            f"{action} would start or back up a tracker that has no data yet; nothing was changed",
            f"finish it first: inv recover --env {env_name} (it continues on this host)",
        )


def run_backup(host: SshHost, say: Say, env_name: str) -> int:
    """Run the maintenance script now, streaming its log; its exit code."""
    refuse_unfinished_recover(host, env_name, "a backup")
    script = shlex.quote(str(paths.MAINTENANCE_SCRIPT))
    exists = host.run(f"test -x {script}")
    if not exists.ok:
        raise RemoteError(
            f"{paths.MAINTENANCE_SCRIPT} is not installed on {host.target.host}",
            'turn backups on (a "backup" section) and run `inv deploy` or `inv install-cron`',
        )
    result = host.run(f"cd {shlex.quote(str(paths.DEPLOY_DIR))} && {script}", stream=say)
    return result.exit_code
