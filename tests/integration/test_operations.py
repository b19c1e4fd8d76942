"""The host side of backups / verify / restore and the notify pings, on a real stack.

The operation scripts are rendered from templates/operations/ with the stack's
scratch paths and run directly here (the SSH transport is covered by
test_remote.py and the e2e tier).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.server
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from tracker_deployer import exit_codes, paths
from tracker_deployer.backup_layout import checksum_manifest, set_file
from tracker_deployer.remote.backups import (
    VerificationFailed,
    parse_inventory,
    restore_script,
    verify_failure,
    verify_script,
)
from tracker_deployer.render import inventory_script, operation_script
from tracker_deployer.render.tree import DEPLOY_FAILED, DEPLOY_PUSHED
from tracker_deployer.topology import APP_GID, APP_UID

from tests.helpers import parse, sample_data
from tests.integration.stack import (
    BACKUP_IMAGE,
    MARIADB_IMAGE,
    STANDIN_IMAGE,
    Stack,
    decompress,
    drop_reader,
    env_for_stack,
    require_images,
    tracker_started_at_text,
)

pytestmark = pytest.mark.integration


def run_operation(
    stack: Stack, name: str, *, environ: dict[str, str] | None = None, **context: Any
) -> subprocess.CompletedProcess[str]:
    common: dict[str, Any] = {
        "deploy_dir": str(stack.deploy_dir),
        "backup_dir": str(stack.backups),
        "status_dir": str(stack.status_dir),
        "marker_name": stack.marker.name,
    }
    script = stack.base / f"{name}.sh"
    script.write_text(operation_script(name, **{**common, **context}))
    return _run_script(stack, script, environ)


def run_inventory(
    stack: Stack, backup_image: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The inventory exactly as `inv backups` renders it, pointed at the stack's paths."""
    script = stack.base / "inventory.sh"
    script.write_text(
        inventory_script(
            verify=True,
            backup_image=backup_image or stack.env.images.backup,
            backup_dir=str(stack.backups),
            status_dir=str(stack.status_dir),
            drill_dir=str(stack.base / "drills"),
        )
    )
    return _run_script(stack, script)


def _run_script(
    stack: Stack, script: Path, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        check=False,
        env=environ or stack.environ(),
        timeout=600,
    )


def verify(
    stack: Stack,
    set_id: str,
    *,
    drill: bool = True,
    environ: dict[str, str] | None = None,
    lock_wait_seconds: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """The verify script; with ``lock_wait_seconds`` as `inv verify` runs it (it takes
    the backup lock), without as the drill and a restore do (they hold it)."""
    return run_operation(
        stack,
        "verify",
        environ=environ,
        lock_file=str(stack.lock_file),
        lock_wait_seconds=lock_wait_seconds,
        set_id=set_id,
        db_type="mysql" if stack.env.uses_mysql else "sqlite",
        drill=drill,
        sets_subdir="",
        backup_image=stack.env.images.backup,
        mysql_image=stack.env.images.mysql,
        app_uid=APP_UID,
        app_gid=APP_GID,
    )


def restore(
    stack: Stack,
    set_id: str,
    only: str = "db",
    *,
    verify_first: bool = False,
    skip_safety_backup: bool = False,
    new_host: bool = False,
) -> subprocess.CompletedProcess[str]:
    """The restore script as `inv restore` runs it (verify.sh next to it when verify_first)."""
    script = write_restore(
        stack,
        set_id,
        only,
        verify_first=verify_first,
        skip_safety_backup=skip_safety_backup,
        new_host=new_host,
    )
    return _run_script(stack, script)


def write_restore(
    stack: Stack,
    set_id: str,
    only: str,
    *,
    verify_first: bool,
    skip_safety_backup: bool,
    new_host: bool,
) -> Path:
    where = {
        "deploy_dir": str(stack.deploy_dir),
        "backup_dir": str(stack.backups),
        "log_file": str(stack.log_file),
        "status_dir": str(stack.status_dir),
    }
    if verify_first:
        (stack.base / "verify.sh").write_text(
            verify_script(
                stack.env,
                set_id,
                drill=True,
                deploy_dir=where["deploy_dir"],
                backup_dir=where["backup_dir"],
                log_file=where["log_file"],
                status_dir=where["status_dir"],
            )
        )
    script = stack.base / "restore.sh"
    script.write_text(
        restore_script(
            stack.env,
            set_id,
            only,
            verify_first=verify_first,
            skip_safety_backup=skip_safety_backup,
            new_host=new_host,
            lock_file=str(stack.lock_file),
            sqlite_dir=str(stack.deploy_dir / "storage/tracker/lib/database"),
            **where,
        )
    )
    return script


def start_restore(
    stack: Stack, set_id: str, *, verify_first: bool, own_group: bool = False
) -> subprocess.Popen[str]:
    """The restore script (--only db) in the background, its stdout and stderr piped;
    with ``own_group`` in a process group of its own (its pid)."""
    script = write_restore(
        stack, set_id, "db", verify_first=verify_first, skip_safety_backup=False, new_host=False
    )
    return subprocess.Popen(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=stack.environ(),
        start_new_session=own_group,
    )


def table_dump(database: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT id, info_hash, completed FROM torrents ORDER BY id").fetchall()


def test_inventory_lists_sets_checksums_and_the_last_run(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    result = run_inventory(stack)
    assert result.returncode == 0, result.stderr
    inventory = parse_inventory(result.stdout)
    [backup_set] = inventory.sets
    assert backup_set.complete
    assert backup_set.checksums == "ok"
    assert backup_set.parts == ["sqlite", "config"]
    assert backup_set.rows["torrents"] > 0
    assert backup_set.size == sum(
        (stack.backups / name).stat().st_size for name in backup_set.files
    )
    assert inventory.last_run["result"] == "success"
    assert inventory.resolve("latest").set_id == backup_set.set_id


FALLBACK_NOTE = "the backup container could not list the sets"


def test_inventory_asks_backup_sh_in_the_container_and_falls_back_to_its_code(
    sqlite_stack: Stack,
) -> None:
    """The sets come from `backup.sh list --records` in the backup image; without
    the image (or docker) the inlined code of backup.sh lists the same records."""
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    (stack.backups / "sqlite/sqlite_20200101_000000.x.db.gz").write_bytes(b"stray")
    in_container = run_inventory(stack)
    assert in_container.returncode == 0, in_container.stderr
    assert FALLBACK_NOTE not in in_container.stderr
    on_host = run_inventory(stack, backup_image="tracker-deployer-test/no-such-image:0")
    assert on_host.returncode == 0, on_host.stderr
    assert FALLBACK_NOTE in on_host.stderr

    def records(output: str) -> list[str]:
        return [line for line in output.splitlines() if not line.startswith("NOW\t")]

    assert records(in_container.stdout) == records(on_host.stdout)
    assert records(in_container.stdout)[0] == "LIST\t1"
    assert "20200101_000000" not in in_container.stdout
    [backup_set] = parse_inventory(in_container.stdout).sets
    assert backup_set.checksums == "ok"


def test_sqlite_zstd_set_verifies_with_the_drill_and_restores(tmp_path: Path) -> None:
    require_images(STANDIN_IMAGE, BACKUP_IMAGE)
    data = env_for_stack(sample_data("manual-test-sqlite"))
    data["backup"]["compression"] = "zstd"
    data["backup"]["compression_level"] = 19
    stack = Stack(parse(data), tmp_path / "z").install()
    try:
        stack.up()
        assert stack.run_maintenance().returncode == 0
        [set_id] = stack.sets()
        archive = stack.backups / f"sqlite/sqlite_{set_id}.db.zst"
        snapshot = tmp_path / "snapshot.db"
        subprocess.run(["zstd", "-q", "-d", "-o", str(snapshot), str(archive)], check=True)
        result = verify(stack, set_id)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"set {set_id}: VERIFIED" in result.stdout
        [listed] = parse_inventory(run_inventory(stack).stdout).sets
        assert listed.checksums == "ok"
        stack.compose("stop", "tracker")
        restored = restore(stack, set_id)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        live = stack.deploy_dir / "storage/tracker/lib/database/tracker.db"
        assert table_dump(live) == table_dump(snapshot)
    finally:
        stack.cleanup()


def test_a_crash_looping_tracker_is_stopped_for_the_restore(sqlite_stack: Stack) -> None:
    """A tracker that crash-loops is "restarting" between its attempts, not running:
    the restore took it for stopped, left it to Docker, which started it again
    during the restore, and said it stays stopped. Now it is stopped first, and
    started (here, its config repaired meanwhile) once the set is in place."""
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    config = stack.deploy_dir / "storage/tracker/etc/tracker.toml"
    good = config.read_bytes()
    config.write_text("this is = not [toml\n")  # the tracker exits at once, again and again
    stack.compose("restart", "tracker")
    container = stack.compose("ps", "-a", "-q", "tracker").stdout.strip()
    deadline = time.monotonic() + 60
    while True:  # into the back-off between attempts (0.1 s, doubling)
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Restarting}} {{.RestartCount}}", container],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if state[0] == "true" and int(state[1]) >= 5:
            break
        assert time.monotonic() < deadline, f"the tracker is not crash-looping: {state}"
        time.sleep(0.05)
    process = start_restore(stack, set_id, verify_first=False)
    assert process.stdout is not None
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if "stopping tracker" in line or "the tracker is not running" in line:
                break
    finally:
        config.write_bytes(good)
    rest, _ = process.communicate(timeout=300)
    output = "".join(seen) + rest
    assert process.returncode == 0, output
    assert "restore: stopping tracker" in output
    assert "the tracker is not running" not in output
    assert "restore: tracker is healthy" in output


def test_a_host_with_an_old_gzip_set_and_a_new_default_zstd_set_lists_verifies_and_restores_both(
    tmp_path: Path,
) -> None:
    """The upgrade: sets written while gzip was the default stay usable next to the
    zstd sets an env without backup.compression now writes."""
    require_images(STANDIN_IMAGE, BACKUP_IMAGE)
    data = env_for_stack(sample_data("manual-test-sqlite"))
    data["backup"].pop("compression", None)
    data["backup"].pop("compression_level", None)
    stack = Stack(
        parse({**data, "backup": {**data["backup"], "compression": "gzip"}}), tmp_path / "s"
    )
    stack.install()
    try:
        stack.up()
        assert stack.run_maintenance().returncode == 0
        [old] = stack.sets()
        # The same host after the upgrade: backup.compression left at its default.
        stack.env = parse(data)
        stack.install()
        assert stack.run_maintenance().returncode == 0
        [new] = [set_id for set_id in stack.sets() if set_id != old]
        assert stack.database_file(old).name == f"sqlite_{old}.db.gz"
        assert stack.database_file(new).name == f"sqlite_{new}.db.zst"
        snapshots = {}
        for set_id in (old, new):
            snapshots[set_id] = tmp_path / f"snapshot-{set_id}.db"
            snapshots[set_id].write_bytes(decompress(stack.database_file(set_id)))

        listed = {s.set_id: s for s in parse_inventory(run_inventory(stack).stdout).sets}
        for set_id in (old, new):
            assert listed[set_id].complete
            assert listed[set_id].checksums == "ok"
            assert listed[set_id].parts == ["sqlite", "config"]
            relative = str(stack.database_file(set_id).relative_to(stack.backups))
            assert relative in listed[set_id].files
            result = verify(stack, set_id)
            assert result.returncode == 0, result.stdout + result.stderr
            assert f"set {set_id}: VERIFIED" in result.stdout

        stack.compose("stop", "tracker")
        live = stack.deploy_dir / "storage/tracker/lib/database/tracker.db"
        assert table_dump(snapshots[old]) != table_dump(snapshots[new])
        for set_id in (old, new):
            # The live file kept aside is named by the second (a second restore in
            # the same second refuses: "retry in a second").
            time.sleep(1.1)
            restored = restore(stack, set_id)
            assert restored.returncode == 0, restored.stdout + restored.stderr
            assert table_dump(live) == table_dump(snapshots[set_id])
    finally:
        stack.cleanup()


def test_verify_drill_passes_and_a_flipped_byte_is_caught(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    result = verify(stack, set_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"set {set_id}: VERIFIED" in result.stdout
    assert not list(stack.backups.glob(".drill-*")), "the drill left its scratch files"

    archive = stack.database_file(set_id)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    inventory = parse_inventory(run_inventory(stack).stdout)
    assert inventory.sets[0].checksums == "FAILED"
    failed = verify(stack, set_id)
    assert failed.returncode == 4, failed.stdout + failed.stderr
    refused = restore(stack, set_id)
    assert refused.returncode == 4
    assert "tracker" in stack.running_services()


def test_verify_holds_the_backup_lock_waits_for_it_and_gives_up_after_its_bound(
    sqlite_stack: Stack,
) -> None:
    """`inv verify` ran without the host's backup lock: its drill's restore found
    backup.sh's own lock taken by a backup run (the good set reported as FAILED), or
    took it first and failed the run, and two drills of one set removed each other's
    scratch server. It takes the lock now: a backup run meanwhile does not start."""
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    with _held(stack.lock_file):
        refused = verify(stack, set_id, lock_wait_seconds=1)
    assert refused.returncode == exit_codes.LOCK_BUSY, refused.stdout + refused.stderr
    assert "is held (a backup run, a restore, a deploy or the drill); waiting up to 1 s" in (
        refused.stdout
    )
    assert f"stayed busy for 1 s; set {set_id} was not verified" in refused.stdout
    assert "checking checksums" not in refused.stdout

    assert verify(stack, set_id, drill=False, lock_wait_seconds=60).returncode == 0
    slow = stack.environ()
    slow["PATH"] = f"{_slow_docker(stack.base)}:{slow['PATH']}"
    process = subprocess.Popen(
        ["bash", str(stack.base / "verify.sh")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=slow,
    )
    try:
        _wait_until_locked(stack.lock_file, taker=process)
        skipped = stack.run_maintenance()
        output, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert f"set {set_id}: checksums ok" in output
    assert skipped.returncode == exit_codes.LOCK_BUSY, skipped.stdout + skipped.stderr
    assert stack.sets() == [set_id]


def test_verify_of_a_set_deleted_while_it_waited_for_the_lock_is_no_failed_set(
    sqlite_stack: Stack,
) -> None:
    """`inv verify` chooses the set, then waits for the lock; a backup run's retention
    holding it may delete the set meanwhile. That was reported as a set that FAILED
    verification (backup.sh: no such set, exit 4); it is a set that is gone now."""
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    (stack.backups / checksum_manifest(set_id)).unlink()  # as retention deletes it: first

    result = verify(stack, set_id, lock_wait_seconds=5)
    assert result.returncode == exit_codes.NO_SET, result.stdout + result.stderr
    assert f"set {set_id} is no longer complete on this host" in result.stdout
    assert "checking checksums" not in result.stdout
    error = verify_failure(result.returncode, set_id, "host")
    assert not isinstance(error, VerificationFailed)
    assert "was deleted on host while this waited for the backup lock" in error.message


@contextlib.contextmanager
def _held(lock: Path) -> Iterator[None]:
    """``lock`` held (flock) by this process, as another run holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _slow_docker(base: Path) -> Path:
    """A directory with a `docker` that waits 2 s before running the real one: the
    verify is still running when the test looks."""
    bin_dir = base / "slow-bin"
    bin_dir.mkdir(exist_ok=True)
    real = shutil.which("docker")
    assert real is not None
    wrapper = bin_dir / "docker"
    wrapper.write_text(f'#!/bin/sh\nsleep 2\nexec {shlex.quote(real)} "$@"\n')
    wrapper.chmod(0o755)
    return bin_dir


def test_hardening_verify_drill_never_follows_a_link_uid_1000_plants(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    """The drill's scratch was BACKUP_DIR/.drill-SET_ID, made once the checksums were
    checked: uid 1000, which owns the backup directory, could put a link there in the
    meantime, and root's install -d handed it the link's target. A docker on PATH
    plants that link (as uid 1000) while `backup verify` runs, then runs the real
    docker: the target must stay root's, the drill pass, no scratch be left."""
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o755)
    shim = tmp_path / "shim"
    shim.mkdir()
    real = shutil.which("docker")
    assert real is not None
    mounts = tmp_path / "mounts"  # the shim notes the drill's volumes: its scratch
    (shim / "docker").write_text(
        "#!/bin/bash\n"
        f'if [[ " $* " == *" verify {set_id} "* ]]; then\n'
        f"  (cd {stack.backups} && setpriv --reuid={APP_UID} --regid={APP_GID} --clear-groups \\\n"
        f"    ln -sfn {victim} .drill-{set_id})\n"
        "fi\n"
        f"printf '%s\\n' \"$@\" | grep '^{paths.DRILL_SCRATCH_PARENT}/' >>{mounts} || true\n"
        f'exec {real} "$@"\n'
    )
    (shim / "docker").chmod(0o755)
    result = verify(
        stack, set_id, environ={**stack.environ(), "PATH": f"{shim}:{os.environ['PATH']}"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"set {set_id}: VERIFIED" in result.stdout
    assert (stack.backups / f".drill-{set_id}").is_symlink()  # planted, and never used
    state = victim.stat()
    assert (state.st_uid, state.st_mode & 0o7777) == (0, 0o755)
    assert list(victim.iterdir()) == []
    [scratch] = {Path(line.split(":", 1)[0]).parent for line in mounts.read_text().splitlines()}
    assert scratch.name.startswith("tracker-drill.")
    assert not scratch.exists()


def test_a_restore_that_cannot_tell_whether_the_tracker_runs_changes_nothing(
    sqlite_stack: Stack,
) -> None:
    """`docker compose ps` fails (the Docker daemon does not answer). Before, that
    counted as "the tracker is not running": the restore went on, and would have
    replaced the database under a live tracker."""
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    live = stack.deploy_dir / "storage/tracker/lib/database/tracker.db"
    script = write_restore(
        stack, set_id, "db", verify_first=False, skip_safety_backup=False, new_host=False
    )
    gone = {**stack.environ(), "DOCKER_HOST": f"unix://{stack.base}/no-daemon.sock"}
    result = _run_script(stack, script, gone)
    said = result.stdout + result.stderr
    assert result.returncode == 3, said
    assert "whether tracker runs is unknown; nothing was changed" in said
    assert "stays stopped" not in said
    assert not list(live.parent.glob("tracker.db.before-restore-*"))  # nothing was replaced
    assert "tracker" in stack.running_services()


def test_sqlite_restore_brings_back_exactly_the_snapshot(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    snapshot = tmp_path / "snapshot.db"
    snapshot.write_bytes(decompress(stack.database_file(set_id)))
    live = stack.deploy_dir / "storage/tracker/lib/database/tracker.db"
    # The stand-in keeps writing: by now the live database has moved on.
    stack.compose("stop", "tracker")
    assert table_dump(live) != table_dump(snapshot)

    result = restore(stack, set_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert table_dump(live) == table_dump(snapshot)
    kept = list(live.parent.glob("tracker.db.before-restore-*"))
    assert len(kept) == 1
    assert table_dump(kept[0]) != table_dump(snapshot)
    # The tracker was stopped before the restore, so it stays stopped.
    assert "tracker" not in stack.running_services()


def test_restore_starts_a_running_tracker_again_and_waits_for_health(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    result = restore(stack, set_id, only="all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tracker is healthy" in result.stdout
    assert "tracker" in stack.running_services()
    extracted = stack.backups / f"restore-{set_id}/data/storage/tracker/etc/tracker.toml"
    assert (
        extracted.read_bytes()
        == (stack.deploy_dir / "storage/tracker/etc/tracker.toml").read_bytes()
    )


@pytest.mark.parametrize(
    ("marker", "code", "said"),
    [
        (f"{DEPLOY_PUSHED}NOW", exit_codes.LOCK_BUSY, "a deploy is changing the stack"),
        (DEPLOY_FAILED, exit_codes.UNSAFE, "run inv deploy --env"),
    ],
)
def test_a_restore_leaves_the_tracker_alone_while_a_deploy_marker_says_its_files_are_ahead(
    sqlite_stack: Stack, marker: str, code: int, said: str
) -> None:
    """A MySQL deploy between its push and the passwords' change in the server, or one
    that failed there: a restore stopped the tracker and started it again on files
    holding a password the server lacked (a review). It now changes nothing."""
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    before = tracker_started_at_text(stack)
    stack.status_dir.mkdir(parents=True, exist_ok=True)
    deploy_marker = stack.status_dir / paths.DEPLOY_MARKER.name
    deploy_marker.write_text(marker.replace("NOW", str(int(time.time()))) + "\n")
    try:
        result = restore(stack, set_id, only="all")
    finally:
        deploy_marker.unlink()
    assert result.returncode == code, result.stdout + result.stderr
    assert said in result.stdout
    assert "stopping tracker" not in result.stdout
    assert "restoring the database" not in result.stdout
    assert "tracker" in stack.running_services()
    assert tracker_started_at_text(stack) == before  # never stopped


def test_a_restore_whose_output_reader_goes_away_ends_and_logs_as_it_would_have(
    sqlite_stack: Stack,
) -> None:
    """`inv restore`'s SSH session drops: the script's stdout and stderr lose their
    reader. It goes on (no SIGPIPE ends it with the tracker stopped), and the backup
    log on the host keeps its lines."""
    assert sqlite_stack.run_maintenance().returncode == 0
    [set_id] = sqlite_stack.sets()
    process = start_restore(sqlite_stack, set_id, verify_first=True)
    assert drop_reader(process, after="holding the backup lock") == 0
    log = sqlite_stack.log_file.read_text()
    assert "restore: stopping tracker" in log
    assert f"restore: set {set_id} restored (db)" in log
    assert "tracker" in sqlite_stack.running_services()


@pytest.mark.parametrize(("compression", "suffix"), [("gzip", "gz"), ("zstd", "zst")])
def test_mysql_verify_drill_and_restore_round_trip(
    tmp_path: Path, compression: str, suffix: str
) -> None:
    require_images(STANDIN_IMAGE, MARIADB_IMAGE, BACKUP_IMAGE)
    data = env_for_stack(sample_data("manual-test-mysql"))
    data["backup"]["compression"] = compression
    data["tracker"]["core"]["database"]["password"] = "p a'ss\"w$(x)`;#\\ ü"
    stack = Stack(parse(data), tmp_path / "m").install()

    def rows() -> str:
        return stack.mysql_query("SELECT id, info_hash, completed FROM torrents ORDER BY id")

    try:
        stack.up()
        assert stack.run_maintenance().returncode == 0
        [set_id] = stack.sets()
        drill = verify(stack, set_id)
        assert drill.returncode == 0, drill.stdout + drill.stderr
        assert "throw-away database server" in drill.stdout
        assert f"set {set_id}: VERIFIED" in drill.stdout
        # The drill's restore needs no settings of the host's: nothing mounted from, or
        # made in, the directory uid 1000 owns (dockerd made a root-owned etc/ there).
        assert not (stack.backups / "etc").exists()
        leftovers = subprocess.run(
            [
                "docker",
                "ps",
                "-a",
                "-q",
                "--filter",
                f"name=tracker-drill-{set_id.replace('_', '-')}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert leftovers.stdout.strip() == ""

        stack.compose("stop", "tracker")
        dumped = decompress(stack.backups / f"mysql/mysql_{set_id}.sql.{suffix}").decode()
        before = rows()
        result = restore(stack, set_id)
        assert result.returncode == 0, result.stdout + result.stderr
        after = rows()
        # The safety backup came first: two sets now, and the data equals the chosen set's.
        assert len(stack.sets()) == 2
        assert after != before  # the stand-in wrote on after the snapshot
        restored_count = len(after.splitlines())
        assert restored_count == int(stack.meta(set_id)["rows.torrents"])
        # The stand-in's invariant holds in the restored data: no half-written download.
        assert "INSERT INTO `torrents`" in dumped
        total = stack.mysql_query(
            "SELECT (SELECT COALESCE(SUM(completed), 0) FROM torrents) = (SELECT value FROM "
            "torrent_aggregate_metrics WHERE metric_name = 'torrents_downloads_total')",
        )
        assert total.strip() == "1"
    finally:
        stack.cleanup()


# --------------------------------------------------------------------------- issue 11: restore

# A whitelist row written after the set: gone once the set is restored.
MARKER = "abababababababababababababababababababab"
INSERT_MARKER = (
    "INSERT INTO whitelist (info_hash) VALUES ('abababababababababababababababababababab')"
)
COUNT_MARKER = (
    "SELECT COUNT(*) FROM whitelist WHERE info_hash = 'abababababababababababababababababababab'"
)


def _mysql_stack(tmp_path: Path, name: str) -> Stack:
    require_images(STANDIN_IMAGE, MARIADB_IMAGE, BACKUP_IMAGE)
    stack = Stack(parse(env_for_stack(sample_data("manual-test-mysql"))), tmp_path / name)
    return stack.install()


def _age_set(stack: Stack, set_id: str, days: int) -> None:
    """Date every file of a set back by ``days`` (retention goes by mtime)."""
    when = time.time() - days * 86400
    files = list(stack.backups.glob(f"*/*_{set_id}.*"))
    assert len(files) == 4, files
    for file in files:
        os.utime(file, (when, when))


def _marker_rows(stack: Stack) -> str:
    return stack.mysql_query(COUNT_MARKER).strip()


def test_hardening_03_restoring_a_set_older_than_retention_keeps_it(tmp_path: Path) -> None:
    """The safety backup writes a new set but prunes nothing: the old set survives."""
    stack = _mysql_stack(tmp_path, "h03")
    try:
        stack.up()
        assert stack.run_maintenance().returncode == 0
        [old] = stack.sets()
        retention = stack.env.backup.retention_days if stack.env.backup else 0
        _age_set(stack, old, retention + 3)
        stack.compose("stop", "tracker")  # the row counts below stay put
        stack.mysql_query(INSERT_MARKER)

        result = restore(stack, old)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "retention: skipped (--no-prune); no set was deleted" in result.stderr
        assert "retention: deleting" not in result.stderr
        sets = stack.sets()
        assert len(sets) == 2, sets
        assert old in sets
        [safety] = [s for s in sets if s != old]
        assert f"set {safety} holds the data as it was before this restore" in result.stdout
        assert len(list(stack.backups.glob(f"*/*_{old}.*"))) == 4
        # Restored: the row counts are the old set's, and the marker written later is gone.
        meta = stack.meta(old)
        torrents = stack.mysql_query("SELECT COUNT(*) FROM torrents").strip()
        whitelist = stack.mysql_query("SELECT COUNT(*) FROM whitelist").strip()
        assert torrents == meta["rows.torrents"], (torrents, meta)
        assert whitelist == meta["rows.whitelist"], (whitelist, meta)
        assert _marker_rows(stack) == "0"
        # ... and the safety set holds the data as it was, marker included.
        assert MARKER in decompress(stack.database_file(safety)).decode()
    finally:
        stack.cleanup()


def test_hardening_06_failed_safety_backup_names_the_flag_and_the_flag_restores(
    tmp_path: Path,
) -> None:
    """A damaged database (a view over a dropped table) makes mariadb-dump fail."""
    stack = _mysql_stack(tmp_path, "h06")
    try:
        stack.up()
        assert stack.run_maintenance().returncode == 0
        [set_id] = stack.sets()
        stack.mysql_query(INSERT_MARKER)
        stack.mysql_query(
            "CREATE TABLE scratch (x INT); CREATE VIEW broken AS SELECT x FROM scratch; "
            "DROP TABLE scratch"
        )

        refused = restore(stack, set_id)
        assert refused.returncode == exit_codes.SAFETY_BACKUP_FAILED, refused.stdout
        assert "mariadb-dump failed" in refused.stderr
        assert "the safety backup failed" in refused.stdout
        assert "run again with --skip-safety-backup" in refused.stdout
        assert "restoring the database" not in refused.stdout
        # Nothing restored, no half-written set, and the tracker runs again.
        assert _marker_rows(stack) == "1"
        assert stack.sets() == [set_id]
        assert not list((stack.backups / ".staging").iterdir())
        assert "tracker" in stack.running_services()

        skipped = restore(stack, set_id, skip_safety_backup=True)
        assert skipped.returncode == 0, skipped.stdout + skipped.stderr
        assert "WARNING: --skip-safety-backup: no safety backup" in skipped.stdout
        assert "mariadb-dump" not in skipped.stderr
        assert _marker_rows(stack) == "0"
        assert stack.sets() == [set_id]
        assert "tracker is healthy" in skipped.stdout
    finally:
        stack.cleanup()


def _claim_one_more_torrent(stack: Stack, set_id: str) -> None:
    """The set's .meta records one torrent more than its dump holds, its checksums made
    to match: a set that loads but does not check out (the drill would refuse it)."""
    meta = stack.backups / set_file("meta", set_id)
    count = stack.meta(set_id)["rows.torrents"]
    text = meta.read_text()
    meta.write_text(text.replace(f"rows.torrents={count}\n", f"rows.torrents={int(count) + 1}\n"))
    sums = stack.backups / checksum_manifest(set_id)
    lines = [line.split("  ", 1)[1] for line in sums.read_text().splitlines()]
    digests = [hashlib.sha256((stack.backups / name).read_bytes()).hexdigest() for name in lines]
    sums.write_text("".join(f"{d}  {name}\n" for d, name in zip(digests, lines, strict=True)))


def test_a_mysql_restore_that_fails_puts_the_safety_set_back_or_keeps_the_tracker_stopped(
    tmp_path: Path,
) -> None:
    """The load writes into the live database: a failure leaves part of the set there.
    With a safety set the data from before comes back and the tracker runs on it;
    without one the tracker is not started on a partly restored database."""
    stack = _mysql_stack(tmp_path, "putback")
    try:
        stack.up()
        assert stack.run_maintenance().returncode == 0
        [set_id] = stack.sets()
        _claim_one_more_torrent(stack, set_id)
        stack.mysql_query(INSERT_MARKER)

        rolled = restore(stack, set_id)  # no --force drill here: the script's own path
        output = rolled.stdout + rolled.stderr
        assert rolled.returncode == exit_codes.ROLLED_BACK, output
        assert "row count mismatch in torrents" in rolled.stderr
        [safety] = [s for s in stack.sets() if s != set_id]
        assert f"putting back the data from before this restore (safety set {safety})" in output
        assert "the database holds the data from before this restore again" in output
        assert _marker_rows(stack) == "1"  # written after the set: only the safety set has it
        assert "tracker" in stack.running_services()

        partly = restore(stack, set_id, skip_safety_backup=True)
        output = partly.stdout + partly.stderr
        assert partly.returncode == exit_codes.PARTLY_RESTORED, output
        assert f"the MySQL database may hold part of set {set_id}, so the tracker stays " in (
            partly.stdout
        )
        assert f"inv restore --env {stack.env.name} --set {set_id} --yes" in partly.stdout
        assert "starting tracker" not in partly.stdout
        assert "tracker" not in stack.running_services()
        marker = stack.status_dir / paths.RESTORE_INCOMPLETE_MARKER.name
        assert f"set={set_id}\n" in marker.read_text()

        # No set is taken of that database meanwhile; the tracker stays stopped.
        refused = stack.run_maintenance()
        assert refused.returncode == exit_codes.UNSAFE, refused.stdout + refused.stderr
        assert "a restore left the MySQL database partly restored" in stack.status()["reason"]
        assert stack.sets() == sorted([set_id, safety])
        assert "tracker" not in stack.running_services()

        # The next restore (of a good set) takes no safety backup of the partial
        # database, removes the marker and starts the tracker.
        finished = restore(stack, safety)
        output = finished.stdout + finished.stderr
        assert finished.returncode == 0, output
        assert "an earlier restore left the MySQL database partly restored" in finished.stdout
        assert "no safety backup: the database holds part of a set" in finished.stdout
        assert stack.sets() == sorted([set_id, safety])
        assert not marker.exists()
        assert _marker_rows(stack) == "1"
        assert "tracker" in stack.running_services()
        assert "tracker is healthy" in finished.stdout
    finally:
        stack.cleanup()


def test_a_restore_that_finds_backup_sh_locked_changes_nothing_and_starts_the_tracker(
    tmp_path: Path,
) -> None:
    """backup.sh's own lock (the backup directory's .lock), held by a backup.sh run
    not under the host's lock: the load gives up before it writes anything. It was
    taken for a load cut short: the tracker stayed stopped, the database was marked
    partly restored (no backup ran until another restore), and nothing had changed."""
    stack = _mysql_stack(tmp_path, "ownlock")
    try:
        stack.up()
        assert stack.run_maintenance().returncode == 0
        [set_id] = stack.sets()
        stack.mysql_query(INSERT_MARKER)
        own_lock = stack.backups / ".lock"
        assert own_lock.is_file()
        with _held(own_lock):
            drilled = verify(stack, set_id)
            verified_first = restore(stack, set_id, verify_first=True)
            with_safety = restore(stack, set_id)
            without = restore(stack, set_id, skip_safety_backup=True)
        # The drill could not run: no verdict on the set (it said FAILED).
        assert drilled.returncode == exit_codes.BACKUP_SH_LOCKED, drilled.stdout
        assert f"the restore drill did not run: set {set_id} was not verified" in drilled.stdout
        for result, what in (
            (verified_first, f"set {set_id} was not verified, nothing was changed"),
            (with_safety, "no safety backup was taken, nothing was restored"),
            (without, f"set {set_id} was not loaded"),
        ):
            output = result.stdout + result.stderr
            assert result.returncode == exit_codes.LOCK_BUSY, output
            assert f"another backup.sh run holds {stack.backups}/.lock: {what}" in result.stdout
            assert "partly" not in result.stdout
            assert "did not pass verification" not in result.stdout
            if result is not verified_first:  # stopped only after its verification
                assert "restore: starting tracker" in result.stdout
        assert not (stack.status_dir / paths.RESTORE_INCOMPLETE_MARKER.name).exists()
        assert _marker_rows(stack) == "1"
        assert "tracker" in stack.running_services()
        assert stack.sets() == [set_id]
        assert stack.run_maintenance().returncode == 0
    finally:
        stack.cleanup()


def test_a_sqlite_restore_that_finds_backup_sh_locked_says_so(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    database = stack.deploy_dir / "storage/tracker/lib/database"
    with _held(stack.backups / ".lock"):
        result = restore(stack, set_id)
    assert result.returncode == exit_codes.LOCK_BUSY, result.stdout + result.stderr
    assert f"holds {stack.backups}/.lock: set {set_id} was not restored, nothing was changed" in (
        result.stdout
    )
    # The live database was not replaced (a restore keeps the replaced file aside).
    assert not list(database.glob("tracker.db.before-restore-*"))
    assert "tracker" in stack.running_services()


def test_a_restore_killed_by_a_signal_fails_says_so_and_starts_the_tracker_again(
    tmp_path: Path,
) -> None:
    """SIGTERM while the safety backup runs (before the database is touched): the step
    in progress ends, nothing is restored, the tracker runs again, the exit is 143."""
    stack = _mysql_stack(tmp_path, "sig")
    try:
        stack.up()
        assert stack.run_maintenance().returncode == 0
        [set_id] = stack.sets()
        stack.mysql_query(INSERT_MARKER)
        process = start_restore(stack, set_id, verify_first=False)
        assert process.stdout is not None
        seen = []
        for line in process.stdout:  # ends when the script does
            seen.append(line)
            if "safety backup of the current data" in line:
                process.terminate()
                break
        rest, _ = process.communicate(timeout=300)  # stderr: read, not checked
        output = "".join(seen) + rest
        assert process.returncode == 143, output
        assert "restore: ERROR: killed by signal 15" in output
        assert "restoring the database" not in output
        assert "restore: starting tracker" in output
        assert _marker_rows(stack) == "1"
        assert "tracker" in stack.running_services()
    finally:
        stack.cleanup()


def test_a_restore_killed_while_the_tracker_stops_waits_for_the_stop_and_starts_it(
    tmp_path: Path,
) -> None:
    """SIGTERM to the restore's whole process group (Ctrl-C, a kill of the group) while
    the tracker stops slowly: Docker goes on stopping it after its compose client is
    killed, and a start meanwhile does nothing (it still runs). The restore started it
    at once, said "starting tracker", and the tracker ended stopped. Now the signal is
    handled at once, the restore waits until the stop has ended, then starts it."""
    require_images(STANDIN_IMAGE, BACKUP_IMAGE)
    stack = Stack(parse(env_for_stack(sample_data("manual-test-sqlite"))), tmp_path / "s").install()
    process: subprocess.Popen[str] | None = None
    events: subprocess.Popen[str] | None = None
    try:
        stack.up()
        assert stack.run_maintenance().returncode == 0
        [set_id] = stack.sets()
        compose_file = stack.deploy_dir / paths.COMPOSE_FILE.name
        compose = yaml.safe_load(compose_file.read_text())
        # PID 1 of the container ignores a signal it has no handler for: a slow stop.
        compose["services"]["tracker"] |= {"stop_signal": "SIGWINCH", "stop_grace_period": "6s"}
        compose_file.write_text(yaml.safe_dump(compose))
        stack.up()  # the tracker recreated with them
        container = stack.compose("ps", "-q", "tracker").stdout.strip()
        now = int(time.time())
        during = ("--since", str(now), "--until", str(now + 120))
        only = ("--filter", f"container={container}", "--filter", "event=kill")
        events = subprocess.Popen(  # the daemon sends the stop signal: the stop has begun
            ["docker", "events", *during, *only, "--format", "{{.Action}}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert events.stdout is not None
        process = start_restore(stack, set_id, verify_first=False, own_group=True)
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line)
            if "stopping tracker" in line:
                break
        assert events.stdout.readline().strip() == "kill", "".join(seen)
        os.killpg(process.pid, signal.SIGTERM)  # the script and its compose client
        rest, _ = process.communicate(timeout=300)
        output = "".join(seen) + rest
        assert process.returncode == 143, output
        assert "restore: ERROR: killed by signal 15 during stopping the tracker" in output
        assert "restoring the database" not in output
        assert "restore: starting tracker" in output
        time.sleep(8)  # past the grace: a stop still going on would have ended
        assert "tracker" in stack.running_services(), output
    finally:
        for child in (events, process):
            if child is not None and child.poll() is None:
                child.kill()
                child.communicate()
        stack.cleanup()


def test_a_restore_killed_outright_during_its_load_leaves_the_marker(tmp_path: Path) -> None:
    """SIGKILL (or a power cut) runs no trap: the marker is written before the MySQL
    load changes anything, so it is there. No backup run takes a set of the partly
    loaded database; the next restore finishes and starts the tracker."""
    stack = _mysql_stack(tmp_path, "kill")
    try:
        set_id, marker, process = _restore_until_marked(stack)
        process.kill()  # the load has begun: its compose client goes on alone
        output, _ = process.communicate(timeout=300)
        assert "restoring the database from set" in output, output
        assert marker.read_text().startswith(f"set={set_id}\n")
        _wait_until_free(stack.lock_file)  # the orphaned load holds the lock to its end
        assert "tracker" not in stack.running_services()

        refused = stack.run_maintenance()
        assert refused.returncode == exit_codes.UNSAFE, refused.stdout + refused.stderr
        assert "a restore left the MySQL database partly restored" in stack.status()["reason"]

        finished = restore(stack, set_id)
        assert finished.returncode == 0, finished.stdout + finished.stderr
        assert "an earlier restore left the MySQL database partly restored" in finished.stdout
        assert not marker.exists()
        assert "tracker" in stack.running_services()
    finally:
        stack.cleanup()


def test_a_signal_during_the_load_waits_for_its_result(tmp_path: Path) -> None:
    """SIGTERM to the script while the load's container runs: the load's own result
    decides (here it ends well: the whole set is there). The marker goes, the tracker
    runs again and the exit is 143 (a signal between the marker and the load left the
    marker with the tracker running, and no backup ran after it)."""
    stack = _mysql_stack(tmp_path, "term")
    try:
        set_id, marker, process = _restore_until_marked(stack)
        deadline = time.monotonic() + 60
        while not _one_off_containers(stack) and process.poll() is None:
            assert time.monotonic() < deadline, "the load's container never ran"
            time.sleep(0.02)
        process.terminate()
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 143, output
        assert "killed by signal 15 during the database restore (which ended with exit 0)" in (
            output
        )
        assert f"the database holds the whole set {set_id}: its load had ended" in output
        assert not marker.exists()
        assert "tracker" in stack.running_services()
    finally:
        stack.cleanup()


def _one_off_containers(stack: Stack) -> list[str]:
    """The running `compose run` containers of the stack (the load's, here)."""
    listed = subprocess.run(
        [
            "docker",
            "ps",
            "--quiet",
            "--filter",
            f"label=com.docker.compose.project={stack.project}",
            "--filter",
            "label=com.docker.compose.oneoff=True",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return listed.stdout.split()


def _restore_until_marked(stack: Stack) -> tuple[str, Path, subprocess.Popen[str]]:
    """The stack up with one set, and the restore of that set started and left to run
    until its restore-incomplete marker is written (the load begins)."""
    stack.up()
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    marker = stack.status_dir / paths.RESTORE_INCOMPLETE_MARKER.name
    process = start_restore(stack, set_id, verify_first=False)
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return set_id, marker, process


def _wait_until_free(lock: Path, deadline_seconds: float = 300) -> None:
    deadline = time.monotonic() + deadline_seconds
    while not _lock_is_free(lock):
        assert time.monotonic() < deadline, f"{lock} still held after {deadline_seconds} s"
        time.sleep(0.1)


def test_recover_restore_on_a_new_host_adds_no_safety_set_and_leaves_the_tracker_stopped(
    tmp_path: Path,
) -> None:
    """inv recover's restore: the tracker never ran there; a safety backup would only
    add a set of an empty database, the newest one, which `latest` would then pick."""
    stack = _mysql_stack(tmp_path, "rcv")
    try:
        stack.up()
        assert stack.run_maintenance().returncode == 0
        [set_id] = stack.sets()
        stack.compose("rm", "--stop", "--force", "tracker")  # as on a new host: never ran
        stack.mysql_query(INSERT_MARKER)

        result = restore(stack, set_id, new_host=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "no safety backup: a new host (inv recover)" in result.stdout
        assert "WARNING" not in result.stdout
        assert stack.sets() == [set_id]
        assert _marker_rows(stack) == "0"
        assert (
            stack.mysql_query("SELECT COUNT(*) FROM torrents").strip()
            == (stack.meta(set_id)["rows.torrents"])
        )
        assert "the tracker is not running; it stays stopped" in result.stdout
        assert "tracker" not in stack.running_services()

        # An earlier recover's load was cut off (its marker is there): the re-run
        # loads the set again and leaves the tracker to recover's later phase. It
        # started it before, and a new host has no tracker container: exit 70.
        marker = stack.status_dir / paths.RESTORE_INCOMPLETE_MARKER.name
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"set={set_id}\n")
        stack.mysql_query(INSERT_MARKER)
        resumed = restore(stack, set_id, new_host=True)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "an earlier restore left the MySQL database partly restored" in resumed.stdout
        assert _marker_rows(stack) == "0"
        assert not marker.exists()
        assert "tracker" not in stack.running_services()
        assert stack.compose("ps", "-a", "-q", "tracker").stdout.strip() == ""

        # Where a tracker container exists (it has run: its data may be live), the
        # new-host restore refuses and changes nothing.
        stack.compose("create", "tracker")
        stack.mysql_query(INSERT_MARKER)
        refused = restore(stack, set_id, new_host=True)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "a tracker container exists: this is not a new host" in refused.stdout
        assert _marker_rows(stack) == "1"
        assert stack.sets() == [set_id]
    finally:
        stack.cleanup()


def _lock_is_free(lock: Path) -> bool:
    probe = subprocess.run(["flock", "--nonblock", str(lock), "true"], check=False)
    return probe.returncode == 0


def _wait_until_locked(
    lock: Path, deadline_seconds: float = 60, taker: subprocess.Popen[str] | None = None
) -> None:
    """Until ``lock`` is held; ``taker``, the process that should take it, must not end first."""
    deadline = time.monotonic() + deadline_seconds
    while _lock_is_free(lock):
        if taker is not None and taker.poll() is not None:
            output, _ = taker.communicate()
            raise AssertionError(f"exited {taker.returncode} before {lock} was held: {output}")
        assert time.monotonic() < deadline, f"nobody took {lock} within {deadline_seconds} s"
        time.sleep(0.05)


def test_hardening_07_busy_lock_names_its_holder_and_changes_nothing(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    stack.lock_file.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(["flock", str(stack.lock_file), "sleep", "300"])
    try:
        _wait_until_locked(stack.lock_file)
        result = restore(stack, set_id, only="all")
    finally:
        holder.terminate()
        holder.wait(timeout=30)
    assert result.returncode == exit_codes.LOCK_BUSY, result.stdout + result.stderr
    assert f"is held by pid {holder.pid} (flock {stack.lock_file} sleep 300)" in result.stdout
    assert "Nothing was changed" in result.stdout
    assert "stopping tracker" not in result.stdout
    database = stack.deploy_dir / "storage/tracker/lib/database"
    assert not list(database.glob("tracker.db.before-restore-*"))
    assert not (stack.backups / f"restore-{set_id}").exists()
    assert "tracker" in stack.running_services()
    assert stack.sets() == [set_id]


def test_hardening_07_restore_holds_the_lock_so_a_scheduled_run_skips(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    script = stack.base / "restore.sh"
    (stack.base / "verify.sh").write_text(
        verify_script(
            stack.env,
            set_id,
            drill=True,
            deploy_dir=str(stack.deploy_dir),
            backup_dir=str(stack.backups),
        )
    )
    script.write_text(
        restore_script(
            stack.env,
            set_id,
            "db",
            verify_first=True,
            lock_file=str(stack.lock_file),
            deploy_dir=str(stack.deploy_dir),
            backup_dir=str(stack.backups),
            sqlite_dir=str(stack.deploy_dir / "storage/tracker/lib/database"),
        )
    )
    # A process of the run above can hold the lock for a moment after the run has
    # ended (seen under load; the holder is gone before it can be named): the
    # restore would rightly say "busy". Wait for it, bounded, so the race below is
    # between the restore and the scheduled run only.
    deadline = time.monotonic() + 10
    while not _lock_is_free(stack.lock_file):
        assert time.monotonic() < deadline, "the run's lock is still held 10 s after it ended"
        time.sleep(0.05)
    running = subprocess.Popen(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=stack.environ(),
    )
    try:
        stack.lock_file.parent.mkdir(parents=True, exist_ok=True)
        _wait_until_locked(stack.lock_file, taker=running)
        scheduled = stack.run_maintenance("--quiet")
        output, _ = running.communicate(timeout=600)
    finally:
        if running.poll() is None:
            running.kill()
            running.communicate()
    assert running.returncode == 0, output
    assert f"set {set_id}: VERIFIED" in output  # the drill ran under the lock too
    assert scheduled.returncode == 75, scheduled.stdout + scheduled.stderr
    assert stack.sets() == [set_id]
    assert _lock_is_free(stack.lock_file)
    assert "tracker is healthy" in output


class _Pings(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: Any) -> None:
        """Quiet: the test checks the requests, not the server's log."""


def test_notify_url_gets_start_and_success_pings_and_a_dead_url_fails_nothing(
    tmp_path: Path,
) -> None:
    require_images(STANDIN_IMAGE, BACKUP_IMAGE)
    server = http.server.HTTPServer(("127.0.0.1", 0), _Pings)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Pings.seen = []
    data = env_for_stack(sample_data("manual-test-sqlite"))
    data["backup"]["notify_url"] = f"http://127.0.0.1:{port}/ping/abc"
    stack = Stack(parse(data), tmp_path / "n").install()
    try:
        stack.up()
        assert stack.run_maintenance().returncode == 0
        assert _Pings.seen == ["/ping/abc/start", "/ping/abc"]
        server.shutdown()
        server.server_close()
        # Nobody listens now: the pings fail, the backup does not.
        result = stack.run_maintenance()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ping to the notify URL failed (ignored)" in stack.log_file.read_text()
        assert len(stack.sets()) == 2
    finally:
        stack.cleanup()
