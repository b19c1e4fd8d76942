"""What the errors of reaching a host tell the operator to do: commands that work,
and flags only where the task takes them (destroy and status take no --host and
no --accept-new-host-key)."""

from __future__ import annotations

import shlex
import socket
import subprocess
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
