"""What the errors of reaching a host tell the operator to do: commands that work,
and flags only where the task takes them (destroy and status take no --host and
no --accept-new-host-key)."""

from __future__ import annotations

import shlex
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import fabric
import paramiko
import pytest
from tracker_deployer import lifecycle, state
from tracker_deployer.errors import DeployError, RemoteError
from tracker_deployer.remote import ssh

from tests.helpers import parse, sample_data


def _host(tmp_path: Path, port: int = 22, *, host_flags: bool = True) -> ssh.SshHost:
    key = tmp_path / "id_test"
    key.write_text("not read: no connection is opened\n")
    target = ssh.Target(
        "10.0.0.5", port, "root", str(key), known_hosts_path=str(tmp_path / "known_hosts")
    )
    return ssh.SshHost(target, host_flags=host_flags)


def _refused_with(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def refused(_self: Any) -> None:
        raise error

    monkeypatch.setattr(fabric.Connection, "open", refused)


@pytest.mark.parametrize("port", [22, 2222])
def test_the_changed_key_hint_removes_the_old_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int
) -> None:
    """For port 22 the hint said `ssh-keygen -R '[HOST]:22'`, which removes nothing:
    known_hosts names a port-22 host without brackets."""
    old, new = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    known = tmp_path / "known_hosts"
    known.write_text(
        state.known_hosts_text("10.0.0.5", port, [f"{old.get_name()} {old.get_base64()}"])
        + "10.0.0.50 ssh-ed25519 KEEP\n"
    )
    _refused_with(monkeypatch, paramiko.BadHostKeyException("10.0.0.5", new, old))
    with pytest.raises(RemoteError, match="does not match") as refused:
        _host(tmp_path, port).open()
    hint = refused.value.hint or ""
    command = hint.split("`")[1]
    assert command.startswith("ssh-keygen -R ")
    subprocess.run(shlex.split(command), check=True, capture_output=True)
    assert known.read_text() == "10.0.0.50 ssh-ed25519 KEEP\n"


@pytest.mark.parametrize(
    ("error", "flag"),
    [
        (
            paramiko.SSHException("Server '10.0.0.5' not found in known_hosts"),
            "--accept-new-host-key",
        ),
        (socket.gaierror(-2, "Name or service not known"), "--host"),
    ],
)
def test_hints_name_host_flags_only_for_tasks_that_take_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, flag: str
) -> None:
    _refused_with(monkeypatch, error)
    with pytest.raises(RemoteError) as task_with_flags:
        _host(tmp_path).open()
    assert flag in (task_with_flags.value.hint or "")
    with pytest.raises(RemoteError) as task_without:
        _host(tmp_path, host_flags=False).open()
    assert flag not in (task_without.value.hint or "")


def _existing_env(tmp_path: Path, host: str | None = None) -> Any:
    data = sample_data("manual-test-sqlite")
    data["provider"] = {"provider": "existing"}
    key = tmp_path / "id_test"
    key.write_text("not read: no connection is opened\n")
    data["ssh_credentials"]["private_key_path"] = str(key)
    data["ssh_credentials"]["public_key_path"] = f"{key}.pub"
    if host is not None:
        data["ssh_credentials"]["host"] = host
    return parse(data)


def test_status_without_a_host_does_not_suggest_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`inv status` said "or pass --host ADDRESS"; invoke answers that with "No idea
    what '--host' is!". destroy takes --host (another host than the recorded one)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    env = _existing_env(tmp_path)
    report = lifecycle.status(env)
    assert "inv register --env" in report["error"]
    assert "pass --host" not in report["error"]
    with pytest.raises(DeployError, match="none is recorded") as refused:
        lifecycle.destroy(env, False, lambda _line: None)
    assert "or pass --host ADDRESS" in str(refused.value)
    # deploy takes --host: its hint names it.
    with pytest.raises(DeployError, match="none is recorded") as refused:
        lifecycle.deploy(env, None, lambda _line: None)  # type: ignore[arg-type]
    assert "or pass --host ADDRESS" in str(refused.value)


def test_status_of_an_unknown_host_does_not_suggest_accepting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    _refused_with(monkeypatch, paramiko.SSHException("Server '10.0.0.5' not found in known_hosts"))
    env = _existing_env(tmp_path, host="10.0.0.5")
    report = lifecycle.status(env)
    assert "is not in" in report["error"]
    assert "ssh-keyscan" in report["error"]
    assert "--accept-new-host-key" not in report["error"]
    with pytest.raises(RemoteError, match="is not in") as refused:
        lifecycle.destroy(env, False, lambda _line: None)
    assert "--accept-new-host-key" in str(refused.value)  # destroy takes it


class _SilentTransport:
    """A stand-in for paramiko's Transport on a host gone silent in a key exchange:
    active, nothing received, and each global request fails as paramiko's does after
    its 30 s wait for the exchange."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.packetizer = type("P", (), {"_Packetizer__received_packets": 7})()

    def is_active(self) -> bool:
        return not self.closed.is_set()

    def global_request(self, _kind: str, wait: bool = True) -> None:  # noqa: ARG002
        raise paramiko.SSHException("Key-exchange timed out waiting for key negotiation")

    def close(self) -> None:
        self.closed.set()


def test_a_probe_that_fails_on_a_live_transport_is_no_answer() -> None:
    """A failed probe counted as an answer: a host lost during a key exchange was
    never given up (a review)."""
    from tracker_deployer.remote.ssh import _Liveness

    transport = _SilentTransport()
    watch = _Liveness(transport, 0.05, 2)  # type: ignore[arg-type]
    try:
        assert transport.closed.wait(5), "the watchdog kept a silent host"
        assert watch.dead
    finally:
        watch.stop()


@pytest.mark.parametrize(
    ("recorded", "given", "same"),
    [
        ("2001:db8::1", "2001:DB8:0::1", True),
        ("2001:db8::1", "2001:db8:0:0:0:0:0:1", True),
        ("tracker.example.com", "Tracker.Example.COM", True),
        ("203.0.113.10", "203.0.113.11", False),
        ("tracker.example.com", "old.example.com", False),
    ],
)
def test_destroy_knows_the_environments_host_in_any_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: str, given: str, same: bool
) -> None:
    """Taken for another host, the environment's own lost its stack and kept a record
    saying it was not its host (a review)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    env = _existing_env(tmp_path, host=recorded)
    assert lifecycle.names_recorded_host(env, given) is same
