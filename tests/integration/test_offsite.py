"""Off-host copies (backup.offsite) through the real maintenance script, compose
stack and backup image, against real servers on this machine's loopback:

* REST: ``rclone serve restic`` (Debian's rclone);
* S3: moto's standalone server (``moto_server``, the ``moto[server]`` package);
* SFTP: a real sshd (tests/integration/ssh_target.py, internal-sftp);
* local path: a directory (a 2 MiB tmpfs for the disk-full case).

Each test names its server. The repository is read back with the machine's own
restic (Debian's package), independently of the code under test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tracker_deployer import offsite, paths
from tracker_deployer.errors import ConfigError
from tracker_deployer.remote.offsite import listing_error, listing_script, parse_listing
from tracker_deployer.render.tree import offsite_check_script

from tests.helpers import parse, sample_data
from tests.integration.ports import free_port
from tests.integration.ssh_target import SshTarget, require_tools
from tests.integration.stack import (
    BACKUP_IMAGE,
    STANDIN_IMAGE,
    PingServer,
    Stack,
    containers_named,
    env_for_stack,
    require_images,
)
from tests.integration.test_backup_metrics import Metrics

pytestmark = pytest.mark.integration

PASSWORD = "p a'ss\"w$(x)`;#\\ ü"
STARTUP_SECONDS = 30.0


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], log: Path, host: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not listen on {port}:\n{log.read_text(errors='replace')}")


class Server:
    """A server process on 127.0.0.1 (or ``host``; its own process group), stopped on exit."""

    def __init__(self, command: list[str], port: int, log: Path, host: str = "127.0.0.1") -> None:
        self.command = command
        self.port = port
        self.log = log
        self.host = host
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for_port(self.port, self.process, self.log, self.host)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


def rclone_server(directory: Path, port: int, log: Path, host: str = "127.0.0.1") -> Server:
    """REST backend: `rclone serve restic` over a directory."""
    if shutil.which("rclone") is None:
        pytest.fail("rclone is missing: run scripts/setup.sh")
    directory.mkdir(parents=True, exist_ok=True)
    command = ["rclone", "serve", "restic", "--addr", f"{host}:{port}", str(directory)]
    return Server(command, port, log, host)


def container_hostname(machine_id: Path | None = None) -> str:
    """The offsite container's hostname on this machine (the host scripts' own lines),
    with ``machine_id`` bound over /etc/machine-id when given (a mount namespace)."""
    script = f'{offsite.hostname_export()}printf %s "${offsite.HOSTNAME_VARIABLE}"'
    argv = ["bash", "-c", script]
    if machine_id is not None:
        bind = f'mount --bind {machine_id} {offsite.MACHINE_ID_FILE} && exec bash -c "$0"'
        argv = ["unshare", "--mount", "bash", "-c", bind, script]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def held_port() -> tuple[socket.socket, int]:
    """A loopback port, held (bound, not listening: connections are refused) until the
    caller closes the socket just before its server starts: in between, another
    test's server could take a port that was merely free."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    return held, int(held.getsockname()[1])


@pytest.fixture
def rest_server(tmp_path: Path) -> Iterator[Server]:
    server = rclone_server(tmp_path / "rest-data", free_port(), tmp_path / "rclone.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[Server]:
    """S3 backend: moto's standalone server."""
    binary = Path(sys.executable).parent / "moto_server"
    if not binary.exists():
        pytest.fail("moto_server is missing: install the test dependency group (moto[server])")
    port = free_port()
    command = [str(binary), "-H", "127.0.0.1", "-p", str(port)]
    server = Server(command, port, tmp_path / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SshTarget]:
    """SFTP backend: a real sshd on 127.0.0.1 (internal-sftp)."""
    reason = require_tools()
    if reason:
        pytest.fail(reason)
    with SshTarget(tmp_path / "sshd", with_docker=False) as target:
        yield target


# --------------------------------------------------------------------------- helpers


def offsite_stack(base: Path, offsite: dict[str, Any], notify_url: str | None = None) -> Stack:
    require_images(STANDIN_IMAGE, BACKUP_IMAGE)
    data = env_for_stack(sample_data("manual-test-sqlite"))
    data["backup"]["offsite"] = offsite
    if notify_url:
        data["backup"]["notify_url"] = notify_url
    stack = Stack(parse(data), base).install()
    stack.up()
    return stack


def restic_host(
    repository: str, tmp: Path, env: dict[str, str] | None = None, password: str = PASSWORD
) -> dict[str, str]:
    """The environment for this machine's restic (the reference client)."""
    password_file = tmp / f"restic-password-{abs(hash(password))}"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    return {
        **os.environ,
        "RESTIC_REPOSITORY": repository,
        "RESTIC_PASSWORD_FILE": str(password_file),
        **(env or {}),
    }


def restic(environ: dict[str, str], *args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["restic", "--no-cache", *args],
        capture_output=True,
        text=True,
        env=environ,
        check=False,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"restic {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def snapshots(environ: dict[str, str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(restic(environ, "snapshots", "--json") or "[]")
    return found


def uploaded_sets(environ: dict[str, str]) -> list[str]:
    sets = []
    for snapshot in snapshots(environ):
        sets += [tag[len("set=") :] for tag in snapshot.get("tags", []) if tag.startswith("set=")]
    return sorted(sets)


def assert_local_sets_intact(stack: Stack) -> None:
    sets = stack.sets()
    assert sets
    for set_id in sets:
        check = subprocess.run(
            ["sha256sum", "--check", "--strict", f"manifests/set_{set_id}.sha256"],
            cwd=stack.backups,
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr


def assert_restored_copy_matches(stack: Stack, environ: dict[str, str], tmp: Path) -> None:
    """The newest snapshot restores to the set's files, byte for byte."""
    target = tmp / "restored"
    restic(environ, "restore", "latest", "--target", str(target))
    restored = target / "backups"
    [set_id] = [s for s in stack.sets() if s == max(stack.sets())]
    relatives = stack.set_files(set_id)
    assert len(relatives) == 4, relatives
    for relative in relatives:
        assert (restored / relative).read_bytes() == (stack.backups / relative).read_bytes()


def offsite_status(stack: Stack) -> dict[str, str]:
    text = (stack.status_dir / "last-offsite.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def assert_success_with_upload(stack: Stack, result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    status = stack.status()
    assert status["result"] == "success"
    assert status["offsite"] == "ok"
    assert status["outcome"] == "success"
    [set_id] = stack.sets()[-1:]
    upload = offsite_status(stack)
    assert upload["result"] == "success"
    assert set_id in upload["uploaded"].split()
    log = stack.log_file.read_text()
    assert PASSWORD not in log
    return set_id


# --------------------------------------------------------------------------- backends


@pytest.mark.parametrize("password", ["\ufeffsecret", " secret", "secret "])
def test_a_password_restic_would_alter_in_its_file_is_refused_by_the_config(
    tmp_path: Path, password: str
) -> None:
    """The real restic: a password file with this password makes a repository that
    the password itself does not open (restic strips a leading byte order mark and
    surrounding spaces from the file), so the config refuses it."""
    repository = str(tmp_path / "repo")
    restic(restic_host(repository, tmp_path, password=password), "init")
    opened = subprocess.run(
        ["restic", "--no-cache", "-r", repository, "cat", "config"],
        capture_output=True,
        text=True,
        env={**os.environ, "RESTIC_PASSWORD": password},
        check=False,
        timeout=60,
    )
    assert opened.returncode != 0, "restic took the password from its file as typed"
    data = sample_data("manual-test-sqlite")
    data["backup"]["offsite"] = {"repository": repository, "password": password}
    with pytest.raises(ConfigError) as error:
        parse(data)
    assert [issue.path for issue in error.value.issues] == ["backup.offsite.password"]
    assert "restic strips" in str(error.value)
    assert password not in str(error.value)


def test_rest_rclone_serve_restic_gets_each_set_tagged_with_env_and_set_id(
    tmp_path: Path, rest_server: Server
) -> None:
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    try:
        set_id = assert_success_with_upload(stack, stack.run_maintenance())
        environ = restic_host(repository, tmp_path)
        [snapshot] = snapshots(environ)
        assert snapshot["hostname"] == stack.env.name
        [uploader] = [tag for tag in snapshot["tags"] if tag.startswith("uploader=")]
        assert sorted(set(snapshot["tags"]) - {uploader}) == [
            f"env={stack.env.name}",
            f"set={set_id}",
        ]
        # the machine: its id (else the offsite container's hostname)
        id_file = Path(offsite.MACHINE_ID_FILE)
        if id_file.exists():
            assert uploader == f"uploader={id_file.read_text()[: offsite.MACHINE_ID_CHARACTERS]}"
        else:
            assert uploader.endswith(offsite.HOSTNAME_SUFFIX), uploader
        # dated at the set's time, so the keep policy's days are the sets' days
        assert snapshot["time"].startswith(
            f"{set_id[0:4]}-{set_id[4:6]}-{set_id[6:8]}T{set_id[9:11]}:{set_id[11:13]}"
        )
        assert_restored_copy_matches(stack, environ, tmp_path)
    finally:
        stack.cleanup()


def test_s3_moto_server_gets_the_set_and_forget_keeps_the_policy(
    tmp_path: Path, s3_server: Server
) -> None:
    repository = f"s3:http://127.0.0.1:{s3_server.port}/tracker-backups/prod"
    credentials = {"AWS_ACCESS_KEY_ID": "AKIATEST", "AWS_SECRET_ACCESS_KEY": "s3 'secret\"$x"}
    offsite = {
        "repository": repository,
        "password": PASSWORD,
        "env": credentials,
        "keep": {"last": 1},
    }
    stack = offsite_stack(tmp_path / "s", offsite)
    try:
        assert_success_with_upload(stack, stack.run_maintenance())
        time.sleep(1.1)  # a new set id
        second = assert_success_with_upload(stack, stack.run_maintenance())
        environ = restic_host(repository, tmp_path, credentials)
        # keep last=1: only the newest set is left in the repository
        assert uploaded_sets(environ) == [second]
        assert_restored_copy_matches(stack, environ, tmp_path)
        assert len(stack.sets()) == 2  # forget never touches the local sets
        assert credentials["AWS_SECRET_ACCESS_KEY"] not in stack.log_file.read_text()
    finally:
        stack.cleanup()


def test_sftp_sshd_gets_the_set_with_the_operators_key_and_known_hosts(
    tmp_path: Path, sftp_server: SshTarget
) -> None:
    remote_dir = "/run/tdhome/restic-repo"  # as the sshd's namespace sees it
    repository = f"sftp://tddeploy@127.0.0.1:{sftp_server.port}/{remote_dir}"
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    try:
        ssh_dir = stack.deploy_dir / str(paths.OFFSITE_SSH_DIR.relative_to(paths.DEPLOY_DIR))
        for name, source in (
            ("id", sftp_server.client_key),
            ("known_hosts", sftp_server.known_hosts),
        ):
            shutil.copyfile(source, ssh_dir / name)
            os.chown(ssh_dir / name, 0, 1000)
            (ssh_dir / name).chmod(0o640)
        set_id = assert_success_with_upload(stack, stack.run_maintenance())
        # read back through the sshd's files (the repository on the machine's disk)
        on_disk = sftp_server.host_path("/run") / "tdhome/restic-repo"
        environ = restic_host(str(on_disk), tmp_path)
        assert uploaded_sets(environ) == [set_id]
        assert_restored_copy_matches(stack, environ, tmp_path)
    finally:
        stack.cleanup()


# --------------------------------------------------------------------------- faults


def test_unreachable_repository_is_its_own_outcome_and_the_next_run_catches_up(
    tmp_path: Path,
) -> None:
    """REST (rclone serve restic), first down, then up on the same port. The port is
    held (bound, not listening: connections are refused) until rclone takes it:
    another test's server took it in between once (its 501s were no repository)."""
    held, port = held_port()
    repository = f"rest:http://127.0.0.1:{port}/tracker"
    with PingServer() as pings:
        offsite = {"repository": repository, "password": PASSWORD, "keep": {"last": 10}}
        stack = offsite_stack(tmp_path / "s", offsite, pings.url)
        try:
            failed = stack.run_maintenance()
            assert failed.returncode == 76, failed.stdout + failed.stderr
            status = stack.status()
            assert status["result"] == "failure"
            assert status["outcome"] == "local-ok-offsite-failed"
            assert status["offsite"] == "failed"
            assert status["offsite_exit_code"] == "20"
            assert "local ok, off-host failed" in status["reason"]
            assert "unreachable" in status["reason"]
            assert "/ping/fail" in pings.pings
            assert offsite_status(stack)["result"] == "failure"
            assert_local_sets_intact(stack)
            first = stack.sets()[0]

            held.close()
            server = rclone_server(tmp_path / "rest-data", port, tmp_path / "rclone.log").start()
            try:
                time.sleep(1.1)
                second = assert_success_with_upload(stack, stack.run_maintenance())
                assert offsite_status(stack)["uploaded"].split() == [first, second]
                environ = restic_host(repository, tmp_path)
                assert uploaded_sets(environ) == [first, second]
            finally:
                server.stop()
        finally:
            held.close()
            stack.cleanup()


@pytest.mark.parametrize("record", ["status", "status-of-before", "recovered"])
def test_a_repository_that_is_gone_is_not_created_anew_in_its_place(
    tmp_path: Path, record: str
) -> None:
    """Uploads to it succeeded, then the repository vanished (a bucket emptied, a
    disk not mounted): the upload fails (offsite.sh 27) and creates nothing there.
    Before, `restic init` made a new, empty repository and the run succeeded, the
    off-host history gone without a word. Removing last-offsite.env starts anew.
    ``record``: what says the repository existed: last-offsite.env; or as the version
    before the repository's record wrote it (a success, no repository=): its success
    counts as this repository's; or, before any upload here, the repository `inv
    recover` fetched from (offsite-repository)."""
    held, port = held_port()
    repository = f"rest:http://127.0.0.1:{port}/tracker"
    data = tmp_path / "rest-data/tracker"
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    held.close()
    server = rclone_server(data.parent, port, tmp_path / "rclone.log").start()
    try:
        assert_success_with_upload(stack, stack.run_maintenance())
        known = offsite.repository_id(stack.env)
        assert offsite_status(stack)["repository"] == known
        status_file = stack.status_dir / paths.OFFSITE_LAST_UPLOAD.name
        recovered = stack.status_dir / paths.OFFSITE_REPOSITORY_KNOWN.name
        succeeded = True
        if record == "status-of-before":
            lines = status_file.read_text().splitlines(keepends=True)
            status_file.write_text("".join(x for x in lines if not x.startswith("repository=")))
            known = ""
        elif record == "recovered":
            status_file.unlink()
            recovered.write_text(known + "\n")
            known, succeeded = "", False
        # Gone; a new server process (rclone caches the directory listings).
        server.stop()
        shutil.rmtree(data)
        server = rclone_server(data.parent, port, tmp_path / "rclone.log").start()

        time.sleep(1.1)
        gone = stack.run_maintenance()
        assert gone.returncode == 76, gone.stdout + gone.stderr
        upload = offsite_status(stack)
        assert upload["exit_code"] == str(offsite.OFFSITE_SH_EXIT["GONE"])
        assert "though uploads to it have succeeded before" in upload["reason"]
        assert (upload["repository"], upload["last_success_epoch"] != "") == (known, succeeded)
        assert not data.exists()
        assert_local_sets_intact(stack)

        status_file.unlink()
        recovered.unlink(missing_ok=True)
        time.sleep(1.1)
        newest = assert_success_with_upload(stack, stack.run_maintenance())
        assert offsite_status(stack)["uploaded"].split() == stack.sets()  # all, anew
        assert uploaded_sets(restic_host(repository, tmp_path)) == [newest]  # keep daily
    finally:
        server.stop()
        stack.cleanup()


def test_wrong_password_fails_clearly_and_keeps_the_local_sets(
    tmp_path: Path, rest_server: Server
) -> None:
    """REST (rclone serve restic) holding a repository made with another password."""
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    restic(restic_host(repository, tmp_path, password="the other password"), "init")
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    try:
        result = stack.run_maintenance()
        assert result.returncode == 76, result.stdout + result.stderr
        status = stack.status()
        assert status["offsite_exit_code"] == "21"
        assert "wrong repository password" in status["reason"]
        assert_local_sets_intact(stack)
    finally:
        stack.cleanup()


def hold_lock(
    environ: dict[str, str], locks: Path, hostname: str | None
) -> subprocess.Popen[bytes]:
    """This machine's restic holding a repository lock (`backup --stdin` keeps it
    while its input stays open), under ``hostname`` (its own UTS namespace) if given."""
    before = set(locks.iterdir()) if locks.is_dir() else set()
    command = ["restic", "--no-cache", "backup", "--stdin", "--stdin-filename", "held"]
    if hostname:
        command = ["unshare", "--uts", "sh", "-c", 'hostname "$1" && shift && exec "$@"', "-"]
        command += [
            hostname,
            "restic",
            "--no-cache",
            "backup",
            "--stdin",
            "--stdin-filename",
            "held",
        ]
    holder = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environ,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not (locks.is_dir() and set(locks.iterdir()) - before):
        assert holder.poll() is None, "the lock holder exited"
        assert time.monotonic() < deadline, "restic took no lock"
        time.sleep(0.2)
    return holder


def test_live_lock_is_left_alone_and_a_stale_lock_is_removed(
    tmp_path: Path, rest_server: Server
) -> None:
    """REST (rclone serve restic); the lock holders are this machine's restic.

    Live: a running restic of this machine (another hostname than the offsite
    container's: its lock counts as live until 30 minutes old), or of another
    machine of this host's short name. Stale: a restic
    under the container's own hostname (as an earlier upload from this host),
    killed with SIGKILL: its process is gone, so `restic unlock` removes it."""
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    environ = restic_host(repository, tmp_path)
    restic(environ, "init")
    locks = tmp_path / "rest-data/tracker/locks"
    offsite_hostname = container_hostname()
    holders: list[subprocess.Popen[bytes]] = []
    stack: Stack | None = None
    try:
        holders.append(hold_lock(environ, locks, None))
        stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
        live = stack.run_maintenance()
        assert live.returncode == 76, live.stdout + live.stderr
        status = stack.status()
        assert status["offsite_exit_code"] == "22"
        assert "still alive" in status["reason"]
        assert list(locks.iterdir()), "a live lock was removed"
        assert_local_sets_intact(stack)
        # the holder ends normally and removes its own lock
        assert holders[0].stdin is not None
        holders[0].stdin.close()
        holders[0].wait(timeout=60)

        # Live too: a restic of another machine with this host's short name (its own
        # machine id). Before, both machines had one lock hostname: the lock counted
        # as this host's dead one, and was removed.
        other_id = tmp_path / "other-machine-id"
        other_id.write_text("fedcba9876543210fedcba9876543210\n")
        assert container_hostname(other_id) != offsite_hostname
        holders.append(hold_lock(environ, locks, container_hostname(other_id)))
        time.sleep(1.1)  # set ids are by the second
        other = stack.run_maintenance()
        assert other.returncode == 76, other.stdout + other.stderr
        assert "still alive" in stack.status()["reason"]
        assert list(locks.iterdir()), "another machine's live lock was removed"
        assert holders[1].stdin is not None
        holders[1].stdin.close()
        holders[1].wait(timeout=60)

        holders.append(hold_lock(environ, locks, offsite_hostname))
        os.killpg(holders[2].pid, signal.SIGKILL)
        holders[2].wait(timeout=10)
        assert list(locks.iterdir()), "the killed restic left no lock"
        time.sleep(1.1)
        assert_success_with_upload(stack, stack.run_maintenance())
        assert "removing stale locks" in stack.log_file.read_text()
        assert not list(locks.iterdir())
    finally:
        for holder in holders:
            if holder.poll() is None:
                os.killpg(holder.pid, signal.SIGKILL)
                holder.wait(timeout=10)
            if holder.stdin is not None and not holder.stdin.closed:
                holder.stdin.close()
        if stack is not None:
            stack.cleanup()


def test_disk_full_repository_fails_clearly_and_keeps_the_local_sets(tmp_path: Path) -> None:
    """A local-path repository on a full 2 MiB tmpfs."""
    if os.geteuid() != 0:
        pytest.fail("the disk-full test mounts a tmpfs: run the tests as root")
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    stack: Stack | None = None
    try:
        repository = str(mount / "repo")
        restic(restic_host(repository, tmp_path), "init")
        subprocess.run(["chown", "-R", "1000:1000", repository], check=True)
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=4k"],
            capture_output=True,
            check=False,
        )
        stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
        result = stack.run_maintenance()
        assert result.returncode == 76, result.stdout + result.stderr
        status = stack.status()
        assert status["offsite_exit_code"] == "25"
        assert "no space left" in status["reason"]
        assert_local_sets_intact(stack)
    finally:
        if stack is not None:
            stack.cleanup()
        subprocess.run(["umount", str(mount)], check=False)


# --------------------------------------------------------------------------- check, metrics, quoting


def check_script(stack: Stack, base: Path) -> Path:
    """The scheduled check, rendered with the stack's scratch paths."""
    script = base / "tracker-backup-offsite-check.sh"
    script.write_bytes(
        offsite_check_script(
            stack.env,
            deploy_dir=str(stack.deploy_dir),
            log_file=str(stack.log_file),
            lock_file=str(stack.lock_file),
            status_dir=str(stack.status_dir),
            metrics_script=str(stack.metrics_script),
            lock_wait_seconds=5,
        )
    )
    script.chmod(0o755)
    return script


def run_check(script: Path, stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, env=stack.environ(), check=False
    )


def test_scheduled_check_records_its_result_and_the_metrics_show_it(
    tmp_path: Path, rest_server: Server
) -> None:
    """REST (rclone serve restic): a sound repository, then one with a damaged pack."""
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    offsite = {"repository": repository, "password": PASSWORD, "check_read_data": 100}
    stack = offsite_stack(tmp_path / "s", offsite)
    try:
        metrics = Metrics(stack, tmp_path / "metrics")
        shutil.copyfile(metrics.script, stack.metrics_script)
        stack.metrics_script.chmod(0o755)
        assert_success_with_upload(stack, stack.run_maintenance())
        script = check_script(stack, tmp_path)
        ok = run_check(script, stack)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        status = dict(
            line.split("=", 1)
            for line in (stack.status_dir / "last-offsite-check.env").read_text().splitlines()
        )
        assert status["result"] == "success"
        assert status["read_data_percent"] == "100"
        assert "--read-data" in stack.log_file.read_text()
        samples = metrics.write()
        assert samples["tracker_backup_offsite_last_upload_success"] == 1
        assert samples["tracker_backup_offsite_last_upload_exit_code"] == 0
        assert samples["tracker_backup_offsite_last_check_success"] == 1
        upload = offsite_status(stack)
        assert samples["tracker_backup_offsite_last_success_timestamp_seconds"] == float(
            upload["last_success_epoch"]
        )

        pack = next(p for p in (tmp_path / "rest-data/tracker/data").rglob("*") if p.is_file())
        with pack.open("r+b") as handle:
            handle.seek(40)
            handle.write(b"damage")
        damaged = run_check(script, stack, "--quiet")
        assert damaged.returncode == 24, damaged.stdout + damaged.stderr
        assert "offsite check FAILED (exit 24)" in damaged.stderr
        assert metrics.write()["tracker_backup_offsite_last_check_success"] == 0
        assert_local_sets_intact(stack)

        # A stale lock (an earlier restic of this host, killed) in front of the same
        # damage: the check removes it, checks again and still says what it found.
        environ = restic_host(repository, tmp_path)
        locks = tmp_path / "rest-data/tracker/locks"
        holder = hold_lock(environ, locks, container_hostname())
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        if holder.stdin is not None:
            holder.stdin.close()
        time.sleep(1.1)
        locked = run_check(script, stack, "--quiet")
        assert locked.returncode == 24, locked.stdout + locked.stderr
        assert "removing stale locks" in stack.log_file.read_text()
        assert not list(locks.iterdir())
    finally:
        stack.cleanup()


def terminate_while_the_server_is_paused(
    server: Server, argv: list[str], env: dict[str, str], container: str
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with the repository's server paused (SIGSTOP); once its container
    (``container``, with ``{pid}`` for the script's pid) has waited on the server for
    2 s, SIGTERM the script. Its exit and output; the server runs again afterwards,
    the container is removed whatever happened."""
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGSTOP)
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    name = container.format(pid=process.pid)
    try:
        deadline = time.monotonic() + 120
        while not containers_named(name):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"{name} never started"
            time.sleep(0.5)
        time.sleep(2)  # restic is inside, waiting on the paused server
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=90)
        assert not containers_named(name), f"{name} is still there"
        return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        os.killpg(server.process.pid, signal.SIGCONT)
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, check=False)


def test_a_check_stopped_by_a_signal_removes_its_container_records_it_and_frees_the_lock(
    tmp_path: Path, rest_server: Server
) -> None:
    """SIGTERM while restic waits on the repository (its server paused). Before, bash
    died at once: the check went on orphaned, holding the backup lock for up to the
    check's timeout, and no result was written (the last success stayed current)."""
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    try:
        assert_success_with_upload(stack, stack.run_maintenance())
        script = check_script(stack, tmp_path)
        stopped = terminate_while_the_server_is_paused(
            rest_server, [str(script)], stack.environ(), "tracker-backup-{pid}-offsite-check"
        )
        assert stopped.returncode == 128 + signal.SIGTERM, stopped.stdout + stopped.stderr
        status = dict(
            line.split("=", 1)
            for line in (stack.status_dir / "last-offsite-check.env").read_text().splitlines()
        )
        assert (status["result"], status["exit_code"]) == ("failure", "143")
        assert status["reason"] == "killed by signal 15"
        free = subprocess.run(["flock", "--nonblock", str(stack.lock_file), "true"], check=False)
        assert free.returncode == 0, "the backup lock is still held"
        assert_local_sets_intact(stack)
    finally:
        stack.cleanup()


def test_a_run_stopped_during_its_upload_records_the_upload_as_failed(
    tmp_path: Path, rest_server: Server
) -> None:
    """REST (rclone serve restic), paused while the second run uploads; SIGTERM then."""
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    try:
        assert_success_with_upload(stack, stack.run_maintenance())
        first = offsite_status(stack)
        assert first["result"] == "success"
        stopped = terminate_while_the_server_is_paused(
            rest_server, [str(stack.script)], stack.environ(), "tracker-backup-{pid}-offsite"
        )
        assert stopped.returncode == 128 + signal.SIGTERM, stopped.stdout + stopped.stderr
        status = offsite_status(stack)
        assert (status["result"], status["exit_code"]) == ("failure", "143")
        assert "the run ended during the upload: killed by signal 15" in status["reason"]
        assert status["last_success_epoch"] == first["last_success_epoch"]
        assert stack.status()["offsite"] == "failed"
        assert_local_sets_intact(stack)
    finally:
        stack.cleanup()


def test_an_offsite_container_a_killed_run_left_keeps_later_runs_off_the_repository(
    tmp_path: Path, rest_server: Server
) -> None:
    """Its restic lock would look stale to the next run's restic (same hostname, its
    PID in another process table) and be removed: the next runs leave the
    repository alone while it runs, and say why. A listing's container (no lock,
    compose's own name) does not count."""
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    sleeping = ("--entrypoint", "sleep", "offsite", "300")
    listing = orphan = ""
    try:
        listing = stack.compose(
            "--profile", "backup", "run", "-d", "--rm", "--no-deps", *sleeping
        ).stdout.strip()
        assert_success_with_upload(stack, stack.run_maintenance())
        orphan = f"tracker-backup-9{time.monotonic_ns() % 10**8}-offsite"
        stack.compose(
            "--profile", "backup", "run", "-d", "--rm", "--no-deps", "--name", orphan, *sleeping
        )
        busy = stack.run_maintenance()
        assert busy.returncode == 76, busy.stdout + busy.stderr
        status = stack.status()
        assert status["offsite_exit_code"] == "22"
        assert f"still runs ({orphan};" in status["reason"]
        assert offsite_status(stack)["result"] == "failure"
        checked = run_check(check_script(stack, tmp_path), stack, "--quiet")
        assert checked.returncode == 22, checked.stdout + checked.stderr
        assert "still runs" in checked.stderr
        subprocess.run(["docker", "rm", "--force", orphan], capture_output=True, check=True)
        assert_success_with_upload(stack, stack.run_maintenance())
        assert_local_sets_intact(stack)
    finally:
        for container in (listing, orphan):
            if container:
                subprocess.run(
                    ["docker", "rm", "--force", container], capture_output=True, check=False
                )
        stack.cleanup()


def test_compose_hands_the_credentials_to_the_container_exactly(tmp_path: Path) -> None:
    """The real consumer of offsite.env: Docker Compose's env_file (no server)."""
    require_images(STANDIN_IMAGE, BACKUP_IMAGE)
    hostile = "s3 'secret\"$x`id`\\ ü #"
    data = env_for_stack(sample_data("manual-test-sqlite"))
    data["backup"]["offsite"] = {
        "repository": "s3:http://127.0.0.1:9/bucket",
        "password": PASSWORD,
        "env": {"AWS_ACCESS_KEY_ID": "AKIATEST", "AWS_SECRET_ACCESS_KEY": hostile},
    }
    stack = Stack(parse(data), tmp_path / "s").install()
    try:
        result = stack.compose(
            "--profile",
            "backup",
            "run",
            "--rm",
            "--no-deps",
            "-T",
            "--entrypoint",
            "sh",
            "offsite",
            "-c",
            'printf "%s" "$AWS_SECRET_ACCESS_KEY"; printf "|"; cat "$RESTIC_PASSWORD_FILE"',
        )
        assert result.stdout == f"{hostile}|{PASSWORD}\n"
    finally:
        stack.cleanup()


def test_backups_offsite_lists_the_repositorys_sets_with_time_and_size(
    tmp_path: Path, rest_server: Server
) -> None:
    """REST (rclone serve restic): the host side of `inv backups --offsite` (its
    script run here as root, as over SSH) and the parser of its output."""
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    offsite = {"repository": repository, "password": PASSWORD, "keep": {"last": 5}}
    stack = offsite_stack(tmp_path / "s", offsite)
    try:
        first = assert_success_with_upload(stack, stack.run_maintenance())
        time.sleep(1.1)
        second = assert_success_with_upload(stack, stack.run_maintenance())
        result = subprocess.run(
            ["bash", "-c", listing_script(str(stack.deploy_dir))],
            capture_output=True,
            text=True,
            env=stack.environ(),
            check=False,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert PASSWORD not in result.stdout + result.stderr
        found = parse_listing(result.stdout, stack.env.name)
        assert [item.set_id for item in found] == [first, second]
        for item in found:
            files = sorted((stack.backups).glob(f"*/*_{item.set_id}.*"))
            assert item.size == sum(path.stat().st_size for path in files)
            assert item.time.strftime("%Y%m%d_%H%M%S") == item.set_id

        restic(
            restic_host(repository, tmp_path),
            "key",
            "passwd",
            "--new-password-file",
            str(restic_host(repository, tmp_path, password="another")["RESTIC_PASSWORD_FILE"]),
        )
        failed = subprocess.run(
            ["bash", "-c", listing_script(str(stack.deploy_dir))],
            capture_output=True,
            text=True,
            env=stack.environ(),
            check=False,
            timeout=300,
        )
        error = listing_error(failed.returncode, failed.stderr)
        assert "repository password is wrong" in str(error)
    finally:
        stack.cleanup()


def test_an_upload_that_times_out_leaves_no_container_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loopback listener that accepts and never answers: restic waits until the
    upload's time limit; the maintenance script then removes the container."""
    from tracker_deployer import offsite as offsite_module

    monkeypatch.setattr(offsite_module, "UPLOAD_TIMEOUT_SECONDS", 15)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    repository = f"rest:http://127.0.0.1:{port}/tracker"
    stack = offsite_stack(tmp_path / "s", {"repository": repository, "password": PASSWORD})
    try:
        failed = stack.run_maintenance()
        assert failed.returncode == 76, failed.stdout + failed.stderr
        assert offsite_status(stack)["exit_code"] in ("124", "137")
        assert "did not finish within 15 s" in offsite_status(stack)["reason"]
        left = subprocess.run(
            [
                "docker",
                "ps",
                "-a",
                "--format",
                "{{.Names}}",
                "--filter",
                f"label=com.docker.compose.project={stack.project}",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
        assert not [name for name in left if name.endswith("-offsite")], left
        assert_local_sets_intact(stack)
    finally:
        listener.close()
        stack.cleanup()
