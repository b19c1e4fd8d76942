"""Topology rules of DESIGN.md: services, networks, ports, dependencies."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from tracker_deployer import paths
from tracker_deployer.errors import ConfigError
from tracker_deployer.render import render
from tracker_deployer.topology import Dependency, derive

from tests.helpers import parse


def test_mysql_backup_joins_database_network_and_waits_for_healthy_mysql(
    mysql_data: dict[str, Any],
) -> None:
    topology = derive(parse(mysql_data))
    backup = topology.service("backup")
    assert backup.networks == ("database_network",)
    assert backup.network_mode is None
    assert backup.depends_on == (Dependency("mysql", "service_healthy"),)
    assert backup.profiles == ("backup",)
    assert backup.restart == "no"
    assert topology.service("tracker").depends_on == (Dependency("mysql", "service_healthy"),)
    assert "database_network" in topology.networks
    assert "mysql_data" in topology.volumes


def test_sqlite_has_no_mysql_no_database_network_and_an_isolated_backup(
    sqlite_data: dict[str, Any],
) -> None:
    topology = derive(parse(sqlite_data))
    assert "mysql" not in topology.service_names
    assert "database_network" not in topology.networks
    backup = topology.service("backup")
    assert backup.networks == ()
    assert backup.network_mode == "none"
    assert backup.depends_on == ()
    assert topology.service("tracker").depends_on == ()


def test_no_backup_section_means_no_backup_service(sqlite_data: dict[str, Any]) -> None:
    del sqlite_data["backup"]
    assert "backup" not in derive(parse(sqlite_data)).service_names


def test_backup_mounts_storage_read_only_and_backups_read_write(
    mysql_data: dict[str, Any],
) -> None:
    mounts = {m.target: m for m in derive(parse(mysql_data)).service("backup").volumes}
    assert mounts["/data/storage"].source == "./storage"
    assert mounts["/data/storage"].read_only
    assert mounts["/backups"].source == "./storage/backup"
    assert not mounts["/backups"].read_only
    assert mounts["/etc/backup"].read_only


def test_tracker_ports_are_published_on_their_ip_unless_proxied(
    mysql_data: dict[str, Any],
) -> None:
    mysql_data["tracker"]["http_api"].update({"domain": "api.example.com", "use_tls_proxy": True})
    mysql_data["https"] = {"admin_email": "admin@example.com"}
    topology = derive(parse(mysql_data))
    ports = [str(port) for port in topology.service("tracker").ports]
    # The health check's 127.0.0.1: the host's loopback; the API: behind Caddy.
    assert ports == ["6969:6969/udp", "7070:7070", "127.0.0.1:1313:1313"]
    caddy = topology.service("caddy")
    assert [str(port) for port in caddy.ports] == ["80:80", "443:443", "443:443/udp"]
    assert "proxy_network" in topology.service("tracker").networks
    assert caddy.networks == ("proxy_network",)


def test_grafana_behind_proxy_is_not_published(mysql_data: dict[str, Any]) -> None:
    mysql_data["grafana"].update({"domain": "grafana.example.com", "use_tls_proxy": True})
    mysql_data["https"] = {"admin_email": "admin@example.com"}
    topology = derive(parse(mysql_data))
    assert topology.service("grafana").ports == ()
    assert "proxy_network" in topology.service("grafana").networks
    assert "proxy_network" not in topology.service("tracker").networks


def test_prometheus_is_published_on_loopback_only(sqlite_data: dict[str, Any]) -> None:
    prometheus = derive(parse(sqlite_data)).service("prometheus")
    assert [str(port) for port in prometheus.ports] == ["127.0.0.1:9090:9090"]


def test_image_overrides_reach_the_services(sqlite_data: dict[str, Any]) -> None:
    sqlite_data["images"] = {"tracker": "example/tracker-standin:e2e", "backup": "local/backup:dev"}
    topology = derive(parse(sqlite_data))
    assert topology.service("tracker").image == "example/tracker-standin:e2e"
    assert topology.service("backup").image == "local/backup:dev"
    assert topology.service("prometheus").image.startswith("prom/prometheus:")


def test_a_socket_on_a_host_ip_listens_on_every_address_of_its_container(
    sqlite_data: dict[str, Any],
) -> None:
    """The IP of a bind_address is the host's: in the container the tracker listens on
    every address of the family (the container has no 203.0.113.5, and on its own
    loopback neither Caddy nor Prometheus reaches it: the API on 127.0.0.1:1212 of the
    sandbox was never scraped), and the port is published on that IP of the host."""
    tracker = sqlite_data["tracker"]
    tracker["udp_trackers"] = [{"bind_address": "203.0.113.5:6969"}]
    tracker["http_trackers"] = [{"bind_address": "[2001:db8::5]:7070"}]
    tracker["http_api"]["bind_address"] = "127.0.0.1:1212"
    tracker["health_check_api"] = {"bind_address": "[::1]:1313"}
    env = parse(sqlite_data)
    ports = [str(port) for port in derive(env).service("tracker").ports]
    assert ports == [
        "203.0.113.5:6969:6969/udp",
        "[2001:db8::5]:7070:7070",
        "127.0.0.1:1212:1212",
        "[::1]:1313:1313",
    ]
    toml = tomllib.loads(render(env).text(str(paths.TRACKER_CONFIG)))
    assert [t["bind_address"] for t in toml["udp_trackers"]] == ["0.0.0.0:6969"]
    assert [t["bind_address"] for t in toml["http_trackers"]] == ["[::]:7070"]
    assert toml["http_api"]["bind_address"] == "0.0.0.0:1212"
    assert toml["health_check_api"]["bind_address"] == "[::]:1313"


@pytest.mark.parametrize(
    ("bind", "refused"),
    [
        ("127.0.0.1:9090", True),
        ("0.0.0.0:9090", True),
        ("[::]:9090", True),
        ("[::1]:9090", False),
        ("127.0.0.2:9090", False),
        ("203.0.113.5:9090", False),
        ("127.0.0.1:3000", True),  # grafana: on every address
    ],
)
def test_a_tracker_port_collides_with_a_service_only_on_a_shared_host_address(
    sqlite_data: dict[str, Any], bind: str, refused: bool
) -> None:
    """Prometheus is published on 127.0.0.1 only, grafana on every address."""
    sqlite_data["tracker"]["http_trackers"] = [{"bind_address": bind}]
    if refused:
        with pytest.raises(ConfigError, match=r"is also published by (prometheus|grafana)"):
            parse(sqlite_data)
    else:
        ports = [str(port) for port in derive(parse(sqlite_data)).service("tracker").ports]
        assert any(port.endswith(":9090:9090") for port in ports)
