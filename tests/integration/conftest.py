"""Integration tier: real tools and services (installed by scripts/setup.sh)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import parse, sample_data
from tests.integration.ssh_target import SshTarget, require_tools
from tests.integration.stack import (
    BACKUP_IMAGE,
    STANDIN_IMAGE,
    Stack,
    env_for_stack,
    require_images,
)


def _compose_works() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return result.returncode == 0


@pytest.fixture(scope="session")
def compose_cli() -> list[str]:
    """The Docker Compose v2 command; fails (never skips) when it is missing."""
    if not _compose_works():
        pytest.fail("`docker compose` (Compose v2) is not available: run scripts/setup.sh")
    return ["docker", "compose"]


@pytest.fixture
def sqlite_stack(tmp_path: Path) -> Iterator[Stack]:
    """A running SQLite stack (tracker stand-in) in a scratch deploy directory."""
    require_images(STANDIN_IMAGE, BACKUP_IMAGE)
    stack = Stack(parse(env_for_stack(sample_data("manual-test-sqlite"))), tmp_path / "s").install()
    try:
        stack.up()
        yield stack
    finally:
        stack.cleanup()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[SshTarget]:
    """A real sshd on 127.0.0.1 with a throw-away root (ssh_target.py)."""
    reason = require_tools()
    if reason:
        pytest.fail(reason)
    with SshTarget(tmp_path / "target") as started:
        yield started
