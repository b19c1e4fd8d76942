"""A fetch from the off-host repository (`inv restore --from offsite`, `inv recover`,
`verify --offsite`, `fetch-backup --offsite`): every exit code of the host script
becomes an error about the fetch, never about a listing."""

from __future__ import annotations

import pytest
from tracker_deployer import exit_codes, offsite
from tracker_deployer.remote.offsite_fetch import FETCH_TIMEOUT_SECONDS, fetch_error

SET_ID = "20261127_030000"


def test_a_locked_repository_or_a_running_earlier_container_is_said_as_such() -> None:
    stderr = (
        "an earlier off-host container of this stack still runs (tracker-backup-7-offsite); "
        "nothing was fetched\n"
    )
    error = fetch_error(offsite.OFFSITE_SH_EXIT["LOCKED"], stderr, SET_ID)
    assert error.message.startswith(f"set {SET_ID}: the off-host repository is locked")
    assert "an earlier off-host container of this stack still runs" in error.message
    assert "docker rm -f" in (error.hint or "")
    assert "listing" not in str(error)


@pytest.mark.parametrize(("code", "how"), [(exit_codes.TIMEOUT, "stopped"), (137, "killed")])
def test_a_fetch_out_of_time_says_so(code: int, how: str) -> None:
    error = fetch_error(code, "the fetch did not finish within 21600 s and was stopped\n", SET_ID)
    assert f"did not finish within {FETCH_TIMEOUT_SECONDS} s and was {how}" in error.message
    assert "nothing was kept" in error.message
    assert "listing" not in str(error)


def test_any_other_failure_is_a_failed_fetch_with_the_hosts_last_words() -> None:
    stderr = (
        "mv: cannot move 'x' to 'manifests/set_20261127_030000.meta': Permission denied\n"
        "moving set 20261127_030000 into place failed (exit 1); the files moved so far are "
        "without the set's .sha256, an incomplete set: remove them, then fetch again\n"
    )
    error = fetch_error(1, stderr, SET_ID)
    assert error.message.startswith(f"fetching set {SET_ID} failed (exit 1): moving set")
    assert "without the set's .sha256" in error.message
    assert "listing" not in str(error)
    assert fetch_error(42, "", SET_ID).message == f"fetching set {SET_ID} failed (exit 42)"


def test_the_repositorys_settings_reachability_and_password_keep_their_causes() -> None:
    error = fetch_error(offsite.OFFSITE_SH_EXIT["PASSWORD"], "", SET_ID)
    assert error.message == f"fetching set {SET_ID}: the repository password is wrong"
