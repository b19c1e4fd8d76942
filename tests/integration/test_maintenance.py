"""maintenance-backup.sh against a real compose stack (tracker stand-in + backup image)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from tracker_deployer import paths
from tracker_deployer.remote.backups import format_last_run, parse_inventory
from tracker_deployer.render import inventory_script, render
from tracker_deployer.render.tree import (
    DEPLOY_FAILED,
    DEPLOY_MARKER_MAX_AGE_SECONDS,
    DEPLOY_PUSHED,
)

from tests.helpers import parse, sample_data
from tests.integration.stack import (
    BACKUP_IMAGE,
    MARIADB_IMAGE,
    STANDIN_IMAGE,
    DockerProxy,
    PingServer,
    Stack,
    containers_named,
    decompress,
    drop_reader,
    env_for_stack,
    failing_finish_backup_image,
    hanging_backup_image,
    hanging_dump_backup_image,
    hanging_finish_backup_image,
    never_ready_backup_image,
    require_images,
    slow_ready_backup_image,
    tracker_started_at_text,
)

pytestmark = pytest.mark.integration

TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


def tracker_started_at(stack: Stack) -> datetime:
    return datetime.fromisoformat(tracker_started_at_text(stack)[:19] + "+00:00")


class ContainerEvents:
    """`docker events` of one compose project's containers, streamed from just before
    the `with` block until its end (no gap: --since replays the start)."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> ContainerEvents:
        self.process = subprocess.Popen(
            [
                *("docker", "events", "--since", f"{time.time() - 1:.3f}"),
                *("--filter", "type=container"),
                *("--filter", f"label=com.docker.compose.project={self.project}"),
                *("--format", "{{json .}}"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        stream = self.process.stdout

        def read() -> None:
            for line in stream:
                self.events.append(json.loads(line))

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.reader.join(timeout=30)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def times(self, action: str, name_suffix: str) -> list[int]:
        """timeNano of every `action` of a container whose name ends in `name_suffix`."""
        return [
            int(event["timeNano"])
            for event in list(self.events)
            if event.get("Action") == action
            and event["Actor"]["Attributes"].get("name", "").endswith(name_suffix)
        ]

    def wait_for(self, action: str, name_suffix: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.times(action, name_suffix):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {action} of *{name_suffix}: {self.events}")
            time.sleep(0.1)


DOWNTIME_BREAKDOWN = re.compile(
    r"downtime breakdown: (\d+\.\d{3}) s = tracker stop (\d+\.\d{3}) s \+ snapshot from go "
    r"until open (\d+\.\d{3}) s \+ tracker start (\d+\.\d{3}) s"
)


def downtime_breakdown(log: str) -> tuple[float, float, float, float]:
    """(total, stop, snapshot from go until open, start) of the run's breakdown line;
    the parts add up to the total."""
    found = DOWNTIME_BREAKDOWN.search(log)
    assert found is not None, log
    total, stop, snapshot, start = (float(value) for value in found.groups())
    # each of the four is rounded to the millisecond on its own
    assert abs(total - (stop + snapshot + start)) <= 0.0025
    assert min(stop, snapshot, start) > 0
    return total, stop, snapshot, start


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
    database_file = stack.database_file(set_id)
    assert f"{database_file.relative_to(stack.backups)}: OK" in check.stdout
    assert f"config/config_{set_id}.tar.gz: OK" in check.stdout

    # the snapshot is a sound database with the rows the manifest recorded
    restored = tmp_path / "restored.db"
    restored.write_bytes(decompress(database_file))
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
    # To the millisecond: from the stop until the start returned.
    assert re.fullmatch(r"[0-9]+[.][0-9]{3}", status["downtime_seconds"]), status
    assert 0 < float(status["downtime_seconds"]) < float(status["duration_seconds"]) + 1

    lines = stack.log_file.read_text().splitlines()
    assert lines
    assert all(TIMESTAMPED.match(line) for line in lines), lines[:5]
    text = "\n".join(lines)
    assert "stopping tracker for the database snapshot" in text
    assert "running again after" in text
    assert f"set {set_id} complete" in text


def test_the_marker_is_on_the_disk_before_the_tracker_is_stopped(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    """After a power cut in the window, the @reboot run starts the tracker only if it
    finds the marker: the file and its directory entry are synced before `docker stop`
    (without it, a few seconds' worth of writes may be lost, the marker with them)."""
    stack = sqlite_stack
    trace = tmp_path / "strace.out"
    result = subprocess.run(
        [
            *("strace", "-f", "--seccomp-bpf", "-y", "-qq", "-s", "64", "-e", "signal=none"),
            *("-e", "trace=fsync,execve", "-o", str(trace), str(stack.script), "--quiet"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=stack.environ(),
        cwd=stack.deploy_dir,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    calls = trace.read_text().splitlines()

    def first(predicate: Any) -> int:
        return next(i for i, line in enumerate(calls) if predicate(line))

    marker = first(lambda line: "fsync(" in line and f"<{stack.marker}>" in line)
    directory = first(lambda line: "fsync(" in line and f"<{stack.status_dir}>" in line)
    stop = first(lambda line: 'execve("' in line and '"docker", "stop"' in line)
    assert max(marker, directory) < stop, calls


def test_the_tracker_runs_until_the_snapshot_container_is_ready(sqlite_stack: Stack) -> None:
    """The backup container starts and prepares while the tracker runs; the tracker is
    stopped only once it is ready (issue 15 item 4)."""
    stack = sqlite_stack
    with ContainerEvents(stack.project) as events:
        result = stack.run_maintenance()
        assert result.returncode == 0, result.stdout + result.stderr
        events.wait_for("start", "-tracker-1")
    [snapshot_started, *_] = events.times("start", "-snapshot")
    [tracker_killed] = events.times("kill", "-tracker-1")
    [tracker_started] = events.times("start", "-tracker-1")
    assert snapshot_started < tracker_killed < tracker_started, events.events
    log = stack.log_file.read_text()
    ready = log.index("snapshot: the backup container is ready")
    assert ready < log.index("stopping tracker") < log.index("backup.sh: consistent snapshot open")
    # The window holds the stop, the copy of a tiny database and the start; the
    # backup container's start and preparation are outside it. The bound is
    # generous for a loaded machine (the snapshot part takes tens of ms idle).
    total, _, snapshot, _ = downtime_breakdown(log)
    assert snapshot < 2.0, log
    assert total < 30, log
    [set_id] = stack.sets()
    assert stack.status()["set"] == set_id


def test_no_set_is_taken_while_an_inv_recover_is_unfinished(sqlite_stack: Stack) -> None:
    """`inv recover` marks the new host until its set is restored: a run then (its
    cron installed by a deploy that raced the recover) took a set of the empty
    database, which retention and the off-host upload count as the newest."""
    stack = sqlite_stack
    marker = stack.status_dir / paths.RECOVER_MARKER.name
    stack.status_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    marker.touch()
    refused = stack.run_maintenance()
    assert refused.returncode == 77, refused.stdout + refused.stderr
    reason = stack.status()["reason"]
    assert f"an inv recover of this host has not finished ({marker})" in reason
    assert f"inv recover --env {stack.env.name}" in reason
    assert stack.sets() == []
    assert "tracker" in stack.running_services()
    marker.unlink()
    assert stack.run_maintenance().returncode == 0


def test_a_run_skips_while_a_deploy_changes_the_stack_and_not_after_its_marker_expired(
    sqlite_stack: Stack,
) -> None:
    """A run between a deploy's push and its compose up restarted the tracker on
    files that could hold a MySQL password the server did not have yet (a review).
    It skips as when the lock is busy; a marker a killed deploy left (older than
    its bound) does not stop runs for good."""
    stack = sqlite_stack
    marker = stack.status_dir / paths.DEPLOY_MARKER.name
    stack.status_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    marker.write_text(f"{int(time.time()) - 60}\n")
    skipped = stack.run_maintenance()
    assert skipped.returncode == 75, skipped.stdout + skipped.stderr
    busy = (stack.status_dir / "last-lock-busy.env").read_text()
    assert f"lock_busy_reason=a deploy is changing the stack ({marker}, since " in busy
    assert "a deploy is changing the stack" in skipped.stderr
    assert stack.sets() == []
    assert "tracker" in stack.running_services()

    marker.write_text(f"{int(time.time()) - DEPLOY_MARKER_MAX_AGE_SECONDS - 60}\n")
    ran = stack.run_maintenance()
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"ignoring {marker}: older than {DEPLOY_MARKER_MAX_AGE_SECONDS} s" in (
        stack.log_file.read_text()
    )
    assert len(stack.sets()) == 1

    # A deploy that failed with the server behind the pushed files: refused until
    # a deploy succeeds (it removes the marker).
    marker.write_text(f"{DEPLOY_FAILED}\n")
    refused = stack.run_maintenance()
    assert refused.returncode == 77, refused.stdout + refused.stderr
    assert (
        "a deploy failed (or never ended) after it pushed files that may hold a MySQL password"
        in (stack.status()["reason"])
    )
    assert f"run inv deploy --env {stack.env.name} again" in stack.status()["reason"]
    assert len(stack.sets()) == 1
    assert "tracker" in stack.running_services()

    # The push's own mark (it changed a file a password reaches): runs skip while the
    # deploy goes on (a run failed in that window, a review), and refuse once it is
    # older than the bound: a deploy that never ended (its connection dropped).
    marker.write_text(f"{DEPLOY_PUSHED}{int(time.time()) - 60}\n")
    assert stack.run_maintenance().returncode == 75
    marker.write_text(f"{DEPLOY_PUSHED}{int(time.time()) - DEPLOY_MARKER_MAX_AGE_SECONDS - 60}\n")
    abandoned = stack.run_maintenance()
    assert abandoned.returncode == 77, abandoned.stdout + abandoned.stderr
    assert "a deploy failed (or never ended)" in stack.status()["reason"]
    assert len(stack.sets()) == 1

    # Whatever else stands at its name is not waited for (a FIFO would block a read).
    marker.unlink()
    os.mkfifo(marker)
    fifo = stack.run_maintenance(timeout=300)
    assert fifo.returncode == 0, fifo.stdout + fifo.stderr
    assert len(stack.sets()) == 2


def test_a_backup_container_that_fails_before_it_is_ready_never_stops_the_tracker(
    tmp_path: Path,
) -> None:
    require_images(STANDIN_IMAGE)
    # debian:bookworm-slim has no backup.sh: the container fails at once
    data = env_for_stack(sample_data("manual-test-sqlite"), backup_image="debian:bookworm-slim")
    stack = Stack(parse(data), tmp_path / "s").install()
    try:
        stack.up()
        before = tracker_started_at_text(stack)
        result = stack.run_maintenance("--quiet")
        assert result.returncode != 0
        assert "tracker" in stack.running_services()
        assert tracker_started_at_text(stack) == before  # never stopped
        log = stack.log_file.read_text()
        reason = "the backup container failed before the snapshot (exit"
        assert reason in log
        assert "the tracker was never stopped" in log
        assert "stopping tracker" not in log
        assert "backup run FAILED" in log
        # --quiet (cron) prints only on failure: the reason and the run's log, on stderr
        assert result.stdout == ""
        assert "tracker backup FAILED" in result.stderr
        status = stack.status()
        assert status["result"] == "failure"
        assert reason in status["reason"]
        assert stack.sets() == []
        assert not stack.marker.exists()
        assert (stack.status_dir / "last-failure.log").read_text().strip()
    finally:
        stack.cleanup()


def test_a_backup_container_that_never_gets_ready_is_stopped_and_the_tracker_never_was(
    tmp_path: Path,
) -> None:
    require_images(STANDIN_IMAGE)
    data = env_for_stack(sample_data("manual-test-sqlite"), backup_image=never_ready_backup_image())
    # The bound counts from the compose client's start: time enough for the
    # container to start on a loaded machine.
    stack = Stack(parse(data), tmp_path / "s").install(ready_timeout_seconds=20)
    process: subprocess.Popen[str] | None = None
    try:
        stack.up()
        before = tracker_started_at_text(stack)
        process = stack.start_maintenance("--quiet")
        stack.wait_for_log("backup double: preparing, never ready", timeout=60)
        assert "tracker" in stack.running_services()
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 124, stderr
        reason = (
            "the backup container was not ready for the snapshot within 20 s;"
            " it was stopped, and the tracker was never stopped"
        )
        status = stack.status()
        assert status["result"] == "failure"
        assert status["reason"] == reason
        assert reason in stderr  # cron mails it
        assert "tracker" in stack.running_services()
        assert tracker_started_at_text(stack) == before
        assert not stack.marker.exists()
        assert containers_named(snapshot_container(process)) == []
        wait_for_free_lock(stack.lock_file, timeout=5)
        assert stack.sets() == []
    finally:
        stop_run_and_clean_up(stack, process)


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
        text = decompress(stack.database_file(set_id)).decode()
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


def test_mysql_tracker_runs_again_while_the_dump_goes_on(tmp_path: Path) -> None:
    """The window ends when the snapshot is open, not when the dump ends (issue 15)."""
    require_images(STANDIN_IMAGE, MARIADB_IMAGE, BACKUP_IMAGE)
    stack = Stack(parse(env_for_stack(sample_data("manual-test-mysql"))), tmp_path / "m").install()
    try:
        stack.up()
        # ~150 MB of dump: seconds of dumping after the views are open
        stack.mysql_query(
            "CREATE TABLE torrust_tracker.bulk (id INT PRIMARY KEY, payload CHAR(100)) ENGINE=InnoDB;"
            "INSERT INTO torrust_tracker.bulk SELECT seq, REPEAT('x', 100) FROM seq_1_to_1500000;"
        )
        result = stack.run_maintenance()
        assert result.returncode == 0, result.stdout + result.stderr
        text = stack.log_file.read_text()
        opened = text.index("snapshot open; the backup container goes on")
        running = text.index("tracker running again after")
        dumped = text.index("backup.sh: dump complete")
        # The tracker is started on the open line, before the dump ends; when
        # `compose start` returns (the next log line) can race the dump's end.
        assert opened < running, text
        assert opened < dumped, text
        # the downtime, step by step (issue 15.4): the parts add up to the whole
        downtime_breakdown(text)
        [set_id] = stack.sets()
        assert stack.meta(set_id)["rows.bulk"] == "1500000"
        assert "tracker" in stack.running_services()
    finally:
        stack.cleanup()


# --------------------------------------------------------------------------- hardening (issue 11)


def snapshot_container(process: subprocess.Popen[str]) -> str:
    """The name the maintenance script gives its snapshot container."""
    return f"tracker-backup-{process.pid}-snapshot"


def stop_run_and_clean_up(stack: Stack, process: subprocess.Popen[str] | None) -> None:
    """A test's way out: a run still going is killed with its snapshot container,
    then the stack is removed."""
    if process is not None and process.returncode is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
        subprocess.run(
            ["docker", "rm", "-f", snapshot_container(process)],
            capture_output=True,
            check=False,
        )
    stack.cleanup()


def wait_for_free_lock(lock_file: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with lock_file.open("a") as handle:
        while time.monotonic() < deadline:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.2)
                continue
            fcntl.flock(handle, fcntl.LOCK_UN)
            return
    raise AssertionError(f"{lock_file} is still held after {timeout} s")


def hanging_stack(tmp_path: Path, pings: PingServer | None = None, **backup: object) -> Stack:
    """A running SQLite stack whose backup container hangs in `snapshot` (a test double)."""
    require_images(STANDIN_IMAGE)
    data = env_for_stack(sample_data("manual-test-sqlite"), backup_image=hanging_backup_image())
    if pings is not None:
        data["backup"]["notify_url"] = pings.url
    data["backup"].update(backup)
    stack = Stack(parse(data), tmp_path / "s").install()
    stack.up()
    return stack


def kill_during_the_snapshot(stack: Stack) -> None:
    """SIGKILL a run's whole process group while the tracker is stopped, then let the
    orphaned snapshot container die as it would when the host goes down."""
    process = stack.start_maintenance("--quiet")
    stack.wait_for_log("backup double: hanging")
    assert "tracker" not in stack.running_services()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    subprocess.run(
        ["docker", "rm", "-f", snapshot_container(process)], capture_output=True, check=False
    )
    process.communicate(timeout=60)  # the orphaned compose client has ended too
    wait_for_free_lock(stack.lock_file)
    assert "tracker" not in stack.running_services()
    assert "stopped_by=backup run started" in stack.marker.read_text()


@pytest.mark.parametrize(
    ("signal_number", "whole_group"),
    [
        (signal.SIGTERM, False),
        (signal.SIGHUP, False),
        (signal.SIGINT, True),
        (signal.SIGTERM, True),
    ],
    ids=["TERM-script", "HUP-script", "INT-process-group", "TERM-process-group"],
)
def test_hardening_02_a_signalled_run_fails_pings_fail_and_restarts_the_tracker(
    tmp_path: Path, signal_number: signal.Signals, whole_group: bool
) -> None:
    with PingServer() as pings:
        stack = hanging_stack(tmp_path, pings)
        try:
            process = stack.start_maintenance("--quiet")
            stack.wait_for_log("backup double: hanging")
            assert "tracker" not in stack.running_services()
            if whole_group:
                os.killpg(process.pid, signal_number)
            else:
                process.send_signal(signal_number)
            _, stderr = process.communicate(timeout=90)

            expected = f"killed by signal {signal_number.value} ({signal_number.name})"
            assert process.returncode == 128 + signal_number.value
            assert "tracker" in stack.running_services()
            status = stack.status()
            assert status["result"] == "failure"
            assert status["exit_code"] == str(128 + signal_number.value)
            assert status["reason"] == expected
            assert pings.pings == ["/ping/start", "/ping/fail"]
            assert f"backup run FAILED (exit {128 + signal_number.value}): {expected}" in (
                stack.log_file.read_text()
            )
            assert expected in stderr  # cron mails it
            assert containers_named(snapshot_container(process)) == []
            assert not stack.marker.exists()
            assert stack.sets() == []
        finally:
            stack.cleanup()


def test_a_run_whose_output_reader_goes_away_ends_and_is_recorded_as_it_would_have(
    sqlite_stack: Stack,
) -> None:
    """`inv backup`'s SSH session drops: the run's stdout and stderr lose their reader.
    No SIGPIPE ends it half-way (once it did, with exit 255, no set and no record)."""
    process = sqlite_stack.start_maintenance()
    assert drop_reader(process, after="backup run started") == 0
    [set_id] = sqlite_stack.sets()
    assert sqlite_stack.status()["result"] == "success"
    assert f"backup run finished: set {set_id} complete" in sqlite_stack.log_file.read_text()
    assert "tracker" in sqlite_stack.running_services()


def test_hardening_04_the_next_run_starts_a_tracker_a_killed_run_left_stopped(
    tmp_path: Path,
) -> None:
    stack = hanging_stack(tmp_path)
    try:
        kill_during_the_snapshot(stack)
        # the image is fixed; the next scheduled run comes
        require_images(BACKUP_IMAGE)
        compose_file = stack.deploy_dir / "docker-compose.yml"
        compose_file.write_text(
            compose_file.read_text().replace(hanging_backup_image(), BACKUP_IMAGE)
        )

        result = stack.run_maintenance("--quiet")
        assert result.returncode == 70, result.stderr
        assert "tracker" in stack.running_services()
        assert not stack.marker.exists()
        [set_id] = stack.sets()
        status = stack.status()
        assert status["result"] == "failure"
        assert "had been left stopped by backup run started" in status["reason"]
        assert f"set {set_id} is complete" in status["reason"]
        assert "had been left stopped" in result.stderr
    finally:
        stack.cleanup()


def test_hardening_04_recover_at_boot_starts_a_tracker_a_killed_run_left_stopped(
    tmp_path: Path,
) -> None:
    with PingServer() as pings:
        stack = hanging_stack(tmp_path, pings)
        try:
            kill_during_the_snapshot(stack)
            pings.pings.clear()
            # `inv backups` warns while the marker is there
            listing = subprocess.run(
                [
                    "bash",
                    "-c",
                    inventory_script(
                        backup_image=BACKUP_IMAGE,  # the real one: the stack runs a double
                        backup_dir=str(stack.backups),
                        status_dir=str(stack.status_dir),
                        verify=False,
                    ),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            [warning, *_] = format_last_run(parse_inventory(listing))
            assert warning.startswith("WARNING: the tracker was stopped by backup run started")

            result = stack.run_maintenance("--recover", "--quiet")
            assert result.returncode == 70, result.stderr
            assert result.stdout == ""
            assert "tracker backup FAILED (exit 70)" in result.stderr
            assert "tracker" in stack.running_services()
            assert not stack.marker.exists()
            status = stack.status()
            assert status["result"] == "failure"
            assert "had been left stopped by backup run started" in status["reason"]
            assert pings.pings == ["/ping/fail"]

            # nothing left to recover: silent, and the status stays as it is
            before = (stack.status_dir / "last-run.env").read_text()
            again = stack.run_maintenance("--recover", "--quiet")
            assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
            assert (stack.status_dir / "last-run.env").read_text() == before
        finally:
            stack.cleanup()


@pytest.mark.parametrize("mode", ["recover", "backup"])
def test_hardening_04_the_outage_a_killed_run_left_counts_as_downtime(
    tmp_path: Path, mode: str
) -> None:
    """The run that starts a tracker a killed run left stopped measured the downtime
    from its own start only: a 2 h outage was recorded as the second `docker start`
    takes, and BackupDowntimeOverBudget stayed silent (a review). It counts from the
    marker's stopped_at now; a backup run adds its own stop."""
    stack = hanging_stack(tmp_path)
    try:
        kill_during_the_snapshot(stack)
        [stopped_at] = re.findall(r"^stopped_at=(\S+)$", stack.marker.read_text(), re.MULTILINE)
        stopped = datetime.strptime(stopped_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        time.sleep(4)  # the tracker stays down a while
        if mode == "backup":
            require_images(BACKUP_IMAGE)
            compose_file = stack.deploy_dir / "docker-compose.yml"
            compose_file.write_text(
                compose_file.read_text().replace(hanging_backup_image(), BACKUP_IMAGE)
            )
        down_until_at_least = time.time()

        result = stack.run_maintenance(*(["--recover"] if mode == "recover" else []), "--quiet")

        assert result.returncode == 70, result.stderr + stack.log_file.read_text()
        status = stack.status()
        assert "had been left stopped" in status["reason"]
        assert "it was started again" in status["reason"], result.stderr
        if mode == "backup":  # the run's own steps went well too (exit 70 is for both)
            assert "could not" not in status["reason"], stack.log_file.read_text()
        # (Said when it is not: the run's output, the log and the tracker's own.)
        seen = stack.compose("ps", "-a").stdout + stack.compose("logs", "--tail", "20").stdout
        assert "tracker" in stack.running_services(), (
            result.stderr + stack.log_file.read_text() + seen
        )
        downtime = float(status["downtime_seconds"])
        assert downtime >= down_until_at_least - stopped.timestamp() >= 4
        # not more than the whole time since the stop
        assert downtime <= time.time() - stopped.timestamp() + 1
    finally:
        stack.cleanup()


def test_a_run_that_cannot_tell_whether_the_tracker_runs_takes_no_snapshot(
    tmp_path: Path,
) -> None:
    """The Docker daemon stops answering new connections (a proxy in front of it)
    while the snapshot container gets ready, so `docker compose ps` fails. Before, a
    failed query counted as "not running": the go was sent with the tracker serving
    (here the double then hangs until max_downtime_seconds: exit 124)."""
    require_images(STANDIN_IMAGE)
    data = env_for_stack(sample_data("manual-test-sqlite"), backup_image=slow_ready_backup_image())
    data["backup"]["max_downtime_seconds"] = 15
    stack = Stack(parse(data), tmp_path / "s").install()
    proxy = DockerProxy(tmp_path / "docker.sock")
    process: subprocess.Popen[str] | None = None
    try:
        stack.up()
        before = tracker_started_at_text(stack)
        process = stack.start_maintenance(
            "--quiet", environ={**stack.environ(), "DOCKER_HOST": proxy.url}
        )
        stack.wait_for_log("backup double: preparing slowly", timeout=60)
        proxy.refuse()
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 70, stderr
        reason = stack.status()["reason"]
        assert reason.startswith("could not tell whether tracker runs (docker compose ps"), reason
        assert reason.endswith("no snapshot was taken")
        assert "tracker" in stack.running_services()
        assert tracker_started_at_text(stack) == before
        assert not stack.marker.exists()
        assert stack.sets() == []
    finally:
        proxy.close()
        stop_run_and_clean_up(stack, process)


def test_the_notify_url_is_on_no_command_line_and_the_script_is_roots_alone(
    tmp_path: Path,
) -> None:
    """The ping URL is a credential: before, curl had it on argv (ps shows it to every
    user). Each ping waits 1 s for its answer while every command line is read."""
    require_images(STANDIN_IMAGE)
    with PingServer(delay=1.0) as pings:
        data = env_for_stack(sample_data("manual-test-sqlite"), backup_image="debian:bookworm-slim")
        data["backup"]["notify_url"] = pings.url
        stack = Stack(parse(data), tmp_path / "s").install()
        try:
            process = stack.start_maintenance("--quiet")
            shown: set[str] = set()
            while process.poll() is None:
                for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                    with contextlib.suppress(OSError):
                        text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
                        if pings.url in text:
                            shown.add(text)
                time.sleep(0.05)
            process.communicate(timeout=60)
            assert pings.pings == ["/ping/start", "/ping/fail"]  # curl did run, twice
            assert shown == set()
        finally:
            stack.cleanup()
    rendered = {item.path: item for item in render(parse(data)).files}
    assert rendered[paths.MAINTENANCE_SCRIPT].mode == 0o700


def test_hardening_08_a_full_log_disk_still_gives_status_and_fail_ping(tmp_path: Path) -> None:
    require_images(STANDIN_IMAGE)
    with PingServer() as pings:
        # debian:bookworm-slim has no backup.sh: the snapshot fails
        data = env_for_stack(sample_data("manual-test-sqlite"), backup_image="debian:bookworm-slim")
        data["backup"]["notify_url"] = pings.url
        stack = Stack(parse(data), tmp_path / "s").install()
        stack.log_file.parent.mkdir(parents=True, exist_ok=True)
        stack.log_file.symlink_to("/dev/full")  # every write: ENOSPC
        try:
            stack.up()
            result = stack.run_maintenance("--quiet")
            assert result.returncode not in (0, 70), result.stderr
            assert "tracker" in stack.running_services()
            status = stack.status()
            assert status["result"] == "failure"
            assert "failed before the snapshot" in status["reason"]
            assert pings.pings == ["/ping/start", "/ping/fail"]
            assert "tracker backup FAILED" in result.stderr
        finally:
            stack.cleanup()


def test_hardening_09_root_never_writes_through_links_uid_1000_plants(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    stack = sqlite_stack
    secret = tmp_path / "root-only.key"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    names = ("last-run.env", ".last-run.env.tmp", "history.tsv", "last-failure.log")

    def as_uid_1000(script: str, mounts: dict[Path, str]) -> subprocess.CompletedProcess[str]:
        volumes = [arg for host, inside in mounts.items() for arg in ("-v", f"{host}:{inside}")]
        return subprocess.run(
            [
                *("docker", "run", "--rm", "--user", "1000:1000"),
                *volumes,
                *("debian:bookworm-slim", "sh", "-c", script),
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    # what the backup container's user can do: it owns storage/backup, so it can
    # swap in a storage/backup/status of its own (the status directory of earlier
    # versions), full of links ...
    links = " && ".join(f"ln -s {secret} /b/status/{name}" for name in names)
    planted = as_uid_1000(
        f"if [ -e /b/status ]; then mv /b/status /b/status-moved; fi; mkdir /b/status && {links}",
        {stack.backups: "/b"},
    )
    assert planted.returncode == 0, planted.stderr
    result = stack.run_maintenance()
    assert result.returncode == 0, result.stdout + result.stderr
    assert secret.read_text() == "root only\n"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert stack.status()["result"] == "success"
    # ... but nothing in the status directory, which is root's
    refused = as_uid_1000(f"ln -s {secret} /s/planted", {stack.status_dir: "/s"})
    assert refused.returncode != 0
    assert "Permission denied" in refused.stderr
    for name in names:
        assert (stack.backups / "status" / name).is_symlink()
    info = stack.status_dir.stat()
    assert (info.st_uid, info.st_mode & 0o777) == (0, 0o755)

    # a status directory that is a link (or not root's) is refused, not followed
    stack.status_dir.rename(tmp_path / "moved-status")
    stack.status_dir.symlink_to(stack.backups / "status")
    refused_run = stack.run_maintenance("--quiet")
    assert refused_run.returncode == 77
    assert "is a symlink or not a directory; refusing to write through it" in refused_run.stderr
    assert secret.read_text() == "root only\n"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert "tracker" in stack.running_services()


def test_hardening_10_a_hung_snapshot_is_killed_at_the_downtime_limit(tmp_path: Path) -> None:
    with PingServer() as pings:
        stack = hanging_stack(tmp_path, pings, max_downtime_seconds=5)
        try:
            started = time.monotonic()
            process = stack.start_maintenance("--quiet")
            _, stderr = process.communicate(timeout=120)
            elapsed = time.monotonic() - started
            assert process.returncode == 124, stderr
            assert elapsed < 60
            assert "tracker" in stack.running_services()
            status = stack.status()
            assert status["result"] == "failure"
            assert (
                "downtime limit of 5 s (backup.max_downtime_seconds) expired" in (status["reason"])
            )
            assert float(status["downtime_seconds"]) < 40
            assert pings.pings == ["/ping/start", "/ping/fail"]
            assert containers_named(snapshot_container(process)) == []
            assert not stack.marker.exists()
            assert stack.sets() == []
        finally:
            stack.cleanup()


def test_a_stop_cut_off_by_the_downtime_limit_still_leaves_the_tracker_running(
    tmp_path: Path,
) -> None:
    """The tracker takes longer to stop than backup.max_downtime_seconds (it ignores
    its stop signal: Docker kills it after the grace). The daemon goes on stopping
    it after the cut-off `docker stop` client is gone, and a `docker start` meanwhile
    does nothing (it still runs): the tracker ended stopped, after a run that said
    it was started again. The run now waits for the stop to end, then starts it."""
    require_images(STANDIN_IMAGE, BACKUP_IMAGE)
    data = env_for_stack(sample_data("manual-test-sqlite"))
    data["backup"]["max_downtime_seconds"] = 2
    stack = Stack(parse(data), tmp_path / "s").install()
    compose_file = stack.deploy_dir / paths.COMPOSE_FILE.name
    compose = yaml.safe_load(compose_file.read_text())
    # PID 1 of the container ignores a signal it has no handler for: a slow stop.
    compose["services"]["tracker"] |= {"stop_signal": "SIGWINCH", "stop_grace_period": "6s"}
    compose_file.write_text(yaml.safe_dump(compose))
    stack.up()
    try:
        result = stack.run_maintenance("--quiet", timeout=300)
        assert result.returncode == 124, result.stderr
        assert "downtime limit of 2 s" in stack.status()["reason"]
        time.sleep(8)  # past the grace: a stop still going on would have ended
        assert "tracker" in stack.running_services(), stack.log_file.read_text()
        assert not stack.marker.exists()
    finally:
        stack.cleanup()


def test_a_dump_that_hangs_after_the_open_line_is_killed_at_its_bound(tmp_path: Path) -> None:
    """After `snapshot-open` the tracker runs again; a dump that then hangs must not
    hold the backup lock for ever (every later run would exit 75)."""
    require_images(STANDIN_IMAGE)
    with PingServer() as pings:
        data = env_for_stack(
            sample_data("manual-test-sqlite"), backup_image=hanging_dump_backup_image()
        )
        data["backup"]["notify_url"] = pings.url
        stack = Stack(parse(data), tmp_path / "s").install(dump_timeout_seconds=5)
        process: subprocess.Popen[str] | None = None
        try:
            stack.up()
            process = stack.start_maintenance("--quiet")
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 124, stderr

            reason = "the dump did not end within 5 s after the snapshot was open"
            status = stack.status()
            assert status["result"] == "failure"
            assert status["exit_code"] == "124"
            assert reason in status["reason"]
            assert status["set"] == ""
            log = stack.log_file.read_text()
            assert "backup double: snapshot open, the dump hangs" in log
            assert "snapshot open; the backup container goes on" in log
            assert f"backup run FAILED (exit 124): {reason}" in log
            assert reason in stderr  # cron mails it
            assert pings.pings == ["/ping/start", "/ping/fail"]

            assert "tracker" in stack.running_services()
            assert not stack.marker.exists()
            wait_for_free_lock(stack.lock_file, timeout=10)  # free (a moment may pass)
            assert containers_named(snapshot_container(process)) == []
            assert stack.sets() == []
        finally:
            stop_run_and_clean_up(stack, process)


@pytest.mark.parametrize("code", [3, 137])
def test_a_run_whose_set_did_not_finish_names_no_set_as_its_own(tmp_path: Path, code: int) -> None:
    """The snapshot takes a set, `finish` fails: the status's `set` names complete sets
    only (`inv status` and `inv backups` show it as the run's set), the id goes to
    `unfinished_set`. Exit 137 within seconds (out of memory, say) is the container's
    exit, not 'did not end within FINISH_TIMEOUT_SECONDS s'."""
    require_images(STANDIN_IMAGE)
    set_id = "20261101_030000"
    data = env_for_stack(
        sample_data("manual-test-sqlite"), backup_image=failing_finish_backup_image(set_id, code)
    )
    stack = Stack(parse(data), tmp_path / "s").install()
    try:
        stack.up()
        result = stack.run_maintenance("--quiet")
        assert result.returncode == code, result.stderr
        status = stack.status()
        assert (status["result"], status["exit_code"]) == ("failure", str(code))
        assert f"finishing set {set_id} failed (backup container exit {code})" in status["reason"]
        assert "did not end within" not in status["reason"]
        assert status["set"] == ""
        assert status["unfinished_set"] == set_id
        started, outcome, exit_code, _, named = (
            (stack.status_dir / "history.tsv").read_text().splitlines()[-1].split("\t")
        )
        assert (started, outcome, exit_code, named) == (
            status["started_at"],
            "failure",
            str(code),
            "",
        )
        assert "tracker" in stack.running_services()
    finally:
        stack.cleanup()


def test_a_finish_whose_compose_client_is_killed_leaves_no_container_behind(
    tmp_path: Path,
) -> None:
    """The client of `compose run ... finish` killed on its own (exit 137, before the
    time limit) while its container goes on: the run removes the container, which
    could otherwise still make the set look complete."""
    require_images(STANDIN_IMAGE)
    data = env_for_stack(
        sample_data("manual-test-sqlite"),
        backup_image=hanging_finish_backup_image("20261101_030000"),
    )
    stack = Stack(parse(data), tmp_path / "s").install()
    process: subprocess.Popen[str] | None = None
    try:
        stack.up()
        process = stack.start_maintenance("--quiet")
        name = f"tracker-backup-{process.pid}-finish"
        deadline = time.monotonic() + 120
        while not containers_named(name):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"{name} never started"
            time.sleep(0.3)
        clients = subprocess.run(
            ["pgrep", "-f", f"compose.* --name {name} "], capture_output=True, text=True
        ).stdout.split()
        assert clients, "no compose client found"
        for pid in clients:
            os.kill(int(pid), signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 137, stderr
        assert containers_named(name) == []
    finally:
        stop_run_and_clean_up(stack, process)


def test_hardening_10_a_lock_busy_run_tells_stderr_and_records_itself(
    sqlite_stack: Stack,
) -> None:
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    last_run = (stack.status_dir / "last-run.env").read_text()
    wait_for_free_lock(stack.lock_file, timeout=10)  # the run's last process may hold it a moment
    with stack.lock_file.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = stack.run_maintenance("--quiet")
    assert result.returncode == 75
    assert result.stdout == ""
    assert "another backup run, a restore or a deploy holds" in result.stderr
    assert "this run did not start" in stack.log_file.read_text()
    # the last real run's result stays; the busy run has its own record
    assert (stack.status_dir / "last-run.env").read_text() == last_run
    busy = dict(
        line.split("=", 1)
        for line in (stack.status_dir / "last-lock-busy.env").read_text().splitlines()
    )
    assert TIMESTAMPED.match(busy["lock_busy_at"] + " ")
    assert "holds" in busy["lock_busy_reason"]
    history = (stack.status_dir / "history.tsv").read_text().splitlines()
    assert history[-1].split("\t")[1:3] == ["skipped", "75"]
    assert history[-2].split("\t")[1:3] == ["success", "0"]
    assert len(stack.sets()) == 1
    assert "tracker" in stack.running_services()


def test_hardening_extra_double_timestamps_every_line_is_stamped_once(
    sqlite_stack: Stack,
) -> None:
    result = sqlite_stack.run_maintenance()
    assert result.returncode == 0, result.stdout + result.stderr
    twice = re.compile(TIMESTAMPED.pattern + r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
    for text in (sqlite_stack.log_file.read_text(), result.stdout):
        lines = text.splitlines()
        assert any(" backup.sh: " in line for line in lines)
        assert all(TIMESTAMPED.match(line) for line in lines), lines[:5]
        assert not [line for line in lines if twice.match(line)]


def test_hardening_extra_stray_output_set_ids_stay_out_of_the_output(
    sqlite_stack: Stack,
) -> None:
    result = sqlite_stack.run_maintenance()
    assert result.returncode == 0, result.stdout + result.stderr
    [set_id] = sqlite_stack.sets()
    bare_id = re.compile(r"^(\S+Z )?\d{8}_\d{6}$")
    for text in (sqlite_stack.log_file.read_text(), result.stdout, result.stderr):
        assert not [line for line in text.splitlines() if bare_id.match(line)]
    # the id is still known to the script: it reports the set
    assert f"set {set_id} complete" in result.stdout
    assert sqlite_stack.status()["set"] == set_id


def test_a_killed_run_leaves_no_process_holding_the_lock(tmp_path: Path) -> None:
    """SIGKILL of the maintenance script alone (the OOM killer picks one process)
    while the snapshot hangs with the tracker stopped. Its compose client lives on,
    waiting for its container, and had inherited the lock's descriptor: every later
    run, --recover included, found the lock busy (exit 75) and the tracker stayed
    down. Now the client does not hold it: --recover starts the tracker."""
    stack = hanging_stack(tmp_path)
    process: subprocess.Popen[str] | None = None
    try:
        process = stack.start_maintenance("--quiet")
        stack.wait_for_log("backup double: hanging")
        assert "tracker" not in stack.running_services()
        process.kill()  # the script only, not its process group
        process.wait(timeout=30)  # (its pipes stay open: the orphaned client holds them)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        recovered = stack.run_maintenance("--recover", "--quiet")
        assert recovered.returncode == 70, recovered.stdout + recovered.stderr
        assert "it was started again" in recovered.stderr
        assert "tracker" in stack.running_services()
    finally:
        stop_run_and_clean_up(stack, process)


def test_a_tracker_left_down_records_its_downtime_so_far(tmp_path: Path) -> None:
    """The snapshot hangs past max_downtime_seconds and the Docker daemon stops
    answering (a proxy in front of it), so the tracker cannot be started again.
    The status said downtime_seconds= (empty), which the metrics read as 0 s: the
    worst downtime looked like none. Now it holds the downtime so far."""
    stack = hanging_stack(tmp_path, max_downtime_seconds=5)
    proxy = DockerProxy(tmp_path / "docker.sock")
    process: subprocess.Popen[str] | None = None
    try:
        process = stack.start_maintenance(
            "--quiet", environ={**stack.environ(), "DOCKER_HOST": proxy.url}
        )
        stack.wait_for_log("backup double: hanging")
        proxy.refuse()
        _, stderr = process.communicate(timeout=400)
        assert process.returncode != 0, stderr
        status = stack.status()
        assert status["result"] == "failure"
        assert "could not be started" in status["reason"], status["reason"]
        assert float(status["downtime_seconds"]) >= 4, status  # the 5 s limit, whole seconds
    finally:
        proxy.close()
        stop_run_and_clean_up(stack, process)
