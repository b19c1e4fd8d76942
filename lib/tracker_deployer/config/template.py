"""The starter config written by ``inv create-template``.

It is complete and valid as written (the tests parse it), includes the backup
section with its defaults, and uses placeholders an operator will want to change.
"""

from __future__ import annotations

import json
from typing import Any

from tracker_deployer import ports
from tracker_deployer.config.model import DEFAULT_RETENTION_DAYS, DEFAULT_SCHEDULE


def starter_config(name: str = "my-tracker", database: str = "sqlite3") -> dict[str, Any]:
    """A complete environment config with backups on (defaults spelled out)."""
    if database == "mysql":
        database_section: dict[str, Any] = {
            "driver": "mysql",
            "host": "mysql",
            "port": ports.MYSQL,
            "database_name": "torrust_tracker",
            "username": "tracker_user",
            "password": "change-me: tracker database password",
        }
    else:
        database_section = {"driver": "sqlite3", "database_name": "tracker.db"}
    config: dict[str, Any] = {
        "environment": {"name": name},
        "ssh_credentials": {
            "private_key_path": "~/.ssh/id_ed25519",
            "public_key_path": "~/.ssh/id_ed25519.pub",
            "username": "torrust",
            "port": 22,
            "host": "203.0.113.10",
        },
        "provider": {"provider": "lxd", "profile_name": f"torrust-profile-{name}"},
        "tracker": {
            "core": {"database": database_section, "private": False},
            "udp_trackers": [{"bind_address": "0.0.0.0:6969"}],
            "http_trackers": [{"bind_address": "0.0.0.0:7070"}],
            "http_api": {"bind_address": "0.0.0.0:1212", "admin_token": "change-me: API token"},
            "health_check_api": {"bind_address": "127.0.0.1:1313"},
        },
        "prometheus": {"scrape_interval_in_secs": 15},
        "grafana": {"admin_user": "admin", "admin_password": "change-me: grafana password"},
        "backup": {"schedule": DEFAULT_SCHEDULE, "retention_days": DEFAULT_RETENTION_DAYS},
    }
    if database == "mysql":
        config["mysql"] = {"root_password": "change-me: MySQL root password"}
    return config


def starter_config_text(name: str = "my-tracker", database: str = "sqlite3") -> str:
    return json.dumps(starter_config(name, database), indent=2, ensure_ascii=False) + "\n"
