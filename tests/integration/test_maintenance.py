"""maintenance-backup.sh against a real compose stack (tracker stand-in + backup image)."""

from __future__ import annotations

import fcntl
import gzip
import json
import re
import sqlite3
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import parse, sample_data
from tests.integration.stack import (
    BACKUP_IMAGE,
    MARIADB_IMAGE,
    STANDIN_IMAGE,
    Stack,
    env_for_stack,
    require_images,
)

pytestmark = pytest.mark.integration

TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


def tracker_started_at(stack: Stack) -> datetime:
    container = stack.compose("ps", "-q", "tracker").stdout.strip()
    inspected = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.StartedAt}}", container],
        capture_output=True,
        text=True,
        check=True,
    )
    text = inspected.stdout.strip()
    return datetime.fromisoformat(text[:19] + "+00:00")


def sqlite_rows(path: Path, table: str = "torrents") -> int:
    with sqlite3.connect(path) as db:
        count: int = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608
        return count


def test_scheduled_run_writes_a_verified_set_and_restarts_the_tracker(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    stack = sqlite_stack
    before = tracker_started_at(stack)
    result = stack.run_maintenance()
    assert result.returncode == 0, result.stdout + result.stderr

    # one complete set whose checksums hold
    [set_id] = stack.sets()
    check = subprocess.run(
        ["sha256sum", "-c", f"manifests/set_{set_id}.sha256"],
        cwd=stack.backups,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"sqlite/sqlite_{set_id}.db.gz: OK" in check.stdout
    assert f"config/config_{set_id}.tar.gz: OK" in check.stdout

    # the snapshot is a sound database with the rows the manifest recorded
    restored = tmp_path / "restored.db"
    with gzip.open(stack.backups / f"sqlite/sqlite_{set_id}.db.gz") as source:
        restored.write_bytes(source.read())
    with sqlite3.connect(restored) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    meta = stack.meta(set_id)
    assert int(meta["rows.torrents"]) == sqlite_rows(restored) > 0

    # the config archive holds the rendered files
    listing = subprocess.run(
        ["tar", "-tzf", str(stack.backups / f"config/config_{set_id}.tar.gz")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "data/storage/tracker/etc/tracker.toml" in listing
    assert "data/compose/.env" in listing

    # the tracker was stopped and started again during the run, and runs now
    assert tracker_started_at(stack) > before
    assert "tracker" in stack.running_services()

    status = stack.status()
    assert status["result"] == "success"
    assert status["exit_code"] == "0"
    assert status["set"] == set_id
    assert int(status["downtime_seconds"]) >= 0

    lines = stack.log_file.read_text().splitlines()
    assert lines
    assert all(TIMESTAMPED.match(line) for line in lines), lines[:5]
    text = "\n".join(lines)
    assert "stopping tracker for the database snapshot" in text
    assert "running again after" in text
    assert f"set {set_id} complete" in text


def test_failing_backup_container_still_restarts_the_tracker_and_logs_why(
    tmp_path: Path,
) -> None:
    require_images(STANDIN_IMAGE)
    data = env_for_stack(sample_data("manual-test-sqlite"), backup_image="debian:bookworm-slim")
    stack = Stack(parse(data), tmp_path / "s").install()
    try:
        stack.up()
        result = stack.run_maintenance("--quiet")
        assert result.returncode != 0
        assert "tracker" in stack.running_services()
        log = stack.log_file.read_text()
        assert "the snapshot failed (backup container exit" in log
        assert "backup run FAILED" in log
        # --quiet (cron) prints only on failure: the reason and the run's log, on stderr
        assert result.stdout == ""
        assert "tracker backup FAILED" in result.stderr
        status = stack.status()
        assert status["result"] == "failure"
        assert "snapshot failed" in status["reason"]
        assert stack.sets() == []
        assert (stack.status_dir / "last-failure.log").read_text().strip()
    finally:
        stack.cleanup()


def test_a_second_run_waits_for_no_one_and_exits_75(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    stack.lock_file.parent.mkdir(parents=True, exist_ok=True)
    with stack.lock_file.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = stack.run_maintenance()
    assert result.returncode == 75
    assert "another backup run holds" in stack.log_file.read_text()
    assert stack.sets() == []
    assert "tracker" in stack.running_services()


def test_a_stopped_tracker_stays_stopped(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    stack.compose("stop", "tracker")
    result = stack.run_maintenance()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tracker" not in stack.running_services()
    assert len(stack.sets()) == 1
    assert "tracker is not running; it stays stopped" in stack.log_file.read_text()


def test_mysql_run_dumps_the_database_with_row_counts(tmp_path: Path) -> None:
    require_images(STANDIN_IMAGE, MARIADB_IMAGE, BACKUP_IMAGE)
    data = env_for_stack(sample_data("manual-test-mysql"))
    data["tracker"]["core"]["database"]["password"] = "p a'ss\"w$(x)`;#\\ ü"
    stack = Stack(parse(data), tmp_path / "m").install()
    try:
        stack.up()
        result = stack.run_maintenance()
        assert result.returncode == 0, result.stdout + result.stderr
        [set_id] = stack.sets()
        with gzip.open(stack.backups / f"mysql/mysql_{set_id}.sql.gz", "rt") as dump:
            text = dump.read()
        assert "CREATE TABLE `torrents`" in text
        assert text.rstrip().splitlines()[-1].startswith("-- Dump completed")
        meta = stack.meta(set_id)
        assert int(meta["rows.torrents"]) > 0
        assert "tracker" in stack.running_services()
        assert json.dumps(data["tracker"]["core"]["database"]["password"])[1:-1] not in (
            stack.log_file.read_text()
        )
    finally:
        stack.cleanup()
