"""`inv verify --offsite`: the host script's exit codes become one clear error each."""

from __future__ import annotations

from tracker_deployer import exit_codes, offsite
from tracker_deployer.errors import RemoteError
from tracker_deployer.remote.backups import VerificationFailed
from tracker_deployer.remote.offsite_fetch import verify_error

SET_ID = "20261127_030000"
STDERR = (
    "2026-11-27T03:00:00Z offsite: restoring set 20261127_030000\n"
    "2026-11-27T03:00:01Z offsite: error: restoring set 20261127_030000 failed "
    "(ciphertext verification failed)\n"
)


def test_a_copy_that_fails_the_drill_is_a_verification_failure() -> None:
    error = verify_error(exit_codes.NOT_VERIFIED, "", SET_ID)
    assert isinstance(error, VerificationFailed)
    assert error.exit_code == 4
    assert f"copy of set {SET_ID} FAILED the verify drill" in error.message
    assert "local sets were not touched" in error.message


def test_a_copy_that_cannot_be_restored_intact_names_offsites_cause() -> None:
    error = verify_error(offsite.OFFSITE_SH_EXIT["FAILED"], STDERR, SET_ID)
    assert isinstance(error, VerificationFailed)
    assert error.exit_code == 4
    assert "could not be restored intact" in error.message
    assert "ciphertext verification failed" in error.message
    assert "\n" not in str(error)


def test_a_missing_set_and_a_busy_lock_are_host_errors_with_their_cause() -> None:
    missing = verify_error(offsite.OFFSITE_SH_EXIT["NO_SET"], "", SET_ID)
    assert type(missing) is RemoteError
    assert "holds no such set" in missing.message
    busy = verify_error(exit_codes.LOCK_BUSY, "", SET_ID)
    assert "backup lock is held" in busy.message
    password = verify_error(offsite.OFFSITE_SH_EXIT["PASSWORD"], STDERR, SET_ID)
    assert type(password) is RemoteError
