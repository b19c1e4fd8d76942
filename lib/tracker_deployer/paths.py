"""Fixed paths: on the target host, in containers, and in this repository.

The render output is a tree whose paths ARE the host's paths, so these
constants are the single source for both.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

# On the host.
DEPLOY_DIR = PurePosixPath("/opt/torrust")
COMPOSE_FILE = DEPLOY_DIR / "docker-compose.yml"
DOTENV_FILE = DEPLOY_DIR / ".env"
STORAGE_DIR = DEPLOY_DIR / "storage"
TRACKER_CONFIG = STORAGE_DIR / "tracker/etc/tracker.toml"
PROMETHEUS_CONFIG = STORAGE_DIR / "prometheus/etc/prometheus.yml"
GRAFANA_PROVISIONING = STORAGE_DIR / "grafana/provisioning"
CADDYFILE = STORAGE_DIR / "caddy/etc/Caddyfile"
BACKUP_DIR = STORAGE_DIR / "backup"
BACKUP_CONF = BACKUP_DIR / "etc/backup.conf"
BACKUP_PATHS = BACKUP_DIR / "etc/backup-paths.txt"
# The maintenance script's status and its "tracker stopped by a backup run"
# marker: root-owned (0755) in a root-owned parent, outside storage/backup,
# which uid 1000 owns (root must never follow a link that user can plant).
BACKUP_STATUS_DIR = DEPLOY_DIR / "backup-status"
TRACKER_STOPPED_MARKER = BACKUP_STATUS_DIR / "tracker-stopped-by-backup"
MAINTENANCE_SCRIPT = PurePosixPath("/usr/local/bin/maintenance-backup.sh")
# Not a path: the line `backup.sh snapshot` prints on stdout once the database's
# consistent view exists; the maintenance script starts the tracker on it.
SNAPSHOT_OPEN_LINE = "snapshot-open"
CRON_FILE = PurePosixPath("/etc/cron.d/tracker-backup")
LOGROTATE_FILE = PurePosixPath("/etc/logrotate.d/tracker-backup")
BACKUP_LOG = PurePosixPath("/var/log/tracker-backup.log")
BACKUP_LOCK = PurePosixPath("/run/lock/tracker-backup.lock")
# Backup health for Prometheus (node_exporter's textfile collector) and the
# scheduled restore drills. Both directories are root-owned in root-owned
# parents, outside storage/backup (which uid 1000 owns), so root never writes
# through a path that user could plant.
METRICS_TEXTFILE_DIR = STORAGE_DIR / "node-exporter/textfile"
METRICS_TEXTFILE_IN_CONTAINER = PurePosixPath("/textfile")
METRICS_SCRIPT = PurePosixPath("/usr/local/bin/tracker-backup-metrics.sh")
DRILL_DIR = STORAGE_DIR / "backup-drills"
DRILL_SCRIPT = PurePosixPath("/usr/local/bin/tracker-backup-drill.sh")
VERIFY_SCRIPT = PurePosixPath("/usr/local/bin/tracker-backup-verify.sh")
DRILL_LAST = DRILL_DIR / "last-drill.env"
DRILL_CRON_FILE = PurePosixPath("/etc/cron.d/tracker-backup-drill")
PROMETHEUS_RULES = STORAGE_DIR / "prometheus/etc/backup-alerts.yml"
PROMETHEUS_CONFIG_IN_CONTAINER = PurePosixPath("/etc/prometheus")
GRAFANA_BACKUPS_DASHBOARD = GRAFANA_PROVISIONING / "dashboards/torrust/backups.json"

# In containers.
TRACKER_LIB_IN_CONTAINER = "/var/lib/torrust/tracker"
TRACKER_CONFIG_IN_CONTAINER = "/etc/torrust/tracker/tracker.toml"
STORAGE_IN_BACKUP = PurePosixPath("/data/storage")
COMPOSE_IN_BACKUP = PurePosixPath("/data/compose")
BACKUP_CONF_IN_BACKUP = PurePosixPath("/etc/backup/backup.conf")
BACKUP_PATHS_IN_BACKUP = PurePosixPath("/etc/backup/backup-paths.txt")


def sqlite_in_tracker(database_name: str) -> str:
    return f"{TRACKER_LIB_IN_CONTAINER}/database/{database_name}"


def sqlite_on_host(database_name: str) -> PurePosixPath:
    return STORAGE_DIR / "tracker/lib/database" / database_name


def in_backup_container(host_path: PurePosixPath) -> PurePosixPath:
    """Where a host file under /opt/torrust is seen inside the backup container."""
    relative = host_path.relative_to(DEPLOY_DIR)
    if relative.parts[0] == "storage":
        return STORAGE_IN_BACKUP.joinpath(*relative.parts[1:])
    return COMPOSE_IN_BACKUP / relative


# In this repository (the tool runs from a checkout).
REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = REPO_ROOT / "templates"
ENVS_DIR = REPO_ROOT / "envs"
BUILD_DIR = REPO_ROOT / "build"
SCHEMA_FILE = REPO_ROOT / "schemas" / "environment-config.json"
