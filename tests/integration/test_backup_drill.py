"""The scheduled restore drill (tracker-backup-drill.sh) on real sets, with its evidence and metrics."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tracker_deployer import exit_codes
from tracker_deployer.remote.backups import format_inventory, inventory_json, parse_inventory
from tracker_deployer.render import inventory_script
from tracker_deployer.render.tree import drill_script, metrics_script, verify_script

from tests.helpers import parse, sample_data
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


class Drill:
    """The drill, verify and metrics scripts rendered with their paths in a scratch directory."""

    def __init__(
        self,
        stack: Stack,
        base: Path,
        *,
        verify: Path | None = None,
        lock_wait_seconds: int = 60,
    ) -> None:
        self.stack = stack
        self.base = base
        self.drill_dir = base / "drills"
        self.textfile_dir = base / "textfile"
        self.lock_file = base / "lock/tracker-backup.lock"
        self.log_file = base / "log/tracker-backup.log"
        base.mkdir(parents=True, exist_ok=True)
        self.verify = verify or base / "tracker-backup-verify.sh"
        if verify is None:
            self.verify.write_bytes(
                verify_script(
                    stack.env, deploy_dir=str(stack.deploy_dir), backup_dir=str(stack.backups)
                )
            )
            self.verify.chmod(0o755)
        self.metrics = base / "tracker-backup-metrics.sh"
        self.metrics.write_bytes(
            metrics_script(
                stack.env,
                backup_dir=str(stack.backups),
                status_dir=str(stack.status_dir),
                drill_dir=str(self.drill_dir),
                textfile_dir=str(self.textfile_dir),
            )
        )
        self.metrics.chmod(0o755)
        self.script = base / "tracker-backup-drill.sh"
        self.script.write_bytes(
            drill_script(
                stack.env,
                backup_dir=str(stack.backups),
                drill_dir=str(self.drill_dir),
                lock_file=str(self.lock_file),
                log_file=str(self.log_file),
                verify_script=str(self.verify),
                metrics_script=str(self.metrics),
                lock_wait_seconds=lock_wait_seconds,
            )
        )
        self.script.chmod(0o755)

    def run(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.script), "--quiet"],
            capture_output=True,
            text=True,
            check=False,
            env=self.stack.environ(),
            timeout=600,
        )

    def start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(self.script), "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.stack.environ(),
        )

    def evidence(self) -> list[dict[str, object]]:
        files = sorted(self.drill_dir.glob("drill_*_set_*.json"))
        return [json.loads(path.read_text()) for path in files]

    def last(self) -> dict[str, str]:
        text = (self.drill_dir / "last-drill.env").read_text()
        return dict(line.split("=", 1) for line in text.splitlines())

    def metric(self, name: str) -> float | None:
        for line in (self.textfile_dir / "tracker_backup.prom").read_text().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        return None

    def inventory(self) -> str:
        """What `inv backups` gets from the host's inventory script."""
        script = self.base / "inventory.sh"
        script.write_text(
            inventory_script(
                backup_image=self.stack.env.images.backup,
                backup_dir=str(self.stack.backups),
                status_dir=str(self.stack.status_dir),
                drill_dir=str(self.drill_dir),
                verify=False,
            )
        )
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_drill_restores_the_newest_set_writes_evidence_and_metrics(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    live = stack.deploy_dir / "storage/tracker/lib/database/tracker.db"
    # The stand-in tracker writes to its database all the time: stop it, so that
    # only the drill could change the live file.
    stack.compose("stop", "tracker")
    live_before = sha256(live)
    drill = Drill(stack, tmp_path / "drill")

    result = drill.run()

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == result.stderr == ""  # --quiet: silent when it passes
    [evidence] = drill.evidence()
    assert evidence["set"] == set_id
    assert evidence["result"] == "success"
    assert evidence["exit_code"] == 0
    assert evidence["live_database_touched"] is False
    manifest = (stack.backups / f"manifests/set_{set_id}.sha256").read_text().split("\n")
    assert [f"{c['sha256']}  {c['file']}" for c in evidence["checksums"]] == [  # type: ignore[attr-defined]
        line for line in manifest if line
    ]
    meta = stack.meta(set_id)
    tables = {t["table"]: t for t in evidence["tables"]}  # type: ignore[attr-defined]
    assert tables["torrents"] == {
        "table": "torrents",
        "rows_in_set": int(meta["rows.torrents"]),
        "rows_restored": int(meta["rows.torrents"]),
        "match": True,
    }
    assert len(tables) == len([key for key in meta if key.startswith("rows.")])
    assert drill.last()["result"] == "success"
    assert drill.metric("tracker_backup_last_drill_success") == 1
    finished = float(drill.last()["finished_epoch"])
    assert drill.metric("tracker_backup_last_drill_timestamp_seconds") == finished
    assert drill.metric("tracker_backup_last_drill_success_timestamp_seconds") == finished
    log = drill.log_file.read_text()
    assert f"drill of set {set_id} PASSED" in log
    assert f"set {set_id}: VERIFIED" in log
    # the live database is untouched and the scratch files are gone
    assert sha256(live) == live_before
    assert not list(stack.backups.glob(".drill-*"))

    # A flipped byte in the set: the drill fails, says so, and keeps the last success.
    archive = stack.database_file(set_id)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))

    failed = drill.run()

    assert failed.returncode == 4, failed.stdout + failed.stderr
    assert "tracker backup drill FAILED (exit 4)" in failed.stderr
    second = drill.evidence()[-1]
    assert second["result"] == "failure"
    assert second["exit_code"] == 4
    assert drill.metric("tracker_backup_last_drill_success") == 0
    assert drill.metric("tracker_backup_last_drill_success_timestamp_seconds") == finished
    assert sha256(live) == live_before

    # `inv backups` lists both drills
    inventory = parse_inventory(drill.inventory())
    assert [(d.set_id, d.result, d.exit_code) for d in inventory.drills] == [
        (set_id, "success", "0"),
        (set_id, "failure", "4"),
    ]
    listing = format_inventory(inventory, datetime.now(UTC))
    assert f"set {set_id}  SUCCESS  (exit 0," in listing
    assert "last drill FAILED (exit 4): the verify drill of set" in listing
    assert json.loads(inventory_json(inventory))["drills"][1]["result"] == "failure"


# The wrapper's own rules, with a stand-in for the verify drill (a script that
# records its argument): the real verify drill is exercised above.
STANDIN_VERIFY = """#!/usr/bin/env bash
printf '%s\\n' "$1" >>"$(dirname "$0")/verified"
exit "${STANDIN_EXIT:-0}"
"""


def fake_set(backups: Path, set_id: str) -> None:
    manifests = backups / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / f"set_{set_id}.meta").write_text(f"set={set_id}\nrows.torrents=3\n")
    (manifests / f"set_{set_id}.sha256").write_text("")


def standin(tmp_path: Path) -> tuple[Stack, Path]:
    stack = Stack(parse(sample_data("manual-test-sqlite")), tmp_path / "s")
    stack.backups.mkdir(parents=True)
    verify = tmp_path / "standin/verify.sh"
    verify.parent.mkdir()
    verify.write_text(STANDIN_VERIFY)
    verify.chmod(0o755)
    return stack, verify


@contextlib.contextmanager
def held_lock(drill: Drill) -> Iterator[None]:
    """The backup lock, held as a backup run holds it."""
    drill.lock_file.parent.mkdir(parents=True, exist_ok=True)
    with drill.lock_file.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def test_drill_waits_for_the_backup_lock_and_gives_up_after_the_bound(tmp_path: Path) -> None:
    stack, verify = standin(tmp_path)
    fake_set(stack.backups, "20261101_030000")
    drill = Drill(stack, tmp_path / "drill", verify=verify, lock_wait_seconds=1)
    with held_lock(drill):
        result = drill.run()

    assert result.returncode == 75
    assert not (verify.parent / "verified").exists()
    # Not a failed drill (BackupDrillFailed, critical, fired for a week after a
    # backup that took longer than the hour): it did not run.
    assert drill.last()["result"] == "skipped"
    assert "drill skipped (exit 75): the backup lock" in drill.log_file.read_text()
    assert "stayed busy" in drill.log_file.read_text()
    assert drill.metric("tracker_backup_last_drill_success") is None
    listing = format_inventory(parse_inventory(drill.inventory()), datetime.now(UTC))
    assert "last drill skipped (exit 75): the backup lock" in listing
    assert "FAILED" not in listing


def test_a_drill_that_meets_a_hand_started_backup_sh_is_skipped_not_failed(
    tmp_path: Path,
) -> None:
    """The verify drill exits 5 when a backup.sh started by hand holds the backup
    directory's own lock: nothing was checked, so no failed drill either."""
    stack, _ = standin(tmp_path)
    fake_set(stack.backups, "20261101_030000")
    locked = tmp_path / "locked/verify.sh"
    locked.parent.mkdir()
    locked.write_text(
        "#!/usr/bin/env bash\necho 'another backup.sh run holds the lock; not verified' >&2\n"
        f"exit {exit_codes.BACKUP_SH_LOCKED}\n"
    )
    locked.chmod(0o755)
    drill = Drill(stack, tmp_path / "drill", verify=locked)
    result = drill.run()
    assert result.returncode == exit_codes.BACKUP_SH_LOCKED, result.stdout + result.stderr
    assert drill.last()["result"] == "skipped"
    assert drill.metric("tracker_backup_last_drill_success") is None


# A verify drill that takes long: it records its start and the TERM it gets.
SLOW_VERIFY = """#!/usr/bin/env bash
here="$(dirname "$0")"
trap 'echo terminated >>"${here}/signals"; exit 143' TERM
echo started >>"${here}/signals"
sleep 60 &
wait
"""


def _terminated_at_once(drill: Drill, started: Callable[[], bool]) -> subprocess.Popen[str]:
    """Start the drill, SIGTERM it once ``started()``; it must end within seconds."""
    process = drill.start()
    deadline = time.monotonic() + 30
    while not started() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert started(), "the drill never reached the step to interrupt"
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert time.monotonic() - sent < 15  # not after the lock wait or the verify drill
    return process


def test_a_signal_during_the_verify_drill_ends_the_drill_and_the_verify_at_once(
    tmp_path: Path,
) -> None:
    stack, verify = standin(tmp_path)
    verify.write_text(SLOW_VERIFY)
    signals = verify.parent / "signals"
    fake_set(stack.backups, "20261101_030000")
    drill = Drill(stack, tmp_path / "drill", verify=verify)

    process = _terminated_at_once(drill, signals.exists)

    assert process.returncode == 143
    assert signals.read_text() == "started\nterminated\n"
    assert drill.last()["result"] == "failure"
    assert drill.last()["reason"] == "interrupted by SIGTERM"
    [evidence] = drill.evidence()
    assert (evidence["result"], evidence["exit_code"]) == ("failure", 143)
    assert "drill FAILED (exit 143): interrupted by SIGTERM" in drill.log_file.read_text()


def test_a_signal_while_waiting_for_the_backup_lock_ends_the_drill_at_once(
    tmp_path: Path,
) -> None:
    stack, verify = standin(tmp_path)
    fake_set(stack.backups, "20261101_030000")
    drill = Drill(stack, tmp_path / "drill", verify=verify, lock_wait_seconds=600)
    with held_lock(drill):
        process = _terminated_at_once(drill, drill.log_file.exists)

    assert process.returncode == 143
    assert not (verify.parent / "verified").exists()
    assert drill.last()["reason"] == "interrupted by SIGTERM"
    assert drill.metric("tracker_backup_last_drill_success") == 0


def test_a_drill_run_by_hand_in_a_terminal_does_not_stop_on_it(tmp_path: Path) -> None:
    """In its own process group the verify drill must not read the terminal: a
    background group that does is stopped (SIGTTIN), and the drill waited forever
    (compose run attaches stdin). A pseudo-terminal from script(1)."""
    stack, verify = standin(tmp_path)
    verify.write_text(
        "#!/usr/bin/env bash\n"
        "read -r -t 20 line || true\n"  # what compose run does with its stdin
        'printf \'%s\\n\' "$1" >>"$(dirname "$0")/verified"\n'
    )
    fake_set(stack.backups, "20261101_030000")
    drill = Drill(stack, tmp_path / "drill", verify=verify)
    result = subprocess.run(
        ["script", "-qec", f"{drill.script} --quiet", "/dev/null"],
        capture_output=True,
        text=True,
        check=False,
        env=stack.environ(),
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (verify.parent / "verified").read_text() == "20261101_030000\n"


def test_a_drill_with_no_set_to_drill_is_no_failed_drill(tmp_path: Path) -> None:
    """A fresh deploy has no complete set yet: the drill exits 66 as documented, but
    recorded that as result=failure, which the metrics turned into
    tracker_backup_last_drill_success 0 and BackupDrillFailed (critical) fired for a
    week (a review). BackupMissing and BackupDrillMissing cover "no set"."""
    stack, verify = standin(tmp_path)
    drill = Drill(stack, tmp_path / "drill", verify=verify)

    result = drill.run()

    assert result.returncode == 66, result.stdout + result.stderr
    assert "FAILED" not in result.stderr
    last = drill.last()
    assert (last["result"], last["exit_code"], last["set"]) == ("no_set", "66", "")
    assert last["last_success_epoch"] == ""
    assert drill.metric("tracker_backup_last_drill_success") is None
    assert drill.metric("tracker_backup_last_drill_success_timestamp_seconds") is None
    assert drill.metric("tracker_backup_last_drill_timestamp_seconds") is not None
    assert drill.evidence() == []
    listing = format_inventory(parse_inventory(drill.inventory()), datetime.now(UTC))
    assert "last drill found nothing to drill (exit 66): no complete backup set" in listing
    assert "FAILED" not in listing

    # A drill passes; then the sets are gone: its success stands, still no failure.
    fake_set(stack.backups, "20261101_030000")
    assert drill.run().returncode == 0
    passed = drill.metric("tracker_backup_last_drill_success_timestamp_seconds")
    (stack.backups / "manifests/set_20261101_030000.sha256").unlink()
    assert drill.run().returncode == 66
    assert drill.last()["result"] == "no_set"
    assert drill.metric("tracker_backup_last_drill_success") == 1
    assert drill.metric("tracker_backup_last_drill_success_timestamp_seconds") == passed


# A stand-in verify drill that exits with the code in the file "exit" beside it.
SWITCHED_VERIFY = """#!/usr/bin/env bash
exit "$(cat "$(dirname "$0")/exit")"
"""


def test_a_drill_that_did_not_run_keeps_the_failure_of_the_drill_before(
    tmp_path: Path,
) -> None:
    """Sunday 1 the drill fails: BackupDrillFailed (critical) fires. Sunday 2 the drill
    waits for a long backup and gives up (exit 75, result=skipped): its last-drill.env
    dropped tracker_backup_last_drill_success, and the alert resolved with no drill
    passed. A drill that did not run carries the last drill that ran."""
    stack, verify = standin(tmp_path)
    verify.write_text(SWITCHED_VERIFY)
    switch = verify.parent / "exit"
    fake_set(stack.backups, "20261101_030000")
    drill = Drill(stack, tmp_path / "drill", verify=verify, lock_wait_seconds=1)

    switch.write_text("4")
    assert drill.run().returncode == 4
    failed = drill.last()
    assert drill.metric("tracker_backup_last_drill_success") == 0

    with held_lock(drill):
        assert drill.run().returncode == exit_codes.LOCK_BUSY
    last = drill.last()
    assert last["result"] == "skipped"
    assert drill.metric("tracker_backup_last_drill_success") == 0, (
        "a skipped drill cleared the failed drill's tracker_backup_last_drill_success 0"
    )
    assert (last["last_ran_result"], last["last_ran_epoch"]) == (
        "failure",
        failed["finished_epoch"],
    )
    # the skipped drill's own time, as before: when the drill last tried
    assert drill.metric("tracker_backup_last_drill_timestamp_seconds") == float(
        last["finished_epoch"]
    )

    # nor does a drill that finds no set clear it
    manifest = stack.backups / "manifests/set_20261101_030000.sha256"
    manifest.unlink()
    assert drill.run().returncode == exit_codes.NO_SET
    assert drill.last()["last_ran_result"] == "failure"
    assert drill.metric("tracker_backup_last_drill_success") == 0

    # a drill that passes clears it; a skipped drill after it keeps the pass
    manifest.write_text("")
    switch.write_text("0")
    assert drill.run().returncode == 0
    assert drill.metric("tracker_backup_last_drill_success") == 1
    with held_lock(drill):
        assert drill.run().returncode == exit_codes.LOCK_BUSY
    assert drill.last()["last_ran_result"] == "success"
    assert drill.metric("tracker_backup_last_drill_success") == 1

    # A last-drill.env from the version before (no last_ran_ keys) of a failed drill:
    # a skipped drill after the upgrade keeps that failure too.
    (drill.drill_dir / "last-drill.env").write_text(
        "".join(f"{k}={v}\n" for k, v in failed.items() if not k.startswith("last_ran_"))
    )
    with held_lock(drill):
        assert drill.run().returncode == exit_codes.LOCK_BUSY
    last = drill.last()
    assert drill.metric("tracker_backup_last_drill_success") == 0
    assert (last["last_ran_result"], last["last_ran_epoch"]) == (
        "failure",
        failed["finished_epoch"],
    )


def test_drill_takes_the_newest_complete_set_and_prunes_evidence_of_gone_sets(
    tmp_path: Path,
) -> None:
    stack, verify = standin(tmp_path)
    drill = Drill(stack, tmp_path / "drill", verify=verify)
    assert drill.run().returncode == 66  # no set yet
    assert drill.last()["result"] == "no_set"  # not a failed drill

    fake_set(stack.backups, "20261101_030000")
    fake_set(stack.backups, "20261102_030000")
    (stack.backups / "manifests/set_20261103_030000.meta").write_text("incomplete\n")
    assert drill.run().returncode == 0
    assert (verify.parent / "verified").read_text() == "20261102_030000\n"
    [first] = drill.evidence()
    assert first["set"] == "20261102_030000"

    # retention deleted that set; a newer one is drilled; the old evidence goes
    (stack.backups / "manifests/set_20261102_030000.sha256").unlink()
    fake_set(stack.backups, "20261104_030000")
    assert drill.run().returncode == 0
    assert [e["set"] for e in drill.evidence()] == ["20261104_030000"]


def test_a_drill_in_the_second_of_an_earlier_drill_keeps_both_evidence_files(
    tmp_path: Path,
) -> None:
    stack, verify = standin(tmp_path)
    fake_set(stack.backups, "20261101_030000")
    drill = Drill(stack, tmp_path / "drill", verify=verify)
    drill.drill_dir.mkdir()
    now = int(datetime.now(UTC).timestamp())
    planted = {}
    for second in (now, now + 1):  # earlier drills' evidence for this second and the next
        stamp = datetime.fromtimestamp(second, UTC).strftime("%Y%m%d_%H%M%S")
        path = drill.drill_dir / f"drill_{stamp}_set_20261101_030000.json"
        path.write_text(f'{{"earlier": {second}}}\n')
        planted[path] = path.read_text()

    assert drill.run().returncode == 0

    assert {path: path.read_text() for path in planted} == planted
    files = sorted(drill.drill_dir.glob("drill_*_set_*.json"))
    [new] = [path for path in files if path not in planted]
    assert json.loads(new.read_text())["result"] == "success"
    assert new.name > max(path.name for path in planted)


def test_a_full_log_disk_loses_log_lines_never_the_drills_evidence(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    """Every log write fails (the log is /dev/full): before, the first log line ended
    the drill, and its EXIT trap's own log line ended that before the record."""
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    drill = Drill(stack, tmp_path / "drill")
    drill.log_file.parent.mkdir(parents=True, exist_ok=True)
    drill.log_file.symlink_to("/dev/full")
    result = drill.run()
    assert result.returncode == 0, result.stdout + result.stderr
    [evidence] = drill.evidence()
    assert (evidence["set"], evidence["result"]) == (set_id, "success")
    assert drill.last()["result"] == "success"
    assert drill.metric("tracker_backup_last_drill_success") == 1
