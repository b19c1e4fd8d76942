"""The operator's command line: `inv --list` shows every task.

Thin on purpose: parse flags, call the library, print, exit. Every expected
failure is a DeployError, turned here into one message and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from tracker_deployer import image, paths, sandbox
from tracker_deployer import publish as publishing
from tracker_deployer.config import Env, env_path, load_env
from tracker_deployer.config.template import starter_config_text
from tracker_deployer.describe import describe_env
from tracker_deployer.errors import ConfigError, DeployError, RemoteError
from tracker_deployer.remote import backups as operations
from tracker_deployer.remote import deploy as remote
from tracker_deployer.remote.deploy import target_for
from tracker_deployer.remote.plan import Scope
from tracker_deployer.remote.ssh import SshHost, Target
from tracker_deployer.render import RenderedTree, write_tree
from tracker_deployer.render import render as render_tree

ENV_HELP = "environment: NAME for envs/NAME.json, or a path to a config file"
HOST_HELP = "target host (overrides ssh_credentials.host)"
DRY_RUN_HELP = "print the plan (secrets masked) and change nothing; opens no connection"
KNOWN_HOSTS_HELP = "known_hosts file to check the host key against (default ~/.ssh/known_hosts)"
ACCEPT_HELP = "accept and record the host key if this host was never seen (first contact only)"
REMOTE_HELP = {
    "env": ENV_HELP,
    "host": HOST_HELP,
    "dry_run": DRY_RUN_HELP,
    "known_hosts": KNOWN_HOSTS_HELP,
    "accept_new_host_key": ACCEPT_HELP,
}


@contextmanager
def _errors() -> Iterator[None]:
    """Expected failures: one clear message on stderr and a non-zero exit."""
    try:
        yield
    except ConfigError as error:
        count = len(error.issues)
        summary = f"{count} problem{'s' if count != 1 else ''} in {error.source}"
        raise Exit(f"{error}\nerror: {summary}", code=error.exit_code) from None
    except DeployError as error:
        raise Exit(f"error: {error}", code=error.exit_code) from None
    except KeyboardInterrupt:
        raise Exit("interrupted", code=130) from None
    except BrokenPipeError:
        # Output piped into e.g. `head`, which stopped reading: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise Exit(code=141) from None


def _load(env: str) -> Env:
    if not env:
        raise DeployError("no environment given", "pass --env NAME (see envs/) or --env PATH")
    path = env_path(env, paths.ENVS_DIR)
    return load_env(path, display=_shown(path))


def _shown(path: Path) -> str:
    """A config path as the operator would write it (relative to here when inside)."""
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _out_dir(env: Env, out: str) -> Path:
    return Path(out) if out else paths.BUILD_DIR / env.name


def _say(line: str) -> None:
    print(line, flush=True)


def _render_for_remote(parsed: Env) -> RenderedTree:
    """Render and write build/NAME, so what lands on the host can be read locally."""
    tree = render_tree(parsed)
    write_tree(tree, _out_dir(parsed, ""))
    return tree


def _target(parsed: Env, host: str, known_hosts: str, accept: bool, dry_run: bool) -> Target | None:
    if dry_run and not (host or parsed.ssh.host):
        return None
    return target_for(
        parsed, host or None, known_hosts=known_hosts or None, accept_new_host_key=accept
    )


CONNECT_HELP = {
    "env": ENV_HELP,
    "host": HOST_HELP,
    "known_hosts": KNOWN_HOSTS_HELP,
    "accept_new_host_key": ACCEPT_HELP,
}


@contextmanager
def _connected(parsed: Env, host: str, known_hosts: str, accept: bool) -> Iterator[SshHost]:
    target = _target(parsed, host, known_hosts, accept, False)
    assert target is not None
    with SshHost(target) as connection:
        yield connection


@task(help={"env": ENV_HELP})
def validate(c: Context, env: str = "") -> None:
    """Check an environment config; list every problem with its path and a hint."""
    with _errors():
        parsed = _load(env)
        print(f"{_shown(parsed.source)}: valid")
        print(describe_env(parsed, now=datetime.now(UTC)))


@task(help={"env": ENV_HELP, "out": "write the tree here instead of build/NAME"})
def render(c: Context, env: str = "", out: str = "") -> None:
    """Render the stack's files for an environment into build/NAME (host paths)."""
    with _errors():
        parsed = _load(env)
        tree = render_tree(parsed)
        target = write_tree(tree, _out_dir(parsed, out))
        print(f"rendered {len(tree.files)} files for {parsed.name} into {target}")
        for item in tree.files:
            flag = "  (secret)" if item.secret else ""
            print(f"  {item.mode:04o} {item.uid}:{item.gid}  {item.path}{flag}")


@task(
    name="create-template",
    help={
        "out": "write the starter config to this file (default: print it)",
        "name": "environment name to put in the template",
        "database": "sqlite3 or mysql",
        "force": "overwrite --out if it exists",
    },
)
def create_template(
    c: Context,
    out: str = "",
    name: str = "my-tracker",
    database: str = "sqlite3",
    force: bool = False,
) -> None:
    """Write a complete starter environment config (backups included)."""
    with _errors():
        if database not in ("sqlite3", "mysql"):
            raise DeployError(
                f"--database {database!r} is not supported", "use --database sqlite3 or mysql"
            )
        text = starter_config_text(name, database)
        if not out:
            sys.stdout.write(text)
            return
        target = Path(out)
        if target.exists() and not force:
            raise DeployError(f"{target} already exists", "pick another --out, or pass --force")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target}; edit the 'change-me' values, then: inv validate --env {target}")


@dataclass(frozen=True)
class _Remote:
    """What a task that changes a host needs: the env, its tree and the target."""

    env: Env
    tree: RenderedTree
    target: Target


def _plan_or_prepare(
    env: str, host: str, dry_run: bool, known_hosts: str, accept: bool, scopes: list[Scope]
) -> _Remote | None:
    """Validate and render; for --dry-run print the plan and return None (no connection)."""
    parsed = _load(env)
    tree = _render_for_remote(parsed)
    target = _target(parsed, host, known_hosts, accept, dry_run)
    if dry_run:
        print(remote.dry_run(tree, parsed, target, scopes))
        return None
    assert target is not None
    return _Remote(parsed, tree, target)


@task(help=REMOTE_HELP)
def push(
    c: Context,
    env: str = "",
    host: str = "",
    dry_run: bool = False,
    known_hosts: str = "",
    accept_new_host_key: bool = False,
) -> None:
    """Upload the rendered /opt/torrust tree (only files whose sha256 differs)."""
    with _errors():
        job = _plan_or_prepare(env, host, dry_run, known_hosts, accept_new_host_key, [Scope.PUSH])
        if job:
            with SshHost(job.target) as connection:
                remote.push(connection, job.tree, _say)


@task(name="install-cron", help=REMOTE_HELP)
def install_cron(
    c: Context,
    env: str = "",
    host: str = "",
    dry_run: bool = False,
    known_hosts: str = "",
    accept_new_host_key: bool = False,
) -> None:
    """Install (or, with backups off, remove) the maintenance script, cron.d and logrotate files."""
    with _errors():
        job = _plan_or_prepare(env, host, dry_run, known_hosts, accept_new_host_key, [Scope.CRON])
        if job:
            with SshHost(job.target) as connection:
                remote.install_cron(connection, job.tree, _say)


@task(help=REMOTE_HELP)
def deploy(
    c: Context,
    env: str = "",
    host: str = "",
    dry_run: bool = False,
    known_hosts: str = "",
    accept_new_host_key: bool = False,
) -> None:
    """Validate, render, check the host, push, compose up, install cron, report health."""
    with _errors():
        scopes = [Scope.PUSH, Scope.CRON]
        job = _plan_or_prepare(env, host, dry_run, known_hosts, accept_new_host_key, scopes)
        if not job:
            return
        with SshHost(job.target) as connection:
            result = remote.deploy(connection, job.tree, _say)
        print(f"deployed {job.env.name} to {job.target}")
        for row in result.services:
            print(
                f"  {row['service']:12} {row['state']:10} health={row['health']:10} {row['status']}"
            )
        unhealthy = [
            row["service"]
            for row in result.services
            if row["state"] != "running" or row["health"] not in ("healthy", "-")
        ]
        if unhealthy:
            raise RemoteError(
                f"services not healthy after deploy: {', '.join(unhealthy)}",
                "on the host: cd /opt/torrust && docker compose logs --tail 50 SERVICE",
            )


@task(help=CONNECT_HELP)
def backup(
    c: Context,
    env: str = "",
    host: str = "",
    known_hosts: str = "",
    accept_new_host_key: bool = False,
) -> None:
    """Run a backup now on the host (the maintenance script), streaming its log."""
    with _errors():
        parsed = _load(env)
        with _connected(parsed, host, known_hosts, accept_new_host_key) as connection:
            code = remote.run_backup(connection, _say)
        if code != 0:
            raise Exit(
                f"error: the backup failed with exit code {code} (see the log above)", code=code
            )
        print("backup complete")


@task(
    name="build-image",
    help={
        "tag": f"image tag (default {image.default_tag()}); also tagged :latest unless --no-latest",
        "latest": "also tag REPOSITORY:latest",
        "uid": "uid the backup container runs as (must match the host's backup dir owner)",
        "gid": "gid the backup container runs as",
    },
)
def build_image(
    c: Context, tag: str = "", latest: bool = True, uid: int = 1000, gid: int = 1000
) -> None:
    """Build the backup image from docker/backup (its bats test stage must pass)."""
    with _errors():
        chosen = tag or image.default_tag()
        if ":" not in chosen.rsplit("/", 1)[-1]:
            raise DeployError(
                f"--tag {chosen!r} has no version",
                "use NAME:VERSION, e.g. torrust/tracker-backup:1.0.0",
            )
        tags = [chosen]
        if latest:
            tags.append(chosen.rpartition(":")[0] + ":latest")
        built = image.build(paths.REPO_ROOT / "docker/backup", tags, _say, uid=uid, gid=gid)
        print(f"built {built.image_id}")
        for name in built.tags:
            print(f"  tagged {name}")


@task(
    help={
        "version": "version to publish, X.Y.Z (default: the Dockerfile's version label)",
        "repository": f"image repository (default {publishing.DEFAULT_REPOSITORY}); "
        "REPOSITORY:VERSION must have been built by build-image",
        "dry_run": "run every check and print what would be pushed; tag and push nothing "
        "(exits non-zero when a check fails)",
        "context": "the image's build context (default docker/backup): its Dockerfile gives "
        "the version, and its git checkout must be clean",
    }
)
def publish(
    c: Context, version: str = "", repository: str = "", dry_run: bool = False, context: str = ""
) -> None:
    """Push the built backup image as REPO:X.Y.Z and REPO:latest (after the release checks)."""
    with _errors():
        plan = publishing.prepare(
            Path(context) if context else paths.REPO_ROOT / "docker/backup",
            repository=repository or publishing.DEFAULT_REPOSITORY,
            version=version or None,
            connect=image.docker_client,
        )
        print(publishing.describe(plan, dry_run=dry_run))
        if not plan.ok:
            raise publishing.PublishRefused(plan.refusals)
        if dry_run:
            print("dry run: every check passed; nothing was tagged or pushed")
            return
        pushed = publishing.push(plan, image.docker_client(), _say)
        for item in pushed:
            print(f"pushed {item.reference}  digest {item.digest}")
        print(
            f'pin it in an environment: "images": {{"backup": "{plan.source}@{pushed[0].digest}"}}'
        )
        if plan.git.tag_commit is None:
            tag = plan.git.tag
            print(
                f"then tag the release: git tag {tag} {plan.git.head[:12]} && git push origin {tag}"
            )


@task(
    help={
        **CONNECT_HELP,
        "json": "print JSON for scripts instead of a table",
        "quick": "skip checking every set's checksums",
    }
)
def backups(
    c: Context,
    env: str = "",
    host: str = "",
    known_hosts: str = "",
    accept_new_host_key: bool = False,
    json: bool = False,
    quick: bool = False,
) -> None:
    """List the backup sets on the host (parts, size, age, checksums) and the last run."""
    with _errors():
        parsed = _load(env)
        with _connected(parsed, host, known_hosts, accept_new_host_key) as connection:
            found = operations.inventory(connection, verify=not quick)
        if json:
            print(operations.inventory_json(found))
        else:
            print(operations.format_inventory(found, datetime.now(UTC)))
        if found.last_run.get("tracker_stopped_by"):
            raise Exit("error: a backup run left the tracker stopped (see above)", code=1)
        if found.last_run.get("result") == "failure":
            raise Exit("error: the last backup run FAILED (see above)", code=1)


@task(
    help={
        **CONNECT_HELP,
        "set": "set id, or latest (default)",
        "no_drill": "only check checksums and archives",
    }
)
def verify(
    c: Context,
    env: str = "",
    set: str = "latest",
    host: str = "",
    known_hosts: str = "",
    accept_new_host_key: bool = False,
    no_drill: bool = False,
) -> None:
    """Verify a backup set: checksums, archives and a restore drill into a scratch target."""
    with _errors():
        parsed = _load(env)
        with _connected(parsed, host, known_hosts, accept_new_host_key) as connection:
            checked = operations.verify(connection, parsed, set, _say, drill=not no_drill)
        print(f"backup set {checked.set_id}: VERIFIED")


@task(
    help={
        **CONNECT_HELP,
        "set": "set id, or latest",
        "only": "db or config (default: both)",
        "yes": "confirm: the restore replaces live data",
        "force": "skip the restore drill before restoring (checksums are still checked)",
        "skip_safety_backup": "MySQL: restore without first backing up the current database "
        "(when that backup cannot succeed: damaged database, full disk); it cannot be undone",
        "dry_run": "print the plan and change nothing; opens no connection",
    }
)
def restore(
    c: Context,
    env: str = "",
    set: str = "",
    only: str = "all",
    yes: bool = False,
    force: bool = False,
    skip_safety_backup: bool = False,
    dry_run: bool = False,
    host: str = "",
    known_hosts: str = "",
    accept_new_host_key: bool = False,
) -> None:
    """Restore a backup set on the host: stop tracker, restore, start, health check."""
    with _errors():
        parsed = _load(env)
        if not set:
            raise DeployError(
                "no backup set given", "pass --set latest or --set SET_ID (see `inv backups`)"
            )
        if dry_run:
            print(
                operations.restore_plan(
                    parsed, set, only, force, skip_safety_backup=skip_safety_backup
                )
            )
            return
        if not yes:
            raise DeployError(
                "a restore replaces the live database; refusing without --yes",
                "check the plan with --dry-run, then run again with --yes",
            )
        with _connected(parsed, host, known_hosts, accept_new_host_key) as connection:
            restored = operations.restore(
                connection,
                parsed,
                set,
                only,
                _say,
                force=force,
                skip_safety_backup=skip_safety_backup,
            )
        print(f"restored backup set {restored.set_id} ({only}) on {parsed.name}")


@task(
    name="fetch-backup",
    help={
        **CONNECT_HELP,
        "set": "set id, or latest",
        "to": "local directory (the set lands in DIR/SET_ID/)",
    },
)
def fetch_backup(
    c: Context,
    env: str = "",
    set: str = "latest",
    to: str = "",
    host: str = "",
    known_hosts: str = "",
    accept_new_host_key: bool = False,
) -> None:
    """Download a backup set with its manifests; verified by checksum, resumable."""
    with _errors():
        parsed = _load(env)
        if not to:
            raise DeployError("no destination given", "pass --to DIR")
        with _connected(parsed, host, known_hosts, accept_new_host_key) as connection:
            fetched = operations.fetch(connection, parsed, set, Path(to), _say)
        print(
            f"backup set {fetched.set_id} in {fetched.directory}: {len(fetched.downloaded)} "
            f"downloaded, {len(fetched.kept)} already there, all checksums match"
        )


SANDBOX_TARGET_HELP = (
    "lxd, container or auto (default): LXD when it works here or can be installed, "
    "else a container with sshd + cron using this machine's Docker daemon"
)
SANDBOX_ENV_HELP = (
    f"the sandbox environment (default {sandbox.DEFAULT_ENV}); its ssh_credentials say where "
    "the sandbox listens and which key and known_hosts file it uses"
)


@task(name="up", help={"target": SANDBOX_TARGET_HELP, "env": SANDBOX_ENV_HELP})
def sandbox_up(c: Context, target: str = sandbox.AUTO, env: str = sandbox.DEFAULT_ENV) -> None:
    """Create a local target host for the sandbox environment (an LXD instance or a container)."""
    with _errors():
        parsed = _load(env)
        made = sandbox.up(parsed, target, _say)
        print(f"sandbox up: {made.kind} target {made.name}, SSH as root on {made.host}:{made.port}")
        print(f"  key:         {parsed.ssh.private_key_path}")
        print(f"  known_hosts: {parsed.ssh.known_hosts_path} (the target's host keys)")
        if parsed.images.tracker == sandbox.STANDIN_IMAGE:
            print(sandbox.STANDIN_NOTICE.format(image=parsed.images.tracker))
        print(f"next: inv deploy --env {parsed.name} && inv backup --env {parsed.name}")
        print("remove it with: inv sandbox.down")


@task(
    name="down",
    help={"target": "lxd or container (default: the one sandbox.up made)", "env": SANDBOX_ENV_HELP},
)
def sandbox_down(c: Context, target: str = sandbox.AUTO, env: str = sandbox.DEFAULT_ENV) -> None:
    """Remove the local sandbox target host with its stack and backups."""
    with _errors():
        sandbox.down(_load(env), target, _say)


@task(name="status", help={"env": SANDBOX_ENV_HELP})
def sandbox_status(c: Context, env: str = sandbox.DEFAULT_ENV) -> None:
    """Show whether the sandbox target host runs and how to reach it (exit 1 when it does not)."""
    with _errors():
        parsed = _load(env)
        record, address = sandbox.status(parsed)
        if record is None or address is None:
            raise DeployError("no sandbox is running", "create one: inv sandbox.up")
        print(
            f"sandbox: {record.kind} target {record.name} running; SSH as root on "
            f"{record.host}:{record.port} (target address {address.host}:{address.port})"
        )
        print(f"  deploy to it: inv deploy --env {parsed.name}")


sandbox_tasks = Collection("sandbox", sandbox_up, sandbox_down, sandbox_status)


ns = Collection(
    validate,
    render,
    create_template,
    push,
    install_cron,
    deploy,
    backup,
    backups,
    verify,
    restore,
    fetch_backup,
    build_image,
    publish,
    sandbox_tasks,
)
