"""The host lifecycle on the LXD host `inv provision` made (conftest.py): deploy by
the recorded host, the firewall seen from this machine, a second configure and
deploy that change nothing, an image that cannot be pulled, a foreign instance
that is never touched, and destroy (refused while sets exist, then done).

Runs after test_deploy_and_backup.py (file order): destroy removes the host.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tracker_deployer import state

from tests.e2e.remote_host import (
    PROVISIONED_ENV,
    TARGET_NAME,
    RemoteHost,
    env_argument,
    inv,
    lxc_exec,
    shown,
)

pytestmark = pytest.mark.e2e

Say = Callable[[str], None]
FOREIGN = "tracker-deployer-e2e-foreign"


def _answers_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return bool(sock.recv(64))
    except OSError:
        return False


UNPUBLISHED = 8081  # no service of the stack publishes it
# perl-base is part of every Debian: a listener on all addresses that greets and closes.
_LISTENER = (
    "use IO::Socket::INET; my $server = IO::Socket::INET->new("
    f"LocalAddr => '0.0.0.0', LocalPort => {UNPUBLISHED}, Listen => 5, ReuseAddr => 1"
    ') or die $!; while (my $client = $server->accept) { print $client "hello\\n"; close $client }'
)
_PROBE = (
    f"perl -MIO::Socket::INET -e 'IO::Socket::INET->new(\"127.0.0.1:{UNPUBLISHED}\") or exit 1'"
)


def _stop_lxd_daemon() -> None:
    """SIGTERM to the LXD daemon: it exits and leaves its instances running."""
    killed = subprocess.run(["pkill", "-TERM", "-x", "lxd"], capture_output=True, check=False)
    assert killed.returncode == 0, "no LXD daemon was running"
    for _ in range(60):
        down = subprocess.run(["lxc", "query", "/1.0"], capture_output=True, check=False)
        if down.returncode != 0 and b"unix.socket" in down.stderr:
            return
        time.sleep(0.5)
    raise AssertionError("the LXD daemon still answers 30 s after SIGTERM")


def _env_copy(tmp_path: Path, **changes: object) -> Path:
    data = env_argument.data(PROVISIONED_ENV)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = tmp_path / f"{PROVISIONED_ENV}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_deploy_by_the_recorded_host_then_nothing_changes(target: RemoteHost, say: Say) -> None:
    # No --host, no --known-hosts, no --accept-new-host-key: all of it is state.
    say(f"inv deploy --env {PROVISIONED_ENV} (host and host keys from the state directory)")
    first = inv("deploy", "--env", env_argument(PROVISIONED_ENV))
    assert first.returncode == 0, shown(first)
    for phase in ("provision", "configure", "push", "compose up", "install-cron", "health"):
        assert f"] {phase}\n" in first.stdout, first.stdout
        assert f"      {phase}: " in first.stdout  # its time
    assert "skipped: the host is known" in first.stdout
    say("inv configure, then inv deploy again: nothing may change")
    configured = inv("configure", "--env", env_argument(PROVISIONED_ENV))
    assert configured.returncode == 0, shown(configured)
    assert "configure: 0 changed, 6 unchanged" in configured.stdout, configured.stdout
    assert "  changed" not in configured.stdout
    say("cron disabled by hand (docker still enabled): configure enables it again")
    disabled = lxc_exec("systemctl disable --quiet cron")
    assert disabled.returncode == 0, disabled.stderr
    again = inv("configure", "--env", env_argument(PROVISIONED_ENV))
    assert again.returncode == 0, shown(again)
    assert "configure: 1 changed, 5 unchanged" in again.stdout, again.stdout
    assert lxc_exec("systemctl is-enabled --quiet cron").returncode == 0
    second = inv("deploy", "--env", env_argument(PROVISIONED_ENV))
    assert second.returncode == 0, shown(second)
    assert "nothing changed" in second.stdout, second.stdout
    say(f"  second deploy: {second.stdout.strip().splitlines()[-3:]}")


def test_published_tracker_port_answers_from_here_and_mysql_does_not(
    target: RemoteHost, say: Say
) -> None:
    host = target.address.host
    services = target.services()
    assert services["mysql"]["state"] == "running"  # it runs, only unreachable from here
    assert _answers_tcp(host, 7070), f"the tracker's published port {host}:7070 does not answer"
    assert not _answers_tcp(host, 3306), f"MySQL answers on {host}:3306 from this machine"
    # The health-check API is bound to the host's loopback: not from here either.
    assert not _answers_tcp(host, 1313)
    rules = target.check("nft list table inet tracker_deployer")
    assert "tcp dport 7070" in rules or "7070" in rules
    # A port the stack does not publish, listened on by every address of the host:
    # it answers on the host itself, and only the firewall keeps it from here.
    listener = lxc_exec(f"nohup perl -e {shlex.quote(_LISTENER)} </dev/null >/dev/null 2>&1 &")
    assert listener.returncode == 0, listener.stderr
    try:
        inside = lxc_exec(f"for i in $(seq 50); do {_PROBE} && exit 0; sleep 0.1; done; exit 1")
        assert inside.returncode == 0, f"nothing listens on :{UNPUBLISHED}: {inside.stderr}"
        assert not _answers_tcp(host, UNPUBLISHED), (
            f"{host}:{UNPUBLISHED} answers from this machine: the firewall let it in"
        )
    finally:
        lxc_exec(f"pkill -f '[L]ocalPort => {UNPUBLISHED}' || true")
    say(
        f"  {host}:7070 answers; {host}:3306, {host}:1313 and a listener on "
        f"0.0.0.0:{UNPUBLISHED} (answering on the host) do not"
    )


def test_an_image_that_cannot_be_pulled_is_one_clear_line(
    target: RemoteHost, tmp_path: Path, say: Say
) -> None:
    # A registry on the host's loopback that does not exist: the pull fails at once,
    # and no traffic leaves the machines this test made.
    unpullable = "127.0.0.1:5999/torrust/tracker:v0.0.0-e2e"
    env = _env_copy(tmp_path, images__tracker=unpullable)
    result = inv("deploy", "--env", str(env))
    assert result.returncode == 3, shown(result)
    error = result.stderr.strip().splitlines()
    assert len(error) == 1, result.stderr
    assert f"cannot pull image {unpullable}" in error[0]
    assert "sandbox" in error[0]
    # Everything before the pull succeeded.
    assert "      configure: " in result.stdout
    assert "      push: " in result.stdout
    say(f"  {error[0][:160]}")
    restored = inv("deploy", "--env", env_argument(PROVISIONED_ENV))
    assert restored.returncode == 0, shown(restored)


def test_status_reports_provider_host_services_and_last_backup(target: RemoteHost) -> None:
    taken = inv("backup", "--env", PROVISIONED_ENV)
    assert taken.returncode == 0, shown(taken)
    target.wait_healthy("tracker", 120)  # the backup restarted it
    result = inv("status", "--env", PROVISIONED_ENV, "--json")
    assert result.returncode == 0, shown(result)
    report = json.loads(result.stdout)
    assert report["provider"] == "lxd"
    assert report["instance"] == TARGET_NAME
    assert report["host"] == f"{target.address.host}:22"
    health = {row["service"]: row["health"] for row in report["services"]}
    assert health["tracker"] == "healthy"
    assert health["mysql"] == "healthy"
    assert report["last_backup_run"]["result"] == "success"
    assert report["backup_sets"] >= 1


def test_provision_authorizes_a_key_pair_made_anew_on_the_running_instance(
    target: RemoteHost, tmp_path: Path, say: Say
) -> None:
    """The state directory's key pair is lost (or public_key_path changed): the next
    command makes a new pair, which the running instance did not know, and
    `inv provision` said "unchanged": no command could log in again."""
    ssh = env_argument.data(PROVISIONED_ENV)["ssh_credentials"]
    private = state.resolve(ssh["private_key_path"])
    old_public = private.with_suffix(".pub").read_text()
    for path in (private, private.with_suffix(".pub")):
        path.rename(tmp_path / path.name)
    # A key someone added by hand: the first boot run again keeps it.
    theirs = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRoZWlyIG93biBrZXkgZm9yIHRoZSB0ZXN0 theirs"
    keys = f"~{ssh['username']}/.ssh/authorized_keys"
    added = lxc_exec(f"printf '%s\\n' '{theirs}' >> {keys}")
    assert added.returncode == 0, added.stderr
    say("the key pair is gone: inv provision makes a new one and authorizes it")
    result = inv("provision", "--env", env_argument(PROVISIONED_ENV))
    if result.returncode != 0:  # the old pair back: the tests after this one log in
        for path in (private, private.with_suffix(".pub")):
            (tmp_path / path.name).replace(path)
    assert result.returncode == 0, shown(result)
    assert "made the SSH key pair" in result.stdout, result.stdout
    assert private.with_suffix(".pub").read_text() != old_public
    status = inv("status", "--env", PROVISIONED_ENV, "--json")
    assert status.returncode == 0, shown(status)
    assert json.loads(status.stdout)["host"] == f"{target.address.host}:22"
    authorized = lxc_exec(f"cat {keys}")
    assert theirs in authorized.stdout, authorized.stdout
    assert private.with_suffix(".pub").read_text().strip() in authorized.stdout


def test_a_foreign_instance_is_refused_and_never_touched(tmp_path: Path, say: Say) -> None:
    subprocess.run(["lxc", "delete", "--force", FOREIGN], capture_output=True, check=False)
    made = subprocess.run(
        ["lxc", "init", "--empty", FOREIGN, "-c", "user.note=not-ours"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    try:
        # (an environment of its own: one with the recorded instance's name is refused
        # before, for naming another instance than its record)
        env = _env_copy(
            tmp_path, provider__profile_name=FOREIGN, environment__name="e2e-foreign-check"
        )
        for task in (["provision"], ["destroy", "--delete-backups"]):
            refused = inv(*task, "--env", str(env))
            assert refused.returncode == 1, shown(refused)
            assert "was not created by tracker-deployer" in refused.stderr
            assert "not touching it" in refused.stderr
        config = subprocess.run(
            ["lxc", "config", "show", FOREIGN], capture_output=True, text=True, check=True
        ).stdout
        assert "user.note: not-ours" in config
        assert "user.tracker-deployer" not in config
        say(f"  {FOREIGN}: provision and destroy refused, instance untouched")
    finally:
        subprocess.run(["lxc", "delete", "--force", FOREIGN], capture_output=True, check=False)


def test_destroy_refuses_while_sets_exist_then_removes_the_instance(
    target: RemoteHost, say: Say
) -> None:
    assert target.complete_sets(), "the status test took a backup"
    # A stopped instance's sets cannot be checked: refused too, nothing deleted.
    subprocess.run(["lxc", "stop", TARGET_NAME], check=True, timeout=120)
    try:
        stopped = inv("destroy", "--env", PROVISIONED_ENV)
        assert stopped.returncode == 1, shown(stopped)
        assert "its backup sets cannot be checked" in stopped.stderr
    finally:
        subprocess.run(["lxc", "start", TARGET_NAME], check=True, timeout=120)
    # A daemon that is not running (a reboot, a killed daemon: no systemd here)
    # still holds the instance: destroy starts it and refuses, never "not there".
    _stop_lxd_daemon()
    refused = inv("destroy", "--env", PROVISIONED_ENV)
    assert refused.returncode == 1, shown(refused)
    assert "refusing to destroy" in refused.stderr
    assert f"inv fetch-backup --env {PROVISIONED_ENV}" in refused.stderr
    assert subprocess.run(["lxc", "info", TARGET_NAME], capture_output=True).returncode == 0
    say(f"  refused: {refused.stderr.strip()[:160]}")
    done = inv("destroy", "--env", PROVISIONED_ENV, "--delete-backups")
    assert done.returncode == 0, shown(done)
    assert subprocess.run(["lxc", "info", TARGET_NAME], capture_output=True).returncode != 0
    assert state.read_record(PROVISIONED_ENV) is None
    assert not state.known_hosts_path(PROVISIONED_ENV).exists()
    say(f"  {TARGET_NAME} destroyed with --delete-backups")
