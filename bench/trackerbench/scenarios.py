"""The three ways of backing up that the benchmark compares.

- **ours**: `backup.sh snapshot --gate` followed by `backup.sh finish TS`, run
  on the host with CONFIG_FILE/BACKUP_ROOT pointing at a temporary directory, as
  the bats tests do. The snapshot prepares (config, lock, staging, database
  checks) while the tracker still runs and prints "snapshot-ready"; the
  maintenance script then stops the tracker and writes "go". The window is
  from writing "go" until "snapshot-open" (for MySQL the dump goes on after
  that, with the tracker running again).
- **baseline**: `bench/baseline.sh`, the naive backup that keeps the tracker
  stopped for the whole job and compresses with single-threaded gzip.
- **floor** (SQLite only): a plain `cp` of the database file, the physical
  limit for a stop-the-world copy.

Each function runs one backup and returns a `Run`; the window is the part
that keeps the database to itself (the tracker is down), the total is all of
it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trackerbench.measure import Sample, run_measured

BENCH_DIR = Path(__file__).resolve().parent.parent
BASELINE_SH = BENCH_DIR / "baseline.sh"
# = tracker_deployer.paths.SNAPSHOT_OPEN_LINE, SNAPSHOT_READY_LINE and
# SNAPSHOT_GO_LINE (the bench runs without the package)
OPEN_LINE = "snapshot-open"
READY_LINE = "snapshot-ready"
GO_LINE = "go"
# How long `snapshot --gate` waits for the go line (the bench writes it at once).
GATE_SECONDS = 600


@dataclass(frozen=True, slots=True)
class Run:
    """One backup by one method."""

    window_seconds: float
    total_seconds: float
    peak_rss_bytes: int
    output_bytes: int
    # ours only: the snapshot's staged, uncompressed copy or dump
    staged_bytes: int = 0


def _shell_quote(value: str) -> str:
    """Quote a backup.conf value the way the deployer's renderer does."""
    return "'" + value.replace("'", "'\\''") + "'"


def write_backup_conf(path: Path, values: Mapping[str, str]) -> Path:
    """Write backup.conf (KEY='VALUE' lines), mode 0600."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("".join(f"{key}={_shell_quote(value)}\n" for key, value in values.items()))
    return path


def make_config_tree(root: Path) -> Path:
    """A small stack configuration to archive; returns the paths file listing it."""
    files = {
        "storage/tracker/etc/tracker.toml": '[core]\ndb_driver = "sqlite3"\n' * 20,
        "storage/prometheus/etc/prometheus.yml": "scrape_configs: []\n" * 20,
        "storage/grafana/provisioning/dashboards/tracker.json": '{"panels": []}\n' * 200,
        "storage/caddy/etc/Caddyfile": "tracker.example.org {\n  reverse_proxy tracker:7070\n}\n",
        "compose/docker-compose.yml": "services: {}\n" * 50,
        "compose/.env": "TORRUST_TRACKER_CONFIG_TOML_PATH=/etc/torrust/tracker/tracker.toml\n",
    }
    for relative, content in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    paths_file = root / "backup-paths.txt"
    paths_file.write_text(
        "".join(
            f"{root / p}\n"
            for p in (
                "storage/tracker/etc/tracker.toml",
                "storage/prometheus/etc",
                "storage/grafana/provisioning",
                "storage/caddy/etc/Caddyfile",
                "compose/docker-compose.yml",
                "compose/.env",
            )
        )
    )
    return paths_file


def gated(backup_sh: Path) -> bool:
    """Whether this backup.sh has `snapshot --gate` (--backup-sh may name an older one,
    whose window then runs from its start, as the maintenance script ran it before)."""
    return "--gate" in backup_sh.read_text()


def run_ours(backup_sh: Path, config_file: Path, backup_root: Path) -> Run:
    """`backup.sh snapshot --gate` (the window: from "go" to the open line), then
    `backup.sh finish TS`."""
    env = {**os.environ, "CONFIG_FILE": str(config_file), "BACKUP_ROOT": str(backup_root)}
    if gated(backup_sh):
        snapshot = run_measured(
            ["bash", str(backup_sh), "snapshot", "--gate", str(GATE_SECONDS)],
            env=env,
            open_line=OPEN_LINE,
            gate=(READY_LINE, GO_LINE),
        )
        if snapshot.go_seconds is None:
            raise RuntimeError(f"backup.sh snapshot --gate never printed {READY_LINE!r}")
    else:
        snapshot = run_measured(["bash", str(backup_sh), "snapshot"], env=env, open_line=OPEN_LINE)
    if snapshot.open_seconds is None:
        raise RuntimeError(f"backup.sh snapshot never printed {OPEN_LINE!r}")
    lines = snapshot.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError("backup.sh snapshot printed no set TS")
    ts = lines[-1]
    staged = backup_root / ".staging" / ts
    staged_bytes = sum(
        (staged / name).stat().st_size
        for name in ("snapshot.db", "dump.sql")
        if (staged / name).is_file()
    )
    finish = run_measured(["bash", str(backup_sh), "finish", ts], env=env)
    if not (backup_root / "manifests" / f"set_{ts}.sha256").is_file():
        raise RuntimeError(f"backup.sh finish {ts} left no manifest: the set is incomplete")
    outputs = [
        backup_root / kind / f"{kind}_{ts}.{ext}.{suffix}"
        for kind, ext in (("sqlite", "db"), ("mysql", "sql"))
        for suffix in ("gz", "zst")
    ]
    output_bytes = sum(path.stat().st_size for path in outputs if path.is_file())
    return Run(
        window_seconds=snapshot.open_seconds - (snapshot.go_seconds or 0.0),
        total_seconds=snapshot.seconds + finish.seconds,
        peak_rss_bytes=max(snapshot.peak_rss_bytes, finish.peak_rss_bytes),
        output_bytes=output_bytes,
        staged_bytes=staged_bytes,
    )


def _whole_window(sample: Sample, output: Path) -> Run:
    return Run(
        window_seconds=sample.seconds,
        total_seconds=sample.seconds,
        peak_rss_bytes=sample.peak_rss_bytes,
        output_bytes=output.stat().st_size,
    )


def run_baseline_sqlite(database: Path, out_dir: Path, level: int) -> Run:
    """The naive SQLite backup: `.backup` then `gzip -LEVEL`, all in the window."""
    output = out_dir / "baseline.db.gz"
    sample = run_measured(
        ["bash", str(BASELINE_SH), "sqlite", str(database), str(output), str(level)]
    )
    return _whole_window(sample, output)


def run_baseline_mysql(option_file: Path, database: str, out_dir: Path, level: int) -> Run:
    """The naive MySQL backup: `mariadb-dump | gzip -LEVEL`, all in the window."""
    output = out_dir / "baseline.sql.gz"
    sample = run_measured(
        ["bash", str(BASELINE_SH), "mysql", str(option_file), database, str(output), str(level)]
    )
    return _whole_window(sample, output)


def run_floor(database: Path, out_dir: Path) -> Run:
    """A plain `cp` of the SQLite file."""
    output = out_dir / "floor-copy.db"
    sample = run_measured(["cp", "--", str(database), str(output)])
    return _whole_window(sample, output)


def reset_dir(path: Path) -> Path:
    """An empty directory at `path` (removing what was there)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
