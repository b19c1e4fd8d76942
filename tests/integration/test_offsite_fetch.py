"""`inv restore --from offsite`'s host side: a set back from the off-host
repository into the host's backup directory, verified, then renamed into place.

Real parts: the compose stack and backup image (tests/integration/stack.py),
uploads by the maintenance script to a REST repository served by ``rclone serve
restic`` on 127.0.0.1, the host script run here as root (as over SSH), and a
small tmpfs under the backup directory for the disk-full case.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tracker_deployer import exit_codes, offsite, paths
from tracker_deployer.remote.offsite_fetch import STAGING_PREFIX, fetch_error, fetch_script
from tracker_deployer.topology import APP_GID, APP_UID

from tests.integration.stack import Stack
from tests.integration.test_offsite import (
    PASSWORD,
    Server,
    assert_local_sets_intact,
    assert_success_with_upload,
    offsite_stack,
    rest_server,  # noqa: F401 (fixture)
    terminate_while_the_server_is_paused,
)

pytestmark = pytest.mark.integration


def run_fetch(
    stack: Stack, set_id: str, lock_wait_seconds: int = 60
) -> subprocess.CompletedProcess[str]:
    script = fetch_script(
        deploy_dir=str(stack.deploy_dir),
        backup_dir=str(stack.backups),
        lock_file=str(stack.lock_file),
        lock_wait_seconds=lock_wait_seconds,
    )
    return subprocess.run(
        ["bash", "-c", script, "_", set_id],
        capture_output=True,
        text=True,
        env=stack.environ(),
        check=False,
        timeout=600,
    )


def set_files(stack: Stack, set_id: str) -> dict[str, bytes]:
    names = stack.set_files(set_id)
    assert len(names) == 4, names
    return {name: (stack.backups / name).read_bytes() for name in names}


def remove_set(stack: Stack, set_id: str) -> None:
    for name in set_files(stack, set_id):
        (stack.backups / name).unlink()


def test_a_lost_local_set_comes_back_from_the_repository_verified(
    tmp_path: Path,
    rest_server: Server,  # noqa: F811
) -> None:
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    try:
        set_id = assert_success_with_upload(stack, stack.run_maintenance())
        original = set_files(stack, set_id)
        owner = (stack.backups / f"manifests/set_{set_id}.sha256").stat().st_uid
        remove_set(stack, set_id)
        assert set_id not in stack.sets()

        # The host's backup lock held by another process: nothing happens.
        stack.lock_file.parent.mkdir(parents=True, exist_ok=True)
        holder = subprocess.Popen(["flock", str(stack.lock_file), "sleep", "60"])
        try:
            deadline = time.monotonic() + 10
            while (
                subprocess.run(
                    ["flock", "--nonblock", str(stack.lock_file), "true"], check=False
                ).returncode
                == 0
            ):
                assert time.monotonic() < deadline, "the holder never took the lock"
                time.sleep(0.1)
            busy = run_fetch(stack, set_id, lock_wait_seconds=1)
        finally:
            holder.kill()
            holder.wait()
        assert busy.returncode == exit_codes.LOCK_BUSY, busy.stdout + busy.stderr
        assert "backup lock" in busy.stderr
        assert "backup lock is held" in str(fetch_error(busy.returncode, busy.stderr, set_id))
        assert set_id not in stack.sets()
        assert not any((stack.backups / name).exists() for name in original)
        assert not list(stack.backups.glob(STAGING_PREFIX + "*"))

        # What a fetch killed with SIGKILL leaves: a whole restored set, removed now.
        leftover = stack.backups / f"{STAGING_PREFIX}Killed"
        (leftover / "set").mkdir(parents=True)
        (leftover / "set/restored.db").write_bytes(b"x" * 4096)
        before = time.time() - 1
        fetched = run_fetch(stack, set_id)
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
        # Fetched files carry the fetch's time, not the set's: retention keeps them.
        for name in original:
            assert (stack.backups / name).stat().st_mtime >= before, name
        assert fetched.stdout.strip().splitlines()[-1] == f"fetched={set_id}"
        assert PASSWORD not in fetched.stdout + fetched.stderr
        assert set_files(stack, set_id) == original
        assert (stack.backups / f"manifests/set_{set_id}.sha256").stat().st_uid == owner
        assert_local_sets_intact(stack)
        assert not list(stack.backups.glob(STAGING_PREFIX + "*"))

        again = run_fetch(stack, set_id)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == f"present={set_id}"

        missing = run_fetch(stack, "20000101_000000")
        assert missing.returncode == offsite.OFFSITE_SH_EXIT["NO_SET"], missing.stderr
        error = fetch_error(missing.returncode, missing.stderr, "20000101_000000")
        assert "holds no such set" in str(error)
        assert not list(stack.backups.glob(STAGING_PREFIX + "*"))

        # An incomplete copy on the host is left alone, and said.
        (stack.backups / f"manifests/set_{set_id}.sha256").unlink()
        partial = run_fetch(stack, set_id)
        assert partial.returncode == 3, partial.stderr
        assert "incomplete copy" in str(fetch_error(partial.returncode, partial.stderr, set_id))
        assert stack.database_file(set_id).exists()
    finally:
        stack.cleanup()


def test_a_fetch_stopped_by_a_signal_removes_its_container_and_keeps_nothing(
    tmp_path: Path,
    rest_server: Server,  # noqa: F811
) -> None:
    """SIGTERM to the host script while restic waits on the repository (its server
    paused): the fetch container goes at once, then the staging directory; the exit
    says signal 15 and no set is on the host. Before, bash put the signal off until
    the fetch had ended (hours, with a stalled repository) and left the container."""
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    try:
        set_id = assert_success_with_upload(stack, stack.run_maintenance())
        remove_set(stack, set_id)
        script = fetch_script(
            deploy_dir=str(stack.deploy_dir),
            backup_dir=str(stack.backups),
            lock_file=str(stack.lock_file),
        )
        stopped = terminate_while_the_server_is_paused(
            rest_server,
            ["bash", "-c", script, "_", set_id],
            stack.environ(),
            "tracker-backup-{pid}-offsite-fetch",
        )
        assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
        assert "stopped by signal 15" in stopped.stderr
        assert not list(stack.backups.glob(STAGING_PREFIX + "*"))
        assert set_id not in stack.sets()
        error = str(fetch_error(stopped.returncode, stopped.stderr, set_id))
        assert "stopped by SIGTERM" in error
        assert "nothing was kept" in error
    finally:
        stack.cleanup()


def test_disk_full_during_a_fetch_fails_clearly_and_keeps_the_local_sets(
    tmp_path: Path,
    rest_server: Server,  # noqa: F811
) -> None:
    """The backup directory on a small tmpfs, filled up before the fetch."""
    if os.geteuid() != 0:
        pytest.fail("the disk-full test mounts a tmpfs: run the tests as root")
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    mounted = False
    try:
        first = assert_success_with_upload(stack, stack.run_maintenance())
        # The backup directory moves onto a 4 MiB tmpfs, as it is.
        aside = tmp_path / "aside"
        subprocess.run(["cp", "-a", str(stack.backups), str(aside)], check=True)  # owners too
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(stack.backups)],
            check=True,
        )
        mounted = True
        subprocess.run(["cp", "-a", f"{aside}/.", str(stack.backups)], check=True)
        kept = set_files(stack, first)
        remove_set(stack, first)
        # A second set that stays, then the disk fills up.
        other = "20000101_000000"
        for name, data in kept.items():
            (stack.backups / name.replace(first, other)).write_bytes(data)
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={stack.backups / 'filler'}", "bs=4k"],
            capture_output=True,
            check=False,
        )
        before = {name: (stack.backups / name).read_bytes() for name in set_files(stack, other)}

        full = run_fetch(stack, first)
        assert full.returncode == offsite.OFFSITE_SH_EXIT["NO_SPACE"], full.stdout + full.stderr
        error = fetch_error(full.returncode, full.stderr, first)
        assert "no space left" in str(error)
        assert "local sets are intact" in str(error)
        assert not list(stack.backups.glob(STAGING_PREFIX + "*"))
        assert not (stack.backups / f"manifests/set_{first}.sha256").exists()
        assert set_files(stack, other) == before
    finally:
        if mounted:
            subprocess.run(["umount", str(stack.backups)], check=False)
        stack.cleanup()


def test_a_link_planted_by_the_backup_user_leads_the_fetch_nowhere_root_only(
    tmp_path: Path,
    rest_server: Server,  # noqa: F811
) -> None:
    """uid 1000 owns the backup directory: it swaps sqlite/ for a link to a directory
    only root may write. Root must not move the fetched file there for it."""
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    try:
        set_id = assert_success_with_upload(stack, stack.run_maintenance())
        remove_set(stack, set_id)
        root_only = tmp_path / "root-only"
        root_only.mkdir(mode=0o755)
        sqlite_dir = stack.backups / "sqlite"
        for leftover in sqlite_dir.iterdir():
            leftover.unlink()
        sqlite_dir.rmdir()
        sqlite_dir.symlink_to(root_only)
        os.lchown(sqlite_dir, 1000, 1000)

        planted = run_fetch(stack, set_id)
        assert planted.returncode != 0, planted.stdout + planted.stderr
        assert list(root_only.iterdir()) == []
        assert not list(stack.backups.glob(STAGING_PREFIX + "*"))
    finally:
        stack.cleanup()


# A stand-in for `docker` (compose ps/run, rm): `run` writes an sqlite set into the
# directory mounted at /fetch, owned by the backup user, as offsite.sh fetch does.
FAKE_DOCKER = f"""#!/bin/bash
set -o errexit -o nounset
for argument; do [[ "$argument" != ps && "$argument" != rm ]] || exit 0; done
previous="" staging=""
for argument; do
  if [[ "$previous" == -v ]]; then staging="${{argument%:/fetch}}"; fi
  previous="$argument"
done
set_id="${{*: -1}}"
mkdir -p -- "$staging/set/sqlite" "$staging/set/config" "$staging/set/manifests"
echo db >"$staging/set/sqlite/sqlite_$set_id.db.gz"
echo config >"$staging/set/config/config_$set_id.tar.gz"
echo meta >"$staging/set/manifests/set_$set_id.meta"
echo sums >"$staging/set/manifests/set_$set_id.sha256"
chown -R {APP_UID}:{APP_GID} -- "$staging/set"
echo "fetched=$set_id"
"""


def fake_host(base: Path) -> tuple[paths.HostPaths, dict[str, str]]:
    """Host paths under ``base`` (the backup directory the backup user's) and an
    environment whose PATH finds the fake docker first."""
    if os.geteuid() != 0:
        pytest.fail("the host scripts run as root (setpriv, chown): run the tests as root")
    tools = base / "bin"
    tools.mkdir(parents=True)
    (tools / "docker").write_text(FAKE_DOCKER)
    (tools / "docker").chmod(0o755)
    backups = base / "storage/backup"
    backups.mkdir(parents=True)
    os.chown(backups, APP_UID, APP_GID)
    (base / "deploy").mkdir()
    where: paths.HostPaths = {
        "deploy_dir": str(base / "deploy"),
        "backup_dir": str(backups),
        "lock_file": str(base / "status/backup.lock"),
    }
    return where, {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}


def test_a_move_that_fails_after_others_says_the_files_moved_lack_the_sha256(
    tmp_path: Path,
) -> None:
    """The payload is moved, then the .meta cannot be (manifests/ is root's): the
    script exits on errexit, and says what it left, not only when a signal stops it."""
    where, environment = fake_host(tmp_path)
    set_id = "20261127_030000"
    backups = Path(where["backup_dir"])
    (backups / "manifests").mkdir(mode=0o755)  # root's: the backup user cannot write it
    failed = subprocess.run(
        ["bash", "-c", fetch_script(**where), "_", set_id],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=120,
    )
    assert failed.returncode != 0, failed.stdout + failed.stderr
    assert (backups / f"sqlite/sqlite_{set_id}.db.gz").exists()  # the moves had begun
    assert not (backups / f"manifests/set_{set_id}.sha256").exists()
    assert "the files moved so far are without the set's .sha256" in failed.stderr
    assert not list(backups.glob(STAGING_PREFIX + "*"))
    error = str(fetch_error(failed.returncode, failed.stderr, set_id))
    assert f"fetching set {set_id} failed (exit {failed.returncode})" in error
    assert "without the set's .sha256" in error
