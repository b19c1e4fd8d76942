"""The rendered docker-compose.yml and .env, as Docker Compose itself reads them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tracker_deployer.render import render, write_tree

from tests.helpers import SAMPLES, parse, sample_data

pytestmark = pytest.mark.integration

HOSTILE = "p a'ss\"w$(touch /tmp/pwned)`id`;#\\ ${HOME} $$ ünï 🙂"


def compose_config(compose_cli: list[str], root: Path, *extra: str) -> dict[str, Any]:
    project = root / "opt/torrust"
    result = subprocess.run(
        [
            *compose_cli,
            "--project-directory",
            str(project),
            "-f",
            str(project / "docker-compose.yml"),
            *extra,
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "WARN" not in result.stderr, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.mark.parametrize("name", SAMPLES)
def test_compose_accepts_the_rendered_file(
    name: str, tmp_path: Path, compose_cli: list[str]
) -> None:
    env = parse(sample_data(name))
    root = write_tree(render(env), tmp_path / "tree")
    config = compose_config(compose_cli, root, "--profile", "backup")
    expected = {"tracker", "prometheus"}
    if env.uses_mysql:
        expected.add("mysql")
    if env.grafana:
        expected.add("grafana")
    if env.backup:
        expected.add("backup")
    if env.backup and env.prometheus:
        expected.add("node-exporter")
        exporter = config["services"]["node-exporter"]
        assert "ports" not in exporter
        assert exporter["volumes"][0]["read_only"] is True
    assert set(config["services"]) == expected
    assert config["name"] == "torrust"


def test_backup_service_is_not_started_by_up(tmp_path: Path, compose_cli: list[str]) -> None:
    root = write_tree(render(parse(sample_data("manual-test-mysql"))), tmp_path / "tree")
    without_profile = compose_config(compose_cli, root)
    assert "backup" not in without_profile["services"]
    with_profile = compose_config(compose_cli, root, "--profile", "backup")
    backup = with_profile["services"]["backup"]
    assert backup["profiles"] == ["backup"]
    assert backup["restart"] == "no"
    assert backup["depends_on"]["mysql"]["condition"] == "service_healthy"
    assert set(backup["networks"]) == {"database_network"}


def test_sqlite_backup_service_has_no_network(tmp_path: Path, compose_cli: list[str]) -> None:
    root = write_tree(render(parse(sample_data("manual-test-sqlite"))), tmp_path / "tree")
    backup = compose_config(compose_cli, root, "--profile", "backup")["services"]["backup"]
    assert backup["network_mode"] == "none"
    assert "depends_on" not in backup


def test_hostile_secrets_reach_containers_exactly_through_dotenv(
    tmp_path: Path, compose_cli: list[str]
) -> None:
    data = sample_data("manual-test-mysql")
    data["tracker"]["core"]["database"]["password"] = HOSTILE
    data["mysql"]["root_password"] = "root" + HOSTILE
    data["grafana"]["admin_password"] = "'" + HOSTILE + "'"
    data["images"] = {"mysql": "debian:bookworm-slim"}
    root = write_tree(render(parse(data)), tmp_path / "tree")
    services = compose_config(compose_cli, root)["services"]

    # `config` prints a compose file again, so it writes every `$` as `$$`.
    def value(service: str, name: str) -> str:
        text: str = services[service]["environment"][name]
        return text.replace("$$", "$")

    assert value("mysql", "MYSQL_PASSWORD") == HOSTILE
    assert value("mysql", "MYSQL_ROOT_PASSWORD") == "root" + HOSTILE
    assert value("grafana", "GF_SECURITY_ADMIN_PASSWORD") == "'" + HOSTILE + "'"

    # And what a container really gets (the mysql image swapped for plain Debian).
    project = root / "opt/torrust"
    result = subprocess.run(
        [
            *compose_cli,
            "--project-directory",
            str(project),
            "-p",
            f"qtest{tmp_path.name[-8:]}",
            "run",
            "--rm",
            "--no-deps",
            "-T",
            "--entrypoint",
            "printenv",
            "mysql",
            "MYSQL_PASSWORD",
        ],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == HOSTILE + "\n"
    assert not Path("/tmp/pwned").exists()
