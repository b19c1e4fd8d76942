"""tracker-backup-metrics.sh on real sets: a real stack, real runs, promtool's verdict."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from tracker_deployer import monitoring, paths
from tracker_deployer.render import render
from tracker_deployer.render.tree import metrics_script

from tests.helpers import parse, sample_data
from tests.integration.disks import fill, small_disk
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration

SAMPLE = re.compile(r"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: run scripts/setup.sh (Debian's prometheus package)")
    return found


class Metrics:
    """The metrics script rendered with its paths in a scratch directory."""

    def __init__(self, stack: Stack, base: Path) -> None:
        self.stack = stack
        self.textfile_dir = base / "textfile"
        self.drill_dir = base / "drills"
        self.drill_dir.mkdir(parents=True)
        self.script = base / "tracker-backup-metrics.sh"
        self.script.write_bytes(
            metrics_script(
                stack.env,
                backup_dir=str(stack.backups),
                status_dir=str(stack.status_dir),
                drill_dir=str(self.drill_dir),
                textfile_dir=str(self.textfile_dir),
            )
        )
        self.script.chmod(0o755)

    @property
    def output(self) -> Path:
        return self.textfile_dir / "tracker_backup.prom"

    def write(self) -> dict[str, float]:
        result = subprocess.run([str(self.script)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        return self.read()

    def read(self) -> dict[str, float]:
        """The samples of the output file (checked by promtool)."""
        text = self.output.read_text()
        check = subprocess.run(
            [promtool(), "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout + check.stderr == "", check.stdout + check.stderr
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            match = SAMPLE.match(line)
            assert match, line
            name, labels, value = match.groups()
            samples[f"{name}{{{labels}}}" if labels else name] = float(value)
        return samples


def epoch(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def test_metrics_describe_a_real_run_and_then_a_failed_one(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    stack = sqlite_stack
    metrics = Metrics(stack, tmp_path / "metrics")
    result = stack.run_maintenance()
    assert result.returncode == 0, result.stdout + result.stderr
    [set_id] = stack.sets()
    status = stack.status()
    meta = stack.meta(set_id)

    samples = metrics.write()

    assert samples["tracker_backup_last_run_success"] == 1
    assert samples["tracker_backup_last_run_exit_code"] == 0
    assert samples["tracker_backup_last_run_start_timestamp_seconds"] == epoch(status["started_at"])
    assert samples["tracker_backup_last_run_end_timestamp_seconds"] == epoch(status["finished_at"])
    assert samples["tracker_backup_last_run_duration_seconds"] == int(status["duration_seconds"])
    assert samples["tracker_backup_last_run_downtime_seconds"] == float(status["downtime_seconds"])
    assert samples["tracker_backup_last_success_timestamp_seconds"] == epoch(status["finished_at"])
    db_file = stack.database_file(set_id)
    config_file = stack.backups / f"config/config_{set_id}.tar.gz"
    assert samples['tracker_backup_set_bytes{part="db"}'] == db_file.stat().st_size
    assert samples['tracker_backup_set_bytes{part="config"}'] == config_file.stat().st_size
    rows = {
        key[len("rows.") :]: int(value) for key, value in meta.items() if key.startswith("rows.")
    }
    assert rows["torrents"] > 0
    for table, count in rows.items():
        assert samples[f'tracker_backup_set_rows{{table="{table}"}}'] == count
    assert samples["tracker_backup_local_sets"] == 1
    set_time = datetime.strptime(set_id, "%Y%m%d_%H%M%S").replace(tzinfo=UTC).timestamp()
    assert samples["tracker_backup_newest_set_timestamp_seconds"] == set_time
    assert samples["tracker_backup_oldest_set_timestamp_seconds"] == set_time
    assert 0 <= samples["tracker_backup_newest_set_age_seconds"] < 600
    assert "tracker_backup_last_drill_success" not in samples  # no drill yet
    # a temporary copy renamed over it: nothing but the one .prom file in the directory
    assert [path.name for path in metrics.textfile_dir.iterdir()] == ["tracker_backup.prom"]
    assert oct(metrics.output.stat().st_mode & 0o777) == "0o644"

    # A real failed run: a backup.conf the backup container refuses (exit 2).
    conf = stack.deploy_dir / "storage/backup-etc/backup.conf"
    conf.write_text(conf.read_text() + "NOT A SETTING\n")
    failed = stack.run_maintenance()
    assert failed.returncode != 0

    samples = metrics.write()

    assert samples["tracker_backup_last_run_success"] == 0
    assert samples["tracker_backup_last_run_exit_code"] == failed.returncode
    # the last success is still the first run, and its set is still there
    assert samples["tracker_backup_last_success_timestamp_seconds"] == epoch(status["finished_at"])
    assert samples["tracker_backup_local_sets"] == 1
    assert samples['tracker_backup_set_bytes{part="db"}'] == db_file.stat().st_size


def test_the_last_success_outlives_a_long_history_of_failures(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    """After a failed run the last success was looked up only in the last 64 KiB of
    history.tsv: ~1800 failure lines pushed it out, the metric disappeared and
    BackupMissing{reason="never"} fired (a review). last-run.env carries it now,
    also from a status written before it did (no last_success_epoch line)."""
    stack = sqlite_stack
    metrics = Metrics(stack, tmp_path / "metrics")
    result = stack.run_maintenance()
    assert result.returncode == 0, result.stdout + result.stderr
    success = epoch(stack.status()["finished_at"])
    assert stack.status()["last_success_epoch"] == str(int(success))
    # as a status written before the upgrade: no last_success_epoch
    last_run = stack.status_dir / "last-run.env"
    last_run.write_text(
        "".join(
            line
            for line in last_run.read_text().splitlines(keepends=True)
            if not line.startswith("last_success_epoch=")
        )
    )

    conf = stack.deploy_dir / "storage/backup-etc/backup.conf"
    conf.write_text(conf.read_text() + "NOT A SETTING\n")  # the backup container refuses it
    assert stack.run_maintenance().returncode != 0
    assert stack.status()["last_success_epoch"] == str(int(success))
    # ~1800 failed runs since (a broken host left alone for a long time)
    history = stack.status_dir / "history.tsv"
    with history.open("a") as lines:
        for _ in range(2000):
            lines.write("2026-01-01T03:00:00Z\tfailure\t2\t1\t\n")
    assert stack.run_maintenance().returncode != 0
    assert stack.status()["result"] == "failure"
    assert "\tsuccess\t" not in history.read_bytes()[-65536:].decode()

    samples = metrics.write()

    assert samples["tracker_backup_last_run_success"] == 0
    assert samples["tracker_backup_last_success_timestamp_seconds"] == success


@pytest.mark.parametrize(
    ("last_drill", "success"),
    [
        ("result=failure\nlast_ran_result=failure\n", 0),
        ("result=success\nlast_ran_result=success\n", 1),
        # a drill that did not run: the last drill that ran stands
        ("result=skipped\nlast_ran_result=failure\n", 0),
        ("result=no_set\nlast_ran_result=failure\n", 0),
        ("result=skipped\nlast_ran_result=success\n", 1),
        # none has run yet: no series
        ("result=no_set\nlast_ran_result=\n", None),
        # a last-drill.env from before last_ran_result: its own result, as then
        ("result=skipped\n", None),
        ("result=failure\n", 0),
    ],
)
def test_the_drill_success_is_the_last_drill_that_ran(
    tmp_path: Path, last_drill: str, success: int | None
) -> None:
    """A skipped drill after a failed one dropped the series: BackupDrillFailed
    (critical) resolved with no drill passed."""
    stack = Stack(parse(sample_data("manual-test-sqlite")), tmp_path / "s")
    stack.backups.mkdir(parents=True)
    metrics = Metrics(stack, tmp_path / "metrics")
    (metrics.drill_dir / "last-drill.env").write_text(
        last_drill + "finished_epoch=1790000000\nduration_seconds=3\n"
    )

    samples = metrics.write()

    assert samples.get("tracker_backup_last_drill_success") == success
    assert samples["tracker_backup_last_drill_timestamp_seconds"] == 1790000000


def test_planted_symlinks_are_not_followed(sqlite_stack: Stack, tmp_path: Path) -> None:
    stack = sqlite_stack
    metrics = Metrics(stack, tmp_path / "metrics")
    secret = tmp_path / "root-only"
    secret.write_text("rows.stolen=12345\n")
    manifests = stack.backups / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    # what the backup directory's owner (uid 1000) could plant: a "complete set" whose
    # .meta is a link to a file only root may read
    (manifests / "set_20260101_000000.sha256").write_text("")
    (manifests / "set_20260101_000000.meta").symlink_to(secret)

    samples = metrics.write()

    assert samples["tracker_backup_local_sets"] == 1
    assert not [name for name in samples if "stolen" in name]


def test_a_planted_set_name_that_is_no_date_is_skipped_not_fatal(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    """A manifest named for a moment that does not exist (second 99) ended the
    script under errexit: the old metrics file stayed, a success included."""
    stack = sqlite_stack
    metrics = Metrics(stack, tmp_path / "metrics")
    manifests = stack.backups / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / "set_20260101_000000.sha256").write_text("")
    (manifests / "set_20261231_999999.sha256").write_text("")

    samples = metrics.write()

    assert samples["tracker_backup_local_sets"] == 1
    assert samples["tracker_backup_newest_set_timestamp_seconds"] == epoch("2026-01-01T00:00:00Z")


def test_a_run_refused_for_an_unsafe_status_directory_shows_as_failed(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    """Every run refuses it (exit 77) and records nothing there: the metrics kept the
    last success, and no alert fired until BackupMissing (a review). Nothing is read
    through it; the run shows as failed, exit 77, and BackupFailed can fire."""
    stack = sqlite_stack
    metrics = Metrics(stack, tmp_path / "metrics")
    shutil.copy(metrics.script, stack.metrics_script)  # the maintenance script runs it
    assert stack.run_maintenance().returncode == 0
    assert metrics.read()["tracker_backup_last_run_success"] == 1
    stack.status_dir.chmod(0o777)
    refused = stack.run_maintenance()
    assert refused.returncode == 77, refused.stdout + refused.stderr
    samples = metrics.read()
    assert samples["tracker_backup_last_run_success"] == 0
    assert samples["tracker_backup_last_run_exit_code"] == 77
    assert "tracker_backup_last_success_timestamp_seconds" not in samples
    assert samples["tracker_backup_local_sets"] == 1
    assert metrics.write()["tracker_backup_last_run_success"] == 0  # run on its own too
    stack.status_dir.chmod(0o755)
    assert metrics.write()["tracker_backup_last_run_success"] == 1


def test_a_full_disk_never_leaves_the_last_success_standing(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    """The status and the metrics on disks with no room left: the failed run's status
    and metrics are written over in place. Before, the atomic writes (a temporary
    copy, renamed) failed, and both kept saying the run before had succeeded."""
    stack = sqlite_stack
    metrics = Metrics(stack, tmp_path / "metrics")
    shutil.copy(metrics.script, stack.metrics_script)  # the maintenance run calls it
    with small_disk(stack.status_dir) as status_disk, small_disk(metrics.textfile_dir) as textfile:
        first = stack.run_maintenance()
        assert first.returncode == 0, first.stdout + first.stderr
        assert stack.status()["result"] == "success"
        assert "tracker_backup_last_run_success 1\n" in metrics.output.read_text()
        fill(status_disk)
        fill(textfile)

        conf = stack.deploy_dir / "storage/backup-etc/backup.conf"
        conf.write_text(conf.read_text() + "NOT A SETTING\n")  # the backup container refuses it
        failed = stack.run_maintenance()
        assert failed.returncode != 0

        status = stack.status()
        assert (status["result"], status["exit_code"]) == ("failure", str(failed.returncode))
        text = metrics.output.read_text()
        assert "tracker_backup_last_run_success 0\n" in text
        assert f"tracker_backup_last_run_exit_code {failed.returncode}\n" in text
        assert "written over in place" in stack.log_file.read_text()


def _scrapes(step_minutes: int, offset_minutes: int, minutes: int) -> str:
    """up=0 every ``step_minutes`` from ``offset_minutes``, as a 1-minute promtool series."""
    return " ".join(
        "0" if minute >= offset_minutes and (minute - offset_minutes) % step_minutes == 0 else "_"
        for minute in range(minutes)
    )


def test_tracker_down_fires_on_a_stack_scraped_every_ten_minutes(tmp_path: Path) -> None:
    """prometheus.scrape_interval_in_secs 600 gave the tracker_stats job and the rule
    evaluation that interval: a rule sees only the samples of the 5 minutes before
    it, so with the scrapes more than 5 minutes before each evaluation TrackerDown
    never saw the tracker's `up` (a review: no alert at 120m). promtool on the
    rendered prometheus.yml and rules, sampled and evaluated as rendered, for every
    offset of the scrapes from the evaluations (Prometheus spreads them)."""
    data = sample_data("manual-test-mysql")
    data["prometheus"] = {"scrape_interval_in_secs": 600}
    tree = render(parse(data))
    for host_path in (paths.PROMETHEUS_CONFIG, paths.PROMETHEUS_RULES):
        (tmp_path / host_path.name).write_bytes(tree.file(host_path).content)
    config = yaml.safe_load(tree.text(paths.PROMETHEUS_CONFIG))
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == monitoring.TRACKER_STATS_JOB]
    scrape_seconds = int(job.get("scrape_interval", config["global"]["scrape_interval"])[:-1])
    assert scrape_seconds % 60 == 0
    step = scrape_seconds // 60
    rules = yaml.safe_load(tree.text(paths.PROMETHEUS_RULES))["groups"][0]["rules"]
    [rule] = [rule for rule in rules if rule.get("alert") == "TrackerDown"]
    labels = {"job": monitoring.TRACKER_STATS_JOB, "instance": "tracker:1212"}
    series = "up{" + ",".join(f'{name}="{value}"' for name, value in labels.items()) + "}"
    test = {
        "rule_files": [paths.PROMETHEUS_RULES.name],
        "evaluation_interval": config["global"]["evaluation_interval"],
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": series, "values": _scrapes(step, offset, 120)}],
                "alert_rule_test": [
                    {
                        "eval_time": "30m",
                        "alertname": "TrackerDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", **labels},
                                "exp_annotations": rule["annotations"],
                            }
                        ],
                    }
                ],
            }
            for offset in range(step)
        ],
    }
    (tmp_path / "tracker-down.test.yml").write_text(yaml.safe_dump(test))

    checked = subprocess.run(
        [promtool(), "check", "config", str(tmp_path / paths.PROMETHEUS_CONFIG.name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = subprocess.run(
        [promtool(), "test", "rules", "tracker-down.test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
