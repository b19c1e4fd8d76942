"""Backup monitoring as rendered: node-exporter, the scrape job, the alert rules, the dashboard."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from tracker_deployer import monitoring, paths
from tracker_deployer.config.model import DEFAULT_DRILL_SCHEDULE, CronSchedule
from tracker_deployer.render import render
from tracker_deployer.topology import BACKUP_METRICS_NETWORK, derive

from tests.helpers import parse


@pytest.mark.parametrize(
    ("expression", "period"),
    [
        ("0 3 * * *", 86400),
        ("0 3 * * mon-fri", 3 * 86400),
        ("0 4 * * 0", 7 * 86400),
        ("*/30 * * * *", 1800),
        ("0 */6 * * *", 6 * 3600),
        ("0 3 1,15 * *", 17 * 86400),
        ("0 3 1 1 *", 366 * 86400),  # 2004 to 2005: a leap year
        # Only on 29 February (first in 2004): four times that day, then 2008.
        ("0 */6 29 2 *", (365 * 4 + 1) * 86400 - 18 * 3600),
        # Frequent fires with long pauses: more fires in the window than any cap on
        # counting them (a weekday's last fire 23:57 to Monday 00:00; July to December).
        ("*/3 * * * 1-5", 2 * 86400 + 3 * 60),
        ("0 * * 1-6 *", (184 * 24 + 1) * 3600),
        # Cron's rule: a day-of-month starting with "*" is AND-ed with the day of week:
        # Mondays that are odd days (1, 15, 29, then 5 February), not every odd day.
        ("0 3 */2 * 1", 21 * 86400),
        # Mondays on the 1st, 8th, 15th, 22nd or 29th: some years leave a gap of 399
        # days (a year's window saw 245 and fired the Missing alerts falsely).
        ("0 3 */7 * mon", 399 * 86400),
        # Neither starts with "*": either one (the 1st, and every Monday).
        ("0 3 1 * 1", 7 * 86400),
    ],
)
def test_schedule_period_is_the_longest_gap_between_fires(expression: str, period: int) -> None:
    assert monitoring.schedule_period_seconds(CronSchedule.parse(expression)) == period


def test_missing_threshold_is_period_times_one_and_a_half_plus_margin() -> None:
    schedule = CronSchedule.parse("0 */6 * * *")
    assert monitoring.missing_after_seconds(schedule) == 6 * 3600 * 3 // 2 + 1800


def _rules(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    tree = render(parse(data))
    groups = yaml.safe_load(tree.text(paths.PROMETHEUS_RULES))["groups"]
    return {
        f"{rule['alert']}/{rule['labels'].get('reason', '')}": rule
        for group in groups
        for rule in group["rules"]
    }


def test_rules_follow_the_schedules_and_the_budget(mysql_data: dict[str, Any]) -> None:
    mysql_data["backup"].update(
        schedule="0 */6 * * *", drill_schedule="0 5 * * *", downtime_budget_seconds=7.5
    )
    rules = _rules(mysql_data)

    assert sorted(rules) == [
        "BackupDowntimeOverBudget/",
        "BackupDrillFailed/",
        "BackupDrillMissing/never",
        "BackupDrillMissing/stale",
        "BackupFailed/",
        "BackupMetricsUnavailable/",
        "BackupMissing/never",
        "BackupMissing/stale",
        "BackupSetAheadOfClock/",
        "TrackerDown/",
    ]
    # The job the tracker's API is scraped as (prometheus.yml takes it from monitoring).
    assert rules["TrackerDown/"]["expr"] == f'up{{job="{monitoring.TRACKER_STATS_JOB}"}} == 0'
    assert rules["BackupSetAheadOfClock/"]["expr"] == (
        "tracker_backup_newest_set_age_seconds < -300"
    )
    assert rules["BackupMissing/stale"]["expr"] == (
        "time() - tracker_backup_last_success_timestamp_seconds > 34200"
    )
    assert rules["BackupMissing/never"]["for"] == "9h30m"
    assert rules["BackupDrillMissing/stale"]["expr"].endswith("> 131400")
    assert rules["BackupDowntimeOverBudget/"]["expr"] == (
        "tracker_backup_last_run_downtime_seconds > 7.5"
    )
    assert rules["BackupFailed/"]["expr"] == "tracker_backup_last_run_success == 0"


OFFSITE_RULES = [
    "BackupOffsiteCheckFailed/",
    "BackupOffsiteCheckMissing/never",
    "BackupOffsiteCheckMissing/stale",
    "BackupOffsiteMissing/never",
    "BackupOffsiteMissing/stale",
    "BackupOffsiteUploadFailed/",
]


def _with_offsite(data: dict[str, Any], **fields: Any) -> dict[str, Any]:
    data["backup"]["offsite"] = {
        "repository": "/mnt/offsite/restic",
        "password": "correct horse battery staple",
        **fields,
    }
    return data


def test_no_offsite_rules_or_panels_without_backup_offsite(mysql_data: dict[str, Any]) -> None:
    tree = render(parse(mysql_data))

    assert not [name for name in _rules(mysql_data) if name.startswith("BackupOffsite")]
    assert "offsite" not in tree.text(paths.PROMETHEUS_RULES)
    assert "offsite" not in tree.text(paths.GRAFANA_BACKUPS_DASHBOARD)


def test_offsite_rules_follow_the_backup_and_check_schedules(mysql_data: dict[str, Any]) -> None:
    mysql_data["backup"]["schedule"] = "0 */6 * * *"
    rules = _rules(_with_offsite(mysql_data, check_schedule="0 5 1 * *"))

    assert sorted(name for name in rules if name.startswith("BackupOffsite")) == OFFSITE_RULES
    # An upload follows each backup run: 6 h x 1.5 + 30 min, as for BackupMissing.
    assert rules["BackupOffsiteMissing/stale"]["expr"] == (
        "time() - tracker_backup_offsite_last_success_timestamp_seconds > 34200"
    )
    assert rules["BackupOffsiteMissing/never"]["expr"] == (
        "absent(tracker_backup_offsite_last_success_timestamp_seconds)"
    )
    assert rules["BackupOffsiteMissing/never"]["for"] == "9h30m"
    assert rules["BackupOffsiteUploadFailed/"]["expr"] == (
        "tracker_backup_offsite_last_upload_success == 0"
    )
    assert rules["BackupOffsiteCheckFailed/"]["expr"] == (
        "tracker_backup_offsite_last_check_success == 0"
    )
    # Monthly on the 1st: the longest gap is 31 days; x 1.5 + 30 min.
    assert rules["BackupOffsiteCheckMissing/stale"]["expr"] == (
        "time() - tracker_backup_offsite_last_check_timestamp_seconds > 4019400"
    )
    assert rules["BackupOffsiteCheckMissing/never"]["for"] == "46d12h30m"


def test_offsite_check_rules_use_the_default_check_schedule(mysql_data: dict[str, Any]) -> None:
    rules = _rules(_with_offsite(mysql_data))

    # "0 5 * * 0": a week x 1.5 + 30 min.
    assert rules["BackupOffsiteCheckMissing/stale"]["expr"].endswith(" > 909000")
    assert rules["BackupOffsiteMissing/stale"]["expr"].endswith(" > 131400")


def test_backups_dashboard_shows_the_off_host_copies(mysql_data: dict[str, Any]) -> None:
    tree = render(parse(_with_offsite(mysql_data)))
    dashboard = json.loads(tree.text(paths.GRAFANA_BACKUPS_DASHBOARD))

    panels = {panel["title"]: panel for panel in dashboard["panels"]}
    age = panels["Age of the last off-host copy"]
    assert age["targets"][0]["expr"] == (
        "time() - tracker_backup_offsite_last_success_timestamp_seconds"
    )
    assert age["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == 131400
    assert panels["Last off-host upload"]["targets"][0]["expr"] == (
        "tracker_backup_offsite_last_upload_success"
    )
    assert panels["Last restic check"]["targets"][0]["expr"] == (
        "tracker_backup_offsite_last_check_success"
    )
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_node_exporter_reads_only_the_textfile_directory(mysql_data: dict[str, Any]) -> None:
    mysql_data["images"] = {"node_exporter": "registry.example.com/node-exporter:1"}
    topology = derive(parse(mysql_data))
    service = topology.service("node-exporter")

    assert service.image == "registry.example.com/node-exporter:1"
    assert service.command[:3] == (
        "--collector.disable-defaults",
        "--collector.textfile",
        "--collector.textfile.directory=/textfile",
    )
    assert [str(mount) for mount in service.volumes] == [
        "./storage/node-exporter/textfile:/textfile:ro"
    ]
    assert service.ports == ()
    assert service.networks == (BACKUP_METRICS_NETWORK,)
    on_network = [s.name for s in topology.services if BACKUP_METRICS_NETWORK in s.networks]
    assert on_network == ["prometheus", "node-exporter"]


def test_prometheus_scrapes_node_exporter_and_loads_the_rules(mysql_data: dict[str, Any]) -> None:
    config = yaml.safe_load(render(parse(mysql_data)).text(paths.PROMETHEUS_CONFIG))

    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["tracker_backup"]["static_configs"] == [{"targets": ["node-exporter:9100"]}]
    assert config["rule_files"] == ["backup-alerts.yml"]


@pytest.mark.parametrize("drop", ["backup", "prometheus"])
def test_no_backup_monitoring_without_backup_or_prometheus(
    mysql_data: dict[str, Any], drop: str
) -> None:
    del mysql_data[drop]
    mysql_data.pop("grafana", None)
    env = parse(mysql_data)
    tree = render(env)

    assert "node-exporter" not in derive(env).service_names
    assert paths.PROMETHEUS_RULES not in tree.paths
    assert paths.GRAFANA_BACKUPS_DASHBOARD not in tree.paths
    if drop == "backup":
        config = yaml.safe_load(tree.text(paths.PROMETHEUS_CONFIG))
        assert "rule_files" not in config
        assert [job["job_name"] for job in config["scrape_configs"]] == [
            monitoring.TRACKER_STATS_JOB,
            monitoring.TRACKER_METRICS_JOB,
        ]


def test_backups_dashboard_shows_age_downtime_sizes_and_drills(
    mysql_data: dict[str, Any],
) -> None:
    dashboard = json.loads(render(parse(mysql_data)).text(paths.GRAFANA_BACKUPS_DASHBOARD))

    assert dashboard["title"] == "Backups"
    queries = {
        panel["title"]: [target["expr"] for target in panel["targets"]]
        for panel in dashboard["panels"]
    }
    assert queries["Age of the last successful backup"] == [
        "time() - tracker_backup_last_success_timestamp_seconds"
    ]
    assert "tracker_backup_last_run_downtime_seconds" in queries["Tracker downtime per run"]
    assert queries["Size per part (newest set)"] == ["tracker_backup_set_bytes"]
    assert queries["Restore drill results"] == ["tracker_backup_last_drill_success"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_validate_summary_names_the_drill_schedule(mysql_data: dict[str, Any]) -> None:
    from datetime import datetime

    from tracker_deployer.describe import describe_env

    mysql_data["backup"]["drill_schedule"] = "30 5 * * sat"
    text = describe_env(parse(mysql_data), now=datetime(2026, 11, 29, 4, 0))

    assert '  drills:      "30 5 * * sat", next 2026-12-05 05:30 (host time)' in text.splitlines()
    assert "node-exporter" in text


@pytest.mark.parametrize("schedule", [None, "30 5 * * sat", "*/15 2-4 1,15 * *"])
def test_the_drill_runs_on_the_drill_schedule(
    mysql_data: dict[str, Any], schedule: str | None
) -> None:
    if schedule is not None:
        mysql_data["backup"]["drill_schedule"] = schedule
    else:
        mysql_data["backup"].pop("drill_schedule", None)
    env = parse(mysql_data)
    assert env.backup is not None
    cron = render(env).text(paths.DRILL_CRON_FILE)
    jobs = [
        line for line in cron.splitlines() if line and not line.startswith("#") and "=" not in line
    ]
    assert jobs == [f"{env.backup.drill_schedule} root {paths.DRILL_SCRIPT} --quiet"]
    assert str(env.backup.drill_schedule) == (schedule or DEFAULT_DRILL_SCHEDULE)


@pytest.mark.parametrize(
    ("stack_seconds", "backup_seconds"), [(15, "15s"), (60, "60s"), (600, "60s")]
)
def test_the_backup_job_is_scraped_within_the_rules_lookback(
    mysql_data: dict[str, Any], stack_seconds: int, backup_seconds: str
) -> None:
    """A rule sees a series only within 5 minutes of its last sample: a stack scraped
    every 10 minutes still scrapes the backup metrics every minute."""
    mysql_data["prometheus"] = {"scrape_interval_in_secs": stack_seconds}
    config = yaml.safe_load(render(parse(mysql_data)).text(paths.PROMETHEUS_CONFIG))
    assert config["global"]["scrape_interval"] == f"{stack_seconds}s"
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == monitoring.SCRAPE_JOB]
    assert job["scrape_interval"] == backup_seconds
    # TrackerDown's job and the rule evaluation too (a review: never fired at 600 s).
    [tracker] = [
        j for j in config["scrape_configs"] if j["job_name"] == monitoring.TRACKER_STATS_JOB
    ]
    assert tracker["scrape_interval"] == backup_seconds
    assert config["global"]["evaluation_interval"] == backup_seconds
