"""`nox -s e2e -- --images official` where the official images are not here: one
line and exit 2 before any test runs (no host is made, no image pulled)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import official_images_missing
from tests.helpers import REPO_ROOT


@pytest.mark.parametrize("docker", [True, False], ids=["this-docker", "no-docker"])
def test_official_images_without_a_registry_stop_at_once_with_one_line(docker: bool) -> None:
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in ("GITHUB_ACTIONS", "PYTEST_ADDOPTS")
    }
    environ["TRACKER_DEPLOYER_E2E"] = "1"
    if not docker:  # every image counts as missing, as on a machine without docker
        environ["PATH"] = str(Path(sys.executable).parent)
    elif not official_images_missing():
        pytest.skip("the official images are in this machine's docker")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/e2e",
            "-p",
            "no:cacheprovider",
            "--images",
            "official",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        env=environ,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    output = result.stdout + result.stderr
    stop = [line for line in output.splitlines() if "--images official" in line]
    assert len(stop) == 1, output
    assert "no image registry is reachable from this machine" in stop[0]
    assert "torrust/tracker:" in stop[0]
    assert "collected" not in output  # before collection: no test ran
