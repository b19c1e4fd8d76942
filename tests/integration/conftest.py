"""Integration tier: real tools and services (installed by scripts/setup.sh)."""

from __future__ import annotations

import shutil
import subprocess

import pytest


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
