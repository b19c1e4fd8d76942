"""``inv recover``: from a lost host back to running, out of the off-host repository.

Phases, each printed with its time:

1. host: a new LXD instance (the lxd provider), or the host given with ``--host``
   (recorded for the environment, as ``inv register`` does), or the recorded one;
2. configure: Docker, Compose, cron, firewall (``inv configure``);
3. push: the rendered tree;
4. services: ``compose up`` for every service but the tracker (and what needs it);
5. fetch: the set (``--set ID`` or the repository's newest of this environment)
   from the repository into the host's backup directory, verified there;
6. restore: today's restore drill on the set, then the database and the config
   archive; ``backup.sh restore`` compares the restored rows with the set's ``.meta``;
7. tracker: ``compose up`` for everything, then every service running and healthy;
8. install-cron: the scheduled backups (uploading to the same repository).

Nothing already there is lost. A host that runs a deployed stack is refused
before anything changes: it is not a lost host's replacement (``inv restore
--from offsite`` restores onto it, with its safety backup). The host carries
:data:`paths.RECOVER_MARKER` from its first change until just before the
tracker starts, so a recover that failed before then can be run again on the
same host (after that, the tracker's data is live: ``inv deploy`` finishes it). Until the last
phases the tracker stays stopped: it has no data yet, and cron is installed
only after the restore, so no scheduled run backs up an empty database.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tracker_deployer import lifecycle, offsite, paths
from tracker_deployer.backup_layout import is_set_id
from tracker_deployer.config.model import Env, InvalidValue, LxdProvider, parse_host
from tracker_deployer.errors import DeployError, RemoteError
from tracker_deployer.providers.lxd import Lxd
from tracker_deployer.remote import backups as operations
from tracker_deployer.remote import configure as configuring
from tracker_deployer.remote import deploy as remote
from tracker_deployer.remote import offsite_fetch
from tracker_deployer.remote.ssh import SshHost, Target
from tracker_deployer.render import RenderedTree
from tracker_deployer.say import Say
from tracker_deployer.topology import derive

PHASES = (
    "host",
    "configure",
    "push",
    "services without the tracker",
    "fetch",
    "restore",
    "tracker",
    "install-cron",
)
TRACKER = "tracker"

# What the host holds before recover changes it, one word a line: "deployed" (a
# compose file), "recovering" (the marker of an earlier recover), "tracker" (a
# tracker container: it has run here), "mysql-data" (the stack's MySQL volume)
# and "sqlite-data" (a non-empty SQLite database file).
PROJECT = paths.DEPLOY_DIR.name  # compose's project name: the directory's


def look_script(env: Env) -> str:
    compose_file = shlex.quote(str(paths.COMPOSE_FILE))
    marker = shlex.quote(str(paths.RECOVER_MARKER))
    lines = [
        f"if [ -f {compose_file} ]; then echo deployed; fi",
        f"if [ -f {marker} ] || [ -L {marker} ]; then echo recovering; fi",
        "if command -v docker >/dev/null 2>&1; then",
        f'  if [ -n "$(docker ps -aq --filter label=com.docker.compose.project={PROJECT} '
        f'--filter label=com.docker.compose.service={TRACKER})" ]; then echo tracker; fi',
        f'  if [ -n "$(docker volume ls -q --filter label=com.docker.compose.project={PROJECT} '
        '--filter label=com.docker.compose.volume=mysql_data)" ]; then echo mysql-data; fi',
        "fi",
    ]
    if not env.uses_mysql:
        database = shlex.quote(str(paths.sqlite_on_host(env.database.database_name)))
        lines.append(f"if [ -s {database} ]; then echo sqlite-data; fi")
    return "\n".join(lines) + "\n"


# The marker goes into root's own directories only (remote.marker_script).
MARK = remote.marker_script(paths.RECOVER_MARKER)
UNMARK = f"rm -f -- {shlex.quote(str(paths.RECOVER_MARKER))}"


@dataclass(frozen=True, slots=True)
class Recovered:
    target: Target
    set_id: str
    services: list[dict[str, str]]
    timings: tuple[tuple[str, float], ...]


def check_request(env: Env, wanted: str, host: str) -> None:
    """What can be refused before anything is touched."""
    if env.backup is None or env.backup.offsite is None:
        raise DeployError(
            f"environment {env.name} has no backup.offsite: there is no off-host repository "
            "to recover from",
            "recover needs the repository the lost host uploaded to: add its backup.offsite "
            "section (docs/user-guide/offsite.md)",
        )
    if wanted != "latest" and not is_set_id(wanted):
        raise DeployError(f"--set {wanted!r} is not a set id", "use YYYYMMDD_HHMMSS or latest")
    if host and isinstance(env.provider, LxdProvider):
        raise DeployError(
            f"environment {env.name} uses the lxd provider, which makes the new host itself",
            "leave out --host (or use an environment with the existing provider for a host "
            "you prepared)",
        )
    if host and env.ssh.host:
        raise DeployError(
            f"environment {env.name} sets ssh_credentials.host ({env.ssh.host}): every later "
            "command would go there, not to --host",
            "put the new host's address in ssh_credentials.host and run recover without --host",
        )
    if host:
        try:
            parse_host(host)
        except InvalidValue as error:
            raise DeployError(f"--host {host!r}: {error.message}", error.hint) from None


@contextmanager
def _phase(clock: lifecycle.PhaseClock, name: str, env_name: str = "NAME") -> Iterator[None]:
    """A phase whose failure names it; up to the restore, the same recover continues
    (a hint that already says which `inv recover` to run is left as it is); after it,
    the scheduled backups are not installed yet and ``inv deploy`` finishes the job."""
    with clock.phase(name):
        try:
            yield
        except DeployError as error:
            number = PHASES.index(name) + 1
            error.message = f"recover phase {number}/{len(PHASES)} ({name}): {error.message}"
            hint = error.hint or ""
            if number <= PHASES.index("restore") + 1:
                if "`inv recover" not in hint:
                    error.hint = (hint + "; then " if hint else "") + (
                        "run the same `inv recover` again (it continues on this host)"
                    )
            elif "`inv recover" not in hint:  # the marker is gone: deploy finishes it
                error.hint = (hint + "; " if hint else "") + (
                    "scheduled backups are not installed yet: fix the cause, then "
                    f"`inv deploy --env {env_name}` (it starts the stack and installs them)"
                )
            raise


def services_without_tracker(env: Env) -> list[str]:
    """Every service ``up`` starts, but the tracker and whatever needs it, directly or
    through another service (``up`` would start the tracker for them)."""
    services = derive(env).long_running
    needs_tracker = {TRACKER}
    changed = True
    while changed:  # bounded: each pass adds a service or ends
        changed = False
        for service in services:
            if service.name not in needs_tracker and any(
                dependency.service in needs_tracker for dependency in service.depends_on
            ):
                needs_tracker.add(service.name)
                changed = True
    return [service.name for service in services if service.name not in needs_tracker]


def old_instance(env: Env) -> bool:
    """The lxd provider, before provisioning: whether the env's instance exists,
    running and recorded (an earlier recover's host, or the live one: the later
    check tells them apart, and nothing is provisioned on it: provision would run
    its first boot again). One that ``provision`` would start or boot (stopped, or
    not recorded) is refused here, changing nothing."""
    provider = Lxd(env)
    existing = provider.instance()
    if existing is None or not provider.is_ours(existing):  # provision refuses a foreign one
        return False
    running = existing.get("status") == "Running"
    if running and provider.address() is not None:
        return True
    old_host = f"if it is the old host: `inv destroy --env {env.name}` first (docs/user-guide/restore.md), then recover"
    again = (
        f"`inv provision --env {env.name}` (it records its address)"
        if running
        else f"`lxc start {provider.name}`"
    )
    raise DeployError(
        f"LXD instance {provider.name} of {env.name} still exists "
        f"({str(existing.get('status') or 'unknown').lower()}"
        f"{', its address not recorded' if running else ''}); recover makes a new host and "
        "does not start or boot the old one; nothing was changed",
        f"{old_host}; if an earlier `inv recover` made it: {again}, then run "
        f"`inv recover --env {env.name}` again",
    )


def _host(env: Env, where: lifecycle.HostFlags, say: Say) -> Target:
    if isinstance(env.provider, LxdProvider) and not old_instance(env):
        lifecycle.provision(env, say)
    found = lifecycle.target(env, where.host, where.known_hosts, where.accept_new_host_key)
    if found is None:
        raise DeployError(
            f"no host to recover {env.name} onto",
            f"pass --host ADDRESS of the new host you prepared (provider {env.provider.kind})",
        )
    say(f"  recovering onto {found.host}:{found.port}")
    return found


def _refuse_live(connection: SshHost, env: Env, say: Say) -> None:
    """Refuse a host with data recover could replace: a tracker that has run there,
    or a deployed stack or database that no earlier recover left."""
    looked = connection.run(look_script(env))
    if not looked.ok:
        raise RemoteError(
            f"cannot look at {connection.target.host}: {looked.stderr.strip()[:200]}",
            "check SSH access (`inv status`), then run recover again",
        )
    found = set(looked.stdout.split())
    if "tracker" in found:
        why = "a tracker has run on it (its container exists)"
    elif "recovering" in found:
        say("  this host holds an unfinished recover: continuing it")
        return
    elif "deployed" in found:
        why = f"it runs a deployed stack ({paths.COMPOSE_FILE})"
    elif found & {"mysql-data", "sqlite-data"}:
        why = (
            "it holds a tracker database ("
            + (
                f"the compose volume {PROJECT}_mysql_data"
                if "mysql-data" in found
                else str(paths.sqlite_on_host(env.database.database_name))
            )
            + ")"
        )
    else:
        return
    raise DeployError(
        f"{connection.target.host} is not a new host: {why}; recover does not replace live "
        "data; nothing was changed",
        f"to restore onto this host: inv restore --env {env.name} --set ID --from offsite "
        "--yes (it takes a safety backup first); to finish a recover that failed after "
        f"its restore: inv deploy --env {env.name}; to recover, destroy it or use a new host",
    )


def remember_repository(connection: SshHost, env: Env) -> None:
    """The repository the set came from exists: should it read as missing before this
    host's first upload, that upload fails (27) instead of making a new, empty one."""
    written = connection.run(
        remote.marker_script(
            paths.OFFSITE_REPOSITORY_KNOWN, shlex.quote(offsite.repository_id(env))
        )
    )
    if not written.ok:
        raise RemoteError(
            f"cannot write {paths.OFFSITE_REPOSITORY_KNOWN} on {connection.target.host}: "
            f"{written.stderr.strip()[:200]}; nothing was restored",
            f"look at the host, then run `inv recover --env {env.name}` again (it continues "
            "on this host)",
        )


# What an sftp: repository needs on the host; the operator installs them (offsite.md).
SFTP_KEYS = (paths.OFFSITE_SSH_DIR / "id", paths.OFFSITE_SSH_DIR / "known_hosts")


def require_sftp_keys(connection: SshHost, env: Env) -> None:
    """A new host has no sftp key: the fetch would fail with a hint to deploy, which
    the recover's marker refuses. Named here instead, with the way on."""
    settings = env.backup.offsite if env.backup is not None else None
    if settings is None or settings.kind != "sftp":
        return
    present = " && ".join(f"test -f {shlex.quote(str(path))}" for path in SFTP_KEYS)
    if not connection.run(present).ok:
        raise DeployError(
            f"the sftp repository needs this host's key and the server's host key on "
            f"{connection.target.host}: {SFTP_KEYS[0]} and {SFTP_KEYS[1]} (a new host has "
            "neither); nothing was fetched",
            "install them as docs/user-guide/offsite.md#sftp says (step 3), then run the "
            f"same `inv recover --env {env.name}` again (it continues on this host)",
        )


def recover(
    env: Env,
    tree: RenderedTree,
    wanted: str,
    say: Say,
    where: lifecycle.HostFlags = lifecycle.RECORDED_HOST,
) -> Recovered:
    check_request(env, wanted, where.host)
    clock = lifecycle.PhaseClock(say, PHASES)
    with _phase(clock, "host"):
        found = _host(env, where, say)
    with SshHost(found) as connection:
        _refuse_live(connection, env, say)
        marked = connection.run(MARK)
        if not marked.ok:
            raise RemoteError(
                f"cannot write {paths.RECOVER_MARKER} on {found.host}: "
                f"{marked.stderr.strip()[:200]}; nothing was changed",
                f"check that {paths.RECOVER_MARKER.parent} on the host is a writable directory "
                "(free space, a read-only file system), then run the same recover again",
            )
        if where.host and not isinstance(env.provider, LxdProvider):
            lifecycle.register(env, where.host, env.ssh.port, say)  # later commands go there
        with _phase(clock, "configure"):
            configuring.apply(connection, env, say)
        with _phase(clock, "push"):
            remote.push(connection, tree, say)
        with _phase(clock, "services without the tracker"):
            lifecycle.sideload(env, say)
            lifecycle.ensure_images(connection, env, say)
            before = services_without_tracker(env)
            if before:
                remote.compose_up(connection, (), say, env_name=env.name, only=before)
            else:  # `up` with no service names would start everything
                say("  nothing to start before the restore (no service runs without the tracker)")
        with _phase(clock, "fetch"):
            require_sftp_keys(connection, env)
            set_id = offsite_fetch.resolve(connection, env, wanted)
            offsite_fetch.fetch(connection, env, set_id, say)
            remember_repository(connection, env)
        with _phase(clock, "restore"):
            operations.restore(connection, env, set_id, "all", say, new_host=True)
            say(f"  the restored rows equal set {set_id}'s .meta (compared by backup.sh restore)")
        with _phase(clock, "tracker", env.name):
            # From its first write on, the tracker's data is live: a recover run
            # again must not restore over it, so the marker goes first.
            unmarked = connection.run(UNMARK)
            if not unmarked.ok:
                raise RemoteError(
                    f"cannot remove {paths.RECOVER_MARKER} on {found.host}: "
                    f"{unmarked.stderr.strip()}; the tracker was not started",
                    f"look at the host, then run `inv recover --env {env.name}` again (it "
                    "continues on this host)",
                )
            remote.compose_up(connection, (), say, env_name=env.name)
            services = remote.service_health(connection)
            unhealthy = remote.unhealthy(services, env)
            if unhealthy:
                raise RemoteError(
                    f"services not healthy after the restore: {', '.join(unhealthy)}",
                    f"on the host: cd {paths.DEPLOY_DIR} && docker compose logs --tail 50 SERVICE",
                )
        with _phase(clock, "install-cron", env.name):
            remote.install_cron(connection, tree, say)
    return Recovered(found, set_id, services, tuple(clock.timings))
