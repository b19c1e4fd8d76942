"""The MySQL maintenance window (issue 15, item 1), against the real MariaDB on 127.0.0.1:3306.

`backup.sh snapshot` prints "snapshot-open" once its consistent view exists; the
maintenance script starts the tracker then, while the dump goes on. Here a writer
plays the tracker: every transaction adds one download to a torrent (an UPDATE of
`completed` or a new row) and to the `torrents_downloads_total` counter, as the
tracker does. It starts writing when the line appears and keeps writing until the
dump has ended. The set restored from that run must hold SUM(completed) =
torrents_downloads_total and the row counts of its .meta.

The second test starts the writer before the snapshot, as a maintenance script
that started the tracker too early would: the same checks then fail.

In both, mariadb-dump starts 0.3 s late (a wrapper in PATH that sleeps, then runs
the real one), as on a busy host: the signal must wait for the dump's own view,
and a writer that does not wait lands between the two views every time.
"""

# ruff: noqa: S608  (the SQL is built from this file's own table and database names)

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tracker_deployer import paths

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

BACKUP_SH = REPO_ROOT / "docker/backup/backup.sh"
SNAPSHOT_OPEN_LINE = paths.SNAPSHOT_OPEN_LINE
ROWS = 300_000  # a dump of ~0.5 s here: long enough for writes during it


def admin(sql: str, database: str = "") -> str:
    result = subprocess.run(
        [
            "mariadb",
            "-h127.0.0.1",
            "-uroot",
            "--batch",
            "--skip-column-names",
            *([database] if database else []),
        ],
        input=sql,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class Database:
    name: str
    restored: str
    user: str
    config: Path
    root: Path
    bin_dir: Path

    def backup_sh(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(BACKUP_SH), *args],
            env=self.environ(),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def environ(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONFIG_FILE": str(self.config),
            "BACKUP_ROOT": str(self.root),
            "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
        }


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    suffix = uuid.uuid4().hex[:8]
    name, restored, user = f"mw_{suffix}", f"mw_{suffix}_restored", f"mw_{suffix}"
    admin(
        f"""
CREATE DATABASE `{name}`; CREATE DATABASE `{restored}`;
CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'pw';
CREATE USER '{user}'@'localhost' IDENTIFIED BY 'pw';
GRANT ALL ON `{name}`.* TO '{user}'@'127.0.0.1', '{user}'@'localhost';
GRANT ALL ON `{restored}`.* TO '{user}'@'127.0.0.1', '{user}'@'localhost';
USE `{name}`;
CREATE TABLE torrents (id INT AUTO_INCREMENT PRIMARY KEY, info_hash CHAR(40) NOT NULL UNIQUE,
  completed INT NOT NULL DEFAULT 0) ENGINE=InnoDB;
CREATE TABLE torrent_aggregate_metrics (id INT AUTO_INCREMENT PRIMARY KEY,
  metric_name VARCHAR(50) NOT NULL UNIQUE, value INT NOT NULL DEFAULT 0) ENGINE=InnoDB;
INSERT INTO torrents (info_hash, completed) SELECT SHA1(seq), seq % 3 FROM seq_1_to_{ROWS};
INSERT INTO torrent_aggregate_metrics (metric_name, value)
  SELECT 'torrents_downloads_total', SUM(completed) FROM torrents;
"""
    )
    paths = tmp_path / "paths"
    paths.write_text(f"{paths}\n")
    config = tmp_path / "backup.conf"
    config.write_text(
        f"BACKUP_PATHS_FILE={paths}\nDB_TYPE=mysql\nDB_HOST=127.0.0.1\nDB_PORT=3306\n"
        f"DB_USER={user}\nDB_PASSWORD=pw\nDB_NAME={name}\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_dump = shutil.which("mariadb-dump")
    assert real_dump is not None
    (bin_dir / "mariadb-dump").write_text(f'#!/bin/sh\nsleep 0.3\nexec {real_dump} "$@"\n')
    (bin_dir / "mariadb-dump").chmod(0o755)
    try:
        yield Database(name, restored, user, config, tmp_path / "backups", bin_dir)
    finally:
        admin(
            f"DROP DATABASE IF EXISTS `{name}`; DROP DATABASE IF EXISTS `{restored}`;"
            f"DROP USER IF EXISTS '{user}'@'127.0.0.1', '{user}'@'localhost';"
        )


class Writer:
    """The tracker's writes: one mariadb client, one transaction per download."""

    def __init__(self, database: str) -> None:
        self.client = subprocess.Popen(
            [
                "mariadb",
                "-h127.0.0.1",
                "-uroot",
                "--batch",
                "--skip-column-names",
                "--unbuffered",
                database,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.commits = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Writer:
        self.thread.start()
        return self

    def _transaction(self, number: int) -> None:
        assert self.client.stdin is not None
        assert self.client.stdout is not None
        if number % 2:  # a new torrent, completed once
            change = (
                f"INSERT INTO torrents (info_hash, completed) VALUES (SHA1('new-{number}'), 1);"
            )
        else:
            change = f"UPDATE torrents SET completed = completed + 1 WHERE id = {1 + number * 7919 % ROWS};"
        self.client.stdin.write(
            "START TRANSACTION;"
            f"{change}"
            "UPDATE torrent_aggregate_metrics SET value = value + 1"
            " WHERE metric_name = 'torrents_downloads_total';"
            f"COMMIT; SELECT {number};\n"
        )
        self.client.stdin.flush()
        assert self.client.stdout.readline().strip() == str(number)

    def _run(self) -> None:
        number = 0
        while not self.stop.is_set() and number < 1_000_000:
            number += 1
            self._transaction(number)
            self.commits += 1

    def finish(self) -> int:
        self.stop.set()
        self.thread.join(timeout=60)
        assert self.client.stdin is not None
        self.client.stdin.close()
        self.client.wait(timeout=60)
        assert self.client.stdout is not None
        self.client.stdout.close()
        return self.commits


def snapshot(db: Database, writer_before: Writer | None = None) -> tuple[str, int]:
    """Run `backup.sh snapshot`; start a writer when it prints the open line (unless one
    already runs). Returns the set id and the commits made while the dump still ran."""
    writer = writer_before
    lines = []
    with subprocess.Popen(
        ["bash", str(BACKUP_SH), "snapshot"],
        env=db.environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        for line in process.stdout:
            lines.append(line.strip())
            if line.strip() == SNAPSHOT_OPEN_LINE and writer is None:
                writer = Writer(db.name).start()
        process.wait(timeout=300)
        stderr = process.stderr.read()
    assert writer is not None, f"no {SNAPSHOT_OPEN_LINE!r} line: {lines} {stderr}"
    during = writer.commits  # the dump has ended: commits up to here overlapped it
    writer.finish()
    assert process.returncode == 0, stderr
    assert lines[-1] != SNAPSHOT_OPEN_LINE
    return lines[-1], during


def restored_state(db: Database, set_id: str) -> tuple[dict[str, int], int, int]:
    """Restore set_id into the scratch database; its row counts, SUM(completed), counter."""
    finished = db.backup_sh("finish", set_id)
    assert finished.returncode == 0, finished.stderr
    db.config.write_text(
        db.config.read_text().replace(f"DB_NAME={db.name}\n", f"DB_NAME={db.restored}\n")
    )
    restore = db.backup_sh("restore", set_id, "--yes", "--only", "db")
    db.config.write_text(
        db.config.read_text().replace(f"DB_NAME={db.restored}\n", f"DB_NAME={db.name}\n")
    )
    # restore itself compares the restored row counts with the .meta (exit 4 when they differ)
    assert restore.returncode == 0, restore.stderr
    counts = {
        table: int(admin(f"SELECT COUNT(*) FROM `{table}`", db.restored))
        for table in ("torrents", "torrent_aggregate_metrics")
    }
    total = int(admin("SELECT SUM(completed) FROM torrents", db.restored))
    counter = int(
        admin(
            "SELECT value FROM torrent_aggregate_metrics WHERE metric_name = 'torrents_downloads_total'",
            db.restored,
        )
    )
    return counts, total, counter


def meta_rows(db: Database, set_id: str) -> dict[str, int]:
    meta = (db.root / f"manifests/set_{set_id}.meta").read_text().splitlines()
    return {
        line[5:].split("=")[0]: int(line.split("=")[1]) for line in meta if line.startswith("rows.")
    }


def test_writes_after_the_open_line_stay_out_of_a_consistent_set(database: Database) -> None:
    set_id, during = snapshot(database)
    # the "tracker" wrote while the dump ran: else this test could not fail
    assert during > 0
    counts, total, counter = restored_state(database, set_id)
    assert total == counter
    assert counts == meta_rows(database, set_id)
    # ...and none of those writes is in the set
    live_counter = int(
        admin(
            "SELECT value FROM torrent_aggregate_metrics WHERE metric_name = 'torrents_downloads_total'",
            database.name,
        )
    )
    assert live_counter >= counter + during


def test_a_tracker_started_before_the_snapshot_breaks_the_set(database: Database) -> None:
    """What the checks above catch: the writer runs while both views are being opened."""
    writer = Writer(database.name).start()
    while writer.commits < 50:
        threading.Event().wait(0.01)
    set_id = snapshot(database, writer_before=writer)[0]
    finished = database.backup_sh("finish", set_id)
    assert finished.returncode == 0, finished.stderr
    database.config.write_text(
        database.config.read_text().replace(
            f"DB_NAME={database.name}\n", f"DB_NAME={database.restored}\n"
        )
    )
    restore = database.backup_sh("restore", set_id, "--yes", "--only", "db")
    # the row counts (one view) and the dump (another, opened later) disagree
    assert restore.returncode == 4, restore.stderr
    assert "row count mismatch in torrents" in restore.stderr


def test_the_row_count_session_ends_with_its_counts_not_with_the_dump(database: Database) -> None:
    """Its transaction (and the metadata locks of every table it counted) must not last
    as long as the dump: the dump must not hold the session's FIFO open."""
    real_dump = shutil.which("mariadb-dump", path=os.environ["PATH"])
    assert real_dump is not None
    done = database.bin_dir / "dump-done"
    (database.bin_dir / "mariadb-dump").write_text(
        f'#!/bin/sh\n{real_dump} "$@"\nrc=$?\n: >{done}\nsleep 5\nexit $rc\n'
    )
    with subprocess.Popen(
        ["bash", str(BACKUP_SH), "snapshot"],
        env=database.environ(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as process:
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert done.exists()
        connections = "1"
        while time.monotonic() < deadline and process.poll() is None:
            connections = admin(
                "SELECT COUNT(*) FROM information_schema.processlist"
                f" WHERE user = '{database.user}'"
            ).strip()
            if connections == "0":
                break
            time.sleep(0.05)
        # the dump has ended, its wrapper still runs: no session of the backup is left
        assert process.poll() is None
        assert connections == "0", connections
        assert process.wait(timeout=60) == 0
