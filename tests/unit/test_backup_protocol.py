"""One owner per fact: the line `backup.sh snapshot` prints once its snapshot is open."""

from __future__ import annotations

import re
import subprocess

from tracker_deployer import paths
from tracker_deployer.render import render

from tests.helpers import REPO_ROOT, parse, sample_data


def test_backup_sh_prints_the_open_line_the_maintenance_script_waits_for() -> None:
    result = subprocess.run(
        [
            "bash",
            "-c",
            f'source {REPO_ROOT / "docker/backup/backup.sh"}; printf %s "$SNAPSHOT_OPEN_LINE"',
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert result.stdout == paths.SNAPSHOT_OPEN_LINE
    script = render(parse(sample_data("manual-test-mysql"))).text(str(paths.MAINTENANCE_SCRIPT))
    [value] = re.findall(r"^readonly SNAPSHOT_OPEN_LINE=(.*)$", script, flags=re.MULTILINE)
    assert value.strip("'") == paths.SNAPSHOT_OPEN_LINE
