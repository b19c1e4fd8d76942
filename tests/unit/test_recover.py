"""`inv recover`'s parts that need no host: what it refuses before touching
anything, and which services it starts before the restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tracker_deployer import exit_codes, lifecycle, recover, state
from tracker_deployer.errors import DeployError, RemoteError
from tracker_deployer.providers import lxd
from tracker_deployer.remote import backups as operations
from tracker_deployer.remote.ssh import Result, Target
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


RESTORE_WHERE = "203.0.113.7"


def _restore_phase_error(code: int, env_name: str = "prod") -> DeployError:
    """What recover's restore phase raises when restore.sh exits ``code``."""
    set_id = "20261127_030000"
    clock = lifecycle.PhaseClock(lambda _line: None, recover.PHASES)
    error = operations.restore_failure(code, set_id, RESTORE_WHERE, env_name, new_host=True)
    with pytest.raises(DeployError) as failed, recover._phase(clock, "restore"):
        raise error
    return failed.value


def test_a_partly_restored_set_on_the_new_host_says_to_run_recover_again() -> None:
    error = _restore_phase_error(exit_codes.PARTLY_RESTORED)
    hint = error.hint or ""
    assert error.message.startswith("recover phase 6/8 (restore): restoring set")
    assert "run `inv recover --env prod` again" in hint
    assert "inv restore" not in hint
    assert "safety set named above" not in hint
    assert hint.count("inv recover") == 1


def test_a_set_that_failed_its_drill_sends_to_the_repositorys_other_sets() -> None:
    error = _restore_phase_error(exit_codes.NOT_VERIFIED)
    hint = error.hint or ""
    assert "`inv backups --env prod --offsite`" in hint
    assert "`inv recover --env prod --set OTHER`" in hint
    assert "pick another set from `inv backups --env NAME`" not in hint
    assert "inv restore" not in hint


def test_a_busy_lock_during_the_restore_says_to_wait_and_run_recover_again() -> None:
    error = _restore_phase_error(exit_codes.LOCK_BUSY)
    hint = error.hint or ""
    assert "run `inv recover --env prod` again" in hint
    assert "inv restore" not in hint
    assert hint.count("inv recover") == 1


def test_other_restore_failures_keep_their_hint_and_say_recover_continues() -> None:
    error = _restore_phase_error(exit_codes.ROLLED_BACK)
    assert "run the same `inv recover` again" in (error.hint or "")


@pytest.mark.parametrize("name", ["tracker", "install-cron"])
def test_a_failure_after_the_restore_says_scheduled_backups_are_not_installed(name: str) -> None:
    clock = lifecycle.PhaseClock(lambda _line: None, recover.PHASES)
    with pytest.raises(DeployError) as failed, recover._phase(clock, name, "prod"):
        raise RemoteError("services not healthy after the restore: tracker", "see the logs")
    hint = failed.value.hint or ""
    assert hint.startswith("see the logs; ")
    assert "scheduled backups are not installed yet" in hint
    assert "`inv deploy --env prod`" in hint
    assert "run the same `inv recover` again" not in hint


def _lxd_instance(
    monkeypatch: pytest.MonkeyPatch, env_name: str, status: str, recorded: bool
) -> list[str]:
    """Fake LXD's record of the instance and the recorded address; provision is
    recorded (and stops the test there) instead of run."""
    instance = {"status": status, "config": {lxd.OWNER_KEY: env_name}}
    record = state.HostRecord("lxd", "10.0.0.5", 22) if recorded else None
    monkeypatch.setattr(lxd.Lxd, "instance", lambda _self: instance)
    monkeypatch.setattr(lxd.Lxd, "address", lambda _self: record)
    provisioned: list[str] = []

    def provision(env: Any, say: Any) -> None:
        provisioned.append(env.name)
        raise _Provisioned

    monkeypatch.setattr(lifecycle, "provision", provision)
    return provisioned


class _Provisioned(Exception):
    pass


@pytest.mark.parametrize(("status", "recorded"), [("Stopped", True), ("Running", False)])
def test_an_old_lxd_instance_is_refused_before_provision_starts_it(
    monkeypatch: pytest.MonkeyPatch, status: str, recorded: bool
) -> None:
    env = parse(_with_offsite("e2e-mysql"))
    provisioned = _lxd_instance(monkeypatch, env.name, status, recorded)
    with pytest.raises(DeployError) as refused:
        recover._host(env, lifecycle.RECORDED_HOST, lambda _line: None)
    assert provisioned == []
    assert "still exists" in refused.value.message
    assert "nothing was changed" in refused.value.message
    hint = refused.value.hint or ""
    assert f"`inv destroy --env {env.name}` first" in hint
    # How an earlier recover's instance goes on: started, or its address recorded
    # (`lxc start` of a running one fails, and the refusal came back every time).
    again = f"`inv provision --env {env.name}`" if status == "Running" else "`lxc start "
    assert again in hint


def test_a_running_recorded_lxd_instance_is_not_provisioned_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An earlier recover's instance, or the live old one: provision would run its
    first boot again (keys, sudoers, ssh) before the live check refused the old one
    with "nothing was changed" (a review). Recover goes on to that check without it."""
    env = parse(_with_offsite("e2e-mysql"))
    provisioned = _lxd_instance(monkeypatch, env.name, "Running", True)
    monkeypatch.setattr(lifecycle, "target", lambda *_args: Target("10.0.0.5", 22, "t", "/k"))
    found = recover._host(env, lifecycle.RECORDED_HOST, lambda _line: None)
    assert provisioned == []
    assert found.host == "10.0.0.5"


class _Connection:
    """A stand-in for the host's connection: ``run`` answers with ``ok`` (what
    require_sftp_keys asks is one `test -f` line)."""

    def __init__(self, ok: bool) -> None:
        self.ok = ok
        self.asked: list[str] = []
        self.target = Target("203.0.113.20", 22, "root", "/k")

    def run(self, command: str) -> Result:
        self.asked.append(command)
        return Result(0 if self.ok else 1, "", "")


def test_an_sftp_recover_without_the_keys_on_the_new_host_says_how_to_go_on() -> None:
    """The fetch failed with "deploy again", which the recover's marker refuses: a loop
    (a review). The keys' absence is named, with the step that installs them."""
    data = sample_data("manual-test-sqlite")
    data["backup"]["offsite"] = {"repository": "sftp:backup@b.example.com:/srv/r", "password": "p"}
    env = parse(data)
    missing = _Connection(ok=False)
    with pytest.raises(DeployError) as refused:
        recover.require_sftp_keys(missing, env)  # type: ignore[arg-type]
    assert "/opt/torrust/storage/backup-etc/offsite-ssh/id and " in refused.value.message
    assert "offsite.md#sftp" in str(refused.value.hint)
    assert "inv recover --env manual-test-sqlite" in str(refused.value.hint)
    assert missing.asked == [
        "test -f /opt/torrust/storage/backup-etc/offsite-ssh/id && "
        "test -f /opt/torrust/storage/backup-etc/offsite-ssh/known_hosts"
    ]
    recover.require_sftp_keys(_Connection(ok=True), env)  # type: ignore[arg-type]
    data["backup"]["offsite"]["repository"] = "/mnt/offsite/restic"
    not_sftp = _Connection(ok=False)
    recover.require_sftp_keys(not_sftp, parse(data))  # type: ignore[arg-type]
    assert not_sftp.asked == []
