"""Parsing and presenting the host's backup inventory; resolving --set."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from tracker_deployer import paths
from tracker_deployer.errors import DeployError
from tracker_deployer.remote.backups import (
    RESTORE_EXIT_LOCK_BUSY,
    format_inventory,
    human_size,
    parse_checksums,
    parse_inventory,
    restore_plan,
    restore_script,
)
from tracker_deployer.remote.deploy import EXIT_LOCK_BUSY, under_backup_lock
from tracker_deployer.render.tree import maintenance_script

from tests.helpers import parse, sample_data

OUTPUT = "\n".join(
    [
        "FILE\t20261125_030000\tsqlite\tsqlite/sqlite_20261125_030000.db.gz\t2048\t1764039600",
        "FILE\t20261125_030000\tconfig\tconfig/config_20261125_030000.tar.gz\t1024\t1764039600",
        "FILE\t20261125_030000\tmanifests\tmanifests/set_20261125_030000.sha256\t300\t1764039600",
        "FILE\t20261126_030000\tsqlite\tsqlite/sqlite_20261126_030000.db.gz\t4096\t1764126000",
        "SET\t20261126_030000\tincomplete\t-",
        "SET\t20261125_030000\tcomplete\tok",
        "META\t20261125_030000\trows.torrents\t1000",
        "META\t20261125_030000\trows.keys\t2",
        "STATUS\tresult\tfailure",
        "STATUS\texit_code\t3",
        "STATUS\tstarted_at\t2026-11-26T03:00:00Z",
        "STATUS\treason\tthe snapshot failed (backup container exit 3)",
        "FAILLOG\t2026-11-26T03:00:01Z backup.sh: cannot connect to MySQL",
        "NOW\t1764140000",
    ]
)


def test_parse_inventory_groups_files_by_set() -> None:
    inventory = parse_inventory(OUTPUT)
    assert [s.set_id for s in inventory.sets] == ["20261125_030000", "20261126_030000"]
    old, new = inventory.sets
    assert old.complete
    assert old.checksums == "ok"
    assert old.parts == ["sqlite", "config"]
    assert old.size == 2048 + 1024 + 300
    assert old.rows == {"torrents": 1000, "keys": 2}
    assert not new.complete
    assert inventory.host_now == 1764140000


def test_latest_is_the_newest_complete_set() -> None:
    inventory = parse_inventory(OUTPUT)
    assert inventory.resolve("latest").set_id == "20261125_030000"
    assert inventory.resolve("20261125_030000").complete


@pytest.mark.parametrize(
    ("wanted", "fragment"),
    [
        ("20261126_030000", "is incomplete"),
        ("20261124_030000", "is not on the host"),
        ("yesterday", "is not a backup set id"),
    ],
)
def test_resolve_refuses_with_a_reason(wanted: str, fragment: str) -> None:
    with pytest.raises(DeployError, match=fragment):
        parse_inventory(OUTPUT).resolve(wanted)


def test_no_complete_set_means_no_latest() -> None:
    with pytest.raises(DeployError, match="no complete backup set"):
        parse_inventory("SET\t20261126_030000\tincomplete\t-").resolve("latest")


def test_format_shows_sets_and_the_failed_last_run_with_its_reason() -> None:
    text = format_inventory(parse_inventory(OUTPUT), datetime(2026, 11, 27, 3, 0, tzinfo=UTC))
    assert "2026-11-25 03:00:00 sqlite+config" in text
    assert "2 d  complete   ok" in text
    assert "INCOMPLETE" in text
    assert "last run: FAILURE at 2026-11-26T03:00:00Z (exit 3" in text
    assert "reason: the snapshot failed (backup container exit 3)" in text
    assert "backup.sh: cannot connect to MySQL" in text


def test_sizes_are_human() -> None:
    assert human_size(512) == "512 B"
    assert human_size(3 * 1024 * 1024) == "3.0 MiB"


def test_parse_checksums_reads_sha256sum_lines() -> None:
    text = "ab" * 32 + "  sqlite/sqlite_20261125_030000.db.gz\n"
    assert parse_checksums(text) == {"sqlite/sqlite_20261125_030000.db.gz": "ab" * 32}


def test_restore_plan_names_the_safety_backup_only_for_mysql() -> None:
    mysql = restore_plan(parse(sample_data("manual-test-mysql")), "latest", "all", False)
    sqlite = restore_plan(parse(sample_data("manual-test-sqlite")), "latest", "db", False)
    assert "safety backup" in mysql
    assert "safety backup" not in sqlite
    assert "before-restore" in sqlite
    assert "restore drill" in sqlite
    assert "dry run" in sqlite


def test_hardening_06_restore_plan_shows_a_skipped_safety_backup() -> None:
    env = parse(sample_data("manual-test-mysql"))
    skipped = restore_plan(env, "latest", "all", False, skip_safety_backup=True)
    assert "NO safety backup (--skip-safety-backup)" in skipped
    assert "prunes nothing" in restore_plan(env, "latest", "all", False)


def test_hardening_07_restore_takes_the_lock_of_the_maintenance_script_and_deploy() -> None:
    """One lock owner: paths.BACKUP_LOCK, in the restore, cron and deploy alike."""
    env = parse(sample_data("manual-test-mysql"))
    lock = str(paths.BACKUP_LOCK)
    restore = restore_script(env, "20261125_030000", "all", verify_first=True)
    assert f"readonly LOCK_FILE='{lock}'\n" in restore
    assert f"readonly EXIT_LOCK_BUSY={EXIT_LOCK_BUSY}\n" in restore
    assert RESTORE_EXIT_LOCK_BUSY == EXIT_LOCK_BUSY
    assert f"readonly LOCK_FILE='{lock}'\n" in maintenance_script(env).decode()
    assert f" {lock} sh -c " in under_backup_lock("true")
    assert "lock" in restore_plan(env, "latest", "all", False)
