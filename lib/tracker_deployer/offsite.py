"""Off-host copies with restic (``backup.offsite``): the facts the host scripts,
the compose service and the backup image share.

Pure: values are derived from an :class:`Env`. The image's ``offsite.sh`` owns
its exit codes; :data:`OFFSITE_SH_EXIT` is the copy the deployer reads them
with, held to the script by a unit test. :data:`EXIT_OFFSITE_FAILED` is
exit_codes.OFFSITE_FAILED, rendered into the maintenance script.
"""

from __future__ import annotations

import hashlib
import shlex

from tracker_deployer import exit_codes, paths
from tracker_deployer.config.model import Env, OffsiteConfig, redact_repository

# The compose service that runs offsite.sh (profile "backup", never started by `up`).
SERVICE = "offsite"

# The offsite container's hostname, restic's idea of "this host" for locks: the
# host scripts export HOSTNAME_VARIABLE for compose to interpolate (DEFAULT_HOSTNAME
# when a command runs without it). restic takes a lock of its own hostname whose
# PID it cannot see for a dead process's: two machines of one short name (tracker,
# debian) writing to one repository removed each other's live locks, and a prune
# then deleted what the other's upload still wrote. So the name carries the
# machine's id too: SHORT-NAME-MACHINE-ID-offsite.
HOSTNAME_VARIABLE = "TRACKER_OFFSITE_HOSTNAME"
HOSTNAME_SUFFIX = "-offsite"
DEFAULT_HOSTNAME = "tracker-offsite"
MACHINE_ID_FILE = "/etc/machine-id"
MACHINE_ID_CHARACTERS = 12
SHORT_NAME_CHARACTERS = 40  # with the id and the suffix, within a hostname's 63


def hostname_export() -> str:
    """The bash lines every host script runs before the offsite service: this
    host's short name (its first SHORT_NAME_CHARACTERS), the first
    MACHINE_ID_CHARACTERS of its machine id (when it has one) and HOSTNAME_SUFFIX,
    exported for compose to interpolate."""
    return (
        f'{HOSTNAME_VARIABLE}="$(hostname -s 2>/dev/null || printf host)"\n'
        f'tracker_machine_id="$(head -c {MACHINE_ID_CHARACTERS} {MACHINE_ID_FILE} '
        "2>/dev/null | tr -cd '0-9a-f' || true)\"\n"
        f'{HOSTNAME_VARIABLE}="${{{HOSTNAME_VARIABLE}:0:{SHORT_NAME_CHARACTERS}}}'
        f'${{tracker_machine_id:+-${{tracker_machine_id}}}}"{shlex.quote(HOSTNAME_SUFFIX)}\n'
        f"export {HOSTNAME_VARIABLE}\n"
    )


def still_running_check() -> str:
    """The bash function every host script runs before it starts the offsite service.

    ``offsite_busy COMPOSE...`` prints why and succeeds when a container of this
    stack's offsite service still runs: one a killed run left (``compose run``'s
    container outlives its client). Every offsite container of this host has the
    same hostname, and restic takes a lock of its hostname whose PID is not in
    its own process table for a dead process's: the next run's ``restic unlock``
    would remove that container's live lock, and its ``forget --prune`` could
    then delete what the running upload still writes. Only the containers that
    take restic's lock count (upload, check, fetch: named by RUN_NAME_PATTERN);
    a listing (``inv backups --offsite``, ``--no-lock``) does not. A listing of
    the containers that fails finds nothing (the run's own compose command then
    fails as it will).
    """
    return f"""offsite_busy() {{
  local names
  names="$(timeout 60 "$@" ps --status running --format '{{{{.Name}}}}' {SERVICE} 2>/dev/null \
    | grep -E '{RUN_NAME_PATTERN}' | tr '\n' ' ')" || names=""
  names="${{names% }}"
  [[ -n "${{names}}" ]] || return 1
  printf '%s\n' "an earlier off-host container of this stack still runs (${{names}}; a run killed while it worked?): its repository lock is live, so the repository was not touched; it ends by itself, or remove it: docker rm -f ${{names}}"
}}
"""


# The names the host scripts give the offsite containers that lock the repository:
# tracker-backup-PID-offsite (upload), -offsite-check, -offsite-fetch.
RUN_NAME_PATTERN = "^tracker-backup-[0-9]+-offsite(-check|-fetch)?$"


# The maintenance script's outcome "local ok, off-host failed": the set is complete
# and verified on this host, the upload (or forget --prune) did not succeed.
EXIT_OFFSITE_FAILED = exit_codes.OFFSITE_FAILED

# offsite.sh's exit codes (docker/backup/offsite.sh, docs/reference/backup-format.md).
OFFSITE_SH_EXIT: dict[str, int] = {
    "CONFIG": 2,
    "UNREACHABLE": 20,
    "PASSWORD": 21,
    "LOCKED": 22,
    "FAILED": 23,
    "CHECK": 24,
    "NO_SPACE": 25,
    "NO_SET": 26,
    "GONE": 27,
}

# Set to 0 by the maintenance script when its last successful upload went to
# this very repository: one that holds no restic repository now was deleted (or
# its storage is not mounted), and offsite.sh refuses to create a new, empty
# one in its place (exit GONE) instead of starting the history over unnoticed.
ALLOW_INIT_VARIABLE = "OFFSITE_ALLOW_INIT"
# Who uploads (offsite.sh tags each snapshot uploader=...): the machine's id (a new
# name is the same machine), else the offsite hostname (hostname_export sets both).
UPLOADER_VARIABLE = "OFFSITE_UPLOADER"


def uploader_option() -> str:
    """The `compose run` option that passes the uploader to offsite.sh upload."""
    return f'-e "{UPLOADER_VARIABLE}=${{tracker_machine_id:-${{{HOSTNAME_VARIABLE}}}}}"'


def repository_id(env: Env) -> str:
    """Which repository the uploads go to: a hash of its location without the
    userinfo (a password in the URL must not be guessable from it), recorded in
    last-offsite.env with each successful upload."""
    location = redact_repository(_offsite(env).repository)
    return hashlib.sha256(location.encode()).hexdigest()[:16]


# The longest an upload (with forget --prune) or a check may take; then it is
# killed and reported as failed.
UPLOAD_TIMEOUT_SECONDS = 6 * 3600
CHECK_TIMEOUT_SECONDS = 12 * 3600
# The scheduled check waits this long for the backup's lock.
CHECK_LOCK_WAIT_SECONDS = 3600


def password_in_container() -> str:
    return str(paths.BACKUP_ETC_IN_BACKUP / paths.OFFSITE_PASSWORD_FILE.name)


def ssh_dir_in_container() -> str:
    return str(paths.BACKUP_ETC_IN_BACKUP / paths.OFFSITE_SSH_DIR.name)


def read_data_text(percent: float) -> str:
    """The percentage as offsite.sh reads it: no exponent, no needless '.0'."""
    text = f"{percent:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def env_file_values(env: Env) -> list[tuple[str, str]]:
    """The offsite service's env_file: restic's settings and the backend's credentials.

    The password itself is not here: restic reads it from RESTIC_PASSWORD_FILE.
    """
    offsite = _offsite(env)
    values = [
        ("RESTIC_REPOSITORY", offsite.repository),
        ("RESTIC_PASSWORD_FILE", password_in_container()),
        ("OFFSITE_ENV_NAME", env.name),
        ("OFFSITE_KEEP", " ".join(offsite.keep.restic_args())),
        ("OFFSITE_CHECK_READ_DATA", read_data_text(offsite.check_read_data)),
        ("OFFSITE_SSH_DIR", ssh_dir_in_container()),
    ]
    values += [(name, secret.reveal()) for name, secret in offsite.env]
    return values


def _offsite(env: Env) -> OffsiteConfig:
    assert env.backup is not None
    assert env.backup.offsite is not None
    return env.backup.offsite
