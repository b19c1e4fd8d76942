"""Tracker-shaped databases: generated SQLite files (cached) and MariaDB copies.

The schema is the Torrust Tracker's (`torrents`, `whitelist`, `keys`,
`torrent_aggregate_metrics`, with its column types and UNIQUE constraints).
The data is deterministic for a given size (the random generator is seeded
with it), so a cached file and a fresh one are identical:

- `torrents`: `size` rows in id order with random 40-hex info hashes (so the
  UNIQUE index grows in random order, like a real tracker's) and a skewed
  `completed` count (most torrents small, a few large);
- `whitelist`: every 100th torrent's info hash;
- `keys`: size/1000 (at least 10) 32-character alphanumeric keys, one in ten
  without expiry;
- `torrent_aggregate_metrics`: one `torrents_downloads_total` row.

SQLite files are generated in one transaction with `executemany` and cached as
`<cache>/tracker-<size>-v<N>.sqlite3` (written under a temporary name, then
renamed). MariaDB gets the same rows with `LOAD DATA LOCAL INFILE` from a TSV
export of that file; the torrents' UNIQUE index is added after the load (a
sorted index build, much faster than 10^7 random inserts into a 128 MB buffer
pool). A backup's `mariadb-dump` reads the clustered index only, so the
index's build order does not change what is measured.
"""

from __future__ import annotations

import os
import random
import sqlite3
import string
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

LogFn = Callable[[str], None]

GENERATOR_VERSION = 1
WHITELIST_EVERY = 100
KEYS_PER_TORRENT = 1000
MIN_KEYS = 10
MAX_COMPLETED = 1_000_000
KEY_ALPHABET = string.ascii_letters + string.digits

SQLITE_SCHEMA = """
CREATE TABLE whitelist (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    info_hash TEXT NOT NULL UNIQUE
);
CREATE TABLE torrents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    info_hash TEXT NOT NULL UNIQUE,
    completed INTEGER DEFAULT 0 NOT NULL
);
CREATE TABLE keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    valid_until INTEGER
);
CREATE TABLE torrent_aggregate_metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    metric_name TEXT NOT NULL UNIQUE,
    value INTEGER DEFAULT 0 NOT NULL
);
"""

# The tracker's MySQL DDL; torrents' UNIQUE index is added after the load.
MYSQL_SCHEMA = """
CREATE TABLE whitelist (
    id integer PRIMARY KEY AUTO_INCREMENT,
    info_hash VARCHAR(40) NOT NULL UNIQUE
) ENGINE=InnoDB;
CREATE TABLE torrents (
    id integer PRIMARY KEY AUTO_INCREMENT,
    info_hash VARCHAR(40) NOT NULL,
    completed INTEGER DEFAULT 0 NOT NULL
) ENGINE=InnoDB;
CREATE TABLE `keys` (
    id integer PRIMARY KEY AUTO_INCREMENT,
    `key` VARCHAR(32) NOT NULL,
    valid_until INT(10),
    UNIQUE (`key`)
) ENGINE=InnoDB;
CREATE TABLE torrent_aggregate_metrics (
    id integer PRIMARY KEY AUTO_INCREMENT,
    metric_name VARCHAR(50) NOT NULL UNIQUE,
    value INTEGER DEFAULT 0 NOT NULL
) ENGINE=InnoDB;
"""
MYSQL_TORRENTS_INDEX = "ALTER TABLE torrents ADD UNIQUE KEY info_hash (info_hash);"

# (table, columns) in load order; the same for both engines.
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("torrents", ("id", "info_hash", "completed")),
    ("whitelist", ("id", "info_hash")),
    ("keys", ("id", "key", "valid_until")),
    ("torrent_aggregate_metrics", ("id", "metric_name", "value")),
)


def sqlite_cache_path(cache_dir: Path, size: int) -> Path:
    """Where the SQLite database with `size` torrents is cached."""
    return cache_dir / f"tracker-{size}-v{GENERATOR_VERSION}.sqlite3"


def _torrent_rows(rng: random.Random, size: int) -> Iterator[tuple[str, int]]:
    randbytes = rng.randbytes
    pareto = rng.paretovariate
    for _ in range(size):
        yield randbytes(20).hex(), min(int(pareto(1.2)) - 1, MAX_COMPLETED)


def _key_rows(rng: random.Random, count: int) -> Iterator[tuple[str, int | None]]:
    base = 1_767_225_600  # 2026-01-01T00:00:00Z
    for index in range(count):
        key = "".join(rng.choices(KEY_ALPHABET, k=32))
        valid_until = None if index % 10 == 0 else base + rng.randrange(365 * 86400)
        yield key, valid_until


def generate_sqlite(path: Path, size: int) -> None:
    """Write a tracker database with `size` torrents to `path` (replacing it)."""
    path.unlink(missing_ok=True)
    rng = random.Random(size)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        # Generation only: no journal, no fsync. The file's journal mode stays
        # the default (DELETE), as a tracker's own database has it.
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-262144")
        connection.executescript(SQLITE_SCHEMA)  # executescript commits first: before BEGIN
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO torrents (info_hash, completed) VALUES (?, ?)",
            _torrent_rows(rng, size),
        )
        connection.execute(
            "INSERT INTO whitelist (info_hash) SELECT info_hash FROM torrents WHERE id % ? = 0",
            (WHITELIST_EVERY,),
        )
        connection.executemany(
            "INSERT INTO keys (key, valid_until) VALUES (?, ?)",
            _key_rows(rng, max(MIN_KEYS, size // KEYS_PER_TORRENT)),
        )
        connection.execute(
            "INSERT INTO torrent_aggregate_metrics (metric_name, value) "
            "SELECT 'torrents_downloads_total', COALESCE(SUM(completed), 0) FROM torrents"
        )
        connection.execute("COMMIT")
    finally:
        connection.close()


def ensure_sqlite(cache_dir: Path, size: int, log: LogFn) -> Path:
    """The cached database for `size`, generated first when missing."""
    path = sqlite_cache_path(cache_dir, size)
    if path.is_file():
        log(f"sqlite {size:.0e}: cached {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    started = time.perf_counter()
    log(f"sqlite {size:.0e}: generating {path}")
    try:
        generate_sqlite(temporary, size)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    log(
        f"sqlite {size:.0e}: generated {path.stat().st_size / 1e6:.1f} MB "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return path


def _option_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
    return f'"{escaped}"'


def sql_string(value: str) -> str:
    """A MySQL string literal (default sql_mode: backslash escapes on)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class MysqlAccount:
    """Connection details for the `mariadb` command-line client."""

    host: str
    port: int
    user: str
    password: str

    def write_option_file(self, path: Path) -> Path:
        """A 0600 `[client]` option file (the password never goes on a command line)."""
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(
            "[client]\n"
            f"host={_option_quote(self.host)}\n"
            f"port={self.port}\n"
            f"user={_option_quote(self.user)}\n"
            f"password={_option_quote(self.password)}\n"
        )
        return path


def mariadb(option_file: Path, sql: str, *, database: str | None = None) -> str:
    """Run SQL with the `mariadb` client; return its tab-separated output."""
    argv = [
        "mariadb",
        f"--defaults-extra-file={option_file}",
        "--batch",
        "--skip-column-names",
        "--local-infile=1",
    ]
    if database is not None:
        argv.append(f"--database={database}")
    result = subprocess.run(argv, input=sql, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"mariadb failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout


SQLITE_TSV_OPTIONS = (
    "sqlite3",
    "-readonly",
    "-batch",
    "-noheader",
    "-separator",
    "\t",
    "-nullvalue",
    "\\N",
)


def export_tsv(sqlite_path: Path, table: str, columns: tuple[str, ...], target: Path) -> None:
    """Write a table as TSV for LOAD DATA (NULL as \\N)."""
    select = f"SELECT {', '.join(columns)} FROM {table} ORDER BY id"
    with target.open("wb") as out:
        subprocess.run(
            [*SQLITE_TSV_OPTIONS, str(sqlite_path), select],
            stdout=out,
            check=True,
        )


def load_mysql(
    admin_options: Path, database: str, sqlite_path: Path, work_dir: Path, log: LogFn
) -> None:
    """(Re)create `database` with the rows of the SQLite file `sqlite_path`."""
    started = time.perf_counter()
    mariadb(
        admin_options,
        f"DROP DATABASE IF EXISTS `{database}`;CREATE DATABASE `{database}` CHARACTER SET utf8mb4;",
    )
    mariadb(admin_options, MYSQL_SCHEMA, database=database)
    for table, columns in TABLES:
        tsv = work_dir / f"{table}.tsv"
        export_tsv(sqlite_path, table, columns, tsv)
        try:
            mariadb(
                admin_options,
                f"LOAD DATA LOCAL INFILE {sql_string(str(tsv))} INTO TABLE `{table}` "
                f"FIELDS TERMINATED BY '\\t' ({', '.join(f'`{c}`' for c in columns)});",
                database=database,
            )
        finally:
            tsv.unlink(missing_ok=True)
    mariadb(admin_options, MYSQL_TORRENTS_INDEX, database=database)
    log(f"mysql: loaded {database} in {time.perf_counter() - started:.1f} s")


def mysql_size_bytes(admin_options: Path, database: str) -> int:
    """InnoDB data + index bytes of `database` (information_schema's estimate)."""
    output = mariadb(
        admin_options,
        "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables "
        f"WHERE table_schema = {sql_string(database)};",
    )
    return int(output.strip() or 0)
