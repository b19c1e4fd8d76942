"""The host lifecycle: provision → configure → deploy → (operate) → destroy.

This module strings the pieces together: providers (where a host comes from),
``remote.configure`` (packages, firewall), ``remote.deploy`` (files, compose,
cron) and the state directory (where the host is). ``tasks.py`` calls it; it
prints through ``say`` and raises :class:`DeployError` for expected failures.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tracker_deployer import backup_layout, exit_codes, paths, providers, state
from tracker_deployer.config.model import (
    Env,
    ExistingProvider,
    InvalidValue,
    LxdProvider,
    parse_host,
    repository_kind,
)
from tracker_deployer.errors import DeployError, RemoteError
from tracker_deployer.providers.existing import register_hint
from tracker_deployer.remote import backups as operations
from tracker_deployer.remote import configure as configuring
from tracker_deployer.remote import deploy as remote
from tracker_deployer.remote import host_scripts, mysql_passwords
from tracker_deployer.remote import offsite as offsite_copies
from tracker_deployer.remote.plan import (
    CRON_FILES,
    RESTARTABLE,
    Change,
    Plan,
    Scope,
    password_files,
    services_to_restart,
)
from tracker_deployer.remote.ssh import DEFAULT_KNOWN_HOSTS, SshHost, Target
from tracker_deployer.render import RenderedTree, inventory_script
from tracker_deployer.render.tree import INVENTORY_LIST_TIMEOUT_SECONDS
from tracker_deployer.say import Say, printable
from tracker_deployer.topology import derive

PHASES = ("provision", "configure", "push", "compose up", "install-cron", "health")
PULL_TIMEOUT_SECONDS = 300
SANDBOX_HINT = (
    "no image registry is reachable from here: use a sandbox environment "
    "(envs/sandbox-sqlite.json, envs/e2e-sqlite.json, envs/e2e-mysql.json), whose "
    "stand-in images scripts/setup.sh builds on this machine"
)


# --------------------------------------------------------------------------- where the host is


@dataclass(frozen=True)
class HostFlags:
    """How a command picks and checks its host: --host, --known-hosts and
    --accept-new-host-key (the CLI's flags of every task that reaches a host)."""

    host: str = ""
    known_hosts: str = ""
    accept_new_host_key: bool = False


RECORDED_HOST = HostFlags()  # no flags: the recorded host, checked against known_hosts


def no_host_error(env: Env, host_flags: bool = True) -> DeployError:
    """``host_flags``: the command takes --host (destroy and status do not)."""
    if isinstance(env.provider, LxdProvider):
        how = f"create it with `inv provision --env {env.name}` (inv deploy does that itself)"
    else:
        how = f"record it with `{register_hint(env)}`"
    return DeployError(
        f"no target host for environment {env.name}: none is recorded",
        f"{how}, or pass --host ADDRESS" if host_flags else how,
    )


def host_flag(host: str) -> str:
    """--host: an IP address or a DNS name, nothing an SSH client would read otherwise
    (``user@``, ``:port``, an option)."""
    try:
        return parse_host(host)
    except InvalidValue as error:
        raise DeployError(f"--host {host!r}: {error.message}", error.hint) from None


def target(
    env: Env,
    host: str = "",
    known_hosts: str = "",
    accept_new_host_key: bool = False,
    *,
    make_key: bool = True,
) -> Target | None:
    """Where to connect: --host, else ssh_credentials.host, else the state record.

    None when no host is known. Paths are resolved (``~``, the state directory);
    the project's own key pair is made on first use when ``make_key``.
    """
    record = None if host or env.ssh.host else state.read_record(env.name)
    if host:
        host_flag(host)  # checked; used as typed (known_hosts holds it so)
        address, port = host, env.ssh.port
    elif env.ssh.host:
        address, port = env.ssh.host, env.ssh.port
    elif record is not None:
        address, port = record.host, record.port
    else:
        return None
    known = known_hosts_file(env, known_hosts)
    if make_key:
        private, _, _ = state.ensure_key_pair(env.ssh.private_key_path, env.ssh.public_key_path)
    else:
        private = state.resolve(env.ssh.private_key_path)
    return Target(
        host=address,
        port=port,
        user=env.ssh.username,
        private_key_path=str(private),
        known_hosts_path=str(known),
        accept_new_host_key=accept_new_host_key,
    )


def known_hosts_file(env: Env, known_hosts: str = "") -> Path:
    """The known_hosts file a host is checked against: --known-hosts, else
    ssh_credentials.known_hosts_path, else ~/.ssh/known_hosts for the config's host,
    else the recorded host's file in the state directory."""
    if known_hosts:
        return state.resolve(known_hosts)
    if env.ssh.known_hosts_path:
        return state.resolve(env.ssh.known_hosts_path)
    if env.ssh.host:
        return Path(DEFAULT_KNOWN_HOSTS).expanduser()
    return state.known_hosts_path(env.name)


def require_target(
    env: Env, host: str = "", known_hosts: str = "", accept_new_host_key: bool = False
) -> Target:
    found = target(env, host, known_hosts, accept_new_host_key)
    if found is None:
        raise no_host_error(env)
    return found


# --------------------------------------------------------------------------- provision, register


def provision(env: Env, say: Say) -> state.HostRecord:
    return providers.for_env(env).provision(say)


def register(env: Env, host: str, port: int, say: Say) -> state.HostRecord:
    """Record a host the user prepared (existing or hetzner providers)."""
    if isinstance(env.provider, LxdProvider):
        raise DeployError(
            f"environment {env.name} uses the lxd provider, which records its own address",
            f'run `inv provision --env {env.name}`, or set "provider": "existing" to register '
            "a host you prepared",
        )
    if env.ssh.host:
        raise DeployError(
            f"environment {env.name} names its host in ssh_credentials.host "
            f"({env.ssh.host}): every command connects there, never to a registered host",
            "remove ssh_credentials.host from the config to use `inv register`, "
            "or change the address there",
        )
    address = host_flag(host)
    if not 0 < port < 65536:
        raise DeployError(f"--port {port} is not a TCP port", "use 1-65535, usually 22")
    record = state.HostRecord(env.provider.kind, address, port)
    path = state.write_record(env.name, record)
    shown = f"[{address}]" if ":" in address else address  # an IPv6 address
    say(f"registered {shown}:{port} for {env.name} in {path}")
    return record


# --------------------------------------------------------------------------- deploy


@dataclass
class PhaseClock:
    """Numbers and times the phases of a command (deploy's PHASES by default)."""

    say: Say
    names: tuple[str, ...] = PHASES
    timings: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        number = self.names.index(name) + 1
        self.say(f"[{number}/{len(self.names)}] {name}")
        started = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - started
            self.timings.append((name, took))
            self.say(f"      {name}: {took:.1f} s")


def dry_run_phases(env: Env, tree: RenderedTree, connect_to: Target | None) -> str:
    """Every phase and what it would do; opens no connection, creates nothing."""
    record = state.read_record(env.name)
    where = (
        str(connect_to)
        if connect_to
        else ("(a new LXD instance)" if isinstance(env.provider, LxdProvider) else "(no host)")
    )
    lines = [
        f"dry run of deploy for {env.name} on {where}: phases in order; "
        "nothing is changed, no connection is opened"
    ]
    if isinstance(env.provider, LxdProvider) and record is None and connect_to is None:
        lines.append(
            f"[1/6] provision: create LXD instance {env.provider.profile_name} (Debian 12, "
            "nesting), first-boot user and key, record its address and host keys"
        )
    else:
        lines.append("[1/6] provision: skipped (the host is known)")
    lines.append("[2/6] configure: check each step, apply only what differs:")
    lines += configuring.describe(env)
    pushed = remote.dry_run(tree, env, connect_to, [Scope.PUSH]).splitlines()[1:]
    lines.append("[3/6] push:")
    lines += ["  " + line for line in pushed if not line.startswith("then:")]
    images = ", ".join(stack_images(env))
    lines.append("[4/6] compose up:")
    if env.uses_mysql:
        lines.append(
            "  the running MySQL server (if any) gets the config's root and tracker passwords "
            "(ALTER USER; it reads .env only when its volume is new)"
        )
    lines.append(f"  images the host needs (lxd: loaded from this machine if present): {images}")
    lines += ["  " + line for line in pushed if line.startswith("then:")]
    lines.append("[5/6] install-cron:")
    cron = remote.dry_run(tree, env, connect_to, [Scope.CRON]).splitlines()[1:]
    lines += ["  " + line for line in cron]
    lines.append("[6/6] health: docker compose ps, every service running and healthy")
    return "\n".join(lines)


def stack_images(env: Env) -> list[str]:
    """Every image of the stack, once each, in service order (the tracker first)."""
    return list(dict.fromkeys(service.image for service in derive(env).services))


def ensure_images(host: SshHost, env: Env, say: Say) -> None:
    """Every image of the stack on the host, pulled where missing; a pull failure
    is one line naming the image."""
    images = stack_images(env)
    for image in images:
        quoted = shlex.quote(image)
        if host.run(f"docker image inspect {quoted} >/dev/null 2>&1").ok:
            continue
        say(f"  pulling {image}")
        pulled = host.run(f"docker pull -q {quoted}", timeout=PULL_TIMEOUT_SECONDS)
        if not pulled.ok:
            reason = (pulled.stderr or pulled.stdout).strip().splitlines()
            detail = f" ({reason[-1][:160]})" if reason else ""
            raise RemoteError(
                f"cannot pull image {image} on {host.target.host}{detail}", SANDBOX_HINT
            )


def sideload(env: Env, say: Say) -> None:
    """lxd: copy the stack's images this machine has into the instance (no registry)."""
    if isinstance(env.provider, LxdProvider):
        from tracker_deployer.providers.lxd import Lxd

        Lxd(env).sideload(stack_images(env), say)


@dataclass(frozen=True, slots=True)
class Deployed:
    target: Target
    services: list[dict[str, str]]
    configured: configuring.Configured
    pushed: Plan
    cron: Plan
    restarted: tuple[str, ...]
    timings: tuple[tuple[str, float], ...]

    @property
    def changed_nothing(self) -> bool:
        return (
            not self.configured.changed
            and not self.pushed.has_changes
            and not self.cron.has_changes
            and not self.restarted
        )


def _password_files_changed(pushed: Plan | None) -> bool:
    """Whether a push (None: one that did not end) may have changed a file a MySQL
    password reaches."""
    if pushed is None:
        return True
    return bool(password_files(pushed))


def push(connection: SshHost, env: Env, tree: RenderedTree, say: Say) -> Plan:
    """`inv push`: the tree uploaded. MySQL: a push that would change the content of a
    file a password reaches (tracker.toml, backup.conf, .env) is refused before
    anything changes: those files may then hold a password the server lacks, which
    only a deploy sets in the server (and restarts the tracker on); a backup run
    would restart the tracker on it meanwhile, and the running tracker could open no
    new connection."""
    plan, previously = remote.plan_on_host(connection, tree, Scope.PUSH)
    # (A file made anew holds what the first deploy gives the server.)
    changed = password_files(plan, Change.UPDATE)
    if env.uses_mysql and changed:
        raise DeployError(
            f"the push would change {', '.join(changed)}, which hold the MySQL passwords: "
            "`inv push` neither sets them in the server nor restarts the tracker; nothing "
            "was changed",
            f"run `inv deploy --env {env.name}` (it pushes, sets the passwords, restarts)",
        )
    remote.apply_plan(connection, plan, previously, say)
    say(f"push: {plan.summary()}")
    return plan


def deploy(env: Env, tree: RenderedTree, say: Say, where: HostFlags = RECORDED_HOST) -> Deployed:
    clock = PhaseClock(say)
    with clock.phase("provision"):
        found = target(env, where.host, where.known_hosts, where.accept_new_host_key)
        if found is None:
            if not isinstance(env.provider, LxdProvider):
                raise no_host_error(env)
            provision(env, say)
            found = require_target(env, where.host, where.known_hosts, where.accept_new_host_key)
        else:
            say(f"  skipped: the host is known ({found.host}:{found.port})")
    with SshHost(found) as connection:
        remote.refuse_unfinished_recover(connection, env.name, "a deploy")
        host_scripts.end_older_schedules(connection, say)
        with clock.phase("configure"):
            configured = configuring.apply(connection, env, say)
        # MySQL: from the push until the server has the config's passwords, the files
        # may hold one it does not have yet, and a backup run would restart the
        # tracker on them. Scheduled runs skip meanwhile; should the deploy fail in
        # between after the push changed such a file, they refuse until one succeeds.
        guarded = env.uses_mysql
        failed_before = remote.mark_deploying(connection) if guarded else False
        pushed = None
        try:
            with clock.phase("push"):
                pushed = remote.push(connection, tree, say, guard_passwords=guarded)
            with clock.phase("compose up"):
                sideload(env, say)
                ensure_images(connection, env, say)
                # Last before compose up, which recreates MySQL with the new .env (MySQL
                # ignores it) and restarts the tracker on its new tracker.toml.
                mysql_passwords.set_in_server(connection, env, say)
                # (SQLite has no such window; a marker of its MySQL days goes too.)
                guarded = False
                remote.unmark_deploying(connection, say)
                changed = services_to_restart(
                    step.path
                    for step in pushed.steps
                    if step.change in (Change.UPDATE, Change.METADATA)
                )
                # Also what an earlier deploy pushed and could not restart (its push
                # recorded them; the restart clears the record).
                pending = remote.pending_restart(connection)
                # Only services the stack still has: a record naming one the config
                # dropped since would make `compose restart` fail every deploy.
                wanted = {*changed, *pending} & set(derive(env).service_names)
                restart = tuple(name for name in RESTARTABLE if name in wanted)
                if pending and not restart:
                    remote.clear_pending_restart(connection)
                remote.compose_up(connection, restart, say, env_name=env.name)
        except BaseException:
            if guarded:
                failed = failed_before or _password_files_changed(pushed)
                remote.unmark_deploying(connection, say, failed=failed)
            raise
        with clock.phase("install-cron"):
            cron = remote.install_cron(connection, tree, say)
        with clock.phase("health"):
            services = remote.service_health(connection)
    return Deployed(found, services, configured, pushed, cron, restart, tuple(clock.timings))


# --------------------------------------------------------------------------- destroy, status


@dataclass(frozen=True, slots=True)
class Elsewhere:
    """The set ids the env's off-host repository holds (``backup.offsite``), or why
    they could not be listed (then no set counts as elsewhere)."""

    set_ids: frozenset[str] = frozenset()
    unlisted_because: str = ""
    gone_with_host: str = ""  # why the repository would go with the host (then not listed)

    @property
    def why_none(self) -> str:
        """Why no set counts as elsewhere ('' when the listing says which do)."""
        if self.gone_with_host:
            return self.gone_with_host
        if self.unlisted_because:
            return f"the off-host repository could not be listed: {self.unlisted_because}"
        return ""


def elsewhere_from_listing(env: Env, exit_code: int, stdout: str, stderr: str) -> Elsewhere:
    """The host's ``offsite.sh sets`` result, every id checked (parse_listing refuses
    anything offsite.sh would not print, and snapshots of another env)."""
    try:
        if exit_code != 0:
            raise offsite_copies.listing_error(exit_code, stderr)
        listed = offsite_copies.parse_listing(stdout, env.name)
    except DeployError as error:
        return Elsewhere(unlisted_because=error.message)
    return Elsewhere(frozenset(item.set_id for item in listed))


def _has_offsite(env: Env) -> bool:
    return env.backup is not None and env.backup.offsite is not None


def gone_with_host(env: Env) -> str:
    """Why the env's off-host repository would not outlive `inv destroy` ('' if it
    would): a local path is on the host itself, inside the machine destroy deletes
    (lxd, hetzner) or under the deploy directory destroy removes."""
    offsite = env.backup.offsite if env.backup is not None else None
    if offsite is None or repository_kind(offsite.repository) != "local":
        return ""
    repository = offsite.repository
    if not isinstance(env.provider, ExistingProvider):
        return (
            f"the repository {repository} is a local path on the {env.provider.kind} "
            "machine destroy deletes"
        )
    if PurePosixPath(repository).is_relative_to(paths.DEPLOY_DIR):
        return f"the repository {repository} is under {paths.DEPLOY_DIR}, which destroy removes"
    return ""


def _elsewhere(env: Env, list_sets: Callable[[], tuple[int, str, str]]) -> Elsewhere:
    """The sets the repository holds, unless it goes with the host (then none)."""
    gone = gone_with_host(env)
    if gone:
        return Elsewhere(gone_with_host=gone)
    return elsewhere_from_listing(env, *list_sets())


def _sets_through_lxd(env: Env) -> tuple[operations.Inventory, Elsewhere] | None:
    from tracker_deployer.providers.lxd import Lxd, require_lxd

    require_lxd()  # without LXD here, "no instance" would be a guess
    lxd = Lxd(env)
    instance = lxd.instance()
    if instance is None or not lxd.is_ours(instance):
        return None  # nothing of ours to lose (destroy refuses a foreign instance)
    if instance.get("status") != "Running":
        raise DeployError(
            f"instance {lxd.name} is {str(instance.get('status', 'not running')).lower()}: "
            "its backup sets cannot be checked",
            f"start it (`lxc start {lxd.name}`) and run destroy again, or pass "
            "--delete-backups to delete it with whatever sets it holds",
        )
    result = lxd.exec(
        inventory_script(verify=False, backup_image=env.images.backup),
        timeout=INVENTORY_LIST_TIMEOUT_SECONDS + 60,
    )
    if result.returncode != 0:
        raise DeployError(
            f"listing the backup sets in {lxd.name} failed: "
            f"{result.stderr.decode(errors='replace').strip()[:300]}; nothing was removed",
            f"look at the instance (`lxc exec {lxd.name} -- bash`), or pass --delete-backups "
            "to delete it with whatever sets it holds",
        )
    inventory = operations.parse_inventory(result.stdout.decode(errors="replace"))

    def list_sets() -> tuple[int, str, str]:
        listed = lxd.exec(
            offsite_copies.listing_script(), timeout=offsite_copies.LISTING_TIMEOUT_SECONDS + 60
        )
        out, err = listed.stdout.decode(errors="replace"), listed.stderr.decode(errors="replace")
        return listed.returncode, out, err

    elsewhere = Elsewhere()
    if inventory.sets and _has_offsite(env):
        elsewhere = _elsewhere(env, list_sets)
    return inventory, elsewhere


def _sets_through_ssh(connection: SshHost, env: Env) -> tuple[operations.Inventory, Elsewhere]:
    inventory = operations.inventory(connection, env, verify=False)

    def list_sets() -> tuple[int, str, str]:
        listed = connection.run_script(offsite_copies.listing_script())
        return listed.exit_code, listed.stdout, listed.stderr

    elsewhere = Elsewhere()
    if inventory.sets and _has_offsite(env):
        elsewhere = _elsewhere(env, list_sets)
    return inventory, elsewhere


def refuse_with_sets(
    env: Env,
    found: tuple[operations.Inventory, Elsewhere] | None,
    say: Say | None = None,
) -> None:
    """Refuse while the host holds a set that exists nowhere else. With
    backup.offsite, a set the repository holds counts as elsewhere."""
    if found is None or not found[0].sets:
        return
    inventory, elsewhere = found
    ids = [s.set_id for s in inventory.sets if s.set_id not in elsewhere.set_ids]
    if say is not None and _has_offsite(env):
        if elsewhere.why_none:
            say(f"  no set counts as elsewhere: {elsewhere.why_none}")
        else:
            copied, total = len(inventory.sets) - len(ids), len(inventory.sets)
            say(f"  {copied} of {total} set(s) on the host are in the off-host repository")
    if not ids:
        return
    where = "exist nowhere else"
    if _has_offsite(env):
        where = (
            f"may exist nowhere else ({elsewhere.why_none})"
            if elsewhere.why_none
            else "are not in the off-host repository"
        )
    raise DeployError(
        f"the host of {env.name} holds {len(ids)} backup set(s) ({', '.join(ids[-3:])}"
        f"{', ...' if len(ids) > 3 else ''}) that {where}; refusing to destroy it",
        f"fetch them first: inv fetch-backup --env {env.name} --set SET --to DIR (one per set; "
        "`inv backups` lists them), or pass --delete-backups to delete them with the host",
    )


def retire_script(accepted: Sequence[str] | None, *, remove_stack: bool) -> str:
    """The host's part of destroy, run under the backup lock, so no backup run (nor
    drill, nor off-host check) is half-way meanwhile. With ``accepted`` (the ids of
    the sets the check found elsewhere), a complete set beyond them is refused (exit
    UNSAFE, nothing changed): a run finished it after the check. Then the cron files
    go, so no run starts after it, and with ``remove_stack`` the stack and the
    deployer's files too (an LXD instance goes whole after it)."""
    q = shlex.quote
    lines = ["set -o errexit"]
    if accepted is not None:
        prefix, suffix = backup_layout.checksum_manifest_affixes()
        first = q(f"{paths.BACKUP_DIR}/{prefix}")
        lines += [
            f"for manifest in {first}*{q(suffix)}; do",
            '  [ -f "$manifest" ] || continue',
            f'  id="${{manifest#{first}}}"; id="${{id%{q(suffix)}}}"',
            f'  case {q(" " + " ".join(accepted) + " ")} in *" $id "*) ;; *)',
            '    echo "set $id was completed after the check; nothing was removed" >&2',
            f"    exit {exit_codes.UNSAFE} ;;",
            "  esac",
            "done",
        ]
    lines.append(f"rm -f -- {' '.join(q(str(path)) for path in CRON_FILES)}")
    if remove_stack:
        lines += [
            f"if [ -f {paths.COMPOSE_FILE} ]; then",
            f"  timeout 300 {remote.COMPOSE} --profile backup down --volumes --remove-orphans "
            "--timeout 10",
            "fi",
            f"rm -rf -- {paths.DEPLOY_DIR}",
        ]
    return "\n".join(lines) + "\n"


# The retire script's bound: the lock wait, compose down, the rest.
RETIRE_TIMEOUT_SECONDS = remote.LOCK_WAIT_SECONDS + 600


def _retired(code: int, where: str, detail: str) -> None:
    """Raise unless the retire script on ``where`` ended well."""
    if code == 0:
        return
    if code == exit_codes.LOCK_BUSY:
        raise RemoteError(
            f"a backup run, restore or verify on {where} held {paths.BACKUP_LOCK} for more "
            f"than {remote.LOCK_WAIT_SECONDS} s; nothing was removed",
            "let it finish, then run `inv destroy` again",
        )
    if code == exit_codes.UNSAFE:
        raise DeployError(
            f"{detail.strip() or 'a backup set was completed after the check'} (on {where}): "
            "it may exist nowhere else; refusing to destroy",
            "run `inv destroy` again (it checks again), fetch the set first, or pass "
            "--delete-backups",
        )
    raise RemoteError(
        f"removing the stack from {where} failed: {detail.strip()}",
        "look at the host, then run `inv destroy` again",
    )


def names_recorded_host(env: Env, host: str) -> bool:
    """Whether ``host`` (--host) is the environment's own: ssh_credentials.host, else
    the recorded one, in any spelling of the address ('2001:DB8:0::1', a name's case)."""
    recorded = env.ssh.host or getattr(state.read_record(env.name), "host", None)
    if recorded is None:
        return False
    try:
        return parse_host(host) == parse_host(recorded)
    except InvalidValue:
        return host.lower() == recorded.lower()


def destroy(env: Env, delete_backups: bool, say: Say, where: HostFlags = RECORDED_HOST) -> None:
    """The environment's host (lxd: its instance) and its record; with ``where.host``
    naming another host (an old one back after `inv recover` onto a new one), the
    stack and the deployer's files there, the record kept."""
    provider = providers.for_env(env)
    other = bool(where.host) and not names_recorded_host(env, where.host)
    if isinstance(env.provider, LxdProvider) and not other:
        if not delete_backups:
            found = _sets_through_lxd(env)
            refuse_with_sets(env, found, say)
            if found is not None:
                from tracker_deployer.providers.lxd import Lxd

                lxd = Lxd(env)
                if lxd.exec(host_scripts.older_scripts_test(), timeout=60).returncode == 0:
                    raise host_scripts.older_scripts_error(lxd.name, env.name, "a destroy")
                accepted = [s.set_id for s in found[0].sets]
                done = lxd.exec(
                    remote.under_backup_lock(retire_script(accepted, remove_stack=False)),
                    timeout=RETIRE_TIMEOUT_SECONDS,
                )
                _retired(done.returncode, lxd.name, done.stderr.decode(errors="replace"))
        provider.destroy(say)
        return
    found_host = target(
        env, where.host, where.known_hosts, where.accept_new_host_key, make_key=False
    )
    if found_host is None:
        raise no_host_error(env)
    with SshHost(found_host) as connection:
        accepted_ids: list[str] | None = None
        if not delete_backups:
            host_scripts.refuse_older_scripts(connection, env.name, "a destroy")
            sets = _sets_through_ssh(connection, env)
            refuse_with_sets(env, sets, say)
            accepted_ids = [s.set_id for s in sets[0].sets]
        say(f"  removing the stack and the deployer's files from {found_host.host}")
        result = connection.run(
            remote.under_backup_lock(retire_script(accepted_ids, remove_stack=True)),
            timeout=RETIRE_TIMEOUT_SECONDS,
        )
        _retired(result.exit_code, found_host.host, result.stderr)
    if other:
        say(f"  the record of {env.name} is kept: {where.host} is not its host")
        return
    provider.destroy(say)


def status(env: Env) -> dict[str, Any]:
    """Provider, host, each service with its health, and the last backup run."""
    record = state.read_record(env.name)
    report: dict[str, Any] = {
        "environment": env.name,
        "provider": env.provider.kind,
        "instance": env.provider.profile_name if isinstance(env.provider, LxdProvider) else None,
        "host": None,
        "services": [],
        "last_backup_run": None,
        "backup_sets": None,
        "error": None,
    }
    found = target(env, make_key=False)
    if found is None:
        report["error"] = str(no_host_error(env, host_flags=False))
        return report
    report["host"] = f"{found.host}:{found.port}"
    report["recorded_in"] = str(state.record_path(env.name)) if record else None
    try:
        with SshHost(found, host_flags=False) as connection:
            deployed = connection.run(f"test -f {shlex.quote(str(paths.COMPOSE_FILE))}").ok
            report["deployed"] = deployed
            if deployed:
                report["services"] = remote.service_health(connection)
            if env.backup is not None:
                inventory = operations.inventory(connection, env, verify=False)
                report["last_backup_run"] = inventory.last_run or None
                report["backup_sets"] = len(inventory.complete_sets)
    except DeployError as error:
        report["error"] = str(error)
    return report


def format_status(report: dict[str, Any]) -> str:
    lines = [f"environment: {report['environment']}"]
    provider = report["provider"]
    if report.get("instance"):
        provider += f" (instance {report['instance']})"
    lines.append(f"provider:    {provider}")
    lines.append(f"host:        {report['host'] or 'none recorded'}")
    services: Sequence[dict[str, str]] = report["services"]
    # Not reached (no "deployed"): nothing is known of the host, not "none".
    unknown = "unknown (the host was not reached)"
    if services:
        lines.append("services:")
        for row in services:
            lines.append(remote.service_line(row))
    elif report["host"] and "deployed" not in report:
        lines.append(f"services:    {unknown}")
    elif report["host"] and report.get("deployed") is False:
        lines.append(f"services:    none (no {paths.COMPOSE_FILE}: not deployed)")
    elif report["host"]:
        lines.append("services:    none")
    run = report.get("last_backup_run")
    if run:
        lines += operations.status_warnings(run)
        lines.append(
            f"last backup: {str(run.get('result', '?')).upper()} at {run.get('started_at', '?')}"
            + (f", set {run['set']}" if run.get("set") else "")
            + f"; {report.get('backup_sets', 0)} complete set(s) on the host"
        )
    elif report["host"] and report.get("error"):
        lines.append("last backup: unknown (see the problem below)")
    elif report["host"]:
        lines.append("last backup: none recorded")
    if report.get("error"):
        lines.append(f"problem:     {report['error']}")
    return printable("\n".join(lines), keep="\n")  # the host's words, escaped
