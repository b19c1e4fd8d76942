"""Backup health in a real Prometheus: the rendered stack's prometheus and node-exporter services.

The official prom/prometheus and prom/node-exporter images cannot be pulled here.
tracker-deployer-test/prometheus:e2e and tracker-deployer-test/node-exporter:e2e
(test-doubles/images, built by scripts/e2e-setup.sh from Debian's `prometheus` and
`prometheus-node-exporter` packages) STAND IN for them. Everything else is real:
the rendered compose file, prometheus.yml and alert rules, a real backup run and a
real failed one, a real restore drill, and the metrics script.

The maintenance script runs the metrics script on its way out (its hook), so the
test only runs backups and reads Prometheus.
"""

from __future__ import annotations

import calendar
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tracker_deployer.render.tree import metrics_script

from tests.helpers import parse, sample_data
from tests.integration.stack import (
    BACKUP_IMAGE,
    NODE_EXPORTER_IMAGE,
    PROMETHEUS_IMAGE,
    STANDIN_IMAGE,
    Stack,
    env_for_stack,
    require_images,
)
from tests.integration.test_backup_drill import Drill

pytestmark = pytest.mark.integration

WAIT_SECONDS = 90


def container_ip(stack: Stack, service: str) -> str:
    container = stack.compose("ps", "-q", service).stdout.strip()
    inspected = subprocess.run(
        ["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", container],
        capture_output=True,
        text=True,
        check=True,
    )
    networks: dict[str, dict[str, Any]] = json.loads(inspected.stdout)
    return str(next(net["IPAddress"] for net in networks.values() if net["IPAddress"]))


class Prometheus:
    """The stack's Prometheus, reached at its container address (our own container)."""

    def __init__(self, stack: Stack) -> None:
        self.base = f"http://{container_ip(stack, 'prometheus')}:9090"

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our container
            body: dict[str, Any] = json.load(response)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def alert_rule_after(self, name: str, moment: float) -> dict[str, Any]:
        """The alerting rule ``name`` once Prometheus has evaluated it after ``moment``
        (this machine's clock, which the container shares): before that, an empty
        ALERTS says nothing about what the rule makes of the newest samples."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            url = f"{self.base}/api/v1/rules?type=alert"
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - ours
                body: dict[str, Any] = json.load(response)
            rules: list[dict[str, Any]] = [
                r for g in body["data"]["groups"] for r in g["rules"] if r["name"] == name
            ]
            assert len(rules) == 1, f"{name}: {len(rules)} rules"
            evaluated = rules[0].get("lastEvaluation", "")
            if evaluated and _rfc3339(evaluated) > moment:
                return rules[0]
            time.sleep(0.5)
        raise AssertionError(f"{name} was not evaluated after {moment} in {WAIT_SECONDS} s")

    def wait_for(self, promql: str, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT_SECONDS
        last: object = None
        while time.monotonic() < deadline:
            try:
                result = self.query(promql)
            except OSError as error:  # not up yet
                last = error
            else:
                if result:
                    return result
                last = result
            time.sleep(1)
        raise AssertionError(f"{what}: {promql} returned nothing in {WAIT_SECONDS} s ({last!r})")


def _rfc3339(text: str) -> float:
    """Prometheus's timestamps (up to nanoseconds), as seconds since the epoch."""
    return datetime.fromisoformat(re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", text)).timestamp()


def test_prometheus_sees_the_runs_fires_backup_failed_and_sees_the_drill(
    tmp_path: Path,
) -> None:
    require_images(STANDIN_IMAGE, BACKUP_IMAGE, PROMETHEUS_IMAGE, NODE_EXPORTER_IMAGE)
    data = env_for_stack(sample_data("manual-test-sqlite"))
    data["prometheus"] = {"scrape_interval_in_secs": 1}
    data["images"].update(prometheus=PROMETHEUS_IMAGE, node_exporter=NODE_EXPORTER_IMAGE)
    stack = Stack(parse(data), tmp_path / "s").install()
    textfile_dir = stack.deploy_dir / "storage/node-exporter/textfile"
    metrics = stack.metrics_script
    drill = Drill(stack, tmp_path / "drill")
    metrics.write_bytes(
        metrics_script(
            stack.env,
            backup_dir=str(stack.backups),
            status_dir=str(stack.status_dir),
            drill_dir=str(drill.drill_dir),
            textfile_dir=str(textfile_dir),
        )
    )
    metrics.chmod(0o755)
    # the drill's own metrics call writes where node-exporter reads
    drill.metrics.write_bytes(metrics.read_bytes())
    try:
        stack.up()
        assert {"prometheus", "node-exporter"} <= stack.running_services()
        prometheus = Prometheus(stack)

        # 1. a successful run: its end time is the last-success timestamp
        assert stack.run_maintenance().returncode == 0
        ended = stack.status()["finished_at"]
        expected = calendar.timegm(time.strptime(ended, "%Y-%m-%dT%H:%M:%SZ"))
        [sample] = prometheus.wait_for(
            "tracker_backup_last_success_timestamp_seconds", "last success after the run"
        )
        assert float(sample["value"][1]) == expected
        assert sample["metric"]["job"] == "tracker_backup"
        seen = time.time()
        rule = prometheus.alert_rule_after("BackupFailed", seen)
        assert (rule["health"], rule["state"], rule["alerts"]) == ("ok", "inactive", [])
        assert prometheus.query('ALERTS{alertname="BackupFailed"}') == []

        # 2. a failed run (a backup.conf the backup container refuses): BackupFailed fires
        conf = stack.deploy_dir / "storage/backup-etc/backup.conf"
        good_conf = conf.read_text()
        conf.write_text(good_conf + "NOT A SETTING\n")
        assert stack.run_maintenance().returncode != 0
        [alert] = prometheus.wait_for(
            'ALERTS{alertname="BackupFailed",alertstate="firing"}', "BackupFailed firing"
        )
        assert alert["metric"]["severity"] == "critical"

        # 3. the config repaired, a restore drill of the newest set: its metric is there
        conf.write_text(good_conf)
        assert drill.run().returncode == 0
        [passed] = prometheus.wait_for(
            "tracker_backup_last_drill_success == 1", "drill metric after the drill"
        )
        assert passed["metric"]["instance"] == "node-exporter:9100"
    finally:
        stack.cleanup()
