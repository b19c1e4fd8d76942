"""The sample, sandbox and e2e environments, and the deploy details the e2e run
depends on (read-only tracker config, the maintenance lock)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import PurePosixPath

import pytest
from jsonschema import Draft202012Validator
from tracker_deployer import exit_codes, image, monitoring, paths, sandbox, state
from tracker_deployer.config import load_env
from tracker_deployer.remote import configure
from tracker_deployer.remote.deploy import under_backup_lock
from tracker_deployer.topology import derive

from tests.helpers import ENVS_DIR, REPO_ROOT, parse, sample_data

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
    assert used <= {*sandbox.TEST_DOUBLE_IMAGES, image.default_tag()}
    assert env.ssh.username == "root"
    assert env.backup is not None


@pytest.mark.parametrize("name", [*LOCAL_ENVS, "manual-test-mysql", "manual-test-sqlite"])
def test_sample_envs_name_the_project_key_and_no_host(name: str) -> None:
    # The key pair is made on first use in the state directory; the host is state too.
    env = load_env(ENVS_DIR / f"{name}.json")
    assert env.ssh.private_key_path == f"{state.SPELLED}/ssh/{state.KEY_NAME}"
    assert env.ssh.public_key_path == f"{state.SPELLED}/ssh/{state.KEY_NAME}.pub"
    assert env.ssh.host is None
    assert env.ssh.known_hosts_path is None
    assert env.provider.kind == "lxd"


def test_no_placeholder_paths_remain_in_envs() -> None:
    for path in ENVS_DIR.glob("*.json"):
        assert "/path/to" not in path.read_text(encoding="utf-8"), path


@pytest.mark.parametrize("name", ["e2e-sqlite", "e2e-mysql"])
def test_e2e_envs_share_one_instance_and_publish_the_tracker(name: str) -> None:
    env = load_env(ENVS_DIR / f"{name}.json")
    assert env.provider.profile_name == "tracker-deployer-e2e"  # type: ignore[union-attr]
    assert env.ssh.port == 22
    assert str(env.backup.schedule) == "* * * * *"  # type: ignore[union-attr]
    published = {(p.host, p.protocol) for p in configure.published_ports(env)}
    assert (7070, "tcp") in published
    assert all(port != 3306 for port, _ in published)


@pytest.mark.parametrize("name", ["e2e-sqlite", "e2e-mysql"])
def test_e2e_envs_run_prometheus_and_node_exporter_doubles_scraping_every_second(
    name: str,
) -> None:
    # The e2e reads backup health from the stack's Prometheus (tests/e2e): the two
    # Debian-built stand-ins, named once in tracker_deployer.sandbox.
    env = load_env(ENVS_DIR / f"{name}.json")
    assert env.prometheus is not None
    assert env.prometheus.scrape_interval_in_secs == 1
    assert env.images.prometheus == sandbox.PROMETHEUS_IMAGE
    assert env.images.node_exporter == sandbox.NODE_EXPORTER_IMAGE
    services = {service.name: service for service in derive(env).services}
    assert services["prometheus"].image == sandbox.PROMETHEUS_IMAGE
    assert services[monitoring.NODE_EXPORTER_SERVICE].image == sandbox.NODE_EXPORTER_IMAGE
    # Prometheus stays on the host's loopback: the e2e queries it over SSH.
    assert {port.host_ip for port in services["prometheus"].ports} == {"127.0.0.1"}
    assert services[monitoring.NODE_EXPORTER_SERVICE].ports == ()


def test_setup_script_builds_exactly_the_test_doubles_named_in_python() -> None:
    # scripts/e2e-common.sh names the images e2e-setup.sh builds; sandbox.py names
    # the ones the envs and tests use. They must be the same images.
    probe = (
        'source scripts/e2e-common.sh && for name in "${E2E_IMAGE_NAMES[@]}"; do '
        'e2e_image_ref "$name"; done'
    )
    result = subprocess.run(
        ["bash", "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert sorted(result.stdout.split()) == sorted(sandbox.TEST_DOUBLE_IMAGES)


def test_tracker_config_is_mounted_read_only() -> None:
    # The tracker image chowns/chmods /etc/torrust at start; on a writable mount every
    # deploy would "fix" the owner back and restart the tracker.
    tracker = derive(parse(sample_data("manual-test-sqlite"))).service("tracker")
    mounts = {mount.target: mount for mount in tracker.volumes}
    assert mounts["/etc/torrust/tracker"].read_only
    assert not mounts[paths.TRACKER_LIB_IN_CONTAINER].read_only


def test_compose_changes_run_under_the_maintenance_lock() -> None:
    command = under_backup_lock("docker compose restart tracker && docker compose up -d --wait")
    assert command.startswith(f"mkdir -p {paths.BACKUP_LOCK.parent} && flock -E 75 -w ")
    # Where only root may create it: /run, not the world-writable /run/lock.
    assert paths.BACKUP_LOCK.parent == PurePosixPath("/run")
    assert f" {paths.BACKUP_LOCK} sh -c " in command
    assert command.endswith("'docker compose restart tracker && docker compose up -d --wait'")
    assert exit_codes.LOCK_BUSY == 75


def test_sandbox_module_never_loads_fabric() -> None:
    # Only remote.ssh talks to hosts; the sandbox module holds names only.
    probe = (
        "import sys, tracker_deployer.sandbox; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fabric', 'paramiko')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
