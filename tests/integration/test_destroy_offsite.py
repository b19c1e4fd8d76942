"""`inv destroy` with backup.offsite: a set the env's off-host repository holds
counts as elsewhere; a set only on the host still makes destroy refuse; a
repository that cannot be listed makes every set count as on the host only.

Real parts: the compose stack and backup image (tests/integration/stack.py), the
maintenance script uploading to a REST repository served by ``rclone serve
restic`` on 127.0.0.1, and the host side of the listing (offsite.sh ``sets``,
run here as root, as destroy runs it over SSH or ``lxc exec``).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from tracker_deployer import lifecycle
from tracker_deployer.errors import DeployError
from tracker_deployer.remote.backups import BackupSet, Inventory
from tracker_deployer.remote.offsite import listing_script

from tests.integration.stack import Stack
from tests.integration.test_offsite import (
    PASSWORD,
    Server,
    assert_success_with_upload,
    offsite_stack,
    rest_server,  # noqa: F401 (fixture)
)

pytestmark = pytest.mark.integration


def host_side(stack: Stack) -> tuple[Inventory, lifecycle.Elsewhere]:
    """What destroy gathers on the host: the sets there and the repository's listing."""
    listed = subprocess.run(
        ["bash", "-c", listing_script(str(stack.deploy_dir))],
        capture_output=True,
        text=True,
        env=stack.environ(),
        check=False,
        timeout=600,
    )
    assert PASSWORD not in listed.stdout + listed.stderr
    inventory = Inventory([BackupSet(set_id, complete=True) for set_id in stack.sets()], {}, [])
    elsewhere = lifecycle.elsewhere_from_listing(
        stack.env, listed.returncode, listed.stdout, listed.stderr
    )
    return inventory, elsewhere


def test_destroy_counts_uploaded_sets_as_elsewhere_and_refuses_for_host_only_ones(
    tmp_path: Path,
    rest_server: Server,  # noqa: F811
) -> None:
    repository = f"rest:http://127.0.0.1:{rest_server.port}/tracker"
    offsite = {"repository": repository, "password": PASSWORD, "keep": {"last": 10}}
    stack = offsite_stack(tmp_path / "s", offsite)
    said: list[str] = []
    try:
        first = assert_success_with_upload(stack, stack.run_maintenance())

        # The repository goes away: the next set stays on the host only.
        rest_server.stop()
        time.sleep(1.1)
        failed = stack.run_maintenance()
        assert failed.returncode == 76, failed.stdout + failed.stderr
        only_here = stack.sets()[-1]
        assert only_here != first

        # Unreachable: no set counts as elsewhere, and destroy says why.
        found = host_side(stack)
        assert found[1].set_ids == frozenset()
        assert "unreachable" in found[1].unlisted_because
        with pytest.raises(DeployError) as unlisted:
            lifecycle.refuse_with_sets(stack.env, found, said.append)
        assert f"2 backup set(s) ({first}, {only_here})" in unlisted.value.message
        assert "could not be listed" in unlisted.value.message
        assert "unreachable" in unlisted.value.message
        assert any("could not be listed" in line for line in said)

        # Back up: the uploaded set is elsewhere, the host-only one is not.
        rest_server.start()
        found = host_side(stack)
        assert found[1].unlisted_because == ""
        assert found[1].set_ids == frozenset({first})
        said.clear()
        with pytest.raises(DeployError) as refused:
            lifecycle.refuse_with_sets(stack.env, found, said.append)
        assert f"1 backup set(s) ({only_here}) that are not in the off-host repository" in (
            refused.value.message
        )
        assert "  1 of 2 set(s) on the host are in the off-host repository" in said

        # The next run uploads every set the repository lacks: nothing blocks destroy.
        time.sleep(1.1)
        assert_success_with_upload(stack, stack.run_maintenance())
        found = host_side(stack)
        assert found[1].set_ids == frozenset(stack.sets())
        said.clear()
        lifecycle.refuse_with_sets(stack.env, found, said.append)
        assert "  3 of 3 set(s) on the host are in the off-host repository" in said
    finally:
        stack.cleanup()
