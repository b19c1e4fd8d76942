"""The sandbox and e2e environments, the sandbox's pure helpers, and the deploy
details the e2e run depends on (read-only tracker config, the maintenance lock)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from tracker_deployer import image, paths, sandbox
from tracker_deployer.config import load_env
from tracker_deployer.errors import DeployError
from tracker_deployer.remote.deploy import EXIT_LOCK_BUSY, under_backup_lock
from tracker_deployer.topology import derive

from tests.e2e.remote_host import KEY
from tests.helpers import ENVS_DIR, parse, sample_data

LOCAL_ENVS = ("sandbox-sqlite", "e2e-sqlite", "e2e-mysql")
SCHEMA = Draft202012Validator(json.loads(paths.SCHEMA_FILE.read_text(encoding="utf-8")))


@pytest.mark.parametrize("name", LOCAL_ENVS)
def test_local_envs_are_valid_and_use_only_images_built_here(name: str) -> None:
    path = ENVS_DIR / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert list(SCHEMA.iter_errors(data)) == []
    env = load_env(path)
    assert env.images.tracker == sandbox.STANDIN_IMAGE
    assert env.images.backup == image.default_tag()  # what `inv build-image` tags
    used = {service.image for service in derive(env).services}
    assert used <= {sandbox.STANDIN_IMAGE, sandbox.MARIADB_IMAGE, image.default_tag()}
    assert env.ssh.username == "root"
    assert env.backup is not None


def test_sandbox_env_points_at_the_loopback_port_and_its_own_state_files() -> None:
    env = load_env(ENVS_DIR / "sandbox-sqlite.json")
    assert (env.ssh.host, env.ssh.port) == ("127.0.0.1", 2222)
    for path in (env.ssh.private_key_path, env.ssh.public_key_path, env.ssh.known_hosts_path):
        assert path is not None
        assert path.startswith(sandbox.STATE_DIR + "/")
    assert str(env.backup.schedule) == "*/5 * * * *"  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["e2e-sqlite", "e2e-mysql"])
def test_e2e_envs_name_no_host_and_the_key_the_tests_make(name: str) -> None:
    env = load_env(ENVS_DIR / f"{name}.json")
    assert env.ssh.host is None  # the tests pass --host
    assert env.ssh.private_key_path == str(KEY)
    assert env.ssh.port == 22
    assert str(env.backup.schedule) == "* * * * *"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "host=10.187.33.7 port=22 user=root name=t1",
            sandbox.TargetAddress("lxd", "t1", "10.187.33.7", 22, "root"),
        ),
        (
            "host=127.0.0.1 port=2222 user=root name=t1 deploy_dir=/opt/torrust",
            sandbox.TargetAddress("lxd", "t1", "127.0.0.1", 2222, "root"),
        ),
        ("name=t1 state=absent", None),
    ],
)
def test_parse_target_line_reads_the_scripts_last_line(
    line: str, expected: sandbox.TargetAddress | None
) -> None:
    assert sandbox.parse_target_line("lxd", line) == expected


def test_known_hosts_text_brackets_non_default_ports() -> None:
    keys = ["ssh-ed25519 AAAA1", "ecdsa-sha2-nistp256 AAAA2"]
    assert sandbox.known_hosts_text("127.0.0.1", 2222, keys) == (
        "[127.0.0.1]:2222 ssh-ed25519 AAAA1\n[127.0.0.1]:2222 ecdsa-sha2-nistp256 AAAA2\n"
    )
    assert sandbox.known_hosts_text("10.0.0.5", 22, keys[:1]) == "10.0.0.5 ssh-ed25519 AAAA1\n"


def test_choose_kind_takes_an_explicit_target_and_refuses_others() -> None:
    assert sandbox.choose_kind("container") == "container"
    assert sandbox.choose_kind("lxd") == "lxd"
    with pytest.raises(DeployError, match="not a sandbox target"):
        sandbox.choose_kind("vm")


def _sandbox_data(**ssh: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (ENVS_DIR / "sandbox-sqlite.json").read_text(encoding="utf-8")
    )
    data["ssh_credentials"].update(ssh)
    return data


@pytest.mark.parametrize(
    ("ssh", "fragment"),
    [
        ({"host": "192.0.2.10"}, "not a sandbox environment"),
        ({"port": 22}, "this machine's own sshd"),
        ({"username": "torrust"}, "authorizes root only"),
    ],
)
def test_sandbox_refuses_environments_that_do_not_point_at_it(
    ssh: dict[str, Any], fragment: str
) -> None:
    env = parse(_sandbox_data(**ssh))
    with pytest.raises(DeployError, match=fragment):
        sandbox.status(env)


def test_tracker_config_is_mounted_read_only() -> None:
    # The tracker image chowns/chmods /etc/torrust at start; on a writable mount every
    # deploy would "fix" the owner back and restart the tracker.
    tracker = derive(parse(sample_data("manual-test-sqlite"))).service("tracker")
    mounts = {mount.target: mount for mount in tracker.volumes}
    assert mounts["/etc/torrust/tracker"].read_only
    assert not mounts[paths.TRACKER_LIB_IN_CONTAINER].read_only


def test_compose_changes_run_under_the_maintenance_lock() -> None:
    command = under_backup_lock("docker compose restart tracker && docker compose up -d --wait")
    assert command.startswith("mkdir -p /run/lock && flock -E 75 -w ")
    assert f" {paths.BACKUP_LOCK} sh -c " in command
    assert command.endswith("'docker compose restart tracker && docker compose up -d --wait'")
    assert EXIT_LOCK_BUSY == 75


def test_sandbox_module_never_loads_fabric() -> None:
    # Only remote.ssh talks to hosts; the sandbox drives scripts/ and the ssh client.
    probe = (
        "import sys, tracker_deployer.sandbox; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fabric', 'paramiko')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
