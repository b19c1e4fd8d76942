"""The starter config written by ``inv create-template``.

It is complete and valid as written (the tests parse it), includes the backup
section with its defaults, and uses placeholders an operator will want to change.
Its values are the spec's examples and defaults; only the placeholders are its own.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from typing import Any

from tracker_deployer.config import spec
from tracker_deployer.config.model import DEFAULT_RETENTION_DAYS, DEFAULT_SCHEDULE, Prometheus


def starter_config(name: str = "my-tracker", database: str = "sqlite3") -> dict[str, Any]:
    """A complete environment config with backups on (defaults spelled out)."""
    # environment, ssh_credentials, provider (lxd) and tracker (sqlite3), as in the schema
    config: dict[str, Any] = copy.deepcopy(spec.example(spec.ENV))
    config["environment"]["name"] = name
    config["ssh_credentials"] |= {"port": 22, "host": "203.0.113.10"}
    config["provider"]["profile_name"] = f"torrust-profile-{name}"
    tracker = config["tracker"]
    tracker["core"]["private"] = False
    tracker["http_api"] |= {"admin_token": "change-me: API token"}
    config |= {
        "prometheus": asdict(Prometheus()),
        "grafana": {"admin_user": "admin", "admin_password": "change-me: grafana password"},
        "backup": {"schedule": DEFAULT_SCHEDULE, "retention_days": DEFAULT_RETENTION_DAYS},
    }
    if database == "mysql":
        mysql = {"driver": "mysql", **spec.example(spec.DATABASE.variants["mysql"])}
        mysql |= {"password": "change-me: tracker database password"}
        tracker["core"]["database"] = mysql
        config["mysql"] = {"root_password": "change-me: MySQL root password"}
    return config


def starter_config_text(name: str = "my-tracker", database: str = "sqlite3") -> str:
    return json.dumps(starter_config(name, database), indent=2, ensure_ascii=False) + "\n"
