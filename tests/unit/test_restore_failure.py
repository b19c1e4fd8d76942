"""What `inv restore` says for each exit code of the restore script: whether anything
changed and whether the tracker runs are the operator's first questions."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from tracker_deployer import exit_codes
from tracker_deployer.remote.backups import (
    VerificationFailed,
    restore_failure,
    restore_script,
    verify_failure,
)

from tests.helpers import parse, sample_data

SET = "20261126_030000"


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (exit_codes.LOCK_BUSY, "nothing was changed"),
        (exit_codes.NOT_VERIFIED, "nothing was changed"),
        (exit_codes.SAFETY_BACKUP_FAILED, "the tracker runs as before"),
        (exit_codes.ROLLED_BACK, "put back from the safety set, and the tracker runs as before"),
        (exit_codes.PARTLY_RESTORED, "partly restored, so the tracker stays stopped"),
        (exit_codes.TRACKER, "the tracker could not be started again"),
        (exit_codes.UNSAFE, "a deploy on 203.0.113.10 failed after it pushed files"),
        (4, "failed (exit 4)"),
    ],
)
def test_each_exit_code_says_what_changed_and_whether_the_tracker_runs(
    code: int, says: str
) -> None:
    error = restore_failure(code, SET, "203.0.113.10", "prod")
    assert says in error.message
    assert isinstance(error, VerificationFailed) == (code == exit_codes.NOT_VERIFIED)


def test_a_partly_restored_database_names_the_commands_that_go_on() -> None:
    error = restore_failure(exit_codes.PARTLY_RESTORED, SET, "203.0.113.10", "prod")
    assert error.hint is not None
    assert "inv restore --env prod --set SET --yes" in error.hint
    rolled = restore_failure(exit_codes.ROLLED_BACK, SET, "203.0.113.10", "prod")
    assert f"inv verify --env prod --set {SET}" in (rolled.hint or "")


@pytest.mark.parametrize(
    ("code", "says", "failed"),
    [
        (exit_codes.LOCK_BUSY, "was not verified: the backup lock", False),
        (exit_codes.BACKUP_SH_LOCKED, "was not verified: another backup.sh run holds", False),
        (exit_codes.NO_SET, "was not verified: it was deleted on 203.0.113.10", False),
        (4, "FAILED verification (exit 4)", True),
    ],
)
def test_a_lock_is_no_failed_verification(code: int, says: str, failed: bool) -> None:
    """A drill that could not run (a lock) said FAILED, do not rely on this set,
    for a good set (a review)."""
    error = verify_failure(code, SET, "203.0.113.10")
    assert says in error.message
    assert isinstance(error, VerificationFailed) == failed
    assert ("do not rely on this set" in (error.hint or "")) == failed


def test_the_partly_restored_marker_names_the_set_being_loaded(tmp_path: Path) -> None:
    """While the safety set is put back, the marker said the set asked for: should the
    put-back fail, `inv backups` named a set the database did not hold part of (a
    review). The script's own function, run on its own."""

    script = restore_script(
        parse(sample_data("manual-test-mysql")), "20261125_030000", "all", verify_first=True
    )
    found = re.search(r"^mark_partly_restored\(\) \{\n.*?^\}\n", script, re.S | re.M)
    assert found is not None
    marker = tmp_path / "status/restore-incomplete"
    subprocess.run(
        ["bash", "-c", found.group(0) + "mark_partly_restored", "_"],
        env={
            "PATH": "/usr/bin:/bin",
            "STATUS_DIR": str(marker.parent),
            "RESTORE_MARKER": str(marker),
            "SET_ID": "20261125_030000",
            "LOAD_SET": "20261126_030000",
        },
        check=True,
    )
    assert marker.read_text().startswith("set=20261126_030000\n")
