"""Topology rules of DESIGN.md: services, networks, ports, dependencies."""

from __future__ import annotations

from typing import Any

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


def test_published_ports_skip_loopback_and_proxied_services(mysql_data: dict[str, Any]) -> None:
    mysql_data["tracker"]["http_api"].update({"domain": "api.example.com", "use_tls_proxy": True})
    mysql_data["https"] = {"admin_email": "admin@example.com"}
    topology = derive(parse(mysql_data))
    ports = [str(port) for port in topology.service("tracker").ports]
    assert ports == ["6969:6969/udp", "7070:7070"]
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
