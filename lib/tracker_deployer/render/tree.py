"""The rendered tree: which files land where on the host, with which content,
mode and owner; and writing it to ``build/NAME`` with its manifest."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Unpack

import jinja2

from tracker_deployer import (
    __version__,
    backup_layout,
    compose,
    exit_codes,
    monitoring,
    offsite,
    paths,
    ports,
)
from tracker_deployer.backup_layout import SET_ID
from tracker_deployer.config.model import Env, MysqlDatabase
from tracker_deployer.errors import DeployError, RenderError
from tracker_deployer.render import quoting
from tracker_deployer.topology import APP_GID, APP_UID, DotEnv, derive, proxied_upstreams

ROOT_UID = 0
ROOT_GID = 0
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
# The manifest's "generator" starts with this: it is how `render --out` knows a
# directory it may replace is one it wrote itself.
GENERATOR = "tracker-deployer"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RenderedFile:
    path: PurePosixPath  # absolute path on the host
    content: bytes
    mode: int
    uid: int = ROOT_UID
    gid: int = ROOT_GID
    secret: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True, slots=True)
class Directory:
    path: PurePosixPath
    mode: int = 0o755
    uid: int = ROOT_UID
    gid: int = ROOT_GID


@dataclass(frozen=True, slots=True)
class RenderedTree:
    environment: str
    files: tuple[RenderedFile, ...]
    directories: tuple[Directory, ...]

    def file(self, path: str | PurePosixPath) -> RenderedFile:
        wanted = PurePosixPath(path)
        for item in self.files:
            if item.path == wanted:
                return item
        raise KeyError(str(path))

    def text(self, path: str | PurePosixPath) -> str:
        return self.file(path).content.decode("utf-8")

    @property
    def paths(self) -> tuple[PurePosixPath, ...]:
        return tuple(item.path for item in self.files)

    def manifest(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "environment": self.environment,
            "generator": f"{GENERATOR} {__version__}",
            "directories": [
                {"path": str(d.path), "mode": f"{d.mode:04o}", "uid": d.uid, "gid": d.gid}
                for d in self.directories
            ],
            "files": [_manifest_entry(f) for f in self.files],
        }


def _manifest_entry(item: RenderedFile) -> dict[str, Any]:
    """A file's manifest entry. A file that holds secrets gets no sha256 and no size:
    the manifest is world-readable, and a hash of a password file lets anyone who has
    it test guessed passwords offline (its length narrows the guess)."""
    entry: dict[str, Any] = {
        "path": str(item.path),
        "mode": f"{item.mode:04o}",
        "uid": item.uid,
        "gid": item.gid,
        "secret": item.secret,
    }
    if not item.secret:
        entry["size"] = len(item.content)
        entry["sha256"] = item.sha256
    return entry


# --------------------------------------------------------------------------- templates


def _environment(templates_dir: Path) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - we render config files, not HTML
    )
    environment.filters.update(
        sh=quoting.shell,
        dotenv=quoting.dotenv,
        toml=quoting.toml,
        yaml=quoting.yaml,
        url=quoting.url_part,
    )
    # Templates take fixed facts from their owners (e.g. paths.DRILL_DIR, exit_codes.LOCK_BUSY).
    environment.globals["paths"] = paths
    environment.globals["backup_layout"] = backup_layout
    environment.globals["monitoring"] = monitoring
    environment.globals["ports"] = ports
    environment.globals["exit_codes"] = exit_codes
    environment.globals["compose_argv"] = compose.argv
    environment.globals["kill_after_seconds"] = KILL_AFTER_SECONDS
    environment.globals["query_timeout_seconds"] = QUERY_TIMEOUT_SECONDS
    environment.globals["tracker_start_timeout_seconds"] = TRACKER_START_TIMEOUT_SECONDS
    # The deploy marker's states (backup/deploy-marker.sh.j2, included by every
    # script that reads the marker).
    environment.globals["deploy_failed"] = DEPLOY_FAILED
    environment.globals["deploy_pushed"] = DEPLOY_PUSHED
    environment.globals["deploy_marker_max_age_seconds"] = DEPLOY_MARKER_MAX_AGE_SECONDS
    environment.globals["host_scripts_line"] = host_scripts_line()
    return environment


def _render_template(environment: jinja2.Environment, name: str, **context: Any) -> bytes:
    try:
        text = environment.get_template(name).render(**context)
    except jinja2.TemplateSyntaxError as error:
        raise RenderError(
            f"template {error.name or name} line {error.lineno}: {error.message}",
            "fix the template under templates/",
        ) from None
    except jinja2.TemplateNotFound as error:
        raise RenderError(
            f"template {error.name} not found",
            "run from a complete checkout of the repository",
        ) from None
    except jinja2.UndefinedError as error:
        raise RenderError(f"template {name}: {error.message}", "fix the template") from None
    if not text.endswith("\n"):
        text += "\n"
    return text.encode("utf-8")


# --------------------------------------------------------------------------- values


def database_path(env: Env) -> str:
    """The tracker's ``core.database.path``: a file, or a MySQL URL."""
    database = env.database
    if isinstance(database, MysqlDatabase):
        user = quoting.url_part(database.username)
        password = quoting.url_part(database.password.reveal())
        return f"mysql://{user}:{password}@{database.host}:{database.port}/{database.database_name}"
    return paths.sqlite_in_tracker(database.database_name)


def dotenv_values(env: Env) -> list[tuple[str, str]]:
    values = [
        (DotEnv.USER_ID, str(APP_UID)),
        (DotEnv.DATABASE_DRIVER, env.database.driver),
        (DotEnv.CONFIG_TOML_PATH, paths.TRACKER_CONFIG_IN_CONTAINER),
    ]
    database = env.database
    if isinstance(database, MysqlDatabase) and env.mysql:
        values += [
            # The image's entrypoint pastes them into SQL and an option file.
            (DotEnv.MYSQL_ROOT_PASSWORD, quoting.mysql_image_env(env.mysql.root_password.reveal())),
            (DotEnv.MYSQL_DATABASE, database.database_name),
            (DotEnv.MYSQL_USER, database.username),
            (DotEnv.MYSQL_PASSWORD, quoting.mysql_image_env(database.password.reveal())),
        ]
    if env.grafana:
        values += [
            (DotEnv.GRAFANA_ADMIN_USER, env.grafana.admin_user),
            (DotEnv.GRAFANA_ADMIN_PASSWORD, env.grafana.admin_password.reveal()),
        ]
    return values


def backup_settings(env: Env) -> list[tuple[str, str]]:
    assert env.backup is not None
    settings = [
        ("BACKUP_MODE", "single"),
        ("BACKUP_RETENTION_DAYS", str(env.backup.retention_days)),
        ("BACKUP_PATHS_FILE", str(paths.BACKUP_PATHS_IN_BACKUP)),
        ("BACKUP_COMPRESSION", env.backup.compression),
        ("BACKUP_COMPRESSION_LEVEL", str(env.backup.compression_level)),
    ]
    database = env.database
    if isinstance(database, MysqlDatabase):
        settings += [
            ("DB_TYPE", "mysql"),
            ("DB_HOST", database.host),
            ("DB_PORT", str(database.port)),
            ("DB_USER", database.username),
            ("DB_PASSWORD", database.password.reveal()),
            ("DB_NAME", database.database_name),
        ]
    else:
        sqlite = paths.in_backup_container(paths.sqlite_on_host(database.database_name))
        settings += [("DB_TYPE", "sqlite"), ("DB_PATH", str(sqlite))]
    return settings


def backup_monitoring(env: Env) -> dict[str, str] | None:
    """The scrape job and rules file in prometheus.yml (None: no backup monitoring)."""
    if not monitoring.monitors_backups(env):
        return None
    # Relative: Prometheus (and promtool) resolve it next to prometheus.yml.
    rules = paths.PROMETHEUS_RULES.relative_to(paths.PROMETHEUS_CONFIG.parent)
    return {
        "job": monitoring.SCRAPE_JOB,
        "target": f"{monitoring.NODE_EXPORTER_SERVICE}:{monitoring.NODE_EXPORTER_PORT}",
        "scrape_interval": f"{monitoring.backup_scrape_seconds(env)}s",
        "rules_file": str(rules),
    }


def backup_paths(config_files: Iterable[PurePosixPath]) -> list[str]:
    """Every rendered config file, as seen in the backup container."""
    wanted = {path for path in config_files if path.is_relative_to(paths.DEPLOY_DIR)}
    return sorted(str(paths.in_backup_container(path)) for path in wanted)


# --------------------------------------------------------------------------- render


def render(env: Env, templates_dir: Path = paths.TEMPLATES_DIR) -> RenderedTree:
    """Everything that lands on the host for ``env``. Pure and deterministic."""
    jinja = _environment(templates_dir)
    topology = derive(env)
    files: list[RenderedFile] = []
    directories: dict[PurePosixPath, Directory] = {}

    def directory(path: PurePosixPath, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        directories[path] = Directory(path, mode, uid, gid)

    def add(
        path: PurePosixPath,
        template: str,
        *,
        mode: int = 0o644,
        gid: int = ROOT_GID,
        secret: bool = False,
        **context: Any,
    ) -> None:
        content = _render_template(jinja, template, env=env, **context)
        files.append(RenderedFile(path, content, mode, ROOT_UID, gid, secret))

    directory(paths.DEPLOY_DIR)
    directory(paths.STORAGE_DIR)
    for sub in ("tracker", "tracker/etc"):
        directory(paths.STORAGE_DIR / sub, 0o750, ROOT_UID, APP_GID)
    for sub in ("tracker/lib", "tracker/lib/database", "tracker/log"):
        directory(paths.STORAGE_DIR / sub, 0o750, APP_UID, APP_GID)

    add(paths.COMPOSE_FILE, "docker-compose/docker-compose.yml.j2", topology=topology)
    add(
        paths.DOTENV_FILE,
        "docker-compose/env.j2",
        mode=0o640,
        gid=APP_GID,
        secret=True,
        dotenv=dotenv_values(env),
    )
    on_reverse_proxy = any(endpoint.use_tls_proxy for endpoint in env.tracker.http_trackers)
    add(
        paths.TRACKER_CONFIG,
        "tracker/tracker.toml.j2",
        mode=0o640,
        gid=APP_GID,
        secret=True,
        database={"driver": env.database.driver, "path": database_path(env)},
        on_reverse_proxy=on_reverse_proxy,
    )
    if env.prometheus:
        directory(paths.STORAGE_DIR / "prometheus")
        directory(paths.PROMETHEUS_ETC_DIR, 0o750, ROOT_UID, APP_GID)
        add(
            paths.PROMETHEUS_CONFIG,
            "prometheus/prometheus.yml.j2",
            mode=0o640,
            gid=APP_GID,
            secret=True,
            backup_monitoring=backup_monitoring(env),
        )
        if monitoring.monitors_backups(env):
            add(
                paths.PROMETHEUS_RULES,
                "prometheus/backup-alerts.yml.j2",
                alerts=monitoring.alert_settings(env),
                m=monitoring.METRICS,
                log_file=paths.BACKUP_LOG,
                offsite_check_status=paths.OFFSITE_LAST_CHECK,
                textfile=paths.METRICS_TEXTFILE_DIR / monitoring.TEXTFILE_NAME,
            )
    if env.grafana:
        provisioning = paths.GRAFANA_PROVISIONING
        for sub in ("", "/provisioning", "/provisioning/datasources", "/provisioning/dashboards"):
            directory(PurePosixPath(f"{paths.STORAGE_DIR}/grafana{sub}"))
        directory(provisioning / "dashboards/torrust")
        add(
            provisioning / "datasources/prometheus.yml",
            "grafana/provisioning/datasources/prometheus.yml.j2",
        )
        add(
            provisioning / "dashboards/torrust.yml",
            "grafana/provisioning/dashboards/torrust.yml.j2",
        )
        add(
            provisioning / "dashboards/torrust/tracker.json",
            "grafana/provisioning/dashboards/torrust/tracker.json.j2",
        )
        if monitoring.monitors_backups(env):
            add(
                paths.GRAFANA_BACKUPS_DASHBOARD,
                "grafana/provisioning/dashboards/torrust/backups.json.j2",
                alerts=monitoring.alert_settings(env),
                m=monitoring.METRICS,
            )
    if env.https:
        directory(paths.STORAGE_DIR / "caddy")
        directory(paths.STORAGE_DIR / "caddy/etc")
        add(paths.CADDYFILE, "caddy/Caddyfile.j2", proxied=proxied_upstreams(env))
    if env.backup:
        # Root-owned: only root's metrics and drill scripts write here.
        directory(paths.METRICS_TEXTFILE_DIR.parent)
        directory(paths.METRICS_TEXTFILE_DIR)
        directory(paths.DRILL_DIR)
        directory(paths.BACKUP_DIR, 0o750, APP_UID, APP_GID)
        directory(paths.BACKUP_ETC_DIR, 0o750, ROOT_UID, APP_GID)
        directory(paths.BACKUP_STATUS_DIR, 0o755, ROOT_UID, ROOT_GID)
        add(
            paths.BACKUP_CONF,
            "backup/backup.conf.j2",
            mode=0o640,
            gid=APP_GID,
            secret=True,
            settings=backup_settings(env),
        )
        config_files = [item.path for item in files] + [paths.BACKUP_PATHS]
        add(
            paths.BACKUP_PATHS,
            "backup/backup-paths.txt.j2",
            mode=0o640,
            gid=APP_GID,
            backup_paths=backup_paths(config_files),
        )
        common: dict[str, Any] = {
            "deploy_dir": str(paths.DEPLOY_DIR),
            "log_file": str(paths.BACKUP_LOG),
        }
        files.append(
            RenderedFile(
                paths.MAINTENANCE_SCRIPT,
                maintenance_script(env, templates_dir=templates_dir),
                0o700,  # root's alone: it holds backup.notify_url, a credential
                # ...so no sha256 or size of it in the world-readable manifest either.
                secret=env.backup.notify_url is not None,
            )
        )
        files.append(
            RenderedFile(
                paths.METRICS_SCRIPT, metrics_script(env, templates_dir=templates_dir), 0o755
            )
        )
        files.append(
            RenderedFile(
                paths.VERIFY_SCRIPT, verify_script(env, templates_dir=templates_dir), 0o755
            )
        )
        files.append(
            RenderedFile(paths.DRILL_SCRIPT, drill_script(env, templates_dir=templates_dir), 0o755)
        )
        add(
            paths.DRILL_CRON_FILE,
            "backup/tracker-backup-drill.cron.j2",
            schedule=str(env.backup.drill_schedule),
            script=str(paths.DRILL_SCRIPT),
            mailto=env.backup.mailto,
            **common,
        )
        add(
            paths.CRON_FILE,
            "backup/tracker-backup.cron.j2",
            schedule=str(env.backup.schedule),
            script=str(paths.MAINTENANCE_SCRIPT),
            mailto=env.backup.mailto,
            **common,
        )
        add(paths.LOGROTATE_FILE, "backup/tracker-backup.logrotate.j2", **common)
        if env.backup.offsite:
            _add_offsite(env, files, directory, add, templates_dir, common)

    files.sort(key=lambda item: str(item.path))
    ordered_dirs = tuple(directories[key] for key in sorted(directories, key=str))
    return RenderedTree(env.name, tuple(files), ordered_dirs)


def _add_offsite(
    env: Env,
    files: list[RenderedFile],
    directory: Any,
    add: Any,
    templates_dir: Path,
    common: dict[str, Any],
) -> None:
    """backup.offsite's files: restic's settings and password (the modes of
    backup.conf), the directory for an sftp: key, the scheduled check."""
    assert env.backup is not None
    assert env.backup.offsite is not None
    directory(paths.OFFSITE_SSH_DIR, 0o750, ROOT_UID, APP_GID)
    add(
        paths.OFFSITE_ENV_FILE,
        "backup/offsite.env.j2",
        mode=0o640,
        gid=APP_GID,
        secret=True,
        values=offsite.env_file_values(env),
    )
    # restic reads the password file whole, less surrounding whitespace (the config
    # refuses a password that has any), so the newline is harmless.
    password = env.backup.offsite.password.reveal() + "\n"
    files.append(
        RenderedFile(paths.OFFSITE_PASSWORD_FILE, password.encode(), 0o640, ROOT_UID, APP_GID, True)
    )
    files.append(
        RenderedFile(
            paths.OFFSITE_CHECK_SCRIPT,
            offsite_check_script(env, templates_dir=templates_dir),
            0o755,
        )
    )
    add(
        paths.OFFSITE_CHECK_CRON_FILE,
        "backup/tracker-backup-offsite-check.cron.j2",
        schedule=str(env.backup.offsite.check_schedule),
        script=str(paths.OFFSITE_CHECK_SCRIPT),
        mailto=env.backup.mailto,
        **common,
    )


def offsite_check_script(
    env: Env,
    *,
    lock_wait_seconds: int = offsite.CHECK_LOCK_WAIT_SECONDS,
    templates_dir: Path = paths.TEMPLATES_DIR,
    **where: Unpack[paths.HostPaths],
) -> bytes:
    """The host's scheduled `restic check`."""
    assert env.backup is not None
    assert env.backup.offsite is not None
    return _render_template(
        _environment(templates_dir),
        "backup/offsite-check.sh.j2",
        env=env,
        **paths.host_paths(where),
        lock_wait_seconds=lock_wait_seconds,
        offsite=offsite_settings(env),
        read_data=offsite.read_data_text(env.backup.offsite.check_read_data),
    )


def operation_script(name: str, templates_dir: Path = paths.TEMPLATES_DIR, **context: Any) -> str:
    """A script from templates/operations/ (run on the host by backups/verify/restore)."""
    return _render_template(
        _environment(templates_dir), f"operations/{name}.sh.j2", **context
    ).decode()


# The parts of backup.sh that list the sets (docker/backup/lib/): the inventory
# script carries them for a host where the backup container cannot run.
LISTING_PARTS = ("layout.sh", "list.sh")


def backup_listing_shell(context: Path = paths.BACKUP_IMAGE_CONTEXT) -> str:
    """backup.sh's own set layout and `list --records`, as shell text to inline
    (each part without its first line, the file-wide shellcheck directive)."""
    parts = [(context / "lib" / name).read_text(encoding="utf-8") for name in LISTING_PARTS]
    return "".join(part.split("\n", 1)[1] for part in parts)


# The inventory's bound on its backup container's listing; then it lists the sets
# on the host itself (whoever runs the script waits this long and then some).
INVENTORY_LIST_TIMEOUT_SECONDS = 120


def inventory_script(
    *,
    verify: bool,
    backup_image: str,
    templates_dir: Path = paths.TEMPLATES_DIR,
    **where: Unpack[paths.HostPaths],
) -> str:
    """The host script that lists the backup sets (through `backup.sh list --records`
    in ``backup_image``), the last run and the drills (`inv backups`, `status`,
    `destroy`)."""
    return operation_script(
        "inventory",
        templates_dir,
        **paths.host_paths(where),
        marker_name=paths.TRACKER_STOPPED_MARKER.name,
        verify=verify,
        backup_image=backup_image,
        set_id_pattern=SET_ID.pattern,
        listing_shell=backup_listing_shell(),
        list_timeout_seconds=INVENTORY_LIST_TIMEOUT_SECONDS,
    )


# After a TERM (a time-out, or a signal passed on), the time a host script's child
# gets before it is killed.
KILL_AFTER_SECONDS = 10
# The host scripts' bounds on a status query (docker compose ps, docker inspect,
# docker wait for a stop cut off) and on the tracker's start (maintenance, restore).
QUERY_TIMEOUT_SECONDS = 60
TRACKER_START_TIMEOUT_SECONDS = 300
# The maintenance script's bounds on the work done while the tracker runs again
# (docs/user-guide/backup.md, "Bounded downtime"): the snapshot container from
# its open line to its end (MySQL: the dump), and `finish`. Generous: a hang
# reaches them, a large database does not.
DUMP_TIMEOUT_SECONDS = 6 * 3600
FINISH_TIMEOUT_SECONDS = 6 * 3600
# Its bound on the snapshot container's start and preparation, before the
# tracker is stopped (an image pull included, should the image be missing).
READY_TIMEOUT_SECONDS = 300


def maintenance_script(
    env: Env,
    *,
    dump_timeout_seconds: int = DUMP_TIMEOUT_SECONDS,
    ready_timeout_seconds: int = READY_TIMEOUT_SECONDS,
    templates_dir: Path = paths.TEMPLATES_DIR,
    **where: Unpack[paths.HostPaths],
) -> bytes:
    """The host's maintenance-backup.sh; tests also shorten the dump's and the ready
    wait's bounds."""
    assert env.backup is not None
    at = paths.host_paths(where)
    return _render_template(
        _environment(templates_dir),
        "backup/maintenance-backup.sh.j2",
        env=env,
        **at,
        marker_file=f"{at['status_dir']}/{paths.TRACKER_STOPPED_MARKER.name}",
        notify_url=env.backup.notify_url or "",
        max_downtime_seconds=env.backup.max_downtime_seconds,
        offsite=offsite_settings(env),
        snapshot_ready_line=paths.SNAPSHOT_READY_LINE,
        snapshot_go_line=paths.SNAPSHOT_GO_LINE,
        snapshot_open_line=paths.SNAPSHOT_OPEN_LINE,
        dump_timeout_seconds=dump_timeout_seconds,
        ready_timeout_seconds=ready_timeout_seconds,
        finish_timeout_seconds=FINISH_TIMEOUT_SECONDS,
    )


# The contract between the host's scheduled scripts and this deployer's operations:
# the deploy marker's states, the backup lock's path, the status files they share.
# The maintenance script states it in a line of its own (host_scripts_line). Bump it
# when that contract changes: a deploy, push or install-cron then ends the older
# scripts' schedules before it changes anything (waiting for a run of theirs), and
# restore, verify and destroy refuse such a host until one of those has.
HOST_SCRIPTS_VERSION = 2


def host_scripts_line(version: int = HOST_SCRIPTS_VERSION) -> str:
    return f"# tracker-deployer host scripts: {version}"


# A deploy marker older than this is a killed deploy's: backup runs go on. A deploy
# holds it from its push until the MySQL server has the config's passwords (image
# pulls included).
DEPLOY_MARKER_MAX_AGE_SECONDS = 3600
# The marker's content once a deploy failed in that window: runs refuse until one succeeds.
DEPLOY_FAILED = "failed"
# Its content from the push's change of a file a password reaches (+ the time):
# runs skip while it is younger than the bound, and refuse after (the deploy never
# ended), as on DEPLOY_FAILED.
DEPLOY_PUSHED = "pushed:"


def offsite_settings(env: Env) -> dict[str, Any] | None:
    """What the host scripts need of backup.offsite (None: no off-host copies)."""
    if env.backup is None or env.backup.offsite is None:
        return None
    return {
        "service": offsite.SERVICE,
        "exit_failed": offsite.EXIT_OFFSITE_FAILED,
        "timeout_seconds": offsite.UPLOAD_TIMEOUT_SECONDS,
        "check_timeout_seconds": offsite.CHECK_TIMEOUT_SECONDS,
        "status_name": paths.OFFSITE_LAST_UPLOAD.name,
        "check_status_name": paths.OFFSITE_LAST_CHECK.name,
        "hostname_export": offsite.hostname_export(),
        "still_running_check": offsite.still_running_check(),
        "exit_locked": offsite.OFFSITE_SH_EXIT["LOCKED"],
        "allow_init_variable": offsite.ALLOW_INIT_VARIABLE,
        "uploader_option": offsite.uploader_option(),
        "repository_id": offsite.repository_id(env),
    }


def metrics_script(
    env: Env, *, templates_dir: Path = paths.TEMPLATES_DIR, **where: Unpack[paths.HostPaths]
) -> bytes:
    """The host's tracker-backup-metrics.sh."""
    return _render_template(
        _environment(templates_dir),
        "backup/backup-metrics.sh.j2",
        env=env,
        **paths.host_paths(where),
        textfile_name=monitoring.TEXTFILE_NAME,
        m=monitoring.METRICS,
    )


def verify_script(
    env: Env,
    *,
    set_id: str | None = None,
    drill: bool = True,
    sets_subdir: str = "",
    lock_wait_seconds: int | None = None,
    templates_dir: Path = paths.TEMPLATES_DIR,
    **where: Unpack[paths.HostPaths],
) -> bytes:
    """templates/operations/verify.sh.j2: for ``set_id``, or (None) the script installed
    on the host, which takes the set id as its argument. ``sets_subdir`` (relative to
    the backup directory): where the set's files are, when not in the backup directory itself.
    ``lock_wait_seconds``: the script takes the host's backup lock, waiting that long
    (None: its caller holds the lock)."""
    return operation_script(
        "verify",
        templates_dir,
        **paths.host_paths(where),
        sets_subdir=sets_subdir,
        lock_wait_seconds=lock_wait_seconds,
        set_id=set_id,
        db_type="mysql" if env.uses_mysql else "sqlite",
        drill=drill,
        backup_image=env.images.backup,
        mysql_image=env.images.mysql,
        app_uid=APP_UID,
        app_gid=APP_GID,
    ).encode()


DRILL_LOCK_WAIT_SECONDS = 3600


def drill_script(
    env: Env,
    *,
    lock_wait_seconds: int = DRILL_LOCK_WAIT_SECONDS,
    templates_dir: Path = paths.TEMPLATES_DIR,
    **where: Unpack[paths.HostPaths],
) -> bytes:
    """The host's scheduled restore drill."""
    assert env.backup is not None
    return _render_template(
        _environment(templates_dir),
        "backup/backup-drill.sh.j2",
        env=env,
        **paths.host_paths(where),
        lock_wait_seconds=lock_wait_seconds,
        cron_file=str(paths.DRILL_CRON_FILE),
        drill_schedule=str(env.backup.drill_schedule),
    )


# --------------------------------------------------------------------------- write / read


def _host_to_local(root: Path, path: PurePosixPath) -> Path:
    return root.joinpath(*path.parts[1:])


def write_tree(tree: RenderedTree, out_dir: Path) -> Path:
    """Write ``tree`` to ``out_dir`` (replacing an earlier render there).

    The tree is written next to ``out_dir`` first and swapped in at the end, so
    an interrupted render never leaves a half-written tree. A non-empty
    ``out_dir`` is replaced only when it is an earlier render of this tool
    (:func:`_check_replaceable`); anything else is refused.
    """
    out_dir = out_dir.absolute()
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        # Two commands rendering one environment at once (deploy and push, say) swapped
        # their trees in over each other: one failed, leaving a copy of the old render
        # (secrets and all) beside it. One at a time: a lock on the parent directory.
        parent = os.open(out_dir.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(parent, fcntl.LOCK_EX)
            _remove_leftovers(out_dir)
            return _write_tree(tree, out_dir)
        finally:
            os.close(parent)
    except OSError as error:
        # The generic message named no output directory ("File too large"), or only
        # a temporary directory of ours.
        blocker = _not_a_directory(error)
        if blocker is not None:
            reason = f"{blocker} is not a directory"
        else:
            reason = error.strerror or str(error)
            if error.filename and Path(error.filename) != out_dir:
                reason += f" ({error.filename})"
        raise DeployError(
            f"cannot write the rendered files to {out_dir}: {reason}",
            "check that the path is a directory you can write (with --out, or build/NAME) "
            "and the free space there, or pick another --out",
        ) from None


def _not_a_directory(error: OSError) -> Path | None:
    """The file in the way when ``error`` is a directory that could not be made (or
    used) because a file stands where a directory of its path should be."""
    if not isinstance(error, FileExistsError | NotADirectoryError) or not error.filename:
        return None
    path = Path(os.fsdecode(error.filename))
    while not path.exists() and path != path.parent:
        path = path.parent
    return None if path.is_dir() else path


# The prefixes of _write_tree's temporary directories beside the output (then
# mkdtemp's 8 characters): names no operator gives a directory of their own.
RENDER_STAGING_INFIX = ".tracker-deployer-render."
RENDER_OLD_INFIX = ".tracker-deployer-render-old."


def _leftover_pattern(out_dir: Path) -> re.Pattern[str]:
    """The names of :func:`_write_tree`'s temporary directories beside ``out_dir``:
    a staging tree and the earlier render moved aside (group 1 then)."""
    staging, old = (
        re.escape(f".{out_dir.name}{infix}") for infix in (RENDER_STAGING_INFIX, RENDER_OLD_INFIX)
    )
    return re.compile(rf"(?:{staging}|({old}))[a-z0-9_]{{8}}")


def _remove_leftovers(out_dir: Path) -> None:
    """Remove what a killed render (SIGKILL: no cleanup ran) left beside ``out_dir``:
    hidden copies of a render, secrets and all. The caller holds the parent's lock,
    so no render is writing them now. An earlier render moved aside and not yet
    replaced (killed between the two renames) goes back in place first."""
    pattern = _leftover_pattern(out_dir)
    for sibling in out_dir.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match is None or sibling.is_symlink() or not sibling.is_dir():
            continue
        earlier = sibling / out_dir.name
        if (
            match.group(1)  # the earlier render, moved aside
            and not out_dir.exists()
            and not out_dir.is_symlink()
            and earlier.is_dir()
            and not earlier.is_symlink()
        ):
            earlier.rename(out_dir)
        shutil.rmtree(sibling)


def _write_tree(tree: RenderedTree, out_dir: Path) -> Path:
    _check_replaceable(out_dir)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}{RENDER_STAGING_INFIX}", dir=out_dir.parent)
    )
    old: Path | None = None
    try:
        for directory in tree.directories:
            local = _host_to_local(staging, directory.path)
            local.mkdir(parents=True, exist_ok=True)
        for item in tree.files:
            local = _host_to_local(staging, item.path)
            local.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(item.content)
            # A secret is the operator's alone here (0600): the host's group (gid 1000)
            # is no group of this machine, and the operator's may be shared.
            local.chmod(0o600 if item.secret else item.mode)
        for directory in tree.directories:
            _host_to_local(staging, directory.path).chmod(max(directory.mode, 0o700))
        manifest = json.dumps(tree.manifest(), indent=2, sort_keys=True) + "\n"
        (staging / MANIFEST_NAME).write_text(manifest, encoding="utf-8")
        staging.chmod(0o755)
        if out_dir.exists():
            old = Path(
                tempfile.mkdtemp(prefix=f".{out_dir.name}{RENDER_OLD_INFIX}", dir=out_dir.parent)
            )
            out_dir.rename(old / out_dir.name)
            staging.rename(out_dir)
            shutil.rmtree(old)
        else:
            staging.rename(out_dir)
    except BaseException:
        # Stopped between the two renames: the earlier render goes back in place.
        if old is not None and (old / out_dir.name).exists() and not out_dir.exists():
            (old / out_dir.name).rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _check_replaceable(out_dir: Path) -> None:
    """Refuse ``out_dir`` unless it is new, empty, or a render this tool wrote: a
    regular ``manifest.json`` whose own ``generator`` and ``format`` keys say so."""
    hint = (
        "pick an empty or new directory for --out; only a directory that `inv render` "
        "wrote itself is replaced"
    )
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir():
        raise DeployError(f"{out_dir} exists and is not a directory", hint)
    try:
        if not any(out_dir.iterdir()):
            return
    except OSError as error:
        raise DeployError(f"cannot list {out_dir}: {error.strerror}", hint) from None
    manifest_path = out_dir / MANIFEST_NAME
    try:
        manifest_info = manifest_path.lstat()
    except FileNotFoundError:
        raise DeployError(
            f"{out_dir} exists, is not empty and holds no {MANIFEST_NAME}", hint
        ) from None
    data: Any = None
    if stat.S_ISREG(manifest_info.st_mode) and manifest_info.st_size <= MAX_MANIFEST_BYTES:
        try:
            data = json.loads(manifest_path.read_bytes())
        except (OSError, ValueError):
            data = None
    generator = data.get("generator") if isinstance(data, dict) else None
    ours = (
        isinstance(generator, str)
        and generator.startswith(GENERATOR + " ")
        and type(data.get("format")) is int
        and data.get("format") == MANIFEST_FORMAT
    )
    if not ours:
        raise DeployError(
            f"{out_dir} holds a {MANIFEST_NAME} that this tool did not write (it needs "
            f'"generator": "{GENERATOR} …" and "format": {MANIFEST_FORMAT}); not replacing it',
            hint,
        )
