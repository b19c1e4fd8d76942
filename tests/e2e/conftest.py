"""End-to-end tier: the real CLI against a real target host (`nox -s e2e`).

`--target lxd` (default) makes the host an LXD system container with its own
dockerd; `--target container` a container with sshd + cron that drives this
machine's dockerd (for machines without LXD). Both come from scripts/ (see
tests/e2e/README.md). Progress lines start with `E2E:` and are printed even
when the tests pass, so a CI log shows what was checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tracker_deployer.sandbox import (
    CONTAINER,
    KINDS,
    LXD,
    ensure_key_pair,
    host_keys,
    known_hosts_text,
    missing_images,
    start_target,
    stop_target,
)

from tests.e2e.remote_host import (
    BACKUP_IMAGE,
    DEPLOY_DIR,
    KEY,
    MARIADB_IMAGE,
    STANDIN_IMAGE,
    TARGET_HOST_IMAGE,
    TARGET_NAME,
    RemoteHost,
)

Say = Callable[[str], None]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--target",
        choices=KINDS,
        default=LXD,
        help="e2e target host: lxd (an LXD instance, default) or container "
        "(sshd + cron in a container using this machine's docker daemon)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("TRACKER_DEPLOYER_E2E") == "1":
        return
    skip = pytest.mark.skip(reason="end-to-end tests run with `nox -s e2e`")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def say(pytestconfig: pytest.Config) -> Say:
    """Print an `E2E:` progress line now, past pytest's output capture."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")

    def write(message: str) -> None:
        lines = [f"E2E: [{time.strftime('%H:%M:%S')}] {line}" for line in message.splitlines()]
        with capture.global_and_fixture_disabled():
            for line in lines:
                if reporter is not None:
                    reporter.write_line(line)
                else:
                    print(line, flush=True)

    return write


@pytest.fixture(scope="session")
def target_kind(pytestconfig: pytest.Config) -> str:
    kind: str = pytestconfig.getoption("--target")
    return kind


def _require_machine(kind: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("the e2e tests need root (LXD, docker, /opt/torrust): run them as root")
    if shutil.which("ssh") is None:
        pytest.fail("the ssh client is missing: run scripts/setup.sh")
    images = [BACKUP_IMAGE, STANDIN_IMAGE, MARIADB_IMAGE]
    if kind == CONTAINER:
        images.append(TARGET_HOST_IMAGE)
    missing = missing_images(images)
    if missing:
        pytest.fail(
            f"missing images {missing}: run scripts/e2e-setup.sh and `inv build-image` "
            "(`nox -s e2e` does both)"
        )


def _deploy_dir_in_use() -> bool:
    """The container target deploys into this machine's /opt/torrust."""
    deploy_dir = Path(DEPLOY_DIR)
    if deploy_dir.exists() and any(deploy_dir.iterdir()):
        return True
    result = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=torrust"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return bool(result.stdout.strip())


@pytest.fixture(scope="session")
def target(
    target_kind: str, tmp_path_factory: pytest.TempPathFactory, say: Say
) -> Iterator[RemoteHost]:
    """One target host for the whole run; removed afterwards, also after a failure."""
    _require_machine(target_kind)
    if target_kind == CONTAINER and _deploy_dir_in_use():
        pytest.fail(
            f"{DEPLOY_DIR} or a compose project 'torrust' is in use on this machine, and the "
            "container target deploys there (a container sandbox? `inv sandbox.down`)"
        )
    public_key = ensure_key_pair(KEY, comment="tracker-deployer-e2e")
    say(f"creating the {target_kind} target host {TARGET_NAME}")
    started = time.monotonic()
    try:
        address = start_target(target_kind, TARGET_NAME, public_key, images=[BACKUP_IMAGE])
        known_hosts = tmp_path_factory.mktemp("harness") / "known_hosts"
        known_hosts.write_text(
            known_hosts_text(address.host, address.port, host_keys(target_kind, TARGET_NAME))
        )
        say(f"target host up in {time.monotonic() - started:.0f} s: {address}")
        yield RemoteHost(address, KEY, known_hosts)
    finally:
        say(f"removing the {target_kind} target host {TARGET_NAME}")
        try:
            stop_target(target_kind, TARGET_NAME)
        finally:
            if target_kind == CONTAINER:
                # The stack's files landed in this machine's /opt/torrust.
                shutil.rmtree(DEPLOY_DIR, ignore_errors=True)
        say(f"target host {TARGET_NAME} removed")
