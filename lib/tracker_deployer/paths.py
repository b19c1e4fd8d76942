"""Fixed paths: on the target host, in containers, and in this repository.

The render output is a tree whose paths ARE the host's paths, so these
constants are the single source for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TypedDict, cast

# On the host.
DEPLOY_DIR = PurePosixPath("/opt/torrust")
COMPOSE_FILE = DEPLOY_DIR / "docker-compose.yml"
DOTENV_FILE = DEPLOY_DIR / ".env"
STORAGE_DIR = DEPLOY_DIR / "storage"
TRACKER_LIB_DIR = STORAGE_DIR / "tracker/lib"
TRACKER_LOG_DIR = STORAGE_DIR / "tracker/log"
TRACKER_ETC_DIR = STORAGE_DIR / "tracker/etc"
TRACKER_CONFIG = TRACKER_ETC_DIR / "tracker.toml"
SQLITE_DIR = TRACKER_LIB_DIR / "database"
PROMETHEUS_ETC_DIR = STORAGE_DIR / "prometheus/etc"
PROMETHEUS_CONFIG = PROMETHEUS_ETC_DIR / "prometheus.yml"
GRAFANA_PROVISIONING = STORAGE_DIR / "grafana/provisioning"
CADDYFILE = STORAGE_DIR / "caddy/etc/Caddyfile"
BACKUP_DIR = STORAGE_DIR / "backup"
# The backup container's settings (backup.conf, off-host secrets): root's, and
# outside storage/backup, which uid 1000 owns: there that user could rename the
# directory and plant a link root's deploy would write secrets through.
BACKUP_ETC_DIR = STORAGE_DIR / "backup-etc"
BACKUP_CONF = BACKUP_ETC_DIR / "backup.conf"
BACKUP_PATHS = BACKUP_ETC_DIR / "backup-paths.txt"
# The maintenance script's status and its "tracker stopped by a backup run"
# marker: root-owned (0755) in a root-owned parent, outside storage/backup,
# which uid 1000 owns (root must never follow a link that user can plant).
BACKUP_STATUS_DIR = DEPLOY_DIR / "backup-status"
TRACKER_STOPPED_MARKER = BACKUP_STATUS_DIR / "tracker-stopped-by-backup"
# Written by `inv recover` before it changes a host, removed just before the tracker starts:
# a host that has it may be recovered again (a recover that failed midway).
RECOVER_MARKER = BACKUP_STATUS_DIR / "recover-in-progress"
# Written by a restore that leaves the MySQL database partly restored (the tracker
# stopped); removed by the restore that succeeds after it. Backup runs refuse meanwhile.
RESTORE_INCOMPLETE_MARKER = BACKUP_STATUS_DIR / "restore-incomplete"
# Written by a MySQL `inv deploy` (under the backup lock) before its push, removed
# once the server has the config's passwords: scheduled runs skip meanwhile (the
# files may hold a password the server does not have yet; a run would restart the
# tracker on them). "failed" when the deploy failed in between: runs refuse.
DEPLOY_MARKER = BACKUP_STATUS_DIR / "deploy-in-progress"
MAINTENANCE_SCRIPT = PurePosixPath("/usr/local/bin/maintenance-backup.sh")
# Not paths: the lines of `backup.sh snapshot --gate` and the maintenance script.
# The container prints SNAPSHOT_READY_LINE once everything that needs no stopped
# tracker is done; the script then stops the tracker and writes SNAPSHOT_GO_LINE
# to its stdin. The container prints SNAPSHOT_OPEN_LINE once the database's
# consistent view exists; the script starts the tracker on it.
SNAPSHOT_READY_LINE = "snapshot-ready"
SNAPSHOT_GO_LINE = "go"
SNAPSHOT_OPEN_LINE = "snapshot-open"
CRON_FILE = PurePosixPath("/etc/cron.d/tracker-backup")
LOGROTATE_FILE = PurePosixPath("/etc/logrotate.d/tracker-backup")
BACKUP_LOG = PurePosixPath("/var/log/tracker-backup.log")
# In /run itself (root's, 0755), not /run/lock (world-writable): there uid 1000
# could create the file first and hold it (every run, restore and deploy then
# found the lock busy), or, with fs.protected_regular, make root's open fail.
BACKUP_LOCK = PurePosixPath("/run/tracker-backup.lock")
# Where the scripts of host scripts version 1 took it: a deploy waits for a run of
# theirs there before it ends their schedules (render.tree.HOST_SCRIPTS_VERSION).
OLDER_BACKUP_LOCK = PurePosixPath("/run/lock/tracker-backup.lock")
# Backup health for Prometheus (node_exporter's textfile collector) and the
# scheduled restore drills. Both directories are root-owned in root-owned
# parents, outside storage/backup (which uid 1000 owns), so root never writes
# through a path that user could plant.
METRICS_TEXTFILE_DIR = STORAGE_DIR / "node-exporter/textfile"
METRICS_TEXTFILE_IN_CONTAINER = PurePosixPath("/textfile")
METRICS_SCRIPT = PurePosixPath("/usr/local/bin/tracker-backup-metrics.sh")
DRILL_DIR = STORAGE_DIR / "backup-drills"
# Where a restore drill's scratch (the restored SQLite file, the throw-away MySQL's
# backup.conf) is made, as root's own mktemp directory: not the backup directory,
# which uid 1000 owns. Mounted into the backup container at DRILL_IN_BACKUP.
DRILL_SCRATCH_PARENT = PurePosixPath("/var/tmp")  # noqa: S108 (mktemp -d: root-only dirs)
DRILL_SCRIPT = PurePosixPath("/usr/local/bin/tracker-backup-drill.sh")
VERIFY_SCRIPT = PurePosixPath("/usr/local/bin/tracker-backup-verify.sh")
DRILL_LAST = DRILL_DIR / "last-drill.env"
DRILL_CRON_FILE = PurePosixPath("/etc/cron.d/tracker-backup-drill")
PROMETHEUS_RULES = PROMETHEUS_ETC_DIR / "backup-alerts.yml"
PROMETHEUS_CONFIG_IN_CONTAINER = PurePosixPath("/etc/prometheus")
GRAFANA_BACKUPS_DASHBOARD = GRAFANA_PROVISIONING / "dashboards/torrust/backups.json"
# Off-host copies (backup.offsite): the restic settings and password next to
# backup.conf (same modes), the operator's SSH key for sftp: repositories, the
# scheduled `restic check`, and their status files in BACKUP_STATUS_DIR.
OFFSITE_ENV_FILE = BACKUP_ETC_DIR / "offsite.env"
OFFSITE_PASSWORD_FILE = BACKUP_ETC_DIR / "offsite.password"
OFFSITE_SSH_DIR = BACKUP_ETC_DIR / "offsite-ssh"
OFFSITE_CHECK_SCRIPT = PurePosixPath("/usr/local/bin/tracker-backup-offsite-check.sh")
OFFSITE_CHECK_CRON_FILE = PurePosixPath("/etc/cron.d/tracker-backup-offsite-check")
OFFSITE_LAST_UPLOAD = BACKUP_STATUS_DIR / "last-offsite.env"
# The repository (its id) an `inv recover` fetched from: before this host's first
# upload, a location without a repository is then a gone one, not a new one.
OFFSITE_REPOSITORY_KNOWN = BACKUP_STATUS_DIR / "offsite-repository"
OFFSITE_LAST_CHECK = BACKUP_STATUS_DIR / "last-offsite-check.env"

# In containers (topology.py mounts the host paths above there).
TRACKER_LIB_IN_CONTAINER = "/var/lib/torrust/tracker"
TRACKER_LOG_IN_CONTAINER = "/var/log/torrust/tracker"
TRACKER_ETC_IN_CONTAINER = "/etc/torrust/tracker"
TRACKER_CONFIG_IN_CONTAINER = f"{TRACKER_ETC_IN_CONTAINER}/{TRACKER_CONFIG.name}"
MYSQL_DATA_IN_CONTAINER = "/var/lib/mysql"
GRAFANA_DATA_IN_CONTAINER = "/var/lib/grafana"
GRAFANA_PROVISIONING_IN_CONTAINER = "/etc/grafana/provisioning"
CADDYFILE_IN_CONTAINER = "/etc/caddy/Caddyfile"
CADDY_DATA_IN_CONTAINER = "/data"
CADDY_CONFIG_IN_CONTAINER = "/config"
# The backup container: the image's defaults (docker/backup/backup.sh: CONFIG_FILE,
# BACKUP_ROOT; tests/unit/test_owners.py checks them) and the read-only data mounts.
BACKUP_ROOT_IN_BACKUP = PurePosixPath("/backups")
BACKUP_ETC_IN_BACKUP = PurePosixPath("/etc/backup")
BACKUP_CONF_IN_BACKUP = BACKUP_ETC_IN_BACKUP / BACKUP_CONF.name
BACKUP_PATHS_IN_BACKUP = BACKUP_ETC_IN_BACKUP / BACKUP_PATHS.name
DRILL_IN_BACKUP = PurePosixPath("/drill")  # a restore drill's scratch (verify.sh)
STORAGE_IN_BACKUP = PurePosixPath("/data/storage")
COMPOSE_IN_BACKUP = PurePosixPath("/data/compose")
OFFSITE_SCRIPT_IN_BACKUP = PurePosixPath("/usr/local/bin/offsite.sh")


def sqlite_in_tracker(database_name: str) -> str:
    return f"{TRACKER_LIB_IN_CONTAINER}/database/{database_name}"


def sqlite_on_host(database_name: str) -> PurePosixPath:
    return SQLITE_DIR / database_name


def on_host_relative(host_path: PurePosixPath) -> str:
    """A host path under /opt/torrust as compose writes it: relative to the compose file."""
    return f"./{host_path.relative_to(DEPLOY_DIR)}"


def in_backup_container(host_path: PurePosixPath) -> PurePosixPath:
    """Where a host file under /opt/torrust is seen inside the backup container."""
    relative = host_path.relative_to(DEPLOY_DIR)
    if relative.parts[0] == "storage":
        return STORAGE_IN_BACKUP.joinpath(*relative.parts[1:])
    return COMPOSE_IN_BACKUP / relative


# In this repository (the tool runs from a checkout).
REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = REPO_ROOT / "templates"
# The backup image's build context; its lib/ holds the set layout's shell owner.
BACKUP_IMAGE_CONTEXT = REPO_ROOT / "docker" / "backup"
ENVS_DIR = REPO_ROOT / "envs"
BUILD_DIR = REPO_ROOT / "build"
SCHEMA_FILE = REPO_ROOT / "schemas" / "environment-config.json"


class HostPaths(TypedDict, total=False):
    """The host's files a host script uses, by the name its template knows them by.

    Every script renders with :data:`HOST_PATHS` (the constants above); tests pass
    any of these as keyword arguments (``**where``) to point it at a scratch stack.
    """

    deploy_dir: str
    backup_dir: str
    status_dir: str
    drill_dir: str
    lock_file: str
    log_file: str
    metrics_script: str
    verify_script: str
    textfile_dir: str
    sqlite_dir: str


HOST_PATHS: HostPaths = {
    "deploy_dir": str(DEPLOY_DIR),
    "backup_dir": str(BACKUP_DIR),
    "status_dir": str(BACKUP_STATUS_DIR),
    "drill_dir": str(DRILL_DIR),
    "lock_file": str(BACKUP_LOCK),
    "log_file": str(BACKUP_LOG),
    "metrics_script": str(METRICS_SCRIPT),
    "verify_script": str(VERIFY_SCRIPT),
    "textfile_dir": str(METRICS_TEXTFILE_DIR),
    "sqlite_dir": str(SQLITE_DIR),
}


def host_paths(where: HostPaths) -> dict[str, str]:
    """:data:`HOST_PATHS` with ``where`` applied: every key, for a template's context."""
    return {**cast("Mapping[str, str]", HOST_PATHS), **cast("Mapping[str, str]", where)}
