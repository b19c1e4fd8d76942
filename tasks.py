"""The operator's command line: `inv --list` shows every task.

Thin on purpose: parse flags, call the library, print, exit. Every expected
failure is a DeployError, turned here into one message and a non-zero exit.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_TASK_STARTED = threading.Event()


def _outside_the_task(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM while Invoke reads the command line (or after the task):
    Invoke ended with a silent exit 1 (Ctrl-C), or the process died without a word
    (SIGTERM)."""
    name = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    when = "after the task" if _TASK_STARTED.is_set() else "before the task started"
    done = "" if _TASK_STARTED.is_set() else ": nothing was done"
    os.write(sys.stderr.fileno(), f"{name} {when}{done}\n".encode())
    os._exit(128 + signum)


def _handle(signum: int, handler: Any) -> Any:
    """Install ``handler`` for ``signum`` unless the signal is ignored (a script's
    `inv ... &` starts with SIGINT ignored: the terminal's Ctrl-C is not for it);
    the handler that was there, or None when nothing changed."""
    if signal.getsignal(signum) is signal.SIG_IGN:
        return None
    return signal.signal(signum, handler)


# Only when Invoke runs this file (tests import it too, and keep their own handlers).
# Here, before the imports below (a quarter of a second): a signal during them was a
# silent exit 1 or a traceback. (Invoke's own start, before it reads this file, is
# beyond reach.)
if (
    Path(sys.argv[0]).name in ("inv", "invoke")
    and threading.current_thread() is threading.main_thread()
):
    _handle(signal.SIGINT, _outside_the_task)
    _handle(signal.SIGTERM, _outside_the_task)

from invoke.collection import Collection  # noqa: E402
from invoke.context import Context  # noqa: E402
from invoke.exceptions import Exit  # noqa: E402
from invoke.tasks import Task, task  # noqa: E402
from tracker_deployer import image, lifecycle, monitoring, paths, sandbox, state  # noqa: E402
from tracker_deployer import publish as publishing  # noqa: E402
from tracker_deployer import recover as recovery  # noqa: E402
from tracker_deployer.config import Env, env_path, load_env  # noqa: E402
from tracker_deployer.config.model import InvalidValue, parse_environment_name  # noqa: E402
from tracker_deployer.config.template import starter_config_text  # noqa: E402
from tracker_deployer.describe import describe_env  # noqa: E402
from tracker_deployer.errors import ConfigError, DeployError, RemoteError  # noqa: E402
from tracker_deployer.remote import backups as operations  # noqa: E402
from tracker_deployer.remote import configure as host_setup  # noqa: E402
from tracker_deployer.remote import deploy as remote  # noqa: E402
from tracker_deployer.remote import host_scripts, offsite_fetch  # noqa: E402
from tracker_deployer.remote import offsite as offsite_copies  # noqa: E402
from tracker_deployer.remote.plan import Scope  # noqa: E402
from tracker_deployer.remote.ssh import SshHost, Target  # noqa: E402
from tracker_deployer.render import RenderedTree, write_tree  # noqa: E402
from tracker_deployer.render import render as render_tree  # noqa: E402
from tracker_deployer.say import printable  # noqa: E402

ENV_HELP = "environment: NAME for envs/NAME.json, or a path to a config file"
DRY_RUN_HELP = "print the plan (secrets masked) and change nothing; opens no connection"
# The flags of every task that connects to a host: declared here once, added by @_host_task.
HOST_FLAGS_HELP = {
    "host": "target host (overrides the recorded host and ssh_credentials.host)",
    "known_hosts": "known_hosts file to check the host key against (default: "
    "ssh_credentials.known_hosts_path, else ~/.ssh/known_hosts for ssh_credentials.host, "
    "else the host's file in the state directory)",
    "accept_new_host_key": "accept and record the host key if this host was never seen "
    "(first contact only)",
}


@dataclass(frozen=True)
class _Host(lifecycle.HostFlags):
    """Where a task connects: its --host, --known-hosts and --accept-new-host-key."""

    def target(self, parsed: Env, dry_run: bool = False) -> Target | None:
        """The recorded or given target; for a dry run None is fine and no key is made."""
        if dry_run:
            return lifecycle.target(
                parsed, self.host, self.known_hosts, self.accept_new_host_key, make_key=False
            )
        return lifecycle.require_target(
            parsed, self.host, self.known_hosts, self.accept_new_host_key
        )

    @contextmanager
    def connect(self, parsed: Env) -> Iterator[SshHost]:
        target = self.target(parsed)
        assert target is not None
        with SshHost(target) as connection:
            yield connection


ANY_HOST = _Host()  # the flags' defaults: the recorded host, checked against known_hosts


def _host_task(
    help: dict[str, str], name: str | None = None
) -> Callable[[Callable[..., None]], Task[Any]]:
    """@task for a command that connects to a host.

    The body takes ``where: _Host = ANY_HOST``; the task gets the flags of
    :class:`_Host` (with HOST_FLAGS_HELP) in its place, so they are declared once.
    """

    def decorate(body: Callable[..., None]) -> Task[Any]:
        signature = inspect.signature(body)
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.name != "where":
                parameters.append(parameter)
                continue
            parameters += [
                parameter.replace(
                    name=flag.name, default=getattr(ANY_HOST, flag.name), annotation=flag.type
                )
                for flag in fields(_Host)
            ]

        @functools.wraps(body)
        def run(c: Context, **options: Any) -> None:
            where = _Host(
                **{f.name: options.pop(f.name) for f in fields(_Host) if f.name in options}
            )
            body(c, where=where, **options)

        run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        made: Task[Any] = task(name=name, help={**help, **HOST_FLAGS_HELP})(run)
        return made

    return decorate


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the task is, so that its cleanup runs as for Ctrl-C."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


# What an interrupted task that works on a host adds: its step there goes on.
HOST_STEP_GOES_ON = (
    "a script already running on the host (a backup, restore, verify, fetch or compose up) "
    "goes on there to its end; `inv status --env NAME` and `inv backups --env NAME` show "
    "the host"
)


@contextmanager
def _errors(on_host: bool = False) -> Iterator[None]:
    """Expected failures: one clear message on stderr and a non-zero exit. SIGTERM is
    one too: it is raised where the task is, so its cleanup runs as for Ctrl-C.
    ``on_host``: the task runs steps on a host, which an interrupt does not stop."""
    main = threading.current_thread() is threading.main_thread()
    _TASK_STARTED.set()
    before = _handle(signal.SIGTERM, _terminate) if main else None
    before_int = _handle(signal.SIGINT, signal.default_int_handler) if main else None
    hint = f" — hint: {HOST_STEP_GOES_ON}" if on_host else ""
    try:
        yield
    except ConfigError as error:
        count = len(error.issues)
        summary = f"{count} problem{'s' if count != 1 else ''} in {error.source}"
        # The source is the operator's --env, which can hold what a terminal obeys.
        message = printable(f"{error}\nerror: {summary}", keep="\n")
        raise Exit(message, code=error.exit_code) from None
    except DeployError as error:
        # A message may quote a host's words: what a terminal would obey is escaped,
        # line by line: publish's refusals are one a line (they came out as one line,
        # joined by a literal "\n").
        said = (
            [str(refusal) for refusal in error.refusals]
            if isinstance(error, publishing.PublishRefused)
            else [str(error)]
        )
        message = "\n".join(f"error: {printable(line)}" for line in said)
        raise Exit(message, code=error.exit_code) from None
    except Terminated:
        raise Exit(f"terminated (SIGTERM){hint}", code=143) from None
    except KeyboardInterrupt:
        raise Exit(f"interrupted{hint}", code=130) from None
    except BrokenPipeError:
        # Output piped into e.g. `head`, which stopped reading: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise Exit(code=141) from None
    except OSError as error:
        # A local file or our own output (a full disk, a path that is a file): the
        # operation failed as a whole; its own cleanup has run on the way here.
        where = f" ({error.filename})" if error.filename else ""
        raise Exit(
            f"error: {error.strerror or error}{where} — hint: check the path, its "
            "permissions and the free space (or the connection), then run the command again",
            code=1,
        ) from None
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)
        if before_int is not None:
            signal.signal(signal.SIGINT, before_int)


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
    """A progress line; it may quote a host (a listing's error, a reason), so escaped
    (a tab or a newline, as in a chunk of docker's build log, stays)."""
    print(printable(line, keep="\t\n"), flush=True)


def _print_services(services: list[dict[str, str]]) -> None:
    for row in services:
        print(remote.service_line(row))


def _render_for_remote(parsed: Env) -> RenderedTree:
    """Render and write build/NAME, so what lands on the host can be read locally."""
    tree = render_tree(parsed)
    write_tree(tree, _out_dir(parsed, ""))
    return tree


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
        try:
            parse_environment_name(name)
        except InvalidValue as error:
            raise DeployError(f"--name: {error.message}", error.hint) from None
        text = starter_config_text(name, database)
        if not out:
            sys.stdout.write(text)
            return
        target = Path(out)
        if target.exists() and not force:
            raise DeployError(f"{target} already exists", "pick another --out, or pass --force")
        if target.is_dir():
            raise DeployError(f"{target} is a directory", "name a file with --out")
        _write_whole(target, text, replace=force)
        # As --env reads it: a bare name would mean envs/NAME.json.
        named = str(target) if env_path(str(target), paths.ENVS_DIR) == target else f"./{target}"
        print(f"wrote {target}; edit the 'change-me' values, then: inv validate --env {named}")


def _write_whole(target: Path, text: str, replace: bool) -> None:
    """Write ``text`` to ``target``, mode 0600 (the operator writes the passwords into
    it next), whole or not at all (state.write_whole); through a link, where it points
    (the link stays). Without ``replace`` an existing ``target`` is refused."""
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    hint = "check the free space and permissions there, or pick another --out path"
    if not state.write_whole(target, text, 0o600, replace=replace, hint=hint):
        raise DeployError(f"{target} already exists", "pick another --out, or pass --force")


def _apply(env: str, where: _Host, dry_run: bool, scope: Scope) -> None:
    """push and install-cron: validate, render, then plan and apply one scope."""
    with _errors(on_host=True):
        parsed = _load(env)
        tree = _render_for_remote(parsed)
        target = where.target(parsed, dry_run)
        if dry_run:
            print(remote.dry_run(tree, parsed, target, [scope]))
            return
        assert target is not None
        with SshHost(target) as connection:
            task_name = "push" if scope is Scope.PUSH else "install-cron"
            remote.refuse_unfinished_recover(connection, parsed.name, f"`inv {task_name}`")
            host_scripts.end_older_schedules(connection, _say)
            if scope is Scope.PUSH:
                lifecycle.push(connection, parsed, tree, _say)
            else:
                remote.apply_scope(connection, tree, scope, _say)


@_host_task(help={"env": ENV_HELP, "dry_run": DRY_RUN_HELP})
def push(c: Context, env: str = "", where: _Host = ANY_HOST, dry_run: bool = False) -> None:
    """Upload the rendered /opt/torrust tree (only files whose sha256 differs)."""
    _apply(env, where, dry_run, Scope.PUSH)


@_host_task(name="install-cron", help={"env": ENV_HELP, "dry_run": DRY_RUN_HELP})
def install_cron(c: Context, env: str = "", where: _Host = ANY_HOST, dry_run: bool = False) -> None:
    """Install (or, with backups off, remove) the maintenance script, cron.d and logrotate files."""
    _apply(env, where, dry_run, Scope.CRON)


@_host_task(help={"env": ENV_HELP, "dry_run": DRY_RUN_HELP})
def deploy(c: Context, env: str = "", where: _Host = ANY_HOST, dry_run: bool = False) -> None:
    """Provision (lxd, first time) → configure → push → compose up → install-cron → health."""
    with _errors(on_host=True):
        parsed = _load(env)
        tree = _render_for_remote(parsed)
        if dry_run:
            print(lifecycle.dry_run_phases(parsed, tree, where.target(parsed, dry_run=True)))
            return
        result = lifecycle.deploy(parsed, tree, _say, where)
        print(f"deployed {parsed.name} to {result.target}")
        if result.changed_nothing:
            print("  nothing changed (host, files, cron and services were already as wanted)")
        _print_services(result.services)
        unhealthy = remote.unhealthy(result.services, parsed)
        if unhealthy:
            raise RemoteError(
                f"services not healthy after deploy: {', '.join(unhealthy)}",
                "on the host: cd /opt/torrust && docker compose logs --tail 50 SERVICE",
            )
        if parsed.images.tracker == sandbox.STANDIN_IMAGE:
            print(sandbox.STANDIN_NOTICE.format(image=parsed.images.tracker))


@task(help={"env": ENV_HELP})
def provision(c: Context, env: str = "") -> None:
    """Create the environment's host (lxd: an LXD instance) and record where it is."""
    with _errors():
        parsed = _load(env)
        print(f"provision {parsed.name} ({parsed.provider.kind})")
        record = lifecycle.provision(parsed, _say)
        print(f"host of {parsed.name}: {parsed.ssh.username}@{record.host}:{record.port}")
        print(f"next: inv configure --env {parsed.name} (or inv deploy --env {parsed.name})")


@task(
    help={
        "env": ENV_HELP,
        "host": "address of the host you prepared (IP or DNS name)",
        "port": "its SSH port (default: ssh_credentials.port)",
    }
)
def register(c: Context, env: str = "", host: str = "", port: str = "") -> None:
    """Record a host you prepared yourself (providers existing and hetzner)."""
    with _errors():
        parsed = _load(env)
        if not host:
            raise DeployError("no host given", "pass --host ADDRESS [--port N]")
        if port and not (port.isascii() and port.isdigit()):
            raise DeployError(f"--port {port!r} is not a TCP port", "use 1-65535, usually 22")
        lifecycle.register(parsed, host, int(port) if port else parsed.ssh.port, _say)
        known = lifecycle.known_hosts_file(parsed)  # where target() checks the key
        print(
            f"first contact: check the host's key fingerprint, then run e.g. "
            f"`inv configure --env {parsed.name} --accept-new-host-key` once (it records the "
            f"key in {known})"
        )


@_host_task(
    help={"env": ENV_HELP, "dry_run": "list the steps and change nothing; opens no connection"}
)
def configure(c: Context, env: str = "", where: _Host = ANY_HOST, dry_run: bool = False) -> None:
    """Install Docker, Compose v2, cron, log rotation, upgrades, firewall (idempotent)."""
    with _errors():
        parsed = _load(env)
        if dry_run:
            print(f"dry run of configure for {parsed.name}: nothing is changed")
            print("\n".join(host_setup.describe(parsed)))
            return
        with where.connect(parsed) as connection:
            print(f"configure {parsed.name} on {connection.target}")
            done = host_setup.apply(connection, parsed, _say)
        print(f"configure: {len(done.changed)} changed, {len(done.unchanged)} unchanged")


@_host_task(
    help={
        "env": ENV_HELP,
        "delete_backups": "also destroy the backup sets on the host (else destroy refuses)",
    }
)
def destroy(
    c: Context, env: str = "", where: _Host = ANY_HOST, delete_backups: bool = False
) -> None:
    """Remove the host (lxd) or the stack and the deployer's files (existing); with
    --host naming another host than the environment's, only the stack there."""
    with _errors():
        parsed = _load(env)
        there = f" on {where.host}" if where.host else ""
        print(f"destroy {parsed.name} ({parsed.provider.kind}){there}")
        lifecycle.destroy(parsed, delete_backups, _say, where)
        print(f"destroyed {parsed.name}{there}")


@task(help={"env": ENV_HELP, "json": "print JSON for scripts instead of text"})
def status(c: Context, env: str = "", json: bool = False) -> None:
    """Provider, host, each service with its health, and the last backup run."""
    with _errors():
        parsed = _load(env)
        report = lifecycle.status(parsed)
        if json:
            import json as json_module

            print(json_module.dumps(report, indent=2, sort_keys=True))
        else:
            print(lifecycle.format_status(report))
        if report.get("error"):
            raise Exit(code=1)


@_host_task(help={"env": ENV_HELP})
def backup(c: Context, env: str = "", where: _Host = ANY_HOST) -> None:
    """Run a backup now on the host (the maintenance script), streaming its log."""
    with _errors(on_host=True):
        parsed = _load(env)
        with where.connect(parsed) as connection:
            code = remote.run_backup(connection, _say, parsed.name)
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
    },
)
def build_image(c: Context, tag: str = "", latest: bool = True) -> None:
    """Build the backup image from docker/backup (its bats test stage must pass)."""
    with _errors():
        chosen = image.check_tag(tag or image.default_tag())
        tags = [chosen]
        if latest:
            tags.append(chosen.rpartition(":")[0] + ":latest")
        built = image.build(paths.REPO_ROOT / "docker/backup", tags, _say)
        print(f"built {built.image_id}")
        for name in built.tags:
            print(f"  tagged {name}")


@task(
    help={
        "version": "version to publish, X.Y.Z (default: BACKUP_IMAGE_VERSION, the version "
        "build-image builds)",
        "repository": f"image repository (default {publishing.DEFAULT_REPOSITORY}); "
        "REPOSITORY:VERSION must have been built by build-image",
        "dry_run": "run every check and print what would be pushed; tag and push nothing "
        "(exits non-zero when a check fails)",
        "context": "the image's build context (default docker/backup): its git checkout must be "
        "clean",
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


@_host_task(
    help={
        "env": ENV_HELP,
        "json": "print JSON for scripts instead of a table",
        "quick": "skip checking every set's checksums",
        "offsite": "list the sets in the off-host repository (backup.offsite) instead: "
        "set id, time, size",
    }
)
def backups(
    c: Context,
    env: str = "",
    where: _Host = ANY_HOST,
    json: bool = False,
    quick: bool = False,
    offsite: bool = False,
) -> None:
    """List the backup sets on the host (parts, size, age, checksums) and the last run."""
    with _errors(on_host=True):
        parsed = _load(env)
        if offsite:
            with where.connect(parsed) as connection:
                found_offsite = offsite_copies.list_sets(connection, parsed)
            if json:
                print(offsite_copies.sets_json(found_offsite))
            else:
                print(offsite_copies.format_sets(found_offsite, parsed.name))
            return
        with where.connect(parsed) as connection:
            found = operations.inventory(connection, parsed, verify=not quick)
        overdue = None
        if parsed.backup is not None:
            allowed = monitoring.missing_after_seconds(parsed.backup.schedule)
            overdue = operations.overdue_warning(found, allowed)
        if json:
            print(operations.inventory_json(found))
        else:
            print(operations.format_inventory(found, datetime.now(UTC)))
            if overdue:
                print(overdue)
        if found.last_run.get("tracker_stopped_by"):
            raise Exit("error: a backup run left the tracker stopped (see above)", code=1)
        if operations.status_warnings(found.last_run):
            raise Exit("error: the host's backups need attention (see the WARNING above)", code=1)
        if found.last_run.get("result") == "failure":
            raise Exit("error: the last backup run FAILED (see above)", code=1)
        if overdue:
            raise Exit("error: no backup run has finished for too long (see above)", code=1)


@_host_task(
    help={
        "env": ENV_HELP,
        "set": "set id, or latest (default)",
        "no_drill": "only check checksums and archives",
        "offsite": "verify the off-host repository's copy (backup.offsite) instead: restore it "
        "into scratch on the host, run the same checks there, remove the scratch; the host's "
        "own sets are not touched (latest: the repository's newest set)",
    }
)
def verify(
    c: Context,
    env: str = "",
    set: str = "latest",
    where: _Host = ANY_HOST,
    no_drill: bool = False,
    offsite: bool = False,
) -> None:
    """Verify a backup set: checksums, archives and a restore drill into a scratch target."""
    with _errors(on_host=True):
        parsed = _load(env)
        operations.check_set(set)
        if offsite:
            offsite_fetch.require_offsite(parsed)
        with where.connect(parsed) as connection:
            host_scripts.refuse_older_scripts(connection, parsed.name, "`inv verify`")
            if offsite:
                set_id = offsite_fetch.resolve(connection, parsed, set)
                offsite_fetch.verify(connection, parsed, set_id, _say, drill=not no_drill)
                print(f"backup set {set_id} in the off-host repository: VERIFIED")
                return
            checked = operations.verify(connection, parsed, set, _say, drill=not no_drill)
        print(f"backup set {checked.set_id}: VERIFIED")


@_host_task(
    help={
        "env": ENV_HELP,
        "set": "set id, or latest",
        "only": "db or config (default: both)",
        "yes": "confirm: the restore replaces live data",
        "force": "skip the restore drill before restoring (checksums are still checked)",
        "skip_safety_backup": "MySQL: restore without first backing up the current database "
        "(when that backup cannot succeed: damaged database, full disk); it cannot be undone",
        "dry_run": "print the plan and change nothing; opens no connection",
        "from": "offsite: first fetch the set from the off-host repository (backup.offsite) "
        "into the host's backup directory, verified",
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
    where: _Host = ANY_HOST,
    from_: str = "",
) -> None:
    """Restore a backup set on the host: stop tracker, restore, start, health check."""
    with _errors(on_host=True):
        parsed = _load(env)
        if not set:
            raise DeployError(
                "no backup set given", "pass --set latest or --set SET_ID (see `inv backups`)"
            )
        # Before anything runs: a typo must not cost an off-host fetch first.
        operations.check_set(set)
        operations.check_only(only)
        if parsed.backup is None:
            raise DeployError(
                f"backups are off for {parsed.name}: there is no set to restore",
                'add a "backup" section to the environment config and deploy',
            )
        if from_ not in ("", "offsite"):
            raise DeployError(
                f"--from {from_!r} is not offsite", "use --from offsite or leave it out"
            )
        if from_ and (parsed.backup is None or parsed.backup.offsite is None):
            raise DeployError(
                f"environment {parsed.name} has no backup.offsite: nothing to restore from",
                "add a backup.offsite section (docs/user-guide/offsite.md) and deploy",
            )
        if dry_run:
            if from_:
                print(
                    f"first: fetch set {set} from the off-host repository into "
                    f"{paths.BACKUP_DIR} (staging there, verified, renamed into place; "
                    "skipped when the set is complete on the host)"
                )
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
        with where.connect(parsed) as connection:
            host_scripts.refuse_older_scripts(connection, parsed.name, "`inv restore`")
            if from_:
                set = offsite_fetch.resolve(connection, parsed, set)
                offsite_fetch.fetch(connection, parsed, set, _say)
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


@_host_task(
    help={
        "env": ENV_HELP,
        "set": "set id in the off-host repository, or latest (its newest of this environment)",
    }
)
def recover(c: Context, env: str = "", set: str = "latest", where: _Host = ANY_HOST) -> None:
    """A lost host back to running: new host → configure → deploy → restore from off-host."""
    with _errors(on_host=True):
        parsed = _load(env)
        recovery.check_request(parsed, set, where.host)
        tree = _render_for_remote(parsed)
        print(f"recover {parsed.name} from the off-host repository (set {set})")
        done = recovery.recover(parsed, tree, set, _say, where)
        total = sum(took for _, took in done.timings)
        print(f"recovered {parsed.name} on {done.target} from set {done.set_id} in {total:.0f} s")
        _print_services(done.services)


@_host_task(
    name="fetch-backup",
    help={
        "env": ENV_HELP,
        "set": "set id, or latest",
        "to": "local directory (the set lands in DIR/SET_ID/)",
        "offsite": "take the set from the off-host repository (backup.offsite): restored into "
        "scratch on the host, verified, downloaded, the scratch removed; the host's own sets "
        "are not touched (latest: the repository's newest set)",
    },
)
def fetch_backup(
    c: Context,
    env: str = "",
    set: str = "latest",
    to: str = "",
    where: _Host = ANY_HOST,
    offsite: bool = False,
) -> None:
    """Download a backup set with its manifests; verified by checksum, resumable."""
    with _errors(on_host=True):
        parsed = _load(env)
        if not to:
            raise DeployError("no destination given", "pass --to DIR")
        operations.check_set(set)
        operations.local_destination(Path(to))  # before the host's work, not after
        if offsite:
            offsite_fetch.require_offsite(parsed)
        with where.connect(parsed) as connection:
            if offsite:
                set_id = offsite_fetch.resolve(connection, parsed, set)
                fetched = offsite_fetch.download(connection, parsed, set_id, Path(to), _say)
            else:
                fetched = operations.fetch(connection, parsed, set, Path(to), _say)
        print(
            f"backup set {fetched.set_id} in {fetched.directory}: {len(fetched.downloaded)} "
            f"downloaded, {len(fetched.kept)} already there, all checksums match"
        )


SANDBOX_ENV_HELP = f"the sandbox environment (default {sandbox.DEFAULT_ENV})"


@task(name="up", help={"env": SANDBOX_ENV_HELP})
def sandbox_up(c: Context, env: str = sandbox.DEFAULT_ENV) -> None:
    """Same as `inv deploy --env sandbox-sqlite`: provision an LXD host, configure, deploy."""
    deploy(c, env=env)
    print(f"next: inv backup --env {env} && inv backups --env {env}; remove: inv sandbox.down")


@task(name="down", help={"env": SANDBOX_ENV_HELP})
def sandbox_down(c: Context, env: str = sandbox.DEFAULT_ENV) -> None:
    """Same as `inv destroy --env sandbox-sqlite --delete-backups`: remove the sandbox host."""
    destroy(c, env=env, delete_backups=True)


@task(name="status", help={"env": SANDBOX_ENV_HELP})
def sandbox_status(c: Context, env: str = sandbox.DEFAULT_ENV) -> None:
    """Same as `inv status --env sandbox-sqlite`."""
    status(c, env=env)


sandbox_tasks = Collection("sandbox", sandbox_up, sandbox_down, sandbox_status)


ns = Collection(
    validate,
    render,
    create_template,
    push,
    install_cron,
    provision,
    register,
    configure,
    deploy,
    destroy,
    status,
    backup,
    backups,
    verify,
    restore,
    recover,
    fetch_backup,
    build_image,
    publish,
    sandbox_tasks,
)
