"""push / install-cron / dry-run / host keys against a real sshd (and cron)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tracker_deployer import exit_codes, lifecycle, paths
from tracker_deployer.errors import RemoteError
from tracker_deployer.remote import configure, deploy, plan
from tracker_deployer.remote.ssh import SshHost, detached_command
from tracker_deployer.render.tree import operation_script

from tests.helpers import REPO_ROOT, parse, sample_data
from tests.integration.disks import fill, small_disk
from tests.integration.ssh_target import SUDO_USER, SshTarget, require_tools

pytestmark = pytest.mark.integration

INV = str(REPO_ROOT / ".venv/bin/inv")


def write_env(tmp_path: Path, data: dict[str, Any], name: str = "env.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def inv(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INV, *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=300
    )


def inv_with_state(state: Path, env: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`inv ARGS --env ENV` with a state directory of the test's own (host records)."""
    return subprocess.run(
        [INV, *args, "--env", str(env)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        env={**os.environ, "XDG_STATE_HOME": str(state)},
        timeout=300,
    )


def manifest_of(build: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((build / "manifest.json").read_text())
    return data


@contextlib.contextmanager
def own_build(data: dict[str, Any]) -> Iterator[Path]:
    """An environment name of this test's own, and its build directory (removed at
    the end): tests running side by side render the sample envs into build/NAME."""
    name = f"td-{uuid.uuid4().hex[:10]}"
    data["environment"] = {**data["environment"], "name": name}
    try:
        yield REPO_ROOT / "build" / name
    finally:
        shutil.rmtree(REPO_ROOT / "build" / name, ignore_errors=True)


def test_push_uploads_exactly_the_manifest_files_with_their_modes(
    target: SshTarget, tmp_path: Path
) -> None:
    data = target.env_data(sample_data("manual-test-mysql"))
    with own_build(data) as build:
        env = write_env(tmp_path, data)
        result = inv("push", "--env", str(env), "--known-hosts", str(target.known_hosts))
        assert result.returncode == 0, result.stderr
        manifest = manifest_of(build)
        rendered = {
            e["path"]: (build / e["path"].lstrip("/")).read_bytes() for e in manifest["files"]
        }
    # 9 files of the stack + the backup alert rules and the Backups dashboard
    assert "push: 11 created, 0 changed" in result.stdout

    pushed = [e for e in manifest["files"] if e["path"].startswith("/opt/torrust/")]
    assert len(pushed) == 11
    for entry in pushed:
        local = target.host_path(entry["path"])
        info = local.stat()
        assert f"{stat.S_IMODE(info.st_mode):04o}" == entry["mode"], entry["path"]
        assert (info.st_uid, info.st_gid) == (entry["uid"], entry["gid"]), entry["path"]
        assert local.read_bytes() == rendered[entry["path"]]
    # Nothing else landed in the deploy dir but the deployer's own record.
    on_target = sorted(
        "/" + str(p.relative_to(target.root))
        for p in (target.root / "opt/torrust").rglob("*")
        if p.is_file()
    )
    assert on_target == sorted(
        [e["path"] for e in pushed] + ["/opt/torrust/.tracker-deployer/deployed-files.txt"]
    )
    for entry in manifest["directories"]:
        info = target.host_path(entry["path"]).stat()
        assert f"{stat.S_IMODE(info.st_mode):04o}" == entry["mode"], entry["path"]
        assert (info.st_uid, info.st_gid) == (entry["uid"], entry["gid"]), entry["path"]


def test_second_push_uploads_nothing(target: SshTarget, tmp_path: Path) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite")))
    first = inv("push", "--env", str(env), "--known-hosts", str(target.known_hosts))
    assert first.returncode == 0, first.stderr
    compose = target.host_path("/opt/torrust/docker-compose.yml")
    before = compose.stat().st_mtime_ns
    time.sleep(0.05)
    second = inv("push", "--env", str(env), "--known-hosts", str(target.known_hosts))
    assert second.returncode == 0, second.stderr
    assert (
        "push: 0 created, 0 changed, 0 mode/owner fixed, 0 removed, 11 unchanged" in second.stdout
    )
    assert compose.stat().st_mtime_ns == before


def test_push_as_a_sudo_user_gives_the_same_result(target: SshTarget, tmp_path: Path) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite"), user=SUDO_USER))
    result = inv("push", "--env", str(env), "--known-hosts", str(target.known_hosts))
    assert result.returncode == 0, result.stderr + target.log.read_text()
    dotenv = target.host_path("/opt/torrust/.env").stat()
    assert (dotenv.st_uid, dotenv.st_gid, stat.S_IMODE(dotenv.st_mode)) == (0, 1000, 0o640)
    assert target.ssh("id -u", user=SUDO_USER).stdout.strip() == "4242"


def test_push_repairs_changed_content_and_modes_and_removes_dropped_files(
    target: SshTarget, tmp_path: Path
) -> None:
    # SQLite: a MySQL env's push refuses to change tracker.toml (a password is in it).
    data = target.env_data(sample_data("manual-test-sqlite"))
    data["tracker"]["http_api"].update({"domain": "api.example.com", "use_tls_proxy": True})  # type: ignore[index]
    data["https"] = {"admin_email": "admin@example.com"}
    env = write_env(tmp_path, data)
    assert inv("push", "--env", str(env), "--known-hosts", str(target.known_hosts)).returncode == 0
    caddyfile = target.host_path("/opt/torrust/storage/caddy/etc/Caddyfile")
    assert caddyfile.is_file()

    # Someone edits a file and loosens a mode on the host; https is dropped.
    toml = target.host_path("/opt/torrust/storage/tracker/etc/tracker.toml")
    toml.write_text("tampered\n")
    target.host_path("/opt/torrust/.env").chmod(0o644)
    del data["https"]
    data["tracker"]["http_api"] = {"bind_address": "0.0.0.0:1212", "admin_token": "MyAccessToken"}  # type: ignore[index]
    env = write_env(tmp_path, data)
    result = inv("push", "--env", str(env), "--known-hosts", str(target.known_hosts))
    assert result.returncode == 0, result.stderr
    assert "0 created, 3 changed, 1 mode/owner fixed, 1 removed" in result.stdout
    assert "tampered" not in toml.read_text()
    assert stat.S_IMODE(target.host_path("/opt/torrust/.env").stat().st_mode) == 0o640
    assert not caddyfile.exists()


def test_a_push_records_on_the_host_the_restart_the_next_deploy_reads(
    target: SshTarget, tmp_path: Path
) -> None:
    """`inv push` changes mounted configs without restarting anything: the record it
    leaves on the host is what the next deploy reads back (through sshd, as root)
    to restart the services that would otherwise keep running the old config."""
    data = target.env_data(sample_data("manual-test-sqlite"))
    env = write_env(tmp_path, data)
    assert inv("push", "--env", str(env), "--known-hosts", str(target.known_hosts)).returncode == 0
    record = target.host_path(str(plan.PENDING_RESTART_FILE))
    assert not record.exists()  # created, not changed: compose up starts them new
    with SshHost(target.target()) as host:
        assert deploy.pending_restart(host) == ()
    target.host_path(str(paths.TRACKER_CONFIG)).write_text("tampered\n")
    target.host_path(str(paths.PROMETHEUS_CONFIG)).write_text("tampered\n")
    result = inv("push", "--env", str(env), "--known-hosts", str(target.known_hosts))
    assert result.returncode == 0, result.stderr
    assert record.stat().st_uid == 0
    with SshHost(target.target()) as host:
        assert set(deploy.pending_restart(host)) == {"tracker", "prometheus"}


def test_a_mysql_deploys_push_marks_the_deploy_pushed_on_the_host(
    target: SshTarget, tmp_path: Path
) -> None:
    """A MySQL deploy's connection dropping after its push left the marker a time:
    after an hour, runs went on and restarted the tracker on a password the server
    lacked (a review). Its push itself, on the host, marks it "pushed:TIME" before such
    a file changes (runs skip while it is young, refuse after); `inv push` refuses to
    change such a file; a deploy that gets the passwords in removes the marker."""
    from tracker_deployer.config import parse_env_text
    from tracker_deployer.render import render
    from tracker_deployer.render.tree import DEPLOY_PUSHED

    data = target.env_data(sample_data("manual-test-mysql"))
    env = write_env(tmp_path, data)
    assert inv("push", "--env", str(env), "--known-hosts", str(target.known_hosts)).returncode == 0
    marker = target.host_path(str(paths.DEPLOY_MARKER))
    assert not marker.exists()
    toml = target.host_path(str(paths.TRACKER_CONFIG))
    toml.write_text("tampered\n")
    refused = inv("push", "--env", str(env), "--known-hosts", str(target.known_hosts))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"would change {paths.TRACKER_CONFIG}, which hold the MySQL passwords" in (
        refused.stderr
    )
    assert toml.read_text() == "tampered\n"  # nothing was changed
    parsed = parse_env_text(env.read_text(), source=str(env))
    with SshHost(target.target()) as host:
        assert deploy.mark_deploying(host) is False
        before = int(time.time())
        deploy.push(host, render(parsed), lambda _line: None, guard_passwords=True)
        written = marker.read_text()
        assert written.startswith(DEPLOY_PUSHED), written
        assert before - 5 <= int(written.removeprefix(DEPLOY_PUSHED)) <= time.time() + 5
        assert toml.read_text() != "tampered\n"
        assert deploy.mark_deploying(host) is True  # the next deploy sees it
        assert marker.read_text() == written  # and leaves it as it is
        # A deploy's push that changes no such file leaves its mark a time.
        deploy.unmark_deploying(host, lambda _line: None)
        assert deploy.mark_deploying(host) is False
        target.host_path(str(paths.PROMETHEUS_CONFIG)).write_text("tampered\n")
        deploy.push(host, render(parsed), lambda _line: None, guard_passwords=True)
        assert not marker.read_text().startswith(DEPLOY_PUSHED)


def test_a_full_disk_here_during_a_download_is_this_machines_error_not_the_hosts(
    target: SshTarget, tmp_path: Path
) -> None:
    """ENOSPC from the local file was reported as the host's failure ("downloading ...
    from HOST failed", exit 3, no hint), so fetch's own message (this machine's disk:
    free space, run again to resume) never showed."""
    big = target.host_path("/opt/big.bin")
    big.parent.mkdir(parents=True, exist_ok=True)
    big.write_bytes(os.urandom(256 * 1024))
    with small_disk(tmp_path / "full") as full, SshHost(target.target()) as host:
        with pytest.raises(OSError, match="No space left on device") as raised:
            host.download("/opt/big.bin", full / "big.bin")
        assert raised.value.errno == errno.ENOSPC
        host.download("/opt/big.bin", tmp_path / "big.bin")  # the host itself is fine
    assert (tmp_path / "big.bin").read_bytes() == big.read_bytes()


def test_fetch_backup_onto_a_full_disk_names_this_machines_disk(
    target: SshTarget, tmp_path: Path
) -> None:
    """It said the host had failed (exit 3, no hint); then "(None)" for the file."""
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite"), user=SUDO_USER))
    make_sqlite_set(target.host_path("/opt/torrust/storage/backup"), tmp_path / "w", "gzip")
    with small_disk(tmp_path / "full") as full:
        (full / "sets").mkdir()
        fill(full)
        result = inv(
            *("fetch-backup", "--env", str(env), "--known-hosts", str(target.known_hosts)),
            *("--to", str(full / "sets")),
        )
        left = [p for p in (full / "sets").rglob("*") if not p.is_dir()]
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: writing the set into {full / 'sets'} failed: No space left on device — " in (
        result.stderr
    )
    assert "(None)" not in result.stderr
    assert "check free space and permissions of --to" in result.stderr
    assert left == []  # no .part, no manifest: nothing that looks like a set


def test_install_cron_installs_valid_files_and_removes_them_when_backup_is_off(
    target: SshTarget, tmp_path: Path
) -> None:
    data = target.env_data(sample_data("manual-test-sqlite"))
    env = write_env(tmp_path, data)
    result = inv("install-cron", "--env", str(env), "--known-hosts", str(target.known_hosts))
    assert result.returncode == 0, result.stderr
    assert "install-cron: 7 created" in result.stdout
    expected = {
        "/usr/local/bin/maintenance-backup.sh": 0o700,
        "/etc/cron.d/tracker-backup": 0o644,
        "/etc/logrotate.d/tracker-backup": 0o644,
        "/usr/local/bin/tracker-backup-metrics.sh": 0o755,
        "/usr/local/bin/tracker-backup-verify.sh": 0o755,
        "/usr/local/bin/tracker-backup-drill.sh": 0o755,
        "/etc/cron.d/tracker-backup-drill": 0o644,
    }
    for path, mode in expected.items():
        info = target.host_path(path).stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, 0, 0), path
    cron = target.host_path("/etc/cron.d/tracker-backup").read_text()
    assert (
        "0 3 * * * root cd /opt/torrust && /usr/local/bin/maintenance-backup.sh --quiet\n" in cron
    )
    # bash accepts the installed script as a whole
    syntax = target.ssh("bash -n /usr/local/bin/maintenance-backup.sh")
    assert syntax.returncode == 0, syntax.stderr

    del data["backup"]
    env = write_env(tmp_path, data)
    result = inv("install-cron", "--env", str(env), "--known-hosts", str(target.known_hosts))
    assert result.returncode == 0, result.stderr
    assert "7 removed" in result.stdout
    for path in expected:
        assert not target.host_path(path).exists(), path


def test_dry_run_opens_no_connection_and_masks_secrets(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(3)
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def watch() -> None:
        with contextlib.suppress(OSError):
            accepted.append(listener.accept())

    watcher = threading.Thread(target=watch)
    watcher.start()
    data = sample_data("manual-test-mysql")
    data["ssh_credentials"].update(host="127.0.0.1", port=port, private_key_path="/nonexistent/key")
    # Nothing a plan prints holds a secret by design, so secrets equal to names the
    # plans print are the path where a secret would show: the masking must hide them.
    data["tracker"]["core"]["database"]["password"] = "backup-paths.txt"
    data["tracker"]["http_api"]["admin_token"] = "maintenance-backup.sh"
    env = write_env(tmp_path, data)
    masked = {
        "push": ["  ensure    /opt/torrust/storage/backup-etc/********  (0640 0:1000)"],
        "install-cron": ["  ensure    /usr/local/bin/********  (0700 0:0)"],
        "deploy": [
            "    ensure    /opt/torrust/storage/backup-etc/********  (0640 0:1000)",
            "    ensure    /usr/local/bin/********  (0700 0:0)",
        ],
    }
    for task, lines in masked.items():
        result = inv(task, "--env", str(env), "--dry-run")
        assert result.returncode == 0, result.stderr
        assert "no connection is opened" in result.stdout
        for secret in ("backup-paths.txt", "maintenance-backup.sh"):
            assert secret not in result.stdout + result.stderr, (task, secret)
        for line in lines:
            assert line in result.stdout.splitlines(), (task, line)
    watcher.join()
    listener.close()
    assert accepted == []
    assert "ensure    /opt/torrust/.env" in inv("deploy", "--env", str(env), "--dry-run").stdout


def test_unknown_host_key_is_refused_unless_accepted_explicitly(
    target: SshTarget, tmp_path: Path
) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite")))
    empty = tmp_path / "known_hosts_empty"
    refused = inv("push", "--env", str(env), "--known-hosts", str(empty))
    assert refused.returncode != 0
    assert "is not in" in refused.stderr
    assert "--accept-new-host-key" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not target.host_path("/opt/torrust").exists()

    accepted = inv("push", "--env", str(env), "--known-hosts", str(empty), "--accept-new-host-key")
    assert accepted.returncode == 0, accepted.stderr
    assert f"[127.0.0.1]:{target.port}" in empty.read_text()
    assert stat.S_IMODE(empty.stat().st_mode) == 0o600

    # A different key for the same host is refused, flag or not.
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = (tmp_path / "other_key.pub").read_text().split()[:2]
    forged = tmp_path / "known_hosts_forged"
    forged.write_text(f"[127.0.0.1]:{target.port} {kind} {key}\n")
    changed = inv("push", "--env", str(env), "--known-hosts", str(forged), "--accept-new-host-key")
    assert changed.returncode != 0
    assert "does not match" in changed.stderr


def test_missing_target_host_is_a_clear_error(tmp_path: Path) -> None:
    data = sample_data("manual-test-sqlite")
    env = write_env(tmp_path, data)
    result = inv("push", "--env", str(env))
    assert result.returncode == 1
    assert "no target host" in result.stderr
    assert "--host" in result.stderr


def test_backup_task_explains_when_backups_are_not_installed(
    target: SshTarget, tmp_path: Path
) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite-no-backup")))
    result = inv("backup", "--env", str(env), "--known-hosts", str(target.known_hosts))
    assert result.returncode == 3
    assert "maintenance-backup.sh is not installed" in result.stderr


def test_a_hosts_escape_sequences_never_reach_the_operators_terminal(
    target: SshTarget, tmp_path: Path
) -> None:
    """A hostile host's script prints what a terminal obeys (a title change, a screen
    clear, a carriage return, a bidi override, a C1 CSI) on stdout and stderr: `inv
    backup` shows each escaped, the lines around them whole, and the exit code. The
    stderr line comes while a stdout line is half-written: it must not land inside it."""
    (target.host_path("/opt") / "torrust").mkdir(exist_ok=True)
    fake = target.host_path(str(paths.MAINTENANCE_SCRIPT))
    fake.write_text(
        "#!/bin/bash\n"
        "printf 'run st'\n"
        "sleep 0.5\n"
        r"printf '\033[2J\302\233err\n' >&2"
        "\n"
        "sleep 0.5\n"
        "echo 'arted'\n"
        r"printf 'step \033]2;owned\007 done\rOK \342\200\256gpj.exe\n'"
        "\n"
        "echo 'run ended'\n"
        "exit 5\n"
    )
    fake.chmod(0o755)
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite")))
    result = inv("backup", "--env", str(env), "--known-hosts", str(target.known_hosts))
    assert result.returncode == 5, result.stderr
    assert result.stdout.splitlines() == [
        "\\x1b[2J\\x9berr",
        "run started",
        "step \\x1b]2;owned\\x07 done\\rOK \\u202egpj.exe",
        "run ended",
    ]
    for text in (result.stdout, result.stderr):
        assert not [c for c in text if not c.isprintable() and c != "\n"], repr(text)


@pytest.fixture
def cron_target(tmp_path: Path) -> Iterator[SshTarget]:
    reason = require_tools()
    if reason:
        pytest.fail(reason)
    if not Path("/usr/sbin/cron").exists():
        pytest.fail("/usr/sbin/cron is missing: run scripts/setup.sh")
    # No Docker daemon for cron's runs: the daemon would resolve the maintenance
    # script's /opt/torrust bind mounts on this machine, not in the namespace.
    with SshTarget(tmp_path / "target", with_cron=True, with_docker=False) as started:
        yield started


def test_installed_cron_file_is_fired_by_a_real_cron_daemon(
    cron_target: SshTarget, tmp_path: Path
) -> None:
    data = cron_target.env_data(sample_data("manual-test-sqlite"))
    data["backup"] = {"schedule": "* * * * *", "retention_days": 3}
    env = write_env(tmp_path, data)
    known = str(cron_target.known_hosts)
    assert inv("push", "--env", str(env), "--known-hosts", known).returncode == 0
    assert inv("install-cron", "--env", str(env), "--known-hosts", known).returncode == 0

    log = cron_target.host_path("/var/log/tracker-backup.log")
    deadline = time.monotonic() + 75  # cron fires at the next minute boundary
    while time.monotonic() < deadline:
        if log.exists() and "backup run started" in log.read_text():
            break
        time.sleep(1)
    else:
        pytest.fail(f"cron did not run the maintenance script within 75 s (log: {log})")
    # No compose stack runs on this target, so the run fails — visibly, with a reason.
    deadline = time.monotonic() + 60
    status = cron_target.host_path(f"{paths.BACKUP_STATUS_DIR}/last-run.env")
    while time.monotonic() < deadline and not status.exists():
        time.sleep(1)
    text = status.read_text()
    assert "result=failure" in text
    assert "backup run FAILED" in log.read_text()


def make_sqlite_set(backup_root: Path, work: Path, compression: str = "gzip") -> str:
    """A real backup set, written by backup.sh itself (no container needed)."""
    work.mkdir(parents=True, exist_ok=True)
    database = work / "tracker.db"
    subprocess.run(
        [
            "sqlite3",
            str(database),
            "CREATE TABLE torrents(id INTEGER PRIMARY KEY, info_hash TEXT, completed INTEGER);"
            "INSERT INTO torrents(info_hash, completed) VALUES ('a', 1), ('b', 2), ('c', 3);",
        ],
        check=True,
    )
    paths_file = work / "paths.txt"
    paths_file.write_text(f"{database}\n")
    config = work / "backup.conf"
    config.write_text(
        f"BACKUP_PATHS_FILE='{paths_file}'\nDB_TYPE='sqlite'\nDB_PATH='{database}'\n"
        f"BACKUP_COMPRESSION='{compression}'\n"
    )
    backup_root.mkdir(parents=True, exist_ok=True)
    # backup.sh refuses to run as root in a directory another user owns (uid 1000
    # on a host): made here as root in root's, then handed back to that user.
    owner = backup_root.stat()
    os.chown(backup_root, 0, 0)
    try:
        result = subprocess.run(
            ["bash", str(REPO_ROOT / "docker/backup/backup.sh"), "run"],
            env={**os.environ, "CONFIG_FILE": str(config), "BACKUP_ROOT": str(backup_root)},
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        subprocess.run(
            ["chown", "-R", f"{owner.st_uid}:{owner.st_gid}", str(backup_root)], check=True
        )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_backups_lists_sets_and_reports_a_failed_last_run(
    target: SshTarget, tmp_path: Path
) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite")))
    backups = target.host_path("/opt/torrust/storage/backup")
    set_id = make_sqlite_set(backups, tmp_path / "work")
    status = target.host_path(str(paths.BACKUP_STATUS_DIR))
    status.mkdir(mode=0o755)
    (status / "last-run.env").write_text(
        "result=failure\nexit_code=3\nstarted_at=2026-11-27T03:00:00Z\nduration_seconds=4\n"
        "downtime_seconds=1\nset=\nreason=the snapshot failed (backup container exit 3)\n"
    )
    (status / "last-failure.log").write_text("2026-11-27T03:00:02Z backup.sh: cannot connect\n")
    known = str(target.known_hosts)
    result = inv("backups", "--env", str(env), "--known-hosts", known)
    assert result.returncode == 1
    assert "the last backup run FAILED" in result.stderr
    stamp = f"{set_id[:4]}-{set_id[4:6]}-{set_id[6:8]} {set_id[9:11]}:{set_id[11:13]}:{set_id[13:]}"
    row = next(line for line in result.stdout.splitlines() if line.startswith(stamp))
    assert "sqlite+config" in row
    assert "complete" in row
    assert row.endswith(" ok")
    assert "last run: FAILURE at 2026-11-27T03:00:00Z (exit 3" in result.stdout
    assert "reason: the snapshot failed (backup container exit 3)" in result.stdout
    assert "backup.sh: cannot connect" in result.stdout

    as_json = inv("backups", "--env", str(env), "--known-hosts", known, "--json")
    data = json.loads(as_json.stdout)
    assert data["sets"][0]["set"] == set_id
    assert data["sets"][0]["rows"] == {"torrents": 3}
    assert data["last_run"]["result"] == "failure"


@pytest.mark.parametrize(("compression", "suffix"), [("gzip", "gz"), ("zstd", "zst")])
def test_fetch_backup_downloads_a_verified_set_and_resumes(
    target: SshTarget, tmp_path: Path, compression: str, suffix: str
) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite"), user=SUDO_USER))
    backups = target.host_path("/opt/torrust/storage/backup")
    set_id = make_sqlite_set(backups, tmp_path / "work", compression)
    # A stray file whose name only looks like a set's is not part of any set.
    (backups / f"sqlite/sqlite_{set_id}_copy.db.gz").write_bytes(b"stray")
    destination = tmp_path / "offsite"
    known = str(target.known_hosts)
    first = inv("fetch-backup", "--env", str(env), "--known-hosts", known, "--to", str(destination))
    assert first.returncode == 0, first.stderr
    assert "3 downloaded, 0 already there" in first.stdout
    local = destination / set_id
    check = subprocess.run(
        ["sha256sum", "-c", f"manifests/set_{set_id}.sha256"],
        cwd=local,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout
    assert (local / f"sqlite/sqlite_{set_id}.db.{suffix}").read_bytes() == (
        backups / f"sqlite/sqlite_{set_id}.db.{suffix}"
    ).read_bytes()

    (local / f"config/config_{set_id}.tar.gz").write_bytes(b"truncated")
    again = inv(
        "fetch-backup",
        "--env",
        str(env),
        "--known-hosts",
        known,
        "--to",
        str(destination),
        "--set",
        set_id,
    )
    assert again.returncode == 0, again.stderr
    assert "1 downloaded, 2 already there" in again.stdout
    assert not list(local.rglob("*.part"))

    # The host's set changes under the same id (its .meta), and the download of its
    # database file fails (the host's manifest gives it another sum): the local
    # manifest of before must not stay beside the new .meta, a mix that looked complete.
    meta = f"manifests/set_{set_id}.meta"
    (backups / meta).write_bytes((backups / meta).read_bytes() + b"note=changed\n")
    manifest = backups / f"manifests/set_{set_id}.sha256"
    lines = []
    for line in manifest.read_text().splitlines():
        _, name = line.split("  ", 1)
        digest = hashlib.sha256((backups / name).read_bytes()).hexdigest()
        lines.append(f"{'0' * 64 if name.startswith('sqlite/') else digest}  {name}")
    manifest.write_text("\n".join(lines) + "\n")
    changed = inv(
        "fetch-backup", "--env", str(env), "--known-hosts", known, "--to", str(destination)
    )
    assert changed.returncode == 4, changed.stdout + changed.stderr
    assert "does not match its checksum" in changed.stderr
    assert (local / meta).read_bytes() == (backups / meta).read_bytes()  # the new one
    assert not (local / f"manifests/set_{set_id}.sha256").exists()  # so: incomplete


# --------------------------------------------------------------------------- hostile hosts

# A compromised host: its `bash` prints a canned backup listing for the inventory
# script (a double of what a hostile host may answer) and runs everything else.
HOSTILE_BASH = """#!/bin/bash
if [[ -f "${1:-}" ]] && grep -q 'list the backup sets on this host' "$1"; then
  cat /opt/hostile-listing.txt
  exit 0
fi
exec /bin/bash "$@"
"""


def hostile_listing(target: SshTarget, lines: list[str]) -> None:
    target.host_path("/opt/hostile-listing.txt").write_text("\n".join(lines) + "\n")
    wrapper = target.host_path("/usr/local/bin/bash")
    wrapper.write_text(HOSTILE_BASH)
    wrapper.chmod(0o755)


def fetch_args(env: Path, target: SshTarget, destination: Path, *extra: str) -> list[str]:
    known = str(target.known_hosts)
    return [
        "fetch-backup",
        "--env",
        str(env),
        "--known-hosts",
        known,
        "--to",
        str(destination),
        *extra,
    ]


def test_hardening_01_fetch_refuses_a_manifest_naming_paths_outside_the_set(
    target: SshTarget, tmp_path: Path
) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite")))
    backups = target.host_path("/opt/torrust/storage/backup")
    set_id = make_sqlite_set(backups, tmp_path / "work")
    destination = tmp_path / "out"
    victim = tmp_path / "victim.txt"
    victim.write_text("the operator's file\n")
    # The host serves evil content for "../../victim.txt" (= /opt/torrust/victim.txt
    # there) and lists it, with the right sha256, in the set's manifest.
    evil = b"evil\n"
    target.host_path("/opt/torrust/victim.txt").write_bytes(evil)
    manifest = backups / f"manifests/set_{set_id}.sha256"
    original = manifest.read_text()
    digest = hashlib.sha256(evil).hexdigest()
    for hostile in ("../../victim.txt", str(victim)):
        manifest.write_text(original + f"{digest}  {hostile}\n")
        result = inv(*fetch_args(env, target, destination))
        assert result.returncode == 3, result.stderr
        assert f"the host's checksum manifest of set {set_id} is not one backup.sh writes" in (
            result.stderr
        )
        assert f"line 4 is '{digest}  {hostile}'" in result.stderr
        assert "nothing was fetched" in result.stderr
        assert "Traceback" not in result.stderr
        assert victim.read_text() == "the operator's file\n"
        assert not destination.exists()


def test_hardening_01_fetch_latest_refuses_a_hostile_set_id(
    target: SshTarget, tmp_path: Path
) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite")))
    destination = tmp_path / "a" / "out"
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o755)
    hostile = "../../victim"
    hostile_listing(
        target,
        [
            f"FILE\t{hostile}\tsqlite\tsqlite/sqlite_{hostile}.db.gz\t10\t1764039600",
            f"SET\t{hostile}\tcomplete\tunchecked",
            "NOW\t1764140000",
        ],
    )
    result = inv(*fetch_args(env, target, destination, "--set", "latest"))
    assert result.returncode == 3, result.stderr
    assert "the host's backup listing has a line this tool never writes (line 1:" in result.stderr
    assert "Traceback" not in result.stderr
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755
    assert not (tmp_path / "a").exists()


def test_hardening_01_fetch_refuses_a_file_larger_than_the_host_listed(
    target: SshTarget, tmp_path: Path
) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite")))
    backups = target.host_path("/opt/torrust/storage/backup")
    set_id = make_sqlite_set(backups, tmp_path / "work")
    listed = [f"sqlite/sqlite_{set_id}.db.gz", f"config/config_{set_id}.tar.gz"]
    listed += [f"manifests/set_{set_id}.meta", f"manifests/set_{set_id}.sha256"]
    hostile_listing(
        target,
        [f"FILE\t{set_id}\t{name.split('/')[0]}\t{name}\t1\t1764039600" for name in listed]
        + [f"SET\t{set_id}\tcomplete\tunchecked"],
    )
    destination = tmp_path / "out"
    result = inv(*fetch_args(env, target, destination))
    assert result.returncode == 3, result.stderr
    assert "the host sent more than 1 bytes for" in result.stderr
    assert "Traceback" not in result.stderr
    left = sorted(str(p.relative_to(destination)) for p in destination.rglob("*") if p.is_file())
    assert left == []


@pytest.mark.parametrize("link", ["sqlite", "config/config_{set_id}.tar.gz", "{set_id}"])
def test_hardening_01_fetch_never_writes_through_a_symlink_in_the_destination(
    target: SshTarget, tmp_path: Path, link: str
) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite")))
    backups = target.host_path("/opt/torrust/storage/backup")
    set_id = make_sqlite_set(backups, tmp_path / "work")
    destination = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("keep\n")
    relative = link.format(set_id=set_id)
    where = destination / relative if relative == set_id else destination / set_id / relative
    where.parent.mkdir(parents=True, exist_ok=True)
    where.symlink_to(elsewhere if relative.count("/") == 0 else elsewhere / "keep")
    result = inv(*fetch_args(env, target, destination))
    assert result.returncode == 1, result.stderr
    assert f"{where} is a symbolic link; refusing to write through it" in result.stderr
    assert "Traceback" not in result.stderr
    assert [p.name for p in elsewhere.iterdir()] == ["keep"]
    assert (elsewhere / "keep").read_text() == "keep\n"
    assert not (destination / set_id / f"manifests/set_{set_id}.sha256").exists()


# --------------------------------------------------------------------------- known_hosts


def _public_key(path: Path) -> str:
    """'TYPE BASE64' of a fresh ed25519 key (another host's, or a CA's)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    kind, key = Path(f"{path}.pub").read_text().split()[:2]
    return f"{kind} {key}"


def _sk_key() -> str:
    blob = b"\x00\x00\x00\x1ask-ssh-ed25519@openssh.com" + b"\x00\x00\x00\x20" + bytes(32)
    blob += b"\x00\x00\x00\x04ssh:"
    return "sk-ssh-ed25519@openssh.com " + base64.b64encode(blob).decode()


def _operator_known_hosts(tmp_path: Path, *, markers: bool = True) -> str:
    """A known_hosts as an operator's may look: comments, markers, sk- and hashed keys."""
    ca = _public_key(tmp_path / "ca_key")
    other = _public_key(tmp_path / "other_host_key")
    return (
        "# my hosts\n"
        + (f"@cert-authority *.example.com {ca}\n" if markers else "")
        + f"security-key.example.org {_sk_key()}\n"
        + f"|1|c2FsdHNhbHRzYWx0c2FsdHNhbHQ=|aGFzaGhhc2hoYXNoaGFzaGhhc2g= {other}\n"
        + (f"@revoked old.example.net {other}\n" if markers else "")
        + "\n"
        + "   # indented comment, no newline at the end"
    )


def test_hardening_11_known_hosts_with_marker_lines_is_read_without_a_traceback(
    target: SshTarget, tmp_path: Path
) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite")))
    known = tmp_path / "known_hosts"
    known.write_text(_operator_known_hosts(tmp_path) + "\n" + target.known_hosts.read_text())
    before = known.read_bytes()
    result = inv("push", "--env", str(env), "--known-hosts", str(known))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert known.read_bytes() == before


def test_hardening_11_a_revoked_host_key_is_refused(target: SshTarget, tmp_path: Path) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite")))
    host_key = " ".join((tmp_path / "target/ssh_host_ed25519_key.pub").read_text().split()[:2])
    for listed, extra in (
        (True, []),  # listed as a known host AND revoked: revoked wins
        (False, ["--accept-new-host-key"]),  # never seen, accepting new keys: still refused
    ):
        known = tmp_path / f"known_hosts_{listed}"
        text = f"@revoked * {host_key}\n"
        if listed:
            text += target.known_hosts.read_text()
        known.write_text(text)
        result = inv("push", "--env", str(env), "--known-hosts", str(known), *extra)
        assert result.returncode == 3, result.stderr
        assert f"the host key of 127.0.0.1:{target.port} is marked @revoked in {known}" in (
            result.stderr
        )
        assert "Traceback" not in result.stderr
        assert known.read_text() == text
    assert not target.host_path("/opt/torrust").exists()


@pytest.mark.parametrize("markers", [False, True])
def test_hardening_11_accept_new_host_key_appends_one_line_and_keeps_the_rest(
    target: SshTarget, tmp_path: Path, markers: bool
) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite")))
    known = tmp_path / "known_hosts"
    known.write_text(_operator_known_hosts(tmp_path, markers=markers))
    known.chmod(0o644)
    before = known.read_bytes()
    result = inv("push", "--env", str(env), "--known-hosts", str(known), "--accept-new-host-key")
    assert result.returncode == 0, result.stderr
    kind, key = (tmp_path / "target/ssh_host_ed25519_key.pub").read_text().split()[:2]
    assert known.read_bytes() == before + f"\n[127.0.0.1]:{target.port} {kind} {key}\n".encode()
    assert stat.S_IMODE(known.stat().st_mode) == 0o644
    # The recorded line is one OpenSSH reads: the system ssh client now trusts the host.
    check = subprocess.run(
        ["ssh-keygen", "-F", f"[127.0.0.1]:{target.port}", "-f", str(known)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    again = inv("push", "--env", str(env), "--known-hosts", str(known))
    assert again.returncode == 0, again.stderr


def test_hardening_11_a_hashed_known_hosts_line_still_vouches_for_the_host(
    target: SshTarget, tmp_path: Path
) -> None:
    env = write_env(tmp_path, target.env_data(sample_data("manual-test-sqlite")))
    known = tmp_path / "known_hosts"
    known.write_text(target.known_hosts.read_text())
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
    assert known.read_text().startswith("|1|")
    result = inv("push", "--env", str(env), "--known-hosts", str(known))
    assert result.returncode == 0, result.stderr


def test_hardening_14_push_updates_a_changed_secret_file_without_manifest_hashes(
    target: SshTarget, tmp_path: Path
) -> None:
    """Deploy diffing compares the host's files with the rendered bytes, not with the
    manifest, so leaving secret hashes out of manifest.json does not blind it."""
    data = target.env_data(sample_data("manual-test-sqlite"))
    with own_build(data) as build:
        env = write_env(tmp_path, data)
        known = str(target.known_hosts)
        assert inv("push", "--env", str(env), "--known-hosts", known).returncode == 0
        data["tracker"]["http_api"]["admin_token"] = "a-new-token-8d1e"  # type: ignore[index]
        env = write_env(tmp_path, data)
        result = inv("push", "--env", str(env), "--known-hosts", known)
        assert result.returncode == 0, result.stderr
        manifest = manifest_of(build)
    assert "0 created, 2 changed" in result.stdout  # tracker.toml and prometheus.yml
    assert "update    /opt/torrust/storage/tracker/etc/tracker.toml" in result.stdout
    toml = target.host_path("/opt/torrust/storage/tracker/etc/tracker.toml")
    assert "a-new-token-8d1e" in toml.read_text()
    entry = next(
        e for e in manifest["files"] if e["path"] == "/opt/torrust/storage/tracker/etc/tracker.toml"
    )
    assert entry["secret"] is True
    assert "sha256" not in entry


def test_destroy_of_an_existing_host_refuses_while_sets_exist_then_removes_our_files(
    target: SshTarget, tmp_path: Path
) -> None:
    data = target.env_data(sample_data("manual-test-sqlite"))
    data["provider"] = {"provider": "existing"}
    data["ssh_credentials"]["known_hosts_path"] = str(target.known_hosts)  # type: ignore[index]
    env = write_env(tmp_path, data)
    isolated = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}  # forget() is ours

    def destroy(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [INV, "destroy", "--env", str(env), *flags],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO_ROOT,
            env=isolated,
            timeout=300,
        )

    assert inv("push", "--env", str(env)).returncode == 0
    assert inv("install-cron", "--env", str(env)).returncode == 0
    # No compose project here: `down` would reach this machine's Docker daemon.
    target.host_path("/opt/torrust/docker-compose.yml").unlink()
    set_id = make_sqlite_set(target.host_path("/opt/torrust/storage/backup"), tmp_path / "work")
    unrelated = target.host_path("/etc/cron.d") / "someone-elses"
    unrelated.write_text("# not ours\n")
    # What install-cron puts there with the drill and backup.offsite on (this env has
    # neither): destroy removes every cron file the deployer installs.
    for path in plan.CRON_FILES:
        installed = target.host_path(str(path))
        if not installed.exists():
            installed.write_text("# installed by install-cron\n")

    status = subprocess.run(
        [INV, "status", "--env", str(env), "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        env=isolated,
        timeout=300,
    )
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["provider"] == "existing"
    assert report["host"] == f"127.0.0.1:{target.port}"
    assert report["deployed"] is False
    assert report["backup_sets"] == 1

    refused = destroy()
    assert refused.returncode == 1, refused.stderr
    assert f"1 backup set(s) ({set_id})" in refused.stderr
    assert "inv fetch-backup --env manual-test-sqlite --set SET --to DIR" in refused.stderr
    assert target.host_path("/opt/torrust/storage/backup").is_dir()

    done = destroy("--delete-backups")
    assert done.returncode == 0, done.stderr
    assert not target.host_path("/opt/torrust").exists()
    assert not target.host_path("/etc/cron.d/tracker-backup").exists()
    assert not target.host_path("/usr/local/bin/maintenance-backup.sh").exists()
    for path in plan.CRON_FILES:
        assert not target.host_path(str(path)).exists(), path
    assert unrelated.read_text() == "# not ours\n"


def test_destroy_refuses_a_set_a_run_completed_after_its_check(
    target: SshTarget, tmp_path: Path
) -> None:
    """destroy checked the sets, then removed /opt/torrust without the backup lock
    and without a second look: a run that completed a set in between lost it (a
    review). The host's part now runs under the lock and refuses a set beyond the
    ones the check found elsewhere; nothing is removed then."""
    backups = target.host_path("/opt/torrust/storage/backup")
    checked = make_sqlite_set(backups, tmp_path / "w1")
    time.sleep(1.1)  # set ids are by the second
    completed_after = make_sqlite_set(backups, tmp_path / "w2")
    cron = target.host_path(str(plan.CRON_FILES[0]))
    cron.write_text("# installed by install-cron\n")

    script = lifecycle.retire_script([checked], remove_stack=True)
    refused = target.ssh(deploy.under_backup_lock(script))
    assert refused.returncode == exit_codes.UNSAFE, refused.stderr
    assert f"set {completed_after} was completed after the check" in refused.stderr
    assert (backups / "manifests").is_dir()
    assert cron.exists()

    both = lifecycle.retire_script([checked, completed_after], remove_stack=True)
    done = target.ssh(deploy.under_backup_lock(both))
    assert done.returncode == 0, done.stderr
    assert not target.host_path("/opt/torrust").exists()
    assert not cron.exists()


def test_configure_lets_in_the_port_sshd_sees_behind_a_port_forward(
    target: SshTarget, tmp_path: Path
) -> None:
    """A host behind a port forward (public 2222 -> sshd's 22): the firewall's rules
    let in the port dialled only, and nftables sees sshd's: every later command was
    locked out (a review). Here a relay on another loopback port stands for the
    forward; configure reads sshd's port from the session (SSH_CONNECTION)."""
    relay = socket.socket()
    relay.bind(("127.0.0.1", 0))
    relay.listen()
    dialled = relay.getsockname()[1]

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def forward() -> None:
        with contextlib.suppress(OSError):
            client, _ = relay.accept()
            with client, socket.create_connection(("127.0.0.1", target.port), 10) as upstream:
                upstream.settimeout(None)
                back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
                back.start()
                pump(client, upstream)
                back.join(10)

    forwarding = threading.Thread(target=forward, daemon=True)
    forwarding.start()
    known = target.known_hosts.read_text()
    target.known_hosts.write_text(known + known.replace(f"]:{target.port} ", f"]:{dialled} "))
    try:
        through = dataclasses.replace(target.target(), port=dialled)
        with SshHost(through) as host:
            assert configure.sshd_port(host) == target.port
    finally:
        relay.close()
        forwarding.join(10)
    env = parse(sample_data("manual-test-sqlite"))
    rules = configure.firewall_rules(env, [dialled, target.port])
    assert (
        f"tcp dport {{ {', '.join(str(p) for p in sorted({22, dialled, target.port}))} }}" in rules
    )


def test_a_host_script_goes_on_when_its_ssh_session_drops(target: SshTarget) -> None:
    """run_script's command through the real sshd; the client is killed after the
    first line. The script's later lines find no reader, yet it runs to its end
    (without run-detached.sh the next line's SIGPIPE ended it there)."""
    staging = target.host_path("/opt") / "td-drop"
    staging.mkdir()
    (staging / "run-detached.sh").write_text(operation_script("run-detached"))
    (staging / "script.sh").write_text(
        'echo first\nsleep 1\nfor i in $(seq 1 500); do echo "line $i"; echo "err $i" >&2; done\n'
        'echo "$1" > /opt/td-done\n'
    )
    client = subprocess.Popen(
        [*target.ssh_argv(), detached_command("/opt/td-drop", "all lines written")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert client.stdout is not None
    assert client.stdout.readline() == "first\n"
    client.kill()
    client.wait(timeout=10)
    client.stdout.close()
    done = target.host_path("/opt") / "td-done"
    deadline = time.monotonic() + 20
    while staging.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert done.read_text() == "all lines written\n"
    assert not staging.exists()  # run-detached.sh removed the upload once the script had ended


def test_deploy_never_starts_the_tracker_on_a_partly_restored_database(
    target: SshTarget,
) -> None:
    """A restore cut off in its MySQL load leaves its marker (written before the load):
    `up` of every service (deploy; recover's last phase) is refused under the lock,
    before compose runs. Without the check it started the tracker on part of a set."""
    marker = target.host_path(str(paths.RESTORE_INCOMPLETE_MARKER))
    marker.parent.mkdir(parents=True)
    marker.write_text("set=20261101_030000\n")
    lines: list[str] = []
    with SshHost(target.target()) as host, pytest.raises(RemoteError) as refused:
        deploy.compose_up(host, ("tracker",), lines.append, env_name="prod")
    assert "a restore left the MySQL database on 127.0.0.1 partly restored" in str(refused.value)
    assert "inv restore --env prod --set SET --yes" in (refused.value.hint or "")
    assert not [line for line in lines if "docker" in line.lower() or "restarting" in line]
    assert marker.exists()


def test_deploy_starts_nothing_on_a_host_an_unfinished_recover_holds(target: SshTarget) -> None:
    """Deploy checked `inv recover`'s marker once, at its start: a recover begun on the
    new host while the deploy configured it had its tracker started on an empty
    database, and backed up. `up` of every service now checks it under the lock."""
    marker = target.host_path(str(paths.RECOVER_MARKER))
    marker.parent.mkdir(parents=True)
    marker.touch()
    lines: list[str] = []
    with SshHost(target.target()) as host, pytest.raises(RemoteError) as refused:
        deploy.compose_up(host, (), lines.append, env_name="prod")
    assert "holds an unfinished `inv recover`" in str(refused.value)
    assert "`docker compose up` was not run" in str(refused.value)
    assert "inv recover --env prod" in (refused.value.hint or "")
    assert not [line for line in lines if "docker" in line.lower() or "restarting" in line]
    assert marker.exists()


def test_deploy_marks_the_host_for_backup_runs_under_the_lock_and_unmarks_it(
    target: SshTarget,
) -> None:
    """The marker scheduled runs skip on (test_maintenance.py): the time it was
    written, in root's own directories (made so, as the push makes them), never
    through a link, and replacing whatever stands at its name unopened."""
    marker = target.host_path(str(paths.DEPLOY_MARKER))
    deploy_dir = target.host_path(str(paths.DEPLOY_DIR))
    lines: list[str] = []
    with SshHost(target.target()) as host:
        deploy_dir.mkdir(parents=True)
        os.chown(deploy_dir, 1000, 1000)  # a host prepared by hand: the first user's
        marker.parent.mkdir()
        marker.parent.chmod(0o777)
        os.mkfifo(marker)  # planted: writing to it would wait forever
        before = int(time.time())
        assert deploy.mark_deploying(host) is False
        assert before - 5 <= int(marker.read_text()) <= time.time() + 5
        assert (marker.stat().st_uid, stat.S_IMODE(marker.stat().st_mode)) == (0, 0o644)
        for directory in (deploy_dir, marker.parent):
            info = directory.stat()
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o755)
        deploy.unmark_deploying(host, lines.append)
        assert not marker.exists()
        deploy.unmark_deploying(host, lines.append, failed=True)
        assert marker.read_text() == "failed\n"
        # a retry keeps it so until the server has the passwords (then unmark)
        assert deploy.mark_deploying(host) is True
        assert marker.read_text() == "failed\n"

        elsewhere = target.host_path("/opt/elsewhere")
        elsewhere.mkdir()
        for child in marker.parent.iterdir():
            child.unlink()
        marker.parent.rmdir()
        marker.parent.symlink_to(elsewhere)
        with pytest.raises(RemoteError) as refused:
            deploy.mark_deploying(host)
    assert f"cannot write {paths.DEPLOY_MARKER}" in str(refused.value)
    assert "is a link; refusing to write deploy-in-progress through it" in str(refused.value)
    assert list(elsewhere.iterdir()) == []
    assert lines == []


def _sshd_sessions(target: SshTarget) -> list[int]:
    """The per-connection sshd processes (and what they run): the listener's descendants."""
    assert target.process is not None
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat_file.read_text().rpartition(")")[2].split()
            children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    found, todo = [], [target.process.pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_host_that_stops_answering_fails_the_command_within_the_alive_bound(
    target: SshTarget,
) -> None:
    """OpenSSH's ServerAliveInterval, here: the host's sshd is frozen (SIGSTOP; its
    kernel still acknowledges TCP, as a hung host's does) while a command runs. The
    command fails naming the silence, within interval * count (+ one interval); it
    would otherwise wait for its own timeout (60 s here, for ever without one)."""
    quick = dataclasses.replace(target.target(), alive_interval=0.5, alive_count=3)
    with SshHost(quick) as host:
        assert host.run("true").ok
        frozen: list[int] = []

        def freeze() -> None:
            time.sleep(1.0)
            frozen.extend(_sshd_sessions(target))
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)

        freezer = threading.Thread(target=freeze)
        started = time.monotonic()
        freezer.start()
        try:
            with pytest.raises(RemoteError) as raised:
                host.run("sleep 60", timeout=60)
        finally:
            freezer.join()
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        took = time.monotonic() - started
        assert frozen, "no sshd session process was found to freeze"
        assert "stopped answering over SSH for 1.5 s" in raised.value.message
        assert took < 1.0 + 0.5 + 1.5 + 5.0
        with pytest.raises(RemoteError, match="stopped answering"):
            host.run("true")  # no new connection behind the operator's back


def test_a_quiet_command_longer_than_the_alive_bound_is_not_given_up(target: SshTarget) -> None:
    """The probes ask the server, not the command: a command silent for four times the
    bound ends normally, with its own exit code."""
    quick = dataclasses.replace(target.target(), alive_interval=0.3, alive_count=2)
    with SshHost(quick) as host:
        result = host.run("sleep 2.5; exit 3")
    assert result.exit_code == 3


def test_a_host_that_stops_answering_between_commands_fails_the_next_one_cleanly(
    target: SshTarget,
) -> None:
    """Frozen while idle: the next command's channel never opens, and paramiko raises
    the transport's EOFError once the watchdog closes it (a traceback, before)."""
    quick = dataclasses.replace(target.target(), alive_interval=0.3, alive_count=2)
    with SshHost(quick) as host:
        assert host.run("true").ok
        frozen = _sshd_sessions(target)
        assert frozen
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(RemoteError, match=r"stopped answering over SSH for 0\.6 s"):
                host.run("true", timeout=30)
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def _throttled_proxy(port: int, bytes_per_second: int) -> Iterator[int]:
    """A TCP proxy on 127.0.0.1 to ``port`` that passes the server's bytes on at
    ``bytes_per_second`` (a slow link); its port. Every socket and thread of it has
    ended when the block has (an unclosed socket is a warning, which fails a test)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    sockets: list[socket.socket] = []
    pipes: list[threading.Thread] = []

    def pipe(source: socket.socket, sink: socket.socket, rate: int | None) -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                data = source.recv(4096 if rate else 65536)
                if not data:
                    break
                sink.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        for each in (source, sink):
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection(("127.0.0.1", port))
            sockets.extend((client, server))
            for args in ((client, server, None), (server, client, bytes_per_second)):
                pipes.append(threading.Thread(target=pipe, args=args, daemon=True))
                pipes[-1].start()

    serving = threading.Thread(target=serve, daemon=True)
    serving.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        serving.join(timeout=10)
        for each in sockets:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
        for thread in pipes:
            thread.join(timeout=10)
        for each in sockets:
            each.close()
        listener.close()


def test_a_slow_download_that_keeps_arriving_is_not_given_up(
    target: SshTarget, tmp_path: Path
) -> None:
    """The server's answer to the liveness probe queues behind the data in flight
    (up to a channel window: 2 MB): on a slow link it comes long after the bound. A
    download at 256 KB/s with a 0.6 s bound: data keeps arriving, so the host is alive
    (before, it was given up within seconds while the bytes still came)."""
    payload = target.host_path("/opt") / "big.bin"
    payload.write_bytes(os.urandom(3 * 1024 * 1024))
    host_key = target.known_hosts.read_text().split(maxsplit=1)[1]
    known = tmp_path / "proxy_known_hosts"
    with _throttled_proxy(target.port, 256 * 1024) as port:
        known.write_text(f"[127.0.0.1]:{port} {host_key}")
        slow = dataclasses.replace(
            target.target(),
            port=port,
            known_hosts_path=str(known),
            alive_interval=0.3,
            alive_count=2,
        )
        with SshHost(slow) as host:
            host.download("/opt/big.bin", tmp_path / "big.bin")
    assert (tmp_path / "big.bin").read_bytes() == payload.read_bytes()


def test_destroy_with_host_retires_that_host_and_keeps_the_environments_record(
    target: SshTarget, tmp_path: Path
) -> None:
    """After `inv recover` onto a new host the record names the new one, and the old
    host's backup runs say "inv destroy the other": `inv destroy` removed the recorded
    (the new, recovered) host (a review). --host names the one to retire: its stack
    and the deployer's files go, the record stays as it was."""
    data = target.env_data(sample_data("manual-test-sqlite"))
    data["provider"] = {"provider": "existing"}
    del data["ssh_credentials"]["host"]  # type: ignore[attr-defined]
    env = write_env(tmp_path, data)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return inv_with_state(tmp_path / "state", env, *args)

    old = ("--host", "127.0.0.1", "--known-hosts", str(target.known_hosts))
    assert run("push", *old).returncode == 0
    assert run("install-cron", *old).returncode == 0
    target.host_path("/opt/torrust/docker-compose.yml").unlink()  # no compose project here
    # the recover's new host, recorded
    assert run("register", "--host", "203.0.113.20").returncode == 0
    record = (tmp_path / "state/tracker-deployer/hosts/manual-test-sqlite.json").read_text()

    done = run("destroy", *old)
    assert done.returncode == 0, done.stderr
    assert "the record of manual-test-sqlite is kept: 127.0.0.1 is not its host" in done.stdout
    assert "destroyed manual-test-sqlite on 127.0.0.1" in done.stdout
    assert not target.host_path("/opt/torrust").exists()
    for path in plan.CRON_FILES:
        assert not target.host_path(str(path)).exists(), path
    assert (tmp_path / "state/tracker-deployer/hosts/manual-test-sqlite.json").read_text() == record
