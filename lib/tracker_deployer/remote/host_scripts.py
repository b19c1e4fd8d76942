"""Another deployer version's scheduled scripts on a host (render.tree.HOST_SCRIPTS_VERSION).

Their runs may keep another contract with the operations than this version's: read
the deploy marker otherwise (a run then restarts the tracker on a password the MySQL
server lacks) or take the backup lock elsewhere (a run then overlaps a restore). So a
deploy, push or install-cron ends their schedules before it changes anything, and
restore, verify and destroy refuse the host until one of those has.
"""

from __future__ import annotations

import shlex

from tracker_deployer import exit_codes, paths
from tracker_deployer.errors import RemoteError
from tracker_deployer.remote.deploy import LOCK_WAIT_SECONDS, under_backup_lock
from tracker_deployer.remote.ssh import SshHost
from tracker_deployer.render.tree import host_scripts_line
from tracker_deployer.say import Say

# The cron.d files that start the scripts; install-cron puts this version's back.
SCHEDULES = (paths.CRON_FILE, paths.DRILL_CRON_FILE, paths.OFFSITE_CHECK_CRON_FILE)
ENDED = "ended"


def older_scripts_test() -> str:
    """A command that succeeds when the host's maintenance script is another version's:
    it lacks this version's host scripts line (scripts before the line: version 1)."""
    script = shlex.quote(str(paths.MAINTENANCE_SCRIPT))
    return f"test -f {script} && ! grep -qxF -- {shlex.quote(host_scripts_line())} {script}"


def older_scripts_error(where: str, env_name: str, action: str) -> RemoteError:
    return RemoteError(
        f"{where} runs the backup scripts of another version of this deployer "
        f"({paths.MAINTENANCE_SCRIPT}): {action} would not exclude their runs; nothing was "
        "changed",
        f"deploy this version first: `inv deploy --env {env_name}` (or `inv install-cron`) "
        "ends their schedules and installs its own",
    )


def refuse_older_scripts(host: SshHost, env_name: str, action: str) -> None:
    if host.run(older_scripts_test()).ok:
        raise older_scripts_error(host.target.host, env_name, action)


def end_older_schedules(host: SshHost, say: Say) -> None:
    """End the schedules of another version's scripts (their cron.d files and their
    maintenance script go), then wait for a run of theirs to end: it holds their lock,
    which before version 2 was OLDER_BACKUP_LOCK. Nothing happens on a host without
    them. Under this version's lock too: a run of the new scripts is not one of theirs."""
    files = " ".join(shlex.quote(str(path)) for path in (*SCHEDULES, paths.MAINTENANCE_SCRIPT))
    older_lock = paths.OLDER_BACKUP_LOCK
    script = (
        f"{older_scripts_test()} || exit 0\n"
        f"rm -f -- {files}\n"
        f"echo {ENDED}\n"
        f"[ -d {shlex.quote(str(older_lock.parent))} ] || exit 0\n"
        f"exec flock -E {exit_codes.LOCK_BUSY} -w {LOCK_WAIT_SECONDS} "
        f"{shlex.quote(str(older_lock))} true\n"
    )
    result = host.run(under_backup_lock(script), timeout=3 * LOCK_WAIT_SECONDS)
    ended = result.stdout.strip().endswith(ENDED)
    if ended:
        say(
            "  ended the backup schedules of another deployer version's scripts on "
            f"{host.target.host} (install-cron puts this version's in place)"
        )
    if result.ok:
        return
    busy = result.exit_code == exit_codes.LOCK_BUSY
    done = "their schedules were ended; " if ended else ""
    raise RemoteError(
        f"a backup run on {host.target.host} still held "
        f"{older_lock if ended else paths.BACKUP_LOCK} after {LOCK_WAIT_SECONDS} s; "
        f"{done}nothing else was changed"
        if busy
        else f"ending the older scripts' schedules on {host.target.host} failed: "
        f"{result.stderr.strip()[:300] or f'exit {result.exit_code}'}; {done}nothing else "
        "was changed",
        f"see {paths.BACKUP_LOG} on the host, then run again",
    )
