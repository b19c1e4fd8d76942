"""End-to-end tier: the real CLI against a real host (`nox -s e2e`).

The target host is an LXD instance that starts bare (no Docker, no cron) and
is made by `inv provision` through the lxd provider, as a user would make
theirs. The first `inv deploy` configures it. Every `inv` the tests run uses a
state directory of their own (XDG_STATE_HOME), so the user's is never touched.
Progress lines start with `E2E:` and are printed even when the tests pass, so a
CI log shows what was checked.

`--images official` runs the tests with the official images (torrust/tracker,
mysql:8.4, ...): only where an image registry is reachable. Here none is, so it
stops at once with one line saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tracker_deployer import image, state
from tracker_deployer.config.model import DEFAULT_IMAGES

from tests.e2e.remote_host import (
    IMAGES,
    PROVISIONED_ENV,
    TARGET_NAME,
    Address,
    RemoteHost,
    env_argument,
    inv,
    lxc_exec,
    shown,
)

Say = Callable[[str], None]

OFFICIAL = "official"
STANDIN = "standin"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--images",
        choices=(STANDIN, OFFICIAL),
        default=STANDIN,
        help="standin (default): the test doubles built here; official: torrust/tracker, "
        "mysql:8.4, ... (needs an image registry)",
    )


def official_images_missing() -> list[str]:
    wanted = [DEFAULT_IMAGES[name] for name in ("tracker", "mysql", "prometheus", "node_exporter")]
    if shutil.which("docker") is None:  # no docker here: none of them is
        return wanted
    return [
        name
        for name in wanted
        if subprocess.run(
            ["docker", "image", "inspect", name], capture_output=True, check=False, timeout=60
        ).returncode
        != 0
    ]


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("TRACKER_DEPLOYER_E2E") != "1":
        return
    if config.getoption("--images") != OFFICIAL:
        return
    # The e2e envs without their stand-ins (the backup image stays the one built
    # here); every test reaches them through env_argument().
    env_argument.use_official(Path(tempfile.mkdtemp(prefix="e2e-official-")), image.default_tag())
    missing = official_images_missing()
    if missing and os.environ.get("GITHUB_ACTIONS") != "true":
        # No network probe (test traffic stays on this machine): this project's
        # machines have no registry, and the images are not here.
        pytest.exit(
            f"--images official: no image registry is reachable from this machine and "
            f"{', '.join(missing)} are not in its docker; run this on GitHub (ci.yml, job "
            "e2e-official), or load the images here first",
            returncode=2,
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
def images_choice(pytestconfig: pytest.Config) -> str:
    choice: str = pytestconfig.getoption("--images")
    return choice


def _require_machine() -> None:
    if os.geteuid() != 0:
        pytest.fail("the e2e tests need root (LXD, docker): run them as root")
    for tool in ("ssh", "lxc", "docker"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run scripts/setup.sh")
    missing = [
        name
        for name in IMAGES
        if subprocess.run(
            ["docker", "image", "inspect", name], capture_output=True, check=False, timeout=60
        ).returncode
        != 0
    ]
    if missing:
        pytest.fail(f"missing images {missing}: run scripts/setup.sh (`nox -s e2e` builds them)")


@pytest.fixture(scope="session")
def state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tests' own state directory: every `inv` they run (and this process) uses it."""
    home = tmp_path_factory.mktemp("state-home")
    before = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(home)
    try:
        yield home
    finally:
        if before is None:
            os.environ.pop("XDG_STATE_HOME", None)
        else:
            os.environ["XDG_STATE_HOME"] = before


@pytest.fixture(scope="session")
def target(state_home: Path, say: Say) -> Iterator[RemoteHost]:
    """One bare LXD host made by `inv provision`; destroyed afterwards, also after a failure."""
    _require_machine()
    # A leftover of a killed run (ours only: destroy refuses anything else).
    leftover = inv("destroy", "--env", PROVISIONED_ENV, "--delete-backups")
    assert leftover.returncode == 0, shown(leftover)
    say(f"inv provision --env {PROVISIONED_ENV} (a bare LXD instance {TARGET_NAME})")
    started = time.monotonic()
    try:
        made = inv("provision", "--env", PROVISIONED_ENV, timeout=1500)
        assert made.returncode == 0, shown(made)
        record = state.read_record(PROVISIONED_ENV)
        assert record is not None, made.stdout
        assert record.provider == "lxd"
        assert record.instance == TARGET_NAME
        say(f"provisioned in {time.monotonic() - started:.0f} s: {record.host}:{record.port}")
        bare = lxc_exec("command -v docker || command -v cron || command -v nft")
        assert bare.returncode != 0, f"the new instance is not bare: {bare.stdout}"
        yield RemoteHost(
            Address(record.host, record.port, "root"),
            state.key_path(),
            state.known_hosts_path(PROVISIONED_ENV),
        )
    finally:
        say(f"inv destroy --env {PROVISIONED_ENV} --delete-backups")
        removed = inv("destroy", "--env", PROVISIONED_ENV, "--delete-backups")
        say(f"  exit {removed.returncode}: {removed.stdout.strip().splitlines()[-1:]}")
