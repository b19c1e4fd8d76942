"""`inv verify --offsite` and `inv fetch-backup --offsite`: the repository's copy
of a set, restored into scratch on the host, checked there (the verify drill) or
downloaded to this machine; the host's own sets are never read or written.

Real parts: the compose stack and backup image (tests/integration/stack.py),
uploads by the maintenance script to a REST repository served by ``rclone serve
restic`` on 127.0.0.1, and a real sshd on 127.0.0.1 (tests/integration/
ssh_target.py) through which the deployer's own code (offsite_fetch.verify,
offsite_fetch.download) runs the host scripts as root and downloads the set,
as `inv` does. The sshd session carries the stack's compose project name, and
the host paths are pointed at the stack's scratch deploy directory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict

import pytest
from tracker_deployer.errors import DeployError
from tracker_deployer.remote import offsite_fetch
from tracker_deployer.remote.backups import VerificationFailed
from tracker_deployer.remote.ssh import SshHost

from tests.helpers import parse, sample_data
from tests.integration.ssh_target import SshTarget, require_tools
from tests.integration.stack import (
    BACKUP_IMAGE,
    MARIADB_IMAGE,
    STANDIN_IMAGE,
    Stack,
    env_for_stack,
    require_images,
)
from tests.integration.test_offsite import (
    PASSWORD,
    Server,
    assert_success_with_upload,
    offsite_stack,
    rest_server,  # noqa: F401 (fixture)
    restic,
    restic_host,
)
from tests.integration.test_offsite_fetch import fake_host

pytestmark = pytest.mark.integration

MISSING_SET = "20000101_000000"


def backup_dir_state(stack: Stack) -> dict[str, str]:
    """Every regular file under the backup directory -> its sha256 (scratch included)."""
    state = {}
    for path in sorted(stack.backups.rglob("*")):
        if path.is_file() and not path.is_symlink():
            state[str(path.relative_to(stack.backups))] = hashlib.sha256(
                path.read_bytes()
            ).hexdigest()
    return state


def leftovers(stack: Stack) -> list[str]:
    return sorted(
        path.name
        for path in stack.backups.iterdir()
        if path.name.startswith(
            (offsite_fetch.VERIFY_SCRATCH_PREFIX, offsite_fetch.DOWNLOAD_PREFIX, ".drill-")
        )
    )


@contextmanager
def ssh_to(stack: Stack, base: Path) -> Iterator[SshHost]:
    """A real sshd as the stack's host: root login, the stack's compose project."""
    reason = require_tools()
    if reason:
        pytest.fail(reason)
    environment = {"COMPOSE_PROJECT_NAME": stack.project}
    with SshTarget(base, environment=environment) as target, SshHost(target.target()) as host:
        yield host


class HostPaths(TypedDict):
    deploy_dir: str
    backup_dir: str
    lock_file: str


def where(stack: Stack) -> HostPaths:
    """The host paths of the stack's scratch deploy directory."""
    return {
        "deploy_dir": str(stack.deploy_dir),
        "backup_dir": str(stack.backups),
        "lock_file": str(stack.lock_file),
    }


def damage_largest_pack(repository_dir: Path) -> Path:
    """Overwrite bytes in the middle of the repository's largest pack file."""
    packs = [path for path in (repository_dir / "data").rglob("*") if path.is_file()]
    assert packs, f"no pack files under {repository_dir}"
    pack = max(packs, key=lambda path: path.stat().st_size)
    data = bytearray(pack.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    return pack


def test_verify_offsite_drills_the_repositorys_copy_and_fails_clearly_when_it_is_damaged(
    tmp_path: Path,
    rest_server: Server,  # noqa: F811
) -> None:
    """REST (rclone serve restic) and a real sshd."""
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    try:
        set_id = assert_success_with_upload(stack, stack.run_maintenance())
        # The host's own copy is damaged: the repository's copy is what is checked,
        # and the host's stays exactly as it is.
        local_db = stack.database_file(set_id)
        local_db.write_bytes(local_db.read_bytes()[:-16] + b"\0" * 16)
        before = backup_dir_state(stack)
        lines: list[str] = []
        with ssh_to(stack, tmp_path / "sshd") as host:
            resolved = offsite_fetch.resolve(
                host, stack.env, "latest", deploy_dir=str(stack.deploy_dir)
            )
            assert resolved == set_id
            verified = offsite_fetch.verify(host, stack.env, resolved, lines.append, **where(stack))
            assert verified == set_id
            said = "\n".join(lines)
            assert f"the host holds set {set_id} too" in said
            assert "checksums and archives ok" in said
            assert f"set {set_id}: VERIFIED (checksums, archives, restore drill" in said
            assert PASSWORD not in said
            assert backup_dir_state(stack) == before
            assert leftovers(stack) == []

            # A set named while the clock was ahead: 'latest' refuses to guess.
            future = "20991231_000000"
            held = tmp_path / "held"
            held.write_text("x")
            restic(
                restic_host(repository, tmp_path),
                *("backup", "--quiet", "--host", stack.env.name, "--tag", f"env={stack.env.name}"),
                *("--tag", f"set={future}", "--time", "2099-12-31 00:00:00", str(held)),
            )
            with pytest.raises(DeployError) as ahead:
                offsite_fetch.resolve(host, stack.env, "latest", deploy_dir=str(stack.deploy_dir))
            assert f"the newest set {future} is named after the host's clock" in str(ahead.value)
            assert "--offsite" in str(ahead.value)

            # A set the repository does not hold.
            with pytest.raises(DeployError) as missing:
                offsite_fetch.verify(host, stack.env, MISSING_SET, lines.append, **where(stack))
            assert "holds no such set" in str(missing.value)
            assert missing.value.exit_code != 0
            assert backup_dir_state(stack) == before
            assert leftovers(stack) == []

            # A damaged pack in the repository.
            damage_largest_pack(tmp_path / "rest-data/tracker")
            lines.clear()
            with pytest.raises(VerificationFailed) as damaged:
                offsite_fetch.verify(host, stack.env, set_id, lines.append, **where(stack))
            message = str(damaged.value)
            assert f"the off-host repository's copy of set {set_id} FAILED" in message
            assert "local sets were not touched" in message
            assert "\n" not in message
            assert damaged.value.exit_code == 4
            assert PASSWORD not in message + "\n".join(lines)
            assert backup_dir_state(stack) == before
            assert leftovers(stack) == []
    finally:
        stack.cleanup()


def test_fetch_backup_offsite_lands_a_checksum_verified_set_and_leaves_the_host_as_it_was(
    tmp_path: Path,
    rest_server: Server,  # noqa: F811
) -> None:
    """REST (rclone serve restic) and a real sshd."""
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    try:
        set_id = assert_success_with_upload(stack, stack.run_maintenance())
        # Scratch copies of interrupted downloads: a day-old one goes, a recent one stays.
        stale = stack.backups / f"{offsite_fetch.DOWNLOAD_PREFIX}Stale1"
        recent = stack.backups / f"{offsite_fetch.DOWNLOAD_PREFIX}Recent"
        for scratch in (stale, recent):
            (scratch / "set").mkdir(parents=True)
        old = time.time() - 2 * 24 * 3600
        os.utime(stale, (old, old))
        (recent / "set").rmdir()
        before = {
            name: digest
            for name, digest in backup_dir_state(stack).items()
            if not name.startswith(offsite_fetch.DOWNLOAD_PREFIX)
        }
        destination = tmp_path / "fetched"
        lines: list[str] = []
        with ssh_to(stack, tmp_path / "sshd") as host:
            resolved = offsite_fetch.resolve(
                host, stack.env, "latest", deploy_dir=str(stack.deploy_dir)
            )
            fetched = offsite_fetch.download(
                host, stack.env, resolved, destination, lines.append, **where(stack)
            )
            assert fetched.set_id == set_id
            assert fetched.directory == (destination / set_id).resolve()
            assert len(fetched.downloaded) == 3
            check = subprocess.run(
                ["sha256sum", "--check", "--strict", f"manifests/set_{set_id}.sha256"],
                cwd=fetched.directory,
                capture_output=True,
                text=True,
                check=False,
            )
            assert check.returncode == 0, check.stdout + check.stderr
            names = stack.set_files(set_id)
            assert len(names) == 4, names
            for name in names:
                assert (fetched.directory / name).read_bytes() == (
                    stack.backups / name
                ).read_bytes(), name
            assert not list(fetched.directory.rglob("*.part"))
            assert PASSWORD not in "\n".join(lines)
            assert leftovers(stack) == [recent.name]
            assert backup_dir_state(stack) == before

            # Again: every file is already there with its checksum (resumable).
            again = offsite_fetch.download(
                host, stack.env, set_id, destination, lines.append, **where(stack)
            )
            assert again.downloaded == ()
            assert len(again.kept) == 3
            assert leftovers(stack) == [recent.name]

            with pytest.raises(DeployError) as missing:
                offsite_fetch.download(
                    host, stack.env, MISSING_SET, destination, lines.append, **where(stack)
                )
            assert "holds no such set" in str(missing.value)
            assert not (destination / MISSING_SET).exists()
            assert leftovers(stack) == [recent.name]
            assert backup_dir_state(stack) == before
    finally:
        stack.cleanup()


def test_verify_offsite_of_a_mysql_set_drills_it_in_a_throw_away_server(
    tmp_path: Path,
    rest_server: Server,  # noqa: F811
) -> None:
    """REST (rclone serve restic), a real sshd and MariaDB: the host lost the set,
    the repository's copy is restored into scratch and loaded into a throw-away
    database server, its row counts compared with the set's .meta."""
    require_images(STANDIN_IMAGE, MARIADB_IMAGE, BACKUP_IMAGE)
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    data = env_for_stack(sample_data("manual-test-mysql"))
    data["backup"]["offsite"] = {"repository": repository, "password": PASSWORD}
    stack = Stack(parse(data), tmp_path / "m").install()
    try:
        stack.up()
        set_id = assert_success_with_upload(stack, stack.run_maintenance())
        for path in stack.backups.glob(f"*/*_{set_id}.*"):
            path.unlink()
        before = backup_dir_state(stack)
        lines: list[str] = []
        with ssh_to(stack, tmp_path / "sshd") as host:
            offsite_fetch.verify(host, stack.env, set_id, lines.append, **where(stack))
        said = "\n".join(lines)
        assert "the host holds set" not in said
        assert "throw-away database server" in said
        assert f"set {set_id}: VERIFIED (checksums, archives, restore drill, row counts)" in said
        assert backup_dir_state(stack) == before
        assert set_id not in stack.sets()
        assert leftovers(stack) == []
    finally:
        stack.cleanup()


def test_verify_offsite_removes_the_scratch_copies_interrupted_verifies_left(
    tmp_path: Path,
) -> None:
    """A verify killed by SIGKILL leaves its scratch copy (a whole restored set): the
    next verify, of any set, removes it under the lock. A link planted under such a
    name is not followed."""
    where, environment = fake_host(tmp_path)
    backups = Path(where["backup_dir"])
    stale = backups / f"{offsite_fetch.VERIFY_SCRATCH_PREFIX}{MISSING_SET}"
    (stale / "set/sqlite").mkdir(parents=True)
    (stale / "set/sqlite/restored.db").write_bytes(b"x" * 4096)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("keep")
    planted = backups / f"{offsite_fetch.VERIFY_SCRATCH_PREFIX}20000102_000000"
    planted.symlink_to(elsewhere)
    script = tmp_path / "script/verify-offsite.sh"
    script.parent.mkdir()
    script.write_text(offsite_fetch.verify_script(**where))
    (script.parent / "verify.sh").write_text("exit 0\n")  # the drill passes
    set_id = "20261127_030000"
    verified = subprocess.run(
        ["bash", str(script), set_id],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.strip().splitlines()[-1] == f"verified={set_id}"
    assert not stale.exists()
    assert (elsewhere / "keep").read_text() == "keep"
    prefix = offsite_fetch.VERIFY_SCRATCH_PREFIX
    assert sorted(path.name for path in backups.glob(prefix + "*")) == [planted.name]
