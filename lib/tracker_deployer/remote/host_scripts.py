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
from tracker_deployer.remote.deploy import LOCK_WAIT_SECONDS
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
    """End the schedules of another version's scripts (their cron.d files go), wait
    for a run of theirs to end (it holds their lock: OLDER_BACKUP_LOCK before version
    2, BACKUP_LOCK after), then remove their maintenance script, which marks the host
    as done: a retry after a wait that timed out waits again. Nothing happens, and no
    lock is taken, on a host without them."""
    schedules = " ".join(shlex.quote(str(path)) for path in SCHEDULES)
    older_lock = paths.OLDER_BACKUP_LOCK
    wait = f"flock -E {exit_codes.LOCK_BUSY} -w {LOCK_WAIT_SECONDS}"
    script = (
        f"{older_scripts_test()} || exit 0\n"
        f"rm -f -- {schedules}\n"
        f"echo {ENDED}\n"
        f"{wait} {shlex.quote(str(paths.BACKUP_LOCK))} true || exit\n"
        f"if [ -d {shlex.quote(str(older_lock.parent))} ]; then\n"
        f"  {wait} {shlex.quote(str(older_lock))} true || exit\n"
        "fi\n"
        f"rm -f -- {shlex.quote(str(paths.MAINTENANCE_SCRIPT))}\n"
    )
    result = host.run(script, timeout=3 * LOCK_WAIT_SECONDS)
    ended = result.stdout.strip().endswith(ENDED)
    if ended:
        say(
            "  ended the backup schedules of another deployer version's scripts on "
            f"{host.target.host} (install-cron puts this version's in place)"
        )
    if result.ok:
        return
    done = "their schedules were ended; " if ended else ""
    raise RemoteError(
        f"a backup run of the older scripts on {host.target.host} still held its lock after "
        f"{LOCK_WAIT_SECONDS} s; {done}nothing else was changed"
        if result.exit_code == exit_codes.LOCK_BUSY
        else f"ending the older scripts' schedules on {host.target.host} failed: "
        f"{result.stderr.strip()[:300] or f'exit {result.exit_code}'}; {done}nothing else "
        "was changed",
        f"see {paths.BACKUP_LOG} on the host, then run again (it waits for that run again)",
    )
