"""The host side of backups / verify / restore and the notify pings, on a real stack.

The operation scripts are rendered from templates/operations/ with the stack's
scratch paths and run directly here (the SSH transport is covered by
test_remote.py and the e2e tier).
"""

from __future__ import annotations

import gzip
import http.server
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
from tracker_deployer.remote.backups import parse_inventory
from tracker_deployer.render import operation_script
from tracker_deployer.topology import APP_GID, APP_UID

from tests.helpers import parse, sample_data
from tests.integration.stack import (
    BACKUP_IMAGE,
    MARIADB_IMAGE,
    STANDIN_IMAGE,
    Stack,
    env_for_stack,
    require_images,
)

pytestmark = pytest.mark.integration


def run_operation(stack: Stack, name: str, **context: Any) -> subprocess.CompletedProcess[str]:
    common: dict[str, Any] = {
        "deploy_dir": str(stack.deploy_dir),
        "backup_dir": str(stack.backups),
    }
    script = stack.base / f"{name}.sh"
    script.write_text(operation_script(name, **{**common, **context}))
    return subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        check=False,
        env=stack.environ(),
        timeout=600,
    )


def verify(stack: Stack, set_id: str, *, drill: bool = True) -> subprocess.CompletedProcess[str]:
    return run_operation(
        stack,
        "verify",
        set_id=set_id,
        db_type="mysql" if stack.env.uses_mysql else "sqlite",
        drill=drill,
        backup_image=stack.env.images.backup,
        mysql_image=stack.env.images.mysql,
        app_uid=APP_UID,
        app_gid=APP_GID,
    )


def restore(stack: Stack, set_id: str, only: str = "db") -> subprocess.CompletedProcess[str]:
    sqlite = stack.deploy_dir / "storage/tracker/lib/database"
    return run_operation(
        stack,
        "restore",
        set_id=set_id,
        db_type="mysql" if stack.env.uses_mysql else "sqlite",
        only=only,
        safety_backup=stack.env.uses_mysql,
        maintenance_script=str(stack.script),
        sqlite_dir=str(sqlite),
        sqlite_name="" if stack.env.uses_mysql else "tracker.db",
    )


def table_dump(database: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT id, info_hash, completed FROM torrents ORDER BY id").fetchall()


def test_inventory_lists_sets_checksums_and_the_last_run(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    result = run_operation(stack, "inventory", verify=True)
    assert result.returncode == 0, result.stderr
    inventory = parse_inventory(result.stdout)
    [backup_set] = inventory.sets
    assert backup_set.complete
    assert backup_set.checksums == "ok"
    assert backup_set.parts == ["sqlite", "config"]
    assert backup_set.rows["torrents"] > 0
    assert backup_set.size == sum(
        (stack.backups / name).stat().st_size for name in backup_set.files
    )
    assert inventory.last_run["result"] == "success"
    assert inventory.resolve("latest").set_id == backup_set.set_id


def test_verify_drill_passes_and_a_flipped_byte_is_caught(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    result = verify(stack, set_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"set {set_id}: VERIFIED" in result.stdout
    assert not list(stack.backups.glob(".drill-*")), "the drill left its scratch files"

    archive = stack.backups / f"sqlite/sqlite_{set_id}.db.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    inventory = parse_inventory(run_operation(stack, "inventory", verify=True).stdout)
    assert inventory.sets[0].checksums == "FAILED"
    failed = verify(stack, set_id)
    assert failed.returncode == 4, failed.stdout + failed.stderr
    refused = restore(stack, set_id)
    assert refused.returncode == 4
    assert "tracker" in stack.running_services()


def test_sqlite_restore_brings_back_exactly_the_snapshot(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    snapshot = tmp_path / "snapshot.db"
    with gzip.open(stack.backups / f"sqlite/sqlite_{set_id}.db.gz") as source:
        snapshot.write_bytes(source.read())
    live = stack.deploy_dir / "storage/tracker/lib/database/tracker.db"
    # The stand-in keeps writing: by now the live database has moved on.
    stack.compose("stop", "tracker")
    assert table_dump(live) != table_dump(snapshot)

    result = restore(stack, set_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert table_dump(live) == table_dump(snapshot)
    kept = list(live.parent.glob("tracker.db.before-restore-*"))
    assert len(kept) == 1
    assert table_dump(kept[0]) != table_dump(snapshot)
    # The tracker was stopped before the restore, so it stays stopped.
    assert "tracker" not in stack.running_services()


def test_restore_starts_a_running_tracker_again_and_waits_for_health(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    assert stack.run_maintenance().returncode == 0
    [set_id] = stack.sets()
    result = restore(stack, set_id, only="all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tracker is healthy" in result.stdout
    assert "tracker" in stack.running_services()
    extracted = stack.backups / f"restore-{set_id}/data/storage/tracker/etc/tracker.toml"
    assert (
        extracted.read_bytes()
        == (stack.deploy_dir / "storage/tracker/etc/tracker.toml").read_bytes()
    )


def test_mysql_verify_drill_and_restore_round_trip(tmp_path: Path) -> None:
    require_images(STANDIN_IMAGE, MARIADB_IMAGE, BACKUP_IMAGE)
    data = env_for_stack(sample_data("manual-test-mysql"))
    data["tracker"]["core"]["database"]["password"] = "p a'ss\"w$(x)`;#\\ ü"
    stack = Stack(parse(data), tmp_path / "m").install()

    def rows() -> str:
        return stack.mysql_query("SELECT id, info_hash, completed FROM torrents ORDER BY id")

    try:
        stack.up()
        assert stack.run_maintenance().returncode == 0
        [set_id] = stack.sets()
        drill = verify(stack, set_id)
        assert drill.returncode == 0, drill.stdout + drill.stderr
        assert "throw-away database server" in drill.stdout
        assert f"set {set_id}: VERIFIED" in drill.stdout
        leftovers = subprocess.run(
            [
                "docker",
                "ps",
                "-a",
                "-q",
                "--filter",
                f"name=tracker-drill-{set_id.replace('_', '-')}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert leftovers.stdout.strip() == ""

        stack.compose("stop", "tracker")
        with gzip.open(stack.backups / f"mysql/mysql_{set_id}.sql.gz", "rt") as dump:
            dumped = dump.read()
        before = rows()
        result = restore(stack, set_id)
        assert result.returncode == 0, result.stdout + result.stderr
        after = rows()
        # The safety backup came first: two sets now, and the data equals the chosen set's.
        assert len(stack.sets()) == 2
        assert after != before  # the stand-in wrote on after the snapshot
        restored_count = len(after.splitlines())
        assert restored_count == int(stack.meta(set_id)["rows.torrents"])
        # The stand-in's invariant holds in the restored data: no half-written download.
        assert "INSERT INTO `torrents`" in dumped
        total = stack.mysql_query(
            "SELECT (SELECT COALESCE(SUM(completed), 0) FROM torrents) = (SELECT value FROM "
            "torrent_aggregate_metrics WHERE metric_name = 'torrents_downloads_total')",
        )
        assert total.strip() == "1"
    finally:
        stack.cleanup()


class _Pings(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: Any) -> None:
        """Quiet: the test checks the requests, not the server's log."""


def test_notify_url_gets_start_and_success_pings_and_a_dead_url_fails_nothing(
    tmp_path: Path,
) -> None:
    require_images(STANDIN_IMAGE, BACKUP_IMAGE)
    server = http.server.HTTPServer(("127.0.0.1", 0), _Pings)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Pings.seen = []
    data = env_for_stack(sample_data("manual-test-sqlite"))
    data["backup"]["notify_url"] = f"http://127.0.0.1:{port}/ping/abc"
    stack = Stack(parse(data), tmp_path / "n").install()
    try:
        stack.up()
        assert stack.run_maintenance().returncode == 0
        assert _Pings.seen == ["/ping/abc/start", "/ping/abc"]
        server.shutdown()
        server.server_close()
        # Nobody listens now: the pings fail, the backup does not.
        result = stack.run_maintenance()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ping to the notify URL failed (ignored)" in stack.log_file.read_text()
        assert len(stack.sets()) == 2
    finally:
        stack.cleanup()
