"""configure's `apt-get update` against a busy package-lists lock, with this machine's
real apt (private lists and cache, no sources: nothing leaves the machine)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from tracker_deployer.remote import configure

pytestmark = pytest.mark.integration


def _apt_update(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    options = (
        f"-o Dir::State::Lists={tmp_path}/lists -o Dir::Cache={tmp_path}/cache "
        "-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/nonexistent"
    )
    return subprocess.run(
        ["sh", "-c", f"export LC_ALL=C; apt_opts=''; {configure.APT_UPDATE} apt_update {options}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=configure.APT_LOCK_WAIT_SECONDS + 60,
    )


def test_apt_update_waits_for_the_package_lists_lock(tmp_path: Path) -> None:
    """apt-daily holds the lists' lock on a fresh host: DPkg::Lock::Timeout does not
    cover it, and the packages step failed at once ("held for more than 120 s")."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail("needs Debian's apt-get, run as root (as CI runs the tests)")
    (tmp_path / "lists/partial").mkdir(parents=True)
    (tmp_path / "cache/archives/partial").mkdir(parents=True)
    held = 5.0
    with (tmp_path / "lists/lock").open("w") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)  # the lock apt takes (fcntl, whole file)
        release = threading.Timer(held, fcntl.lockf, (lock, fcntl.LOCK_UN))
        release.start()
        started = time.monotonic()
        try:
            result = _apt_update(tmp_path)
        finally:
            release.cancel()
        waited = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert waited >= held


def test_apt_update_still_fails_at_once_on_other_errors(tmp_path: Path) -> None:
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail("needs Debian's apt-get, run as root (as CI runs the tests)")
    (tmp_path / "lists").write_text("not a directory")
    result = _apt_update(tmp_path)
    assert result.returncode == 100
    assert result.stderr.strip(), result
