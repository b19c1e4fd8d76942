"""One owner per fact: backup.sh against the Python side (the lines of the snapshot's
gate and its open line, the compressions and their levels)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from tracker_deployer import paths
from tracker_deployer.config.model import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    DEFAULT_COMPRESSION_LEVEL,
    DEFAULT_RETENTION_DAYS,
)
from tracker_deployer.render import render

from tests.helpers import REPO_ROOT, parse, sample_data

SNAPSHOT_LINES = ("SNAPSHOT_READY_LINE", "SNAPSHOT_GO_LINE", "SNAPSHOT_OPEN_LINE")


@pytest.mark.parametrize("name", SNAPSHOT_LINES)
def test_backup_sh_and_the_maintenance_script_use_the_same_snapshot_lines(name: str) -> None:
    result = subprocess.run(
        [
            "bash",
            "-c",
            f'source {REPO_ROOT / "docker/backup/backup.sh"}; printf %s "${name}"',
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert result.stdout == getattr(paths, name)
    script = render(parse(sample_data("manual-test-mysql"))).text(str(paths.MAINTENANCE_SCRIPT))
    [value] = re.findall(rf"^readonly {name}=(.*)$", script, flags=re.MULTILINE)
    assert value.strip("'") == getattr(paths, name)


def _validated_level(
    tmp_path: Path, settings: str, key: str = "BACKUP_COMPRESSION_LEVEL"
) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "backup.conf"
    conf.write_text(f"DB_TYPE=sqlite\nDB_PATH=/x\n{settings}")
    script = (
        f"source {REPO_ROOT / 'docker/backup/backup.sh'}; CONFIG_PATH={conf}; "
        f'load_config {conf}; validate_config restore; printf %s "${{CONFIG[{key}]}}"'
    )
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=False, timeout=30
    )


@pytest.mark.parametrize("name", list(COMPRESSIONS))
def test_backup_sh_takes_the_compressions_and_levels_of_the_config_model(
    tmp_path: Path, name: str
) -> None:
    lowest, highest, default = COMPRESSIONS[name]
    assert _validated_level(tmp_path, f"BACKUP_COMPRESSION={name}\n").stdout == str(default)
    for level in (lowest, highest):
        result = _validated_level(
            tmp_path, f"BACKUP_COMPRESSION={name}\nBACKUP_COMPRESSION_LEVEL={level}\n"
        )
        assert result.stdout == str(level), result.stderr
    for level in (lowest - 1, highest + 1):
        result = _validated_level(
            tmp_path, f"BACKUP_COMPRESSION={name}\nBACKUP_COMPRESSION_LEVEL={level}\n"
        )
        assert result.returncode == 2
        assert f"BACKUP_COMPRESSION_LEVEL must be {lowest}-{highest} for {name}" in result.stderr


def test_backup_sh_defaults_to_the_compression_of_the_config_model(tmp_path: Path) -> None:
    # A backup.conf without the keys (the image used on its own) gets the same
    # default as an env without backup.compression.
    compression = _validated_level(tmp_path, "", key="BACKUP_COMPRESSION")
    assert compression.stdout == DEFAULT_COMPRESSION, compression.stderr
    assert _validated_level(tmp_path, "").stdout == str(DEFAULT_COMPRESSION_LEVEL)


def test_backup_sh_defaults_to_the_retention_of_the_config_model(tmp_path: Path) -> None:
    retention = _validated_level(tmp_path, "", key="BACKUP_RETENTION_DAYS")
    assert retention.stdout == str(DEFAULT_RETENTION_DAYS), retention.stderr


def test_the_bench_uses_the_same_snapshot_lines() -> None:
    text = (REPO_ROOT / "bench/trackerbench/scenarios.py").read_text()
    assert f'OPEN_LINE = "{paths.SNAPSHOT_OPEN_LINE}"' in text
    assert f'READY_LINE = "{paths.SNAPSHOT_READY_LINE}"' in text
    assert f'GO_LINE = "{paths.SNAPSHOT_GO_LINE}"' in text


def test_the_bench_measures_ours_at_the_default_compression() -> None:
    # The targets are "at the default compression" (issue 15 item 3).
    text = (REPO_ROOT / "bench/trackerbench/cli.py").read_text()
    [default] = re.findall(r'"--compression",\s+choices=[^)]*\),\s+default="(\w+)"', text)
    assert default == DEFAULT_COMPRESSION
