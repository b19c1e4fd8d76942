"""Parsing and presenting the host's backup inventory; resolving --set."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tracker_deployer import exit_codes, monitoring, paths
from tracker_deployer.backup_layout import is_set_id
from tracker_deployer.config.model import CronSchedule
from tracker_deployer.errors import DeployError
from tracker_deployer.remote.backups import (
    HostDataError,
    Inventory,
    format_drills,
    format_inventory,
    format_last_run,
    human_size,
    overdue_warning,
    parse_checksums,
    parse_inventory,
    restore_plan,
    restore_script,
    status_warnings,
)
from tracker_deployer.remote.deploy import under_backup_lock
from tracker_deployer.render.tree import inventory_script, maintenance_script

from tests.helpers import parse, sample_data

OUTPUT = "\n".join(
    [
        "FILE\t20261125_030000\tsqlite\tsqlite/sqlite_20261125_030000.db.gz\t2048\t1795575600",
        "FILE\t20261125_030000\tconfig\tconfig/config_20261125_030000.tar.gz\t1024\t1795575600",
        "FILE\t20261125_030000\tmanifests\tmanifests/set_20261125_030000.sha256\t300\t1795575600",
        "FILE\t20261126_030000\tsqlite\tsqlite/sqlite_20261126_030000.db.gz\t4096\t1795662000",
        "SET\t20261126_030000\tincomplete\t-",
        "SET\t20261125_030000\tcomplete\tok",
        "META\t20261125_030000\trows.torrents\t1000",
        "META\t20261125_030000\trows.keys\t2",
        "STATUS\tresult\tfailure",
        "STATUS\texit_code\t3",
        "STATUS\tstarted_at\t2026-11-26T03:00:00Z",
        "STATUS\treason\tthe snapshot failed (backup container exit 3)",
        "FAILLOG\t2026-11-26T03:00:01Z backup.sh: cannot connect to MySQL",
        "NOW\t1795676000",
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
    assert inventory.host_now == 1795676000


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


SET = "20261125_030000"
GOOD_MANIFEST = [
    "ab" * 32 + f"  sqlite/sqlite_{SET}.db.gz",
    "cd" * 32 + f"  config/config_{SET}.tar.gz",
    "ef" * 32 + f"  manifests/set_{SET}.meta",
]


def test_parse_checksums_reads_sha256sum_lines() -> None:
    sums = parse_checksums("\n".join(GOOD_MANIFEST) + "\n", SET)
    assert sums == {
        f"sqlite/sqlite_{SET}.db.gz": "ab" * 32,
        f"config/config_{SET}.tar.gz": "cd" * 32,
        f"manifests/set_{SET}.meta": "ef" * 32,
    }


@pytest.mark.parametrize("name", [f"sqlite/sqlite_{SET}.db.zst", f"mysql/mysql_{SET}.sql.zst"])
def test_parse_checksums_takes_a_zstd_set(name: str) -> None:
    lines = [GOOD_MANIFEST[0].replace(f"sqlite/sqlite_{SET}.db.gz", name), *GOOD_MANIFEST[1:]]
    assert name in parse_checksums("\n".join(lines) + "\n", SET)


def test_parse_checksums_refuses_a_gzip_and_a_zstd_database_file_in_one_set() -> None:
    lines = [*GOOD_MANIFEST, "00" * 32 + f"  sqlite/sqlite_{SET}.db.zst"]
    with pytest.raises(HostDataError, match="exactly one database"):
        parse_checksums("\n".join(lines) + "\n", SET)


@pytest.mark.parametrize(
    "text",
    [
        "\u0662\u0660\u0662\u0666\u0661\u0661\u0662\u0665_030000",  # Arabic-Indic digits
        "\uff12\uff10\uff12\uff16\uff11\uff11\uff12\uff15_030000",  # full-width digits
        "20261125_030000\n",
        "../../victim",
        "/home/op/.bashrc",
        "20261125-030000",
        "2026112_0300000",
        "",
        "20261399_999999",  # no moment: shown, it was a traceback (strptime)
        "20260230_120000",
        "20261125_246000",
    ],
)
def test_hardening_01_set_ids_are_ascii_digits_only(text: str) -> None:
    assert not is_set_id(text)
    with pytest.raises(DeployError, match="is not a backup set id"):
        parse_inventory(OUTPUT).resolve(text)
    line = f"FILE\t{text}\tsqlite\tsqlite/sqlite_{text}.db.gz\t1\t1"
    with pytest.raises(HostDataError, match="line this tool never writes"):
        parse_inventory(line)
    with pytest.raises(HostDataError):
        parse_inventory(f"SET\t{text}\tcomplete\tok")


@pytest.mark.parametrize(
    "line",
    [
        f"FILE\t{SET}\tsqlite\t../../victim\t1\t1",
        f"FILE\t{SET}\tsqlite\t/home/op/.bashrc\t1\t1",
        f"FILE\t{SET}\tsqlite\tsqlite/sqlite_20261126_030000.db.gz\t1\t1",  # another set
        f"FILE\t{SET}\tconfig\tsqlite/sqlite_{SET}.db.gz\t1\t1",  # wrong part
        f"FILE\t{SET}\tsqlite\tsqlite/sqlite_{SET}.db.gz\t\u00b2\t1",  # '²'.isdigit()
        f"FILE\t{SET}\tsqlite\tsqlite/sqlite_{SET}.db.gz\t-1\t1",
        f"FILE\t{SET}\tsqlite\tsqlite/sqlite_{SET}.db.gz\t1",
        f"SET\t{SET}\tcomplete\t$(id)",
        "NOW\t\u0663",
    ],
)
def test_hardening_01_listing_lines_outside_the_layout_are_refused(line: str) -> None:
    with pytest.raises(HostDataError, match="line this tool never writes") as error:
        parse_inventory(OUTPUT + "\n" + line)
    assert "(line 15:" in error.value.message


def test_hardening_01_row_counts_take_ascii_digits_only() -> None:
    inventory = parse_inventory(f"META\t{SET}\trows.torrents\t\u00b2\nMETA\t{SET}\trows.keys\t7")
    assert inventory.sets[0].rows == {"keys": 7}


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        ([*GOOD_MANIFEST, "00" * 32 + "  ../../home/op/.bashrc"], "line 4 is"),
        ([*GOOD_MANIFEST, "00" * 32 + "  /home/op/.bashrc"], "line 4 is"),
        ([*GOOD_MANIFEST, "00" * 32 + f"  manifests/set_{SET}.sha256"], "line 4 is"),
        ([*GOOD_MANIFEST, "00" * 32 + f"  mysql/mysql_{SET}.sql.gz"], "exactly one database"),
        ([*GOOD_MANIFEST, GOOD_MANIFEST[0]], "line 4 is"),
        (GOOD_MANIFEST[:2], "exactly one database"),
        (
            [GOOD_MANIFEST[0].replace("sqlite_20261125", "sqlite_20261126"), *GOOD_MANIFEST[1:]],
            "line 1",
        ),
        ([GOOD_MANIFEST[0].upper(), *GOOD_MANIFEST[1:]], "line 1 is"),
        ([GOOD_MANIFEST[0].replace("  ", " *"), *GOOD_MANIFEST[1:]], "line 1 is"),
        ([GOOD_MANIFEST[0] + "\r", *GOOD_MANIFEST[1:]], "line 1 is"),
        ([GOOD_MANIFEST[0], "", *GOOD_MANIFEST[1:]], "line 2 is"),
        ([GOOD_MANIFEST[0][:-1], *GOOD_MANIFEST[1:]], "line 1 is"),
        ([], "line 1 is"),  # an empty line
    ],
)
def test_hardening_01_manifest_entries_must_fit_the_set_layout(
    lines: list[str], fragment: str
) -> None:
    with pytest.raises(HostDataError, match=fragment) as error:
        parse_checksums("\n".join(lines) + "\n", SET)
    assert "is not one backup.sh writes" in error.value.message
    assert "nothing was fetched" in error.value.message


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
    assert f"readonly EXIT_LOCK_BUSY={exit_codes.LOCK_BUSY}\n" in restore
    assert f"readonly EXIT_LOCKED={exit_codes.LOCK_BUSY}\n" in maintenance_script(env).decode()
    assert f"readonly LOCK_FILE='{lock}'\n" in maintenance_script(env).decode()
    assert f" {lock} sh -c " in under_backup_lock("true")
    assert "lock" in restore_plan(env, "latest", "all", False)


def test_hardening_10_a_lock_busy_run_is_shown_but_keeps_the_last_result() -> None:
    listing = "\n".join(
        [
            "STATUS\tresult\tsuccess",
            "STATUS\texit_code\t0",
            "STATUS\tstarted_at\t2026-11-26T03:00:00Z",
            "STATUS\tset\t20261126_030000",
            "STATUS\tlock_busy_at\t2026-11-27T03:00:00Z",
            "STATUS\tlock_busy_reason\tanother backup run, a restore or a deploy holds the lock",
        ]
    )
    lines = format_last_run(parse_inventory(listing))
    assert lines[0].startswith("last run: SUCCESS at 2026-11-26T03:00:00Z")
    assert lines[-1] == (
        "a later run did not start at 2026-11-27T03:00:00Z: "
        "another backup run, a restore or a deploy holds the lock"
    )
    # an older busy record (a real run came after it) is not news
    older = listing.replace("2026-11-27T03:00:00Z", "2026-11-25T03:00:00Z")
    assert not [line for line in format_last_run(parse_inventory(older)) if "did not start" in line]


def test_hardening_04_a_tracker_left_stopped_is_a_warning_first() -> None:
    listing = "STATUS\ttracker_stopped_by\tbackup run started 2026-11-27T03:00:00Z (pid 42)"
    lines = format_last_run(parse_inventory(listing))
    assert lines[0].startswith(
        "WARNING: the tracker was stopped by backup run started 2026-11-27T03:00:00Z (pid 42)"
    )
    assert "--recover" in lines[0]
    assert lines[1] == "last run: none recorded yet"


@pytest.mark.parametrize(
    "evidence",
    [
        f"drill_20269999_000000_set_{SET}.json",  # ran at no moment
        "drill_20261126_040000_set_20261399_000000.json",
    ],
)
def test_hardening_01_a_drill_named_at_no_real_time_is_refused(evidence: str) -> None:
    set_id = evidence.split("_set_")[1].removesuffix(".json")
    with pytest.raises(HostDataError, match="line this tool never writes"):
        parse_inventory(OUTPUT + f"\nDRILL\t{evidence}\t{set_id}\tsuccess\t0\t12")


def test_latest_refuses_a_set_named_after_the_hosts_clock() -> None:
    """The clock went back (or was ahead when that set was taken): the sets taken
    since sort before it, and 'latest' would name older data than the newest."""
    inventory = parse_inventory(OUTPUT.replace("NOW\t1795676000", "NOW\t1795575599"))
    with pytest.raises(DeployError, match="named after the host's clock") as raised:
        inventory.resolve("latest")
    assert "20261125_025959 UTC" in str(raised.value)
    assert "--set SET_ID" in (raised.value.hint or "")
    assert inventory.resolve("20261125_030000").set_id == "20261125_030000"  # named: fine


# --------------------------------------------------------------------------- the host's status


def _host_inventory(status: Path, backups: Path) -> Inventory:
    """The rendered inventory script run here, against these directories (the
    backup directory is missing in these tests: no container is started)."""
    script = inventory_script(
        backup_image="unused:0", backup_dir=str(backups), status_dir=str(status), verify=False
    )
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return parse_inventory(done.stdout)


def _status_dir(tmp_path: Path, **files: str) -> Path:
    status = tmp_path / "backup-status"
    status.mkdir(mode=0o755)
    for name, text in files.items():
        (status / name).write_text(text)
    return status


def test_a_missing_backup_directory_still_shows_the_failed_run_and_the_stopped_tracker(
    tmp_path: Path,
) -> None:
    """The inventory stopped at the missing backup directory: `inv backups` said only
    that backups were not deployed and exited 0, over a failed run and a tracker
    that a killed run left stopped."""
    status = _status_dir(
        tmp_path,
        **{
            "last-run.env": "result=failure\nexit_code=3\nstarted_at=2026-12-01T03:00:00Z\n",
            paths.TRACKER_STOPPED_MARKER.name: "stopped_by=backup run started X (pid 7)\n",
        },
    )
    found = _host_inventory(status, tmp_path / "gone")
    assert found.missing_dir
    assert found.last_run["result"] == "failure"
    text = format_inventory(found, datetime.now(UTC))
    assert "no backup directory on the host" in text
    assert "last run: FAILURE at 2026-12-01T03:00:00Z" in text
    assert status_warnings(found.last_run)[0].startswith("WARNING: the tracker was stopped by")


def test_a_partly_restored_database_is_a_warning(tmp_path: Path) -> None:
    """A restore cut off during its MySQL load: nothing said so until the next run."""
    marker = paths.RESTORE_INCOMPLETE_MARKER.name
    status = _status_dir(tmp_path, **{marker: "set=20261201_030000\nat=2026-12-01T09:00:00Z\n"})
    found = _host_inventory(status, tmp_path / "gone")
    [warning] = status_warnings(found.last_run)
    assert warning.startswith(
        "WARNING: a restore of set 20261201_030000 left the MySQL database partly restored"
    )
    assert warning in format_inventory(found, datetime.now(UTC))


@pytest.mark.parametrize("unsafe", ["writable", "link"])
def test_an_unsafe_status_directory_is_a_warning(tmp_path: Path, unsafe: str) -> None:
    """Every run refuses it (exit 77) and records nothing there: the old success it
    holds was shown as the last run, and `inv backups` exited 0."""
    status = _status_dir(tmp_path, **{"last-run.env": "result=success\n"})
    if unsafe == "writable":
        status.chmod(0o777)
    else:
        status = tmp_path / "linked-status"
        status.symlink_to(tmp_path / "backup-status")
    found = _host_inventory(status, tmp_path / "gone")
    [warning] = status_warnings(found.last_run)
    assert warning.startswith(f"WARNING: the status directory {status} is ")
    assert "every backup run refuses it (exit 77)" in warning
    assert "result" not in found.last_run  # nothing read through it


def test_an_unfinished_recover_is_a_warning(tmp_path: Path) -> None:
    """No tracker is started and no backup taken while it holds the host."""
    status = _status_dir(tmp_path, **{paths.RECOVER_MARKER.name: ""})
    found = _host_inventory(status, tmp_path / "gone")
    [warning] = status_warnings(found.last_run)
    assert warning.startswith("WARNING: an `inv recover` of this host has not finished")
    assert "inv recover --env NAME" in warning
    (tmp_path / "ok").mkdir()
    assert (
        status_warnings(_host_inventory(_status_dir(tmp_path / "ok"), tmp_path / "gone").last_run)
        == []
    )


def test_a_deploy_that_failed_in_its_password_window_is_a_warning(tmp_path: Path) -> None:
    """Every backup run refuses then (exit 77) until a deploy succeeds."""
    status = _status_dir(tmp_path, **{paths.DEPLOY_MARKER.name: "failed\n"})
    [warning] = status_warnings(_host_inventory(status, tmp_path / "gone").last_run)
    assert warning.startswith("WARNING: a deploy failed after it pushed files")
    assert "inv deploy --env NAME" in warning
    (status / paths.DEPLOY_MARKER.name).write_text("1733500000\n")  # one in progress
    assert status_warnings(_host_inventory(status, tmp_path / "gone").last_run) == []


def test_a_host_clock_far_from_this_machines_is_a_warning() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    ahead = parse_inventory(f"NOW\t{int(now.timestamp()) + 400 * 86400}")
    assert format_inventory(ahead, now).startswith(
        "WARNING: the host's clock is 400 d ahead of this machine's"
    )
    close = parse_inventory(f"NOW\t{int(now.timestamp()) + 60}")
    assert "clock" not in format_inventory(close, now)


def test_no_run_finished_for_longer_than_the_schedule_allows_is_a_warning() -> None:
    """A run killed outright records nothing, nor does a run that cron no longer starts
    or one that hangs on the lock: the last run shown was an old success, and
    `inv backups` exited 0 until BackupMissing fired."""
    finished = datetime(2026, 12, 1, 3, 0, 10, tzinfo=UTC)
    daily = monitoring.missing_after_seconds(CronSchedule.parse("0 3 * * *"))
    listing = "STATUS\tresult\tsuccess\nSTATUS\tfinished_at\t2026-12-01T03:00:10Z\n"
    on_time = parse_inventory(listing + f"NOW\t{int(finished.timestamp()) + daily}")
    assert overdue_warning(on_time, daily) is None
    late = parse_inventory(listing + f"NOW\t{int(finished.timestamp()) + daily + 60}")
    warning = overdue_warning(late, daily)
    assert warning is not None
    assert warning.startswith("WARNING: no backup run has finished since 2026-12-01T03:00:10Z")
    # host data that is no time is ignored, not trusted
    odd = parse_inventory("STATUS\tfinished_at\t2026-13-45T99:00:00Z\nNOW\t9999999999")
    assert overdue_warning(odd, daily) is None


@pytest.mark.parametrize(
    ("last", "said"),
    [
        ({"result": "failure", "exit_code": "70", "reason": "tar failed"}, "FAILED (exit 70): tar"),
        ({"result": "failure", "exit_code": "70"}, f"FAILED (exit 70): see {paths.BACKUP_LOG}"),
        ({"result": "no_set", "exit_code": "66"}, "found nothing to drill (exit 66): no complete"),
        ({"result": "skipped"}, f"skipped (exit ?): see {paths.BACKUP_LOG}"),
    ],
)
def test_the_last_drill_says_what_became_of_it(last: dict[str, str], said: str) -> None:
    lines = format_drills(Inventory([], {}, [], last_drill=last))
    assert lines[-1].startswith(f"  last drill {said}")


def test_a_successful_last_drill_adds_no_line() -> None:
    lines = format_drills(Inventory([], {}, [], last_drill={"result": "success"}))
    assert lines == [f"restore drills (evidence in {paths.DRILL_DIR}):"]


@pytest.mark.parametrize("breaker", ["\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
def test_a_value_with_a_line_breaking_character_adds_no_record(breaker: str) -> None:
    """Records end with "\\n" only. A failed run's log line (a container's raw output)
    holding "\\r" or U+2028 split into two with str.splitlines(): the second a record
    that overrode the result, hid the warnings or added a complete set (a review)."""
    listing = "\n".join(
        [
            "STATUS\trestore_incomplete\t20260101_000000",
            "STATUS\tresult\tfailure",
            f"STATUS\treason\tdump failed{breaker}SET\t20260102_000000\tcomplete\tok",
            f"FAILLOG\tmysqldump: error near 'x{breaker}STATUS\tresult\tsuccess",
            f"FAILLOG\tmore{breaker}STATUS\trestore_incomplete\t",
        ]
    )
    inventory = parse_inventory(listing + "\n")
    assert inventory.last_run["result"] == "failure"
    assert inventory.last_run["restore_incomplete"] == "20260101_000000"
    assert inventory.sets == []
    assert status_warnings(inventory.last_run)
    assert any(line.startswith("last run: FAILURE") for line in format_last_run(inventory))


def test_a_status_value_with_a_tab_is_kept_whole() -> None:
    inventory = parse_inventory("STATUS\tresult\tfailure\nSTATUS\treason\tcut\there\n")
    assert inventory.last_run["reason"] == "cut\there"
