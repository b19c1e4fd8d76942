"""The rendered docker-compose.yml and .env, as Docker Compose itself reads them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tracker_deployer.render import quoting, render, write_tree

from tests.helpers import SAMPLES, parse, sample_data

pytestmark = pytest.mark.integration

HOSTILE = "p a'ss\"w$(touch /tmp/pwned)`id`;#\\ ${HOME} $$ ünï 🙂"

# What a secret may hold (config/model.py Secret.parse): anything but control
# characters and lone surrogates.
PRINTABLE = st.characters(exclude_categories=["Cc", "Cs"])
# The characters .env quoting is about, drawn as often as runs of any printable text,
# so that every batch has them in every position, at the end too.
AWKWARD = st.sampled_from(["\\", '"', "'", "$", "{", "}", "#", " ", "=", "`", "\u00a0", "\u2028"])
VALUES = st.lists(
    st.one_of(AWKWARD, st.text(PRINTABLE, min_size=1, max_size=6)), min_size=1, max_size=8
).map("".join)
EDGE_VALUES = [
    "ends in a backslash \\",
    "\\",
    "\\\\",
    "'\\",
    "\\'",
    '\\"',
    '"',
    "\\$",
    "$${X}",
    "${HOME:-x}",
    "\\n not a newline",
    "\\0101",
    " # not a comment ",
    "'quoted'",
    '"double"',
    HOSTILE,
]


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
    # Grafana itself would expand "${HOME}", so the config refuses that for Grafana.
    data["grafana"]["admin_password"] = "'" + HOSTILE.replace("${HOME}", "$ {HOME}") + "'"
    data["images"] = {"mysql": "debian:bookworm-slim"}
    root = write_tree(render(parse(data)), tmp_path / "tree")
    services = compose_config(compose_cli, root)["services"]

    # `config` prints a compose file again, so it writes every `$` as `$$`.
    def value(service: str, name: str) -> str:
        text: str = services[service]["environment"][name]
        return text.replace("$$", "$")

    # The MySQL image's two passwords as its entrypoint must get them (quoting.py).
    assert value("mysql", "MYSQL_PASSWORD") == quoting.mysql_image_env(HOSTILE)
    assert value("mysql", "MYSQL_ROOT_PASSWORD") == quoting.mysql_image_env("root" + HOSTILE)
    assert value("grafana", "GF_SECURITY_ADMIN_PASSWORD") == data["grafana"]["admin_password"]

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
    assert result.stdout.decode() == quoting.mysql_image_env(HOSTILE) + "\n"
    assert not Path("/tmp/pwned").exists()


def dotenv_reads(compose_cli: list[str], directory: Path, values: list[str]) -> list[str]:
    """What compose reads back for each value, written to .env by ``quoting.dotenv``."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"HARDENING05_V{index}" for index in range(len(values))]
    lines = [f"{name}={quoting.dotenv(value)}\n" for name, value in zip(names, values, strict=True)]
    (directory / ".env").write_text("".join(lines), encoding="utf-8")
    service = {"image": "scratch", "environment": {name: f"${{{name}}}" for name in names}}
    (directory / "compose.json").write_text(json.dumps({"services": {"s": service}}))
    command = [*compose_cli, "--project-directory", str(directory)]
    command += ["-f", str(directory / "compose.json"), "config", "--format", "json"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    environment = json.loads(result.stdout)["services"]["s"]["environment"]
    # `config` prints a compose file again, so it writes every `$` as `$$`.
    return [environment[name].replace("$$", "$") for name in names]


def test_hardening_05_dotenv_edge_values_round_trip_through_compose(
    tmp_path: Path, compose_cli: list[str]
) -> None:
    assert dotenv_reads(compose_cli, tmp_path, EDGE_VALUES) == EDGE_VALUES


@settings(max_examples=20, deadline=None)
@given(values=st.lists(VALUES, min_size=40, max_size=40))
def test_hardening_05_dotenv_round_trips_any_printable_value_through_compose(
    values: list[str], tmp_path_factory: pytest.TempPathFactory, compose_cli: list[str]
) -> None:
    directory = tmp_path_factory.mktemp("dotenv")
    assert dotenv_reads(compose_cli, directory, values) == values


def test_hardening_05_secrets_ending_in_a_backslash_reach_compose(
    tmp_path: Path, compose_cli: list[str]
) -> None:
    data = sample_data("manual-test-mysql")
    data["tracker"]["core"]["database"]["password"] = "db\\"
    data["mysql"]["root_password"] = "root'\\"
    data["grafana"]["admin_user"] = "admin\\"
    data["grafana"]["admin_password"] = '"quoted"\\'
    root = write_tree(render(parse(data)), tmp_path / "tree")
    services = compose_config(compose_cli, root)["services"]

    assert services["mysql"]["environment"]["MYSQL_PASSWORD"] == "db\\\\"
    assert services["mysql"]["environment"]["MYSQL_ROOT_PASSWORD"] == "root\\'\\\\"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_USER"] == "admin\\"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == '"quoted"\\'
