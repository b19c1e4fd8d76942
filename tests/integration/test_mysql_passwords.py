"""A deploy gives the running MySQL server the config's passwords.

MySQL reads MYSQL_ROOT_PASSWORD and MYSQL_PASSWORD only when its data volume is
new: before, a password changed in the config reached .env, tracker.toml and
backup.conf but not the server, and the tracker and the backups could no longer
log in. Here the host script `inv deploy` runs before `compose up`
(templates/operations/mysql-passwords.sh.j2) runs on a real stack (the MariaDB
test double, which makes the accounts as the official image does), and the
string quoting it relies on is checked against the real MariaDB on 127.0.0.1.
"""

from __future__ import annotations

import copy
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from tracker_deployer import exit_codes
from tracker_deployer.remote import mysql_passwords
from tracker_deployer.render.quoting import mysql_image_env, sql_string

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

# Every character MySQL's string syntax or its client's statement splitter
# treats specially, a backslash last (it would escape the closing quote), and
# text beyond ASCII.
AWKWARD = [
    "it's",
    "back\\slash\\",
    "\\'; DROP TABLE x; --",
    '"dq" $HOME `cmd` /* c */ # h',
    "pässwörd €🙂 ;",
    "%_ \\n \\0 \\Z",
]


def _local_mariadb(
    sql: str, *, user: str = "root", password: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mariadb", "--protocol=TCP", "-h127.0.0.1", f"-u{user}", "--batch", "-N"],
        input=sql,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MYSQL_PWD": password},
        timeout=60,
    )


@pytest.mark.parametrize("password", AWKWARD)
def test_sql_string_gives_mariadb_the_password_as_typed(password: str) -> None:
    user = f"tdq_{uuid.uuid4().hex[:12]}"
    created = _local_mariadb(
        "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES';\n"
        f"CREATE USER {sql_string(user)}@'%' IDENTIFIED BY {sql_string(password)};\n"
    )
    try:
        assert created.returncode == 0, created.stderr
        logged_in = _local_mariadb("SELECT CURRENT_USER();", user=user, password=password)
        assert logged_in.returncode == 0, logged_in.stderr
        assert logged_in.stdout.strip() == f"{user}@%"
        refused = _local_mariadb("SELECT 1;", user=user, password=password + "x")
        assert refused.returncode != 0
        assert "Access denied" in refused.stderr
    finally:
        _local_mariadb(f"DROP USER IF EXISTS {sql_string(user)}@'%';")


@pytest.mark.parametrize("password", AWKWARD)
def test_the_image_env_form_reads_back_in_sql_and_in_an_option_file(
    password: str, tmp_path: Path
) -> None:
    """What the official mysql image's entrypoint does with MYSQL_ROOT_PASSWORD: paste
    it between ' into SQL (default sql_mode) and between " into an option file."""
    user = f"tdq_{uuid.uuid4().hex[:12]}"
    pasted = mysql_image_env(password)
    created = _local_mariadb(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{pasted}';\n")
    try:
        assert created.returncode == 0, created.stderr
        logged_in = _local_mariadb("SELECT CURRENT_USER();", user=user, password=password)
        assert logged_in.returncode == 0, logged_in.stderr
        options = tmp_path / "client.cnf"
        options.write_text(f'[client]\nuser={user}\npassword="{pasted}"\n', encoding="utf-8")
        options.chmod(0o600)
        from_file = subprocess.run(
            ["mariadb", f"--defaults-extra-file={options}", "--protocol=TCP", "-h127.0.0.1"],
            input="SELECT CURRENT_USER();",
            capture_output=True,
            text=True,
            check=False,
            env={key: value for key, value in os.environ.items() if key != "MYSQL_PWD"},
            timeout=60,
        )
        assert from_file.returncode == 0, from_file.stderr
        assert f"{user}@%" in from_file.stdout
    finally:
        _local_mariadb(f"DROP USER IF EXISTS {sql_string(user)}@'%';")


# --------------------------------------------------------------------------- the host script


def _with_passwords(data: dict[str, Any], root: str, tracker: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    data["mysql"]["root_password"] = root
    data["tracker"]["core"]["database"]["password"] = tracker
    return data


def _set_passwords(stack: Stack) -> subprocess.CompletedProcess[str]:
    """The script with its companions in a private directory, as run_script uploads them."""
    upload = stack.base / f"upload-{uuid.uuid4().hex[:8]}"
    upload.mkdir(mode=0o700)
    for name, text in mysql_passwords.companions(stack.env).items():
        (upload / name).write_text(text, encoding="utf-8")
    script = upload / "script.sh"
    script.write_text(
        mysql_passwords.script(deploy_dir=str(stack.deploy_dir), lock_file=str(stack.lock_file))
    )
    return subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        check=False,
        env=stack.environ(),
        timeout=600,
    )


def _login(stack: Stack, user: str, password: str) -> subprocess.CompletedProcess[str]:
    """A login over TCP in the mysql service (the password is checked; no socket auth)."""
    return stack.compose(
        "exec",
        "-T",
        "-e",
        f"MYSQL_PWD={password}",
        "mysql",
        "mariadb",
        "--protocol=TCP",
        "-h127.0.0.1",
        f"-u{user}",
        "-N",
        "-e",
        "SELECT CURRENT_USER()",
        check=False,
    )


def _redeploy(stack: Stack, data: dict[str, Any]) -> Stack:
    """The new config's files over the old ones, in the same compose project."""
    again = Stack(parse(data), stack.base)
    again.project = stack.project
    return again.install()


def test_a_deploy_gives_the_running_mysql_the_configs_new_passwords(tmp_path: Path) -> None:
    require_images(STANDIN_IMAGE, MARIADB_IMAGE, BACKUP_IMAGE)
    before = env_for_stack(sample_data("manual-test-mysql"))
    old_root = before["mysql"]["root_password"]
    old_tracker = before["tracker"]["core"]["database"]["password"]
    user = before["tracker"]["core"]["database"]["username"]
    stack = Stack(parse(before), tmp_path / "p").install()
    try:
        stack.up()
        new_root, new_tracker = AWKWARD[2], AWKWARD[1] + AWKWARD[4]
        stack = _redeploy(stack, _with_passwords(before, new_root, new_tracker))

        result = _set_passwords(stack)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "logged in with the password MySQL was started with" in result.stdout
        for secret in (new_root, new_tracker, old_root):
            assert secret not in result.stdout + result.stderr

        # What `inv deploy` does next: compose up (MySQL recreated with the new
        # .env), the tracker restarted on its new tracker.toml.
        stack.up()
        stack.compose("restart", "tracker")
        stack.up()
        assert _login(stack, "root", new_root).returncode == 0
        assert _login(stack, user, new_tracker).returncode == 0
        assert _login(stack, "root", old_root).returncode != 0
        assert _login(stack, user, old_tracker).returncode != 0
        # The backups log in with backup.conf's (new) password, and the tracker
        # starts again after its window: the whole run succeeds.
        run = stack.run_maintenance()
        assert run.returncode == 0, run.stdout + run.stderr
        assert len(stack.sets()) == 1

        # Again: the container now runs with the new passwords; nothing changes.
        again = _set_passwords(stack)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "logged in with the password MySQL was started with" in again.stdout

        # The server's root password changed behind the config's back: neither the
        # container's nor the config's is right. Nothing changes, and it says so.
        changed = stack.compose(
            "exec", "-T", "-e", f"MYSQL_PWD={new_root}", "mysql", "mariadb",
            "--protocol=TCP", "-h127.0.0.1", "-uroot", "-e",
            "ALTER USER 'root'@'%' IDENTIFIED BY 'elsewhere'; "
            "ALTER USER 'root'@'localhost' IDENTIFIED BY 'elsewhere';",
            check=False,
        )  # fmt: skip
        assert changed.returncode == 0, changed.stderr
        stack = _redeploy(stack, _with_passwords(before, old_root, old_tracker))
        refused = _set_passwords(stack)
        assert refused.returncode == exit_codes.MYSQL_LOGIN, refused.stdout + refused.stderr
        assert "MySQL refused root with the password it was started with" in refused.stdout
        assert "no password was changed" in refused.stdout
        assert _login(stack, user, new_tracker).returncode == 0
        assert _login(stack, "root", "elsewhere").returncode == 0

        # The tracker's user renamed in the config: an error, and nothing changes
        # (its statement comes first; root logs in with the config's password).
        renamed = _with_passwords(before, "elsewhere", "another")
        renamed["tracker"]["core"]["database"]["username"] = "renamed_user"
        stack = _redeploy(stack, renamed)
        unknown = _set_passwords(stack)
        assert unknown.returncode == 1, unknown.stdout + unknown.stderr
        assert "MySQL has no account for the tracker's user" in unknown.stdout
        assert _login(stack, user, new_tracker).returncode == 0
        assert _login(stack, "root", "elsewhere").returncode == 0

        # A stopped MySQL is started as it was, then given the passwords.
        stack.compose("stop", "mysql")
        stack = _redeploy(stack, _with_passwords(before, "elsewhere", old_tracker))
        stopped = _set_passwords(stack)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "starting the stopped MySQL container as it was" in stopped.stdout
        assert "logged in with the config's root password" in stopped.stdout
        assert _login(stack, user, old_tracker).returncode == 0
        for output in (refused, unknown, stopped):
            for secret in (new_root, new_tracker, old_root, old_tracker, "elsewhere"):
                assert secret not in output.stdout + output.stderr
    finally:
        stack.cleanup()
