"""Deploy envs/e2e-sqlite.json and envs/e2e-mysql.json to a real host with the real
CLI, then check the backups there: fired by cron, run on demand, consistent with
the live database, failing loudly and safely, and a second deploy that changes
nothing.

The tests of one environment run in file order against one deployment (a
module-scoped fixture, one parameter per environment; both environments use
/opt/torrust, so they run one after the other on the same target host, which is
reset in between). The stack runs the tracker STAND-IN
(test-doubles/images/tracker-standin): every transaction it writes adds 1 to
torrents.completed and to the metric torrents_downloads_total together, so a
consistent snapshot has SUM(completed) == torrents_downloads_total.

Both environments run Prometheus (scraping every second) with node-exporter
reading the backup metrics. Their images are Debian-built STAND-INS for the
official prom/prometheus and prom/node-exporter images, which cannot be pulled
here: tracker-deployer-test/prometheus:e2e and
tracker-deployer-test/node-exporter:e2e (test-doubles/images, from Debian's
`prometheus` and `prometheus-node-exporter` packages). The tests query that
Prometheus from inside the host (tests/e2e/prometheus.py) after the cron-fired
run, after the failed run and after a restore drill.
"""

from __future__ import annotations

import gzip
import json
import re
import shlex
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tracker_deployer import monitoring, paths
from tracker_deployer.config import Env, load_env
from tracker_deployer.config.model import MysqlDatabase
from tracker_deployer.remote.plan import CRON_FILES
from tracker_deployer.render import render
from tracker_deployer.render.quoting import MYSQL_PWD_FROM_IMAGE_ENV
from tracker_deployer.render.tree import backup_monitoring

from tests.e2e.downtime import Downtime, HealthPoller, http_tracker_health_url
from tests.e2e.prometheus import StackPrometheus, metric, sample_value
from tests.e2e.remote_host import (
    BACKUPS,
    COMPOSE,
    LOG_FILE,
    STATUS_FILE,
    RemoteHost,
    docker_time,
    env_argument,
    host_keys,
    inv,
    key_value_lines,
    shown,
    status_time,
)
from tests.helpers import ENVS_DIR

pytestmark = pytest.mark.e2e

Say = Callable[[str], None]

CRON_FIRE_TIMEOUT = 75  # `* * * * *` fires at the next minute boundary
RUN_TIMEOUT = 120  # a backup run of the small e2e database takes a few seconds
HEALTHY_TIMEOUT = 120
DRILL_TIMEOUT = 300  # a restore drill of the small e2e database (MySQL: a scratch server)
# Issue 15 item 4: the SQLite run's downtime seen from outside (the published HTTP
# tracker's health route). The target is 1.5 s. With the gated snapshot
# (the backup container started and prepared before the tracker stops, the tracker
# stopped and started by container id) this e2e measured 1.51 s (cron-fired run) and
# 1.45 s (on demand) on 2026-12-05 (LXD instance, nested Docker, 2 shared cores
# under load): at the target, not reliably under it; before the change 2.0-4.2 s.
# What is left is the tracker's own stop and start. The test holds the gain with
# a margin for this machine's noise, so it fails on a return to the old steps.
SQLITE_DOWNTIME_TARGET_SECONDS = 1.5
SQLITE_DOWNTIME_BOUND_SECONDS = 2.0
ANSWER_AGAIN_TIMEOUT = 60  # a started tracker container opens its ports within this
BACKUP_FAILED = 'ALERTS{alertname="BackupFailed"}'
BACKUP_FAILED_FIRING = 'ALERTS{alertname="BackupFailed",alertstate="firing"}'
DOWNLOADS_METRIC = "torrents_downloads_total"
TABLES = ("torrents", "whitelist", "keys", "torrent_aggregate_metrics")
SUMMARY = re.compile(
    r"(?P<scope>push|install-cron): (?P<created>\d+) created, (?P<changed>\d+) changed, "
    r"(?P<fixed>\d+) mode/owner fixed, (?P<removed>\d+) removed, (?P<unchanged>\d+) unchanged"
)


@dataclass
class Deployment:
    """One environment deployed to the target host."""

    database: str  # sqlite | mysql
    env: Env
    env_arg: str  # what --env gets
    host: RemoteHost
    known_hosts: Path  # the deployer's (filled by --accept-new-host-key)
    label: str
    first: subprocess.CompletedProcess[str] | None = None
    deployed_at: float = 0.0  # time.monotonic() when the first deploy returned
    cron_run: dict[str, str] | None = None  # last-run.env of the cron-fired run
    # Polls the tracker's health from this machine from the deploy to the end of
    # the cron-fired run.
    cron_poller: HealthPoller | None = None
    # (run, downtime seen from outside, the run's own downtime_seconds), per measured run.
    downtimes: list[tuple[str, Downtime, str]] = field(default_factory=list)

    @property
    def health_url(self) -> str:
        return http_tracker_health_url(self.env, self.host.address.host)

    def inv(self, task: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return inv(
            task,
            "--env",
            self.env_arg,
            "--host",
            self.host.address.host,
            "--known-hosts",
            str(self.known_hosts),
            *extra,
        )


def cron_files(env: Env) -> int:
    """The install-cron files this environment renders (a subset of CRON_FILES:
    the off-host check's only with backup.offsite)."""
    return sum(1 for path in render(env).paths if path in CRON_FILES)


def summaries(output: str) -> dict[str, dict[str, int]]:
    return {
        match["scope"]: {
            key: int(value) for key, value in match.groupdict().items() if key != "scope"
        }
        for match in SUMMARY.finditer(output)
    }


@pytest.fixture(scope="module", params=["sqlite", "mysql"])
def deployment(
    request: pytest.FixtureRequest,
    target: RemoteHost,
    tmp_path_factory: pytest.TempPathFactory,
    say: Say,
) -> Iterator[Deployment]:
    name = f"e2e-{request.param}"
    label = f"{target.kind}/{name}"
    work = tmp_path_factory.mktemp(name)
    env_file = ENVS_DIR / f"{name}.json"
    env_arg = env_argument(name)
    deployment = Deployment(
        database=request.param,
        env=load_env(env_file),
        env_arg=env_arg,
        host=target,
        known_hosts=work / "known_hosts",
        label=label,
    )
    try:
        say(f"[{label}] resetting the target host (no stack, no cron file, cron running)")
        target.reset()
        target.resume_cron()
        say(
            f"[{label}] inv deploy --env {env_arg} --host {target.address.host} "
            "--accept-new-host-key (first contact, empty known_hosts)"
        )
        started = time.monotonic()
        first = deployment.inv("deploy", "--accept-new-host-key")
        deployment.deployed_at = time.monotonic()
        deployment.first = first
        assert first.returncode == 0, shown(first)
        # From now until the cron-fired run ends (bounded): its downtime from outside.
        deployment.cron_poller = HealthPoller(
            deployment.health_url,
            limit_seconds=CRON_FIRE_TIMEOUT + RUN_TIMEOUT + ANSWER_AGAIN_TIMEOUT,
        ).start()
        say(f"[{label}] deployed in {deployment.deployed_at - started:.0f} s")
        for line in first.stdout.splitlines():
            if line.startswith(("push:", "install-cron:", "deployed")) or " health=" in line:
                say(f"[{label}]   {line.strip()}")
        yield deployment
    finally:
        if deployment.cron_poller is not None:
            deployment.cron_poller.stop()
        say(f"[{label}] removing the stack and the deployer's files from the target host")
        target.reset()


# --------------------------------------------------------------------------- deploy


def test_deploy_brings_up_a_healthy_stack_and_records_the_host_key(
    deployment: Deployment,
) -> None:
    first = deployment.first
    assert first is not None
    counts = summaries(first.stdout)
    assert counts["push"]["created"] > 0, first.stdout
    assert counts["push"]["changed"] == counts["push"]["unchanged"] == 0
    assert counts["install-cron"] == {
        "created": cron_files(deployment.env),
        "changed": 0,
        "fixed": 0,
        "removed": 0,
        "unchanged": 0,
    }
    expected = ["tracker", "mysql"] if deployment.database == "mysql" else ["tracker"]
    if deployment.database == "mysql":  # a new host: no MySQL yet to give passwords to
        assert "mysql: not running: no password changed in the server" in first.stdout
    for service in expected:
        assert re.search(rf"^  {service}\s+running\s+health=healthy\b", first.stdout, re.M), (
            first.stdout
        )
    # The deployer recorded the host's real key (read from inside the host).
    recorded = deployment.known_hosts.read_text()
    real = host_keys()
    assert any(key in recorded for key in real), (recorded, real)
    # The rendered cron entry is the one the host has.
    cron = deployment.host.read(str(paths.CRON_FILE)).decode()
    assert "* * * * * root cd /opt/torrust && /usr/local/bin/maintenance-backup.sh --quiet" in cron


# --------------------------------------------------------------------------- cron


def test_cron_fires_by_itself_and_writes_a_complete_verified_set(
    deployment: Deployment, say: Say
) -> None:
    host, label = deployment.host, deployment.label
    say(f"[{label}] waiting (at most {CRON_FIRE_TIMEOUT} s) for cron to fire the backup by itself")
    deadline = deployment.deployed_at + CRON_FIRE_TIMEOUT
    log = ""
    while "backup run started" not in log:
        if time.monotonic() > deadline:
            pytest.fail(
                f"cron did not start the maintenance script within {CRON_FIRE_TIMEOUT} s of "
                f"the deploy; {LOG_FILE}:\n{log}"
            )
        time.sleep(2)
        log = host.run(f"cat {LOG_FILE} 2>/dev/null").stdout.decode()
    fired = time.monotonic() - deployment.deployed_at
    deadline = time.monotonic() + RUN_TIMEOUT
    while not host.exists(STATUS_FILE):
        if time.monotonic() > deadline:
            pytest.fail(f"the cron-fired run did not finish within {RUN_TIMEOUT} s")
        time.sleep(2)
    log = host.read(LOG_FILE).decode()
    status = host.status()
    assert status["result"] == "success", f"{status}\n{log}\n{host.diagnostics()}"
    deployment.cron_run = status
    set_id = status["set"]
    assert f"backup run finished: set {set_id} complete" in log

    checked = host.verify_set(set_id)
    database_file = host.database_file(set_id)
    assert database_file.startswith(f"{deployment.database}/"), database_file
    assert f"{database_file}: OK" in checked
    assert f"config/config_{set_id}.tar.gz: OK" in checked
    assert "FAILED" not in checked
    meta = host.meta(set_id)
    assert meta["set"] == set_id
    assert meta["db_type"] == deployment.database
    assert int(meta["rows.torrents"]) > 0, meta
    say(
        f"[{label}] CRON-FIRED BACKUP: cron started the run {fired:.0f} s after the deploy; "
        f"set {set_id} complete in {status['duration_seconds']} s "
        f"(tracker down {status['downtime_seconds']} s)"
    )
    say(f"[{label}]   sha256sum -c on the host: {checked.count(': OK')} files OK")
    poller = deployment.cron_poller
    assert poller is not None
    poller.wait_answering(ANSWER_AGAIN_TIMEOUT)
    _measured(deployment, say, "cron-fired run", poller.stop(), status)
    say(
        f"[{label}]   .meta: db_type={meta['db_type']} "
        + " ".join(f"{key}={value}" for key, value in meta.items() if key.startswith("rows."))
    )


# --------------------------------------------------------------------------- prometheus


def test_stack_prometheus_returns_the_cron_fired_runs_last_success(
    deployment: Deployment, say: Say
) -> None:
    """A PromQL query against the stack's own Prometheus on the host returns the
    end of the cron-fired run as the last-success timestamp.

    The Prometheus and node-exporter images are Debian-built stand-ins for the
    official prom/prometheus and prom/node-exporter images (see the module docstring).
    """
    host, label = deployment.host, deployment.label
    run = deployment.cron_run
    assert run is not None, "the cron-fired run was not seen (see the test before this one)"
    host.pause_cron()  # no later run may replace the one checked here
    assert host.status() == run, "another run finished after the cron-fired one"
    finished = int(status_time(run["finished_at"]).timestamp())
    prometheus = StackPrometheus(host, deployment.env)
    query = metric("last_success")
    [sample] = prometheus.wait_for(
        query,
        f"the last success of the cron-fired run (finished_at {run['finished_at']})",
        lambda vector: len(vector) == 1 and sample_value(vector[0]) == finished,
    )
    scrape = backup_monitoring(deployment.env)
    assert scrape is not None
    assert sample["metric"]["instance"] == scrape["target"]  # read through node-exporter
    [ended] = prometheus.wait_for(metric("run_end"), "the end of the last run")
    assert sample_value(ended) == finished
    [succeeded] = prometheus.wait_for(metric("run_success"), "the result of the last run")
    assert sample_value(succeeded) == 1
    [down] = prometheus.wait_for(metric("run_downtime"), "the downtime of the last run")
    assert sample_value(down) == float(run["downtime_seconds"])
    assert prometheus.query(BACKUP_FAILED) == [], "BackupFailed before any run failed"
    # The tracker's API: on 127.0.0.1 of the host in the e2e envs, in its container on
    # every address, so that Prometheus reaches it (it listened on the container's own
    # loopback, and this target was never up). Up once since the deploy: a scrape
    # times out after 1 s here, which a loaded machine can make the stand-in miss.
    stats = f'max_over_time(up{{job="{monitoring.TRACKER_STATS_JOB}"}}[10m])'
    prometheus.wait_for(
        stats, "the tracker's API scraped", lambda v: [sample_value(s) for s in v] == [1]
    )
    say(
        f"[{label}] PROMETHEUS (Debian-built stand-in) after the cron-fired run: "
        f"{query} = {finished} = finished_at {run['finished_at']} of set {run['set']}; "
        f"run_success=1; {BACKUP_FAILED}: none"
    )
    outside = [seen for name, seen, _ in deployment.downtimes if name == "cron-fired run"]
    say(
        f"[{label}]   {monitoring.METRICS['run_downtime']} = {sample_value(down):g} "
        f"(downtime_seconds of the run); seen from outside: "
        + (f"{outside[0].longest_seconds:.2f} s" if outside else "not measured")
    )


# --------------------------------------------------------------------------- redeploy


def test_second_deploy_changes_nothing_and_restarts_nothing(
    deployment: Deployment, say: Say
) -> None:
    host, label = deployment.host, deployment.label
    host.pause_cron()  # a scheduled run would restart the tracker in between
    before = host.containers()
    say(f"[{label}] second inv deploy (same config; known host key, no --accept-new-host-key)")
    second = deployment.inv("deploy")
    assert second.returncode == 0, shown(second)
    counts = summaries(second.stdout)
    for scope in ("push", "install-cron"):
        assert counts[scope]["created"] == 0, second.stdout
        assert counts[scope]["changed"] == 0, second.stdout
        assert counts[scope]["fixed"] == 0, second.stdout
        assert counts[scope]["removed"] == 0, second.stdout
    assert counts["install-cron"]["unchanged"] == cron_files(deployment.env)
    # configure (phase 2) found the host as wanted: every step unchanged.
    assert "  unchanged firewall (nftables)" in second.stdout, second.stdout
    assert "  changed   " not in second.stdout, second.stdout
    if deployment.database == "mysql":  # the config's passwords, set again (over SSH)
        assert (
            "mysql: passwords of root and the tracker's user set in the server (logged in "
            "with the password MySQL was started with)"
        ) in second.stdout, second.stdout
    after = host.containers()
    assert after == before, f"containers changed:\nbefore {before}\nafter  {after}"
    for line in second.stdout.splitlines():
        if line.startswith(("push:", "install-cron:")):
            say(f"[{label}]   {line}")
    say(f"[{label}]   containers unchanged (id, StartedAt): {', '.join(sorted(after))}")


# --------------------------------------------------------------------------- on demand


def test_on_demand_backup_stops_the_tracker_only_for_the_snapshot(
    deployment: Deployment, say: Say
) -> None:
    host, label = deployment.host, deployment.label
    host.pause_cron()
    before = host.containers()
    say(f"[{label}] inv backup (on demand), polling {deployment.health_url} from here")
    with HealthPoller(
        deployment.health_url, limit_seconds=RUN_TIMEOUT + ANSWER_AGAIN_TIMEOUT
    ) as poller:
        result = deployment.inv("backup")
        poller.wait_answering(ANSWER_AGAIN_TIMEOUT)
    assert result.returncode == 0, shown(result)
    assert "stopping tracker for the database snapshot" in result.stdout
    assert "backup complete" in result.stdout

    status = host.status()
    assert status["result"] == "success", status
    set_id = status["set"]
    after = host.containers()
    tracker_id, tracker_started = after["tracker"]
    assert tracker_id == before["tracker"][0], "the tracker container was replaced"
    restarted = docker_time(tracker_started)
    assert restarted > docker_time(before["tracker"][1]), "the tracker was not restarted"
    assert restarted >= status_time(status["started_at"])
    downtime = float(status["downtime_seconds"])
    assert 0 < downtime <= int(status["duration_seconds"]) + 1
    if deployment.database == "mysql":
        assert after["mysql"] == before["mysql"], "MySQL was restarted by the backup"
    row = host.wait_healthy("tracker", HEALTHY_TIMEOUT, say)
    checked = host.verify_set(set_id)
    assert "FAILED" not in checked
    say(
        f"[{label}] ON-DEMAND BACKUP: set {set_id} complete; tracker stopped for the snapshot "
        f"and started again (StartedAt {before['tracker'][1][:19]} -> {tracker_started[:19]}, "
        f"run started {status['started_at']}), downtime_seconds={downtime}"
    )
    say(f"[{label}]   docker compose ps: tracker {row['state']} ({row['health']}), {row['status']}")
    say(f"[{label}]   sha256sum -c on the host: {checked.count(': OK')} files OK")
    _measured(deployment, say, "on-demand run", poller.result, status)


def _measured(
    deployment: Deployment, say: Say, run: str, seen: Downtime, status: dict[str, str]
) -> None:
    """Record and print one run's downtime: from outside and as the run recorded it."""
    recorded = status.get("downtime_seconds", "")
    deployment.downtimes.append((run, seen, recorded))
    say(
        f"[{deployment.label}]   TRACKER DOWNTIME of the {run} (set {status.get('set')}), "
        f"seen from here at {deployment.health_url}: {seen.describe()}; "
        f"the run recorded downtime_seconds={recorded}"
    )
    say(f"[{deployment.label}]   its {_breakdown(deployment.host, status.get('set', ''))}")


def _breakdown(host: RemoteHost, set_id: str) -> str:
    """The run's own "downtime breakdown" log line (the last one before the run's
    "backup run finished: set ID complete")."""
    lines = host.read(LOG_FILE).decode(errors="replace").splitlines()
    done = f"backup run finished: set {set_id} complete"
    end = next((i for i, line in enumerate(lines) if set_id and done in line), len(lines))
    found = [line for line in lines[:end] if "downtime breakdown:" in line]
    return (
        found[-1].partition("maintenance-backup: ")[2]
        if found
        else "downtime breakdown: not logged"
    )


# --------------------------------------------------------------------------- downtime


def test_tracker_downtime_seen_from_outside_is_measured_for_every_run(
    deployment: Deployment, say: Say
) -> None:
    """Every measured run (the cron-fired one, the on-demand one) stopped the tracker,
    the poller saw it stop, and it answered again. Both engines; the numbers are
    printed next to the run's own downtime_seconds (to the millisecond, from the stop
    command to the end of the start command: it leaves out the time the started
    tracker takes to listen)."""
    label = deployment.label
    runs = [run for run, _, _ in deployment.downtimes]
    assert runs == ["cron-fired run", "on-demand run"], runs
    for run, seen, recorded in deployment.downtimes:
        assert seen.answered_first, f"{run}: the tracker did not answer when polling began"
        assert seen.answered_last, f"{run}: the tracker did not answer again: {seen.describe()}"
        assert seen.failed > 0, f"{run}: no failed probe, so the stop was not seen: {seen}"
        say(
            f"[{label}] DOWNTIME of the {run}: {seen.longest_seconds:.2f} s seen from outside; "
            f"downtime_seconds={recorded} recorded by the run"
        )


def test_sqlite_tracker_downtime_seen_from_outside_stays_within_bound(
    deployment: Deployment, say: Say
) -> None:
    """Issue 15 item 4: with SQLite, every measured run keeps the tracker from
    answering for at most SQLITE_DOWNTIME_BOUND_SECONDS, seen from outside."""
    if deployment.database != "sqlite":
        pytest.skip("the bound is SQLite's; MySQL's downtime is reported only")
    assert deployment.downtimes, "no run was measured (see the tests before this one)"
    worst = max(seen.longest_seconds for _, seen, _ in deployment.downtimes)
    say(
        f"[{deployment.label}] SQLite: longest downtime seen from outside {worst:.2f} s "
        f"(issue 15's target {SQLITE_DOWNTIME_TARGET_SECONDS} s: "
        f"{'met' if worst <= SQLITE_DOWNTIME_TARGET_SECONDS else 'MISSED'}; "
        f"this test's bound {SQLITE_DOWNTIME_BOUND_SECONDS} s)"
    )
    assert worst <= SQLITE_DOWNTIME_BOUND_SECONDS, (
        f"SQLite: the tracker was down {worst:.2f} s seen from outside, more than "
        f"{SQLITE_DOWNTIME_BOUND_SECONDS} s: {deployment.downtimes}"
    )


# --------------------------------------------------------------------------- restore


@pytest.mark.skipif(
    env_argument.official, reason="checks the stand-in's invariant (--images official)"
)
def test_backup_restores_to_a_consistent_snapshot_of_the_live_database(
    deployment: Deployment, say: Say, tmp_path: Path
) -> None:
    host, label = deployment.host, deployment.label
    host.pause_cron()
    sets = host.complete_sets()
    assert sets, "no complete backup set on the host"
    set_id = sets[-1]
    meta = host.meta(set_id)
    if deployment.database == "sqlite":
        how = f"fetched the {host.database_file(set_id)} over SSH, opened it with sqlite3"
        restored, live = _restore_and_compare_sqlite(host, set_id, deployment.env, tmp_path)
    else:
        how = "loaded the dump into the scratch database e2e_restore in the stack's MySQL"
        restored, live = _restore_and_compare_mysql(host, set_id, deployment.env)
    say(f"[{label}] RESTORE CHECK of set {set_id}: {how}")
    for table in TABLES:
        assert restored[f"rows.{table}"] == int(meta[f"rows.{table}"]), (table, restored, meta)
    say(
        f"[{label}]   row counts equal the .meta: "
        + ", ".join(f"{table}={restored[f'rows.{table}']}" for table in TABLES)
    )
    assert restored["rows.torrents"] > 0
    assert restored["metric"] > 0, "the stand-in counted no download before the snapshot"
    assert restored["sum_completed"] == restored["metric"], restored
    say(
        f"[{label}]   no half-written transaction: SUM(completed)={restored['sum_completed']}"
        f" = {DOWNLOADS_METRIC}={restored['metric']}"
    )
    assert live["missing_or_behind"] == 0, live
    assert live["metric"] >= restored["metric"], (live, restored)
    assert live["torrents"] >= restored["rows.torrents"], (live, restored)
    say(
        f"[{label}]   every one of the {restored['rows.torrents']} snapshot rows is in the live "
        f"database with completed >= the snapshot's (live now: {live['torrents']} torrents, "
        f"{DOWNLOADS_METRIC}={live['metric']})"
    )


LIVE_SQLITE = """
import json, sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
torrents = db.execute("SELECT info_hash, completed FROM torrents").fetchall()
row = db.execute(
    "SELECT value FROM torrent_aggregate_metrics WHERE metric_name = ?", (sys.argv[2],)
).fetchone()
print(json.dumps({"torrents": dict(torrents), "metric": row[0] if row else 0}))
"""


def _restore_and_compare_sqlite(
    host: RemoteHost, set_id: str, env: Env, tmp_path: Path
) -> tuple[dict[str, int], dict[str, int]]:
    """Fetch the set's database file (.db.gz or .db.zst) over SSH, read it with sqlite3
    here, and compare it with the live database (read inside the running tracker
    container)."""
    database = tmp_path / "restored.db"
    name = host.database_file(set_id)
    database.write_bytes(_decompressed(name, host.read(f"{BACKUPS}/{name}")))
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        restored = {
            f"rows.{table}": int(db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])  # noqa: S608
            for table in TABLES
        }
        restored["sum_completed"] = int(
            db.execute("SELECT COALESCE(SUM(completed), 0) FROM torrents").fetchone()[0]
        )
        metric = db.execute(
            "SELECT value FROM torrent_aggregate_metrics WHERE metric_name = ?",
            (DOWNLOADS_METRIC,),
        ).fetchone()
        restored["metric"] = int(metric[0]) if metric else 0
        snapshot = dict(db.execute("SELECT info_hash, completed FROM torrents").fetchall())
    db.close()
    path = paths.sqlite_in_tracker(env.database.database_name)
    output = host.compose(
        f"exec -T tracker python3 -c {shlex.quote(LIVE_SQLITE)} {path} {DOWNLOADS_METRIC}"
    )
    now = json.loads(output)
    behind = [
        info_hash
        for info_hash, completed in snapshot.items()
        if now["torrents"].get(info_hash, -1) < completed
    ]
    live = {
        "torrents": len(now["torrents"]),
        "metric": int(now["metric"]),
        "missing_or_behind": len(behind),
    }
    return restored, live


def _decompressed(name: str, data: bytes) -> bytes:
    """A set's database file decompressed here, by its suffix (zstd: Debian's zstd)."""
    if name.endswith(".zst"):
        return subprocess.run(
            ["zstd", "-q", "-d", "-c"], input=data, capture_output=True, check=True, timeout=600
        ).stdout
    return gzip.decompress(data)


MYSQL_RESTORE = r"""
set -o errexit -o nounset -o pipefail
readonly DUMP="$1" LIVE="$2" METRIC="$3" BACKUP_IMAGE="$4" SCRATCH=e2e_restore
cd /opt/torrust
# The root password comes from the stack's own .env (MYSQL_ROOT_PASSWORD in the
# container's environment, escaped for the image's entrypoint); it never appears
# on a command line.
sql() {
  docker compose exec -T mysql sh -c \
    '@MYSQL_PWD@; exec mariadb -uroot --batch --skip-column-names "$@"' sh "$@"
}
sql -e "DROP DATABASE IF EXISTS ${SCRATCH}; CREATE DATABASE ${SCRATCH}"
trap 'sql -e "DROP DATABASE IF EXISTS ${SCRATCH}" || true' EXIT
# Decompressed by its suffix in the backup image (the host need not have zstd).
decompressor=(gzip -d -c)
[[ "${DUMP}" != *.zst ]] || decompressor=(zstd -q -d -c)
docker run --rm -i --pull never --network none --entrypoint "${decompressor[0]}" "${BACKUP_IMAGE}" \
  "${decompressor[@]:1}" <"${DUMP}" | sql "${SCRATCH}"
sql "${SCRATCH}" <<SQL
SELECT 'rows.torrents', COUNT(*) FROM torrents;
SELECT 'rows.whitelist', COUNT(*) FROM whitelist;
SELECT 'rows.keys', COUNT(*) FROM \`keys\`;
SELECT 'rows.torrent_aggregate_metrics', COUNT(*) FROM torrent_aggregate_metrics;
SELECT 'sum_completed', COALESCE(SUM(completed), 0) FROM torrents;
SELECT 'metric', COALESCE((SELECT value FROM torrent_aggregate_metrics
                           WHERE metric_name = '${METRIC}'), 0);
SELECT 'live.missing_or_behind', COUNT(*) FROM torrents r
  LEFT JOIN \`${LIVE}\`.torrents l ON l.info_hash = r.info_hash
  WHERE l.id IS NULL OR l.completed < r.completed;
SELECT 'live.torrents', COUNT(*) FROM \`${LIVE}\`.torrents;
SELECT 'live.metric', COALESCE((SELECT value FROM \`${LIVE}\`.torrent_aggregate_metrics
                                WHERE metric_name = '${METRIC}'), 0);
SQL
""".replace("@MYSQL_PWD@", MYSQL_PWD_FROM_IMAGE_ENV)


def _restore_and_compare_mysql(
    host: RemoteHost, set_id: str, env: Env
) -> tuple[dict[str, int], dict[str, int]]:
    """Load the set's dump into a scratch database in the stack's MySQL (as root, with
    the password from the env) and compare it there with the live database."""
    database = env.database
    assert isinstance(database, MysqlDatabase)
    output = host.script(
        MYSQL_RESTORE,
        f"{BACKUPS}/{host.database_file(set_id)}",
        database.database_name,
        DOWNLOADS_METRIC,
        env.images.backup,
    )
    values = {}
    for line in output.splitlines():
        key, value = line.split("\t")
        values[key] = int(value)
    restored = {key: value for key, value in values.items() if not key.startswith("live.")}
    live = {key[len("live.") :]: value for key, value in values.items() if key.startswith("live.")}
    return restored, live


# --------------------------------------------------------------------------- operator tasks

LIVE_MYSQL = "docker compose exec -T mysql sh -c " + shlex.quote(  # noqa: S608 - fixed SQL
    f"{MYSQL_PWD_FROM_IMAGE_ENV}; exec mariadb -uroot --batch --skip-column-names "  # noqa: S608
    '-e "SELECT id, info_hash, completed FROM torrents ORDER BY id" "$MYSQL_DATABASE"'
)


def _live_rows(deployment: Deployment, tmp_path: Path) -> list[tuple[object, ...]]:
    """Every torrents row of the live database (the tracker must be stopped for SQLite)."""
    host = deployment.host
    if deployment.database == "mysql":
        output = host.check(f"cd {paths.DEPLOY_DIR} && {LIVE_MYSQL}")
        return [tuple(line.split("\t")) for line in output.splitlines()]
    path = paths.sqlite_on_host(deployment.env.database.database_name)
    local = tmp_path / f"live-{time.monotonic_ns()}.db"
    local.write_bytes(host.read(str(path)))
    with sqlite3.connect(local) as db:
        rows = db.execute("SELECT id, info_hash, completed FROM torrents ORDER BY id").fetchall()
    db.close()
    return [tuple(str(value) for value in row) for row in rows]


def _flip_byte(host: RemoteHost, path: str) -> str:
    """Flip one bit in the middle of a file on the host; returns the command that undoes it."""
    size = int(host.check(f"stat -c %s {path}").strip())
    offset = size // 2
    original = int(host.check(f"od -An -tu1 -j {offset} -N1 {path}").strip())

    def write(value: int) -> str:
        return (
            f"printf '\\{value:03o}' | dd of={path} bs=1 seek={offset} count=1 conv=notrunc "
            "status=none"
        )

    host.check(write(original ^ 0x01))
    return write(original)


def test_operator_tasks_list_verify_restore_and_refuse_a_corrupted_set(
    deployment: Deployment, say: Say, tmp_path: Path
) -> None:
    host, label = deployment.host, deployment.label
    host.pause_cron()

    listed = deployment.inv("backups")
    assert listed.returncode == 0, shown(listed)
    assert "last run: SUCCESS" in listed.stdout
    verified = deployment.inv("verify", "--set", "latest")
    assert verified.returncode == 0, shown(verified)
    assert "VERIFIED" in verified.stdout
    say(
        f"[{label}] OPERATOR TASKS: inv backups lists {len(host.complete_sets())} set(s); "
        "inv verify (restore drill into a scratch target): VERIFIED"
    )

    # A set taken of a frozen database, then the database moves on.
    host.compose("stop tracker")
    taken = deployment.inv("backup")
    assert taken.returncode == 0, shown(taken)
    set_id = host.status()["set"]
    at_backup = _live_rows(deployment, tmp_path)
    host.compose("start tracker")
    host.wait_healthy("tracker", HEALTHY_TIMEOUT, say)
    time.sleep(3)  # the stand-in keeps writing
    host.compose("stop tracker")
    moved_on = _live_rows(deployment, tmp_path)
    assert moved_on != at_backup, "the stand-in wrote nothing after the backup"

    # A corrupted copy is caught and never restored.
    database_file = f"{BACKUPS}/{host.database_file(set_id)}"
    undo = _flip_byte(host, database_file)
    try:
        corrupt = deployment.inv("verify", "--set", set_id)
        refused = deployment.inv("restore", "--set", set_id, "--yes")
    finally:
        host.check(undo)
    assert corrupt.returncode == 4, shown(corrupt)
    assert "FAILED verification" in corrupt.stderr
    assert refused.returncode == 4, shown(refused)
    assert _live_rows(deployment, tmp_path) == moved_on, "a refused restore changed live data"
    say(
        f"[{label}]   one flipped bit in {database_file.rsplit('/', 1)[-1]}: inv verify exit 4, "
        "inv restore refused (exit 4), live data untouched"
    )

    # The round trip: the restored database equals the database at backup time.
    restored = deployment.inv("restore", "--set", set_id, "--yes")
    assert restored.returncode == 0, shown(restored)
    after = _live_rows(deployment, tmp_path)
    assert after == at_backup
    extracted = f"{BACKUPS}/restore-{set_id}/data"
    for live, archived in (
        (paths.TRACKER_CONFIG, f"{extracted}/storage/tracker/etc/tracker.toml"),
        (paths.COMPOSE_FILE, f"{extracted}/compose/docker-compose.yml"),
        (paths.DOTENV_FILE, f"{extracted}/compose/.env"),
    ):
        assert host.read(archived) == host.read(str(live)), live
    say(
        f"[{label}]   RESTORE ROUND TRIP: inv restore --set {set_id}: all {len(after)} torrents "
        f"rows equal the rows at backup time ({len(moved_on)} before the restore); "
        "tracker.toml, docker-compose.yml and .env equal the archived ones"
    )

    fetched = deployment.inv("fetch-backup", "--set", set_id, "--to", str(tmp_path / "offsite"))
    assert fetched.returncode == 0, shown(fetched)
    check = subprocess.run(
        ["sha256sum", "-c", f"manifests/set_{set_id}.sha256"],
        cwd=tmp_path / "offsite" / set_id,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    say(f"[{label}]   inv fetch-backup: set {set_id} downloaded, sha256sum -c OK locally")

    host.compose("start tracker")
    host.wait_healthy("tracker", HEALTHY_TIMEOUT, say)


# --------------------------------------------------------------------------- failure


def test_failed_backup_exits_non_zero_logs_why_and_keeps_tracker_and_old_sets(
    deployment: Deployment, say: Say
) -> None:
    host, label = deployment.host, deployment.label
    host.pause_cron()
    sets_before = host.complete_sets()
    assert sets_before, "no complete backup set on the host to protect"
    log_before = len(host.read(LOG_FILE).decode().splitlines())
    if deployment.database == "mysql":
        how = "docker compose stop mysql (the backup container runs with --no-deps)"
        host.compose("stop mysql")
        undo = f"{COMPOSE} start mysql"
    else:
        staging = f"{BACKUPS}/.staging"
        how = f"{staging} made read-only for the backup container's user"
        mode = host.check(
            f"test -d {staging} || install -d -o 1000 -g 1000 -m 0700 {staging}; "
            f"stat -c %a {staging}"
        ).strip()
        host.check(f"chmod 0500 {staging}")
        undo = f"chmod {mode} {staging}"
    say(f"[{label}] FAILURE CASE: {how}; inv backup")
    try:
        result = deployment.inv("backup")
        services = host.services()
        status = host.status()
        log = "\n".join(host.read(LOG_FILE).decode().splitlines()[log_before:])
        failure_log = host.read(f"{paths.BACKUP_STATUS_DIR}/last-failure.log").decode()
    finally:
        host.check(undo)
    assert result.returncode != 0, shown(result)
    assert "the backup failed with exit code" in result.stderr
    assert status["result"] == "failure", status
    assert status["exit_code"] == str(result.returncode)
    # The fault shows while the backup container prepares, before the tracker stops.
    assert "failed before the snapshot" in status["reason"], status
    assert "the tracker was never stopped" in status["reason"], status
    assert "backup run FAILED" in log, log
    assert status["reason"] in log
    assert failure_log.strip()
    if deployment.database == "mysql":
        assert "cannot query database" in log, log
    assert services["tracker"]["state"] == "running", services
    assert host.complete_sets() == sets_before, "the failed run added or removed a set"
    for set_id in sets_before:
        checked = host.verify_set(set_id)
        assert "FAILED" not in checked
    reason_lines = [line for line in log.splitlines() if "error" in line.lower()]
    say(
        f"[{label}]   inv backup exited {result.returncode}; {STATUS_FILE}: result={status['result']} exit_code={status['exit_code']} reason={status['reason']!r}"
    )
    for line in reason_lines[:3]:
        say(f"[{label}]   {LOG_FILE}: {line}")
    say(
        f"[{label}]   tracker still {services['tracker']['state']} ({services['tracker']['status']})"
    )
    if deployment.database == "mysql":
        # `compose start tracker` (the script's EXIT path) starts its dependency too.
        mysql = services["mysql"]
        say(f"[{label}]   mysql after the run: {mysql['state']} ({mysql['status']})")
    say(f"[{label}]   the {len(sets_before)} older set(s) still verify: {', '.join(sets_before)}")
    row = host.wait_healthy("tracker", HEALTHY_TIMEOUT, say)
    say(f"[{label}]   tracker healthy again after the fault was undone ({row['status']})")


def test_stack_prometheus_fires_backup_failed_after_the_failed_run(
    deployment: Deployment, say: Say
) -> None:
    """After the failure case, BackupFailed is firing in the stack's own Prometheus
    (a Debian-built stand-in for prom/prometheus, see the module docstring)."""
    host, label = deployment.host, deployment.label
    host.pause_cron()
    status = host.status()
    assert status["result"] == "failure", f"the last run is not the failed one: {status}"
    prometheus = StackPrometheus(host, deployment.env)
    firing = BACKUP_FAILED_FIRING
    [alert] = prometheus.wait_for(firing, "BackupFailed firing after the failed run")
    assert alert["metric"]["severity"] == "critical", alert
    assert alert["metric"]["job"] == monitoring.SCRAPE_JOB, alert
    [code] = prometheus.wait_for(metric("run_exit_code"), "the failed run's exit code")
    assert sample_value(code) == int(status["exit_code"])
    say(
        f"[{label}] PROMETHEUS after the failed run: {firing} present "
        f"(severity={alert['metric']['severity']}); "
        f"{monitoring.METRICS['run_exit_code']}={status['exit_code']}"
    )


def test_drill_on_the_host_is_listed_and_its_metric_reaches_prometheus(
    deployment: Deployment, say: Say
) -> None:
    """The scheduled drill's script, run on the host over SSH: it passes on the newest
    set, `inv backups` lists it, and the stack's Prometheus (a Debian-built stand-in,
    see the module docstring) has the drill metric at 1 for that drill."""
    host, label = deployment.host, deployment.label
    host.pause_cron()
    newest = host.complete_sets()[-1]
    say(f"[{label}] DRILL: {paths.DRILL_SCRIPT} on the host (over SSH)")
    host.check(f"{paths.DRILL_SCRIPT} --quiet", timeout=DRILL_TIMEOUT)
    last = key_value_lines(host.read(str(paths.DRILL_LAST)).decode())
    assert last["result"] == "success", last
    assert last["set"] == newest, last
    listed = deployment.inv("backups", "--json")
    # Exit 1: the last backup run (the failure case's) failed; a drill does not hide that.
    assert listed.returncode == 1, shown(listed)
    assert "the last backup run FAILED" in listed.stderr, shown(listed)
    inventory = json.loads(listed.stdout)
    assert inventory["last_drill"]["finished_epoch"] == last["finished_epoch"]
    [drill] = [d for d in inventory["drills"] if d["evidence"] == last["evidence"]]
    assert drill["result"] == "success", drill
    assert drill["set"] == newest, drill
    prometheus = StackPrometheus(host, deployment.env)
    finished = int(last["finished_epoch"])
    prometheus.wait_for(
        metric("drill_time"),
        f"the time of this drill ({finished})",
        lambda vector: len(vector) == 1 and sample_value(vector[0]) == finished,
    )
    [passed] = prometheus.wait_for(metric("drill_success"), "the drill's result")
    assert sample_value(passed) == 1
    assert prometheus.query('ALERTS{alertname="BackupDrillFailed"}') == []
    say(
        f"[{label}]   drill of set {newest} passed ({last['duration_seconds']} s); inv backups "
        f"lists {last['evidence']}; Prometheus: {monitoring.METRICS['drill_success']}=1, "
        f"{monitoring.METRICS['drill_time']}={finished}"
    )
