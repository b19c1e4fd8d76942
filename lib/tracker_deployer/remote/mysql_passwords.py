"""The config's MySQL passwords in the running server (``inv deploy``).

MySQL takes ``MYSQL_ROOT_PASSWORD`` and ``MYSQL_PASSWORD`` from its environment
only when its data volume is first created. A password changed in the config
afterwards reached the files (.env, tracker.toml, backup.conf) but not the
server, and the tracker and the backups then failed to log in. Each deploy of a
MySQL environment therefore sets the config's passwords in the running server
(templates/operations/mysql-passwords.sh.j2), once the files are pushed and the
images are on the host, right before ``compose up`` restarts what uses them.
"""

from __future__ import annotations

from typing import Unpack

from tracker_deployer import exit_codes, paths
from tracker_deployer.config.model import Env, MysqlDatabase
from tracker_deployer.errors import RemoteError
from tracker_deployer.remote.deploy import LOCK_WAIT_SECONDS, lock_busy
from tracker_deployer.remote.ssh import SshHost
from tracker_deployer.render import operation_script
from tracker_deployer.render.quoting import MYSQL_PWD_FROM_IMAGE_ENV, sql_string
from tracker_deployer.say import Say

# The accounts the official image makes: root from anywhere and from localhost,
# and MYSQL_USER from anywhere.
ROOT_ACCOUNTS = ("'root'@'%'", "'root'@'localhost'")


def statements(env: Env) -> str:
    """The SQL that gives the tracker's user and root the config's passwords.

    The session's sql_mode is NO_BACKSLASH_ESCAPES first, whatever the server's,
    so that only ``'`` is special in a string literal (see :func:`sql_string`)."""
    database = env.database
    assert env.mysql is not None, "a MySQL env"
    assert isinstance(database, MysqlDatabase), "a MySQL env"
    root = sql_string(env.mysql.root_password.reveal())
    user = f"{sql_string(database.username)}@'%'"
    lines = [
        "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES';",
        # First, and without IF EXISTS: a user renamed in the config is an error
        # (1396) before anything has changed.
        f"ALTER USER {user} IDENTIFIED BY {sql_string(database.password.reveal())};",
    ]
    lines += [f"ALTER USER IF EXISTS {account} IDENTIFIED BY {root};" for account in ROOT_ACCOUNTS]
    return "".join(line + "\n" for line in lines)


def script(**where: Unpack[paths.HostPaths]) -> str:
    return operation_script(
        "mysql-passwords",
        paths.TEMPLATES_DIR,
        **paths.host_paths(where),
        lock_wait_seconds=LOCK_WAIT_SECONDS,
        mysql_pwd_from_image_env=MYSQL_PWD_FROM_IMAGE_ENV,
    )


def companions(env: Env) -> dict[str, str]:
    """The files the script reads next to itself (secrets: never in the script)."""
    assert env.mysql is not None, "a MySQL env"
    return {"passwords.sql": statements(env), "root-password": env.mysql.root_password.reveal()}


def set_in_server(host: SshHost, env: Env, say: Say) -> None:
    """Set the config's passwords in the running MySQL server (nothing without MySQL)."""
    if not env.uses_mysql:
        return
    result = host.run_script(script(), stream=say, companions=companions(env), timeout=600)
    if result.exit_code == exit_codes.LOCK_BUSY:
        raise lock_busy(host)
    if result.exit_code == exit_codes.MYSQL_LOGIN:
        raise RemoteError(
            f"MySQL on {host.target.host} refused root with the password it was started with "
            "and with the config's mysql.root_password; no password was changed there",
            "put the server's current root password in mysql.root_password, deploy, then "
            "change it in the config and deploy again (see docs/user-guide/configuration.md)",
        )
    if not result.ok:
        raise RemoteError(
            f"setting MySQL's passwords on {host.target.host} failed (exit {result.exit_code})",
            "see the output above",
        )
