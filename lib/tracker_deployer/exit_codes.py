"""Exit codes the host scripts and the deployer agree on (sysexits.h names where one fits).

The scripts rendered from templates/ take them from here (the ``exit_codes``
template global); the Python side compares a script's exit code with them.
"""

from __future__ import annotations

USAGE = 64  # a script was called wrongly
NOT_VERIFIED = 65  # restore: the set did not verify, or is gone; nothing changed
NO_SET = 66  # drill: no complete set to drill
TRACKER = 70  # maintenance: the tracker could not be stopped or started
PARTLY_RESTORED = 71  # restore: a MySQL load failed or was cut off; the tracker stays stopped
ROLLED_BACK = 72  # restore: a MySQL load failed; the safety set was put back, the tracker runs
SAFETY_BACKUP_FAILED = 73  # restore: the safety backup failed; nothing restored
LOCK_BUSY = 75  # the backup lock is held (a run, a restore or a deploy): nothing started
OFFSITE_FAILED = 76  # maintenance: the set is complete locally, the off-host upload failed
UNSAFE = 77  # maintenance: refused an unsafe state (marker, status directory)
MYSQL_LOGIN = 78  # deploy: MySQL refused root (old and new password); no password changed
TIMEOUT = 124  # a step ran out of time (timeout(1)'s own code)

# backup.sh's own (docker/backup/lib/constants.sh; tests/unit/test_owners.py holds them
# together): another backup.sh run holds BACKUP_ROOT/.lock, so it did nothing.
BACKUP_SH_LOCKED = 5
