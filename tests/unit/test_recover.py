"""`inv recover`'s parts that need no host: what it refuses before touching
anything, and which services it starts before the restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tracker_deployer import lifecycle, recover
from tracker_deployer.errors import DeployError
from tracker_deployer.topology import Service, derive

from tests.helpers import parse, sample_data
from tests.unit.test_lifecycle import _inv, _write_env

OFFSITE = {"repository": "rest:http://127.0.0.1:9/r", "password": "pw", "keep": {"last": 3}}


def _with_offsite(name: str) -> dict[str, Any]:
    data = sample_data(name)
    data["backup"]["offsite"] = dict(OFFSITE)
    return data


def test_an_env_without_offsite_is_refused_with_the_section_to_add() -> None:
    with pytest.raises(DeployError) as refused:
        recover.check_request(parse(sample_data("e2e-mysql")), "latest", "")
    assert "has no backup.offsite" in refused.value.message
    assert "docs/user-guide/offsite.md" in (refused.value.hint or "")


@pytest.mark.parametrize("wanted", ["20261204", "../x", "20261204_1200001", "latest "])
def test_a_set_that_is_not_an_id_or_latest_is_refused(wanted: str) -> None:
    with pytest.raises(DeployError) as refused:
        recover.check_request(parse(_with_offsite("e2e-mysql")), wanted, "")
    assert "is not a set id" in refused.value.message


def test_lxd_makes_its_own_host_so_host_is_refused() -> None:
    env = parse(_with_offsite("e2e-mysql"))
    recover.check_request(env, "20261204_120000", "")
    with pytest.raises(DeployError) as refused:
        recover.check_request(env, "latest", "203.0.113.7")
    assert "makes the new host itself" in refused.value.message


def test_the_services_before_the_restore_leave_out_all_that_would_start_the_tracker() -> None:
    for name in ("e2e-mysql", "manual-test-mysql", "manual-test-sqlite"):
        env = parse(_with_offsite(name))
        started = recover.services_without_tracker(env)
        by_name = {service.name: service for service in derive(env).services}
        assert "tracker" not in started
        if env.uses_mysql:
            assert "mysql" in started
        # Nothing started needs the tracker, directly or through another service.
        for name_started in started:
            for dependency in by_name[name_started].depends_on:
                assert dependency.service in started, (name_started, dependency)
        # Everything else left out needs the tracker, directly or through another.
        profiled = {n for n, service in by_name.items() if service.profiles}
        assert {"backup", "offsite"} <= profiled
        assert not profiled & set(started)  # never started by up
        for left_out in set(by_name) - set(started) - profiled - {"tracker"}:
            assert _needs(by_name, left_out, "tracker"), left_out


def _needs(by_name: dict[str, Service], name: str, wanted: str) -> bool:
    return any(
        dependency.service == wanted or _needs(by_name, dependency.service, wanted)
        for dependency in by_name[name].depends_on
    )


def test_the_cli_refuses_without_a_traceback_and_touches_nothing(tmp_path: Path) -> None:
    result = _inv(tmp_path, "recover", "--env", "e2e-mysql")
    assert result.returncode == 1
    assert "has no backup.offsite" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()
    env = _write_env(tmp_path, _with_offsite("e2e-mysql"))
    bad = _inv(tmp_path, "recover", "--env", str(env), "--set", "x")
    assert bad.returncode == 1
    assert "--set 'x' is not a set id" in bad.stderr


def test_host_is_checked_and_refused_where_ssh_credentials_host_would_win() -> None:
    data = _with_offsite("manual-test-mysql")
    data["provider"] = {"provider": "existing"}
    data["ssh_credentials"].pop("host", None)
    env = parse(data)
    recover.check_request(env, "latest", "203.0.113.7")
    with pytest.raises(DeployError) as bad:
        recover.check_request(env, "latest", "a b")
    assert "--host 'a b'" in bad.value.message
    data["ssh_credentials"]["host"] = "203.0.113.9"
    with pytest.raises(DeployError) as refused:
        recover.check_request(parse(data), "latest", "203.0.113.7")
    assert "sets ssh_credentials.host (203.0.113.9)" in refused.value.message


@pytest.mark.parametrize(
    ("name", "again"), [("fetch", True), ("restore", True), ("tracker", False)]
)
def test_a_failed_phase_is_named_and_says_whether_recover_continues(name: str, again: bool) -> None:
    said: list[str] = []
    clock = lifecycle.PhaseClock(said.append, recover.PHASES)
    with pytest.raises(DeployError) as failed, recover._phase(clock, name):
        raise DeployError("it broke", "fix it")
    number = recover.PHASES.index(name) + 1
    assert failed.value.message == f"recover phase {number}/8 ({name}): it broke"
    assert ("run the same `inv recover` again" in (failed.value.hint or "")) is again
    assert said[0] == f"[{number}/8] {name}"
