"""The disaster drill: a host lost and recovered from the off-host repository.

1. `inv deploy` of a copy of envs/e2e-mysql.json (and of e2e-sqlite.json, logged in
   as a non-root user with sudo) with backup.offsite onto host 1
   (a new LXD instance, `inv provision` inside deploy); the tracker stand-in writes
   all the time;
2. cron takes a set and uploads it to a REST repository: a real
   `rclone serve restic` on this machine, on the address of the LXD bridge this
   run's `scripts/lxd-host.sh prepare` made (the hosts reach nothing else);
3. `inv destroy` of host 1, which it allows without --delete-backups because every
   set is in the repository;
4. `inv recover` onto host 2 (a new instance of the same name);
5. on host 2: the rows equal the last uploaded set's `.meta`, every service is
   healthy, cron is installed, and the next backup uploads to the same repository.

Runs last (file order): it makes and removes its own hosts.
"""

from __future__ import annotations

import json
import re
import shlex
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tracker_deployer import paths, recover, state
from tracker_deployer.render.quoting import MYSQL_PWD_FROM_IMAGE_ENV

from tests.e2e.remote_host import (
    PROVISIONED_ENV,
    Address,
    RemoteHost,
    Say,
    env_argument,
    inv,
    key_value_lines,
    shown,
)
from tests.integration.ports import free_port
from tests.integration.test_offsite import PASSWORD, Server, rclone_server

pytestmark = pytest.mark.e2e

INSTANCE = "tracker-deployer-e2e-drill"
UPLOAD_TIMEOUT = 300  # cron fires every minute; a run with its upload takes ~20 s here
# Every base table's row count, as "table=count" lines (fixed SQL, no input).
TABLE_ROWS = "docker compose exec -T mysql sh -c " + shlex.quote(  # noqa: S608 - fixed SQL
    f"{MYSQL_PWD_FROM_IMAGE_ENV}; "  # noqa: S608
    'mariadb -uroot --batch --skip-column-names -e "SELECT table_name FROM '
    "information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'\" "
    '"$MYSQL_DATABASE" | while read -r t; do printf "%s=" "$t"; '
    'mariadb -uroot --batch --skip-column-names -e "SELECT COUNT(*) FROM \\`$t\\`" '
    '"$MYSQL_DATABASE" </dev/null; done'
)


def _bridge_address() -> str:
    """The LXD bridge's address on this machine (made by scripts/lxd-host.sh prepare)."""
    result = subprocess.run(
        ["lxc", "network", "get", "lxdbr0", "ipv4.address"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split("/")[0]


@pytest.fixture
def repository(tmp_path: Path, state_home: Path) -> Iterator[str]:
    """A REST repository for the drill's hosts: rclone serve restic on the bridge."""
    address = _bridge_address()
    port = free_port()
    server: Server = rclone_server(tmp_path / "repository", port, tmp_path / "rclone.log", address)
    server.start()
    try:
        yield f"rest:http://{address}:{port}/drill"
    finally:
        server.stop()


# The user the SQLite drill logs in as: not root, as in the manual-test envs. The
# instance's first boot makes it (key, passwordless sudo); configure, deploy, cron,
# destroy and recover then all go through sudo.
SUDO_USER = {"e2e-sqlite": "torrust"}


def _drill_env(tmp_path: Path, repository: str, source: str) -> tuple[str, str]:
    """A copy of envs/SOURCE.json with backup.offsite, on its own instance: (path, name)."""
    name = f"{source}-drill"
    data = env_argument.data(source)
    data["environment"]["name"] = name
    data["provider"]["profile_name"] = INSTANCE
    data["ssh_credentials"]["username"] = SUDO_USER.get(source, "root")
    data["backup"]["offsite"] = {
        "repository": repository,
        "password": PASSWORD,
        "keep": {"last": 20},
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return str(path), name


def _host(name: str, user: str) -> RemoteHost:
    """The environment's recorded host (host 1, later host 2), logged in as ``user``."""
    record = state.read_record(name)
    assert record is not None, f"no host recorded for {name}"
    return RemoteHost(
        Address(record.host, record.port, user),
        state.key_path(),
        state.known_hosts_path(name),
    )


def _rows(host: RemoteHost, engine: str, tmp_path: Path, database: str) -> dict[str, int]:
    """Every table's row count in the live database (for SQLite, read with the
    tracker stopped for a moment: a copy of a file being written may be torn)."""
    if engine == "mysql":
        output = host.check(f"cd {paths.DEPLOY_DIR} && {TABLE_ROWS}")
        return {
            name: int(count) for name, _, count in (line.partition("=") for line in output.split())
        }
    host.compose("stop tracker")
    try:
        local = tmp_path / "live.db"
        local.write_bytes(host.read(str(paths.sqlite_on_host(database))))
    finally:
        host.compose("start tracker")
    with sqlite3.connect(local) as db:
        tables = [
            str(row[0])
            for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not str(row[0]).startswith("sqlite_")
        ]
        counts = {
            table: int(db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])  # noqa: S608
            for table in tables
        }
    db.close()
    return counts


def _wait_for_uploaded_set(host: RemoteHost, say: Say) -> str:
    """Until a cron-fired run has made a set and uploaded it; that set's id."""
    deadline = time.monotonic() + UPLOAD_TIMEOUT
    offsite_status = f"{paths.OFFSITE_LAST_UPLOAD}"
    while time.monotonic() < deadline:
        if host.exists(offsite_status):
            upload = key_value_lines(host.read(offsite_status).decode())
            run = host.status() if host.exists(f"{paths.BACKUP_STATUS_DIR}/last-run.env") else {}
            if upload.get("result") == "success" and run.get("result") == "success":
                return run["set"]
            assert upload.get("result") != "failure", f"the upload failed: {upload}"
        time.sleep(3)
    raise AssertionError(f"no uploaded set within {UPLOAD_TIMEOUT} s:\n{host.diagnostics()}")


@pytest.mark.parametrize("source", [PROVISIONED_ENV, "e2e-sqlite"])
def test_a_lost_host_is_recovered_from_the_offsite_repository(
    tmp_path: Path, repository: str, say: Say, source: str
) -> None:
    env, name = _drill_env(tmp_path, repository, source)
    database = env_argument.data(source)["tracker"]["core"]["database"]
    engine = "mysql" if database["driver"] == "mysql" else "sqlite"
    say(f"DISASTER DRILL: {name} with backup.offsite = {repository} (rclone serve restic)")
    try:
        deployed = inv("deploy", "--env", env, timeout=1500)
        assert deployed.returncode == 0, shown(deployed)
        user = SUDO_USER.get(source, "root")
        host1 = _host(name, user)
        if user != "root":
            whoami = host1.run("id -un; sudo -n id -un", as_root=False).stdout.decode().split()
            assert whoami == [user, "root"], whoami  # logged in as the user; sudo works
            root_login = _host(name, "root").run("true", as_root=False)
            assert root_login.returncode != 0, "root logs in with the deployer's key"
        say(
            f"  host 1 at {host1.address.host}: deployed as {user}; waiting for a cron-fired upload"
        )
        _wait_for_uploaded_set(host1, say)
        host1.pause_cron()  # waits for a run in progress; then no run changes the sets
        uploaded = _wait_for_uploaded_set(host1, say)  # the last run's, uploaded
        sets = host1.complete_sets()
        assert sets[-1] == uploaded, (sets, uploaded)
        meta = host1.meta(uploaded)
        expected = {
            key[len("rows.") :]: int(value)
            for key, value in meta.items()
            if key.startswith("rows.")
        }
        assert expected.get("torrents", 0) > 0, meta
        say(f"  set {uploaded} uploaded; its .meta rows: {expected}")

        # Every set is in the repository: destroy needs no --delete-backups.
        destroyed = inv("destroy", "--env", env)
        assert destroyed.returncode == 0, shown(destroyed)
        assert f"{len(sets)} of {len(sets)} set(s) on the host are in the off-host repository" in (
            destroyed.stdout
        ), shown(destroyed)
        gone = subprocess.run(["lxc", "info", INSTANCE], capture_output=True, check=False)
        assert gone.returncode != 0, "host 1 still exists"
        say(f"  host 1 destroyed ({len(sets)} set(s), all in the repository)")

        started = time.monotonic()
        recovered = inv("recover", "--env", env, timeout=1800)
        took = time.monotonic() - started
        assert recovered.returncode == 0, shown(recovered)
        phases = re.findall(r"^ +(\S[^:\n]*): (\d+\.\d) s$", recovered.stdout, re.MULTILINE)
        assert tuple(name for name, _ in phases) == recover.PHASES, recovered.stdout
        assert f"from set {uploaded}" in recovered.stdout, recovered.stdout
        host2 = _host(name, user)
        # Cron (installed last, every minute) may already have fired on host 2: pause it
        # (after a run in progress) so that no run stops the tracker during the checks.
        host2.pause_cron()
        say(
            f"  inv recover: host 2 at {host2.address.host} from set {uploaded} in {took:.0f} s "
            f"({', '.join(f'{name} {seconds} s' for name, seconds in phases)})"
        )

        # The rows the tracker found when it first started on host 2 (right after the
        # restore; the stand-in logs them once per start: a cron-fired run may have
        # restarted it since), and the tables it never adds rows to, counted now.
        logs = host2.compose("logs --no-color tracker")
        ready = re.findall(r"database ready: .* \((\d+) torrents, \d+ downloads\)", logs)
        assert ready, logs
        restored = _rows(host2, engine, tmp_path, database["database_name"])
        restored["torrents"] = int(ready[0])
        assert restored == expected, (restored, expected)
        host2.wait_healthy("tracker", 120)  # SQLite: _rows stopped it for a moment
        services = host2.services()
        assert all(row["state"] == "running" for row in services.values()), services
        assert services["tracker"]["health"] == "healthy", services
        assert host2.exists(str(paths.CRON_FILE)), "cron is not installed on host 2"
        assert not host2.exists(str(paths.RECOVER_MARKER))

        # Host 2 is live now: a second recover refuses it and changes nothing.
        again = inv("recover", "--env", env)
        assert again.returncode == 1, shown(again)
        assert "is not a new host: a tracker has run on it" in again.stderr, shown(again)
        assert host2.services()["tracker"]["state"] == "running"

        # The next backup on host 2 uploads to the same repository. Cron is paused
        # (above, after a run in progress, with its upload): no cron-fired set newer
        # than this backup's can be still uploading when the repository is listed.
        backed_up = inv("backup", "--env", env)
        assert backed_up.returncode == 0, shown(backed_up)
        listed = inv("backups", "--env", env, "--offsite", "--json")
        assert listed.returncode == 0, shown(listed)
        ids = [item["set"] for item in json.loads(listed.stdout)]
        newest = host2.complete_sets()[-1]
        assert uploaded in ids, ids
        assert newest != uploaded, newest
        assert newest in ids, (ids, newest)
        say(f"  host 2: rows as set {uploaded}, healthy, cron installed; set {newest} uploaded")
    finally:
        removed = inv("destroy", "--env", env, "--delete-backups")
        say(f"  clean-up: inv destroy --env {name} --delete-backups: exit {removed.returncode}")
