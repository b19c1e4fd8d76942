#!/usr/bin/env python3
"""Tracker STAND-IN for the end-to-end tests. This is NOT the Torrust tracker.

The real torrust/tracker image cannot be pulled here (no image registry), so
the e2e stack runs this small program in its place. Towards the database and
the compose stack it behaves like the tracker:

- reads the same config file (/etc/torrust/tracker/tracker.toml, or
  TORRUST_TRACKER_CONFIG_TOML_PATH / TORRUST_TRACKER_CONFIG_TOML, plus
  TORRUST_TRACKER_CONFIG_OVERRIDE_A__B=... environment overrides);
- creates the tracker's tables (whitelist, torrents, keys,
  torrent_aggregate_metrics) in SQLite or MySQL, then keeps writing: every
  interval one small transaction inserts a torrent or counts a download
  (torrents.completed + 1 and the aggregate metric 'torrents_downloads_total'
  + 1, together, so SUM(completed) == torrents_downloads_total in every
  consistent snapshot);
- serves GET /health_check on [health_check_api], GET /api/v1/stats and
  /api/health_check on [http_api], GET /announce on each [[http_trackers]] and
  BEP 15 connect/announce on each [[udp_trackers]];
- stops on SIGTERM/SIGINT within one write interval: finishes the current
  transaction, closes the database, exits 0.

Tunables (stand-in only): TRACKER_STANDIN_WRITE_INTERVAL (seconds, 0.1),
TRACKER_STANDIN_DB_WAIT_SECONDS (60).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import signal
import socket
import socketserver
import sqlite3
import struct
import sys
import threading
import time
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = "/etc/torrust/tracker/tracker.toml"
OVERRIDE_PREFIX = "TORRUST_TRACKER_CONFIG_OVERRIDE_"
DOWNLOADS_METRIC = "torrents_downloads_total"
ANNOUNCE_INTERVAL = 120


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} [tracker-standin] {message}", file=sys.stderr, flush=True)


class StandinError(Exception):
    """An error that ends the stand-in with a one-line message."""


# --------------------------------------------------------------------------- config


def _override_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def load_config(environ: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Reads the TOML config the way the real tracker does; returns (config, source)."""
    if environ.get("TORRUST_TRACKER_CONFIG_TOML"):
        text, source = environ["TORRUST_TRACKER_CONFIG_TOML"], "env TORRUST_TRACKER_CONFIG_TOML"
    else:
        path = environ.get("TORRUST_TRACKER_CONFIG_TOML_PATH") or DEFAULT_CONFIG_PATH
        source = path
        try:
            text = Path(path).read_text(encoding="utf-8")
        except PermissionError as error:
            raise StandinError(
                f"cannot read {path} as uid {os.getuid()}: {error.strerror} "
                "(the real tracker image also runs as USER_ID=1000: make the file "
                "readable by uid or gid 1000, e.g. mode 0640 group 1000)"
            ) from error
        except OSError as error:
            raise StandinError(f"cannot read config {path}: {error.strerror}") from error
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise StandinError(f"{source}: invalid TOML: {error}") from error
    for name, raw in sorted(environ.items()):
        if not name.startswith(OVERRIDE_PREFIX):
            continue
        keys = [part.lower() for part in name[len(OVERRIDE_PREFIX) :].split("__")]
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = _override_value(raw)
    return config, source


@dataclass(frozen=True)
class MysqlTarget:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str

    def __str__(self) -> str:
        return f"mysql://{self.user}:***@{self.host}:{self.port}/{self.database}"


def parse_mysql_url(url: str) -> MysqlTarget:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "mysql" or not parts.hostname:
        raise StandinError(
            "core.database.path must look like mysql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    return MysqlTarget(
        host=parts.hostname,
        port=parts.port or 3306,
        user=urllib.parse.unquote(parts.username or ""),
        password=urllib.parse.unquote(parts.password or ""),
        database=urllib.parse.unquote(parts.path.lstrip("/")),
    )


def split_address(bind_address: str) -> tuple[str, int]:
    host, _, port = bind_address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - a tracker listens on all interfaces


@dataclass(frozen=True)
class Settings:
    driver: str
    database_path: str
    health_check_address: tuple[str, int]
    api_address: tuple[str, int] | None
    access_tokens: tuple[str, ...]
    http_tracker_addresses: tuple[tuple[str, int], ...]
    udp_tracker_addresses: tuple[tuple[str, int], ...]


def settings_from(config: dict[str, Any]) -> Settings:
    database = config.get("core", {}).get("database", {})
    driver = str(database.get("driver", "sqlite3")).lower()
    if driver not in ("sqlite3", "mysql"):
        raise StandinError(
            f'unsupported core.database.driver "{driver}" (expected "sqlite3" or "mysql")'
        )
    default_path = "/var/lib/torrust/tracker/database/sqlite3.db"
    path = str(database.get("path", default_path))
    api = config.get("http_api")
    health = config.get("health_check_api", {})

    def enabled(section: dict[str, Any]) -> bool:
        return bool(section) and section.get("enabled", True) is not False

    return Settings(
        driver=driver,
        database_path=path,
        health_check_address=split_address(str(health.get("bind_address", "127.0.0.1:1313"))),
        api_address=split_address(str(api["bind_address"])) if api and enabled(api) else None,
        access_tokens=tuple(str(t) for t in (api or {}).get("access_tokens", {}).values()),
        http_tracker_addresses=tuple(
            split_address(str(t["bind_address"]))
            for t in config.get("http_trackers", [])
            if enabled(t)
        ),
        udp_tracker_addresses=tuple(
            split_address(str(t["bind_address"]))
            for t in config.get("udp_trackers", [])
            if enabled(t)
        ),
    )


# --------------------------------------------------------------------------- database

SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS whitelist (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " info_hash TEXT NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS torrents (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " info_hash TEXT NOT NULL UNIQUE, completed INTEGER DEFAULT 0 NOT NULL)",
    "CREATE TABLE IF NOT EXISTS keys (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " key TEXT NOT NULL UNIQUE, valid_until INTEGER)",
    "CREATE TABLE IF NOT EXISTS torrent_aggregate_metrics (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " metric_name TEXT NOT NULL UNIQUE, value INTEGER DEFAULT 0 NOT NULL)",
)

MYSQL_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS whitelist (id integer PRIMARY KEY AUTO_INCREMENT,"
    " info_hash VARCHAR(40) NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS torrents (id integer PRIMARY KEY AUTO_INCREMENT,"
    " info_hash VARCHAR(40) NOT NULL UNIQUE, completed INTEGER DEFAULT 0 NOT NULL)",
    "CREATE TABLE IF NOT EXISTS `keys` (`id` INT NOT NULL AUTO_INCREMENT, `key` VARCHAR(32) NOT NULL,"
    " `valid_until` INT(10), PRIMARY KEY (`id`), UNIQUE (`key`))",
    "CREATE TABLE IF NOT EXISTS torrent_aggregate_metrics (id integer PRIMARY KEY AUTO_INCREMENT,"
    " metric_name VARCHAR(50) NOT NULL UNIQUE, value INTEGER DEFAULT 0 NOT NULL)",
)


class Database:
    """One connection, used by the writer thread only."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connection: Any = None
        self.mark = "?" if settings.driver == "sqlite3" else "%s"

    def describe(self) -> str:
        if self.settings.driver == "sqlite3":
            return f"sqlite3 {self.settings.database_path}"
        return f"mysql {parse_mysql_url(self.settings.database_path)}"

    def connect(self) -> None:
        if self.settings.driver == "sqlite3":
            path = self.settings.database_path
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(
                path, timeout=5, isolation_level=None, check_same_thread=False
            )
        else:
            import pymysql  # type: ignore[import-untyped,import-not-found,unused-ignore]  # only MySQL needs it

            target = parse_mysql_url(self.settings.database_path)
            self.connection = pymysql.connect(
                host=target.host,
                port=target.port,
                user=target.user,
                password=target.password.encode("utf-8"),
                database=target.database,
                charset="utf8mb4",
                autocommit=False,
                connect_timeout=5,
                read_timeout=10,
                write_timeout=10,
            )

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            finally:
                self.connection = None

    def _execute(self, cursor: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        cursor.execute(sql.replace("?", self.mark), params)
        return cursor

    def transaction(self, work: Any) -> Any:
        """Runs work(cursor) in one transaction; commits or rolls back."""
        cursor = self.connection.cursor()
        try:
            if self.settings.driver == "sqlite3":
                cursor.execute("BEGIN IMMEDIATE")
            result = work(cursor)
            if self.settings.driver == "sqlite3":
                cursor.execute("COMMIT")
            else:
                self.connection.commit()
            return result
        except BaseException:
            try:
                if self.settings.driver == "sqlite3":
                    cursor.execute("ROLLBACK")
                else:
                    self.connection.rollback()
            except Exception as rollback_error:
                log(f"rollback failed too: {rollback_error}")
            raise
        finally:
            cursor.close()

    def create_tables(self) -> None:
        schema = SQLITE_SCHEMA if self.settings.driver == "sqlite3" else MYSQL_SCHEMA

        def work(cursor: Any) -> None:
            for statement in schema:
                cursor.execute(statement)

        self.transaction(work)

    def counts(self) -> tuple[int, int]:
        def work(cursor: Any) -> tuple[int, int]:
            row = self._execute(
                cursor, "SELECT COUNT(*), COALESCE(SUM(completed), 0) FROM torrents"
            ).fetchone()
            return int(row[0]), int(row[1])

        torrents, completed = self.transaction(work)
        return int(torrents), int(completed)

    def add_torrent(self, info_hash: str) -> None:
        self.transaction(
            lambda cursor: self._execute(
                cursor, "INSERT INTO torrents (info_hash, completed) VALUES (?, 0)", (info_hash,)
            )
        )

    def count_download(self, pick: float) -> bool:
        """completed + 1 on one torrent and on the aggregate metric, atomically."""

        def work(cursor: Any) -> bool:
            low, high = self._execute(cursor, "SELECT MIN(id), MAX(id) FROM torrents").fetchone()
            if low is None:
                return False
            wanted = int(low + (high - low) * pick)
            row = self._execute(
                cursor, "SELECT id FROM torrents WHERE id >= ? ORDER BY id LIMIT 1", (wanted,)
            ).fetchone()
            self._execute(
                cursor, "UPDATE torrents SET completed = completed + 1 WHERE id = ?", (row[0],)
            )
            updated = self._execute(
                cursor,
                "UPDATE torrent_aggregate_metrics SET value = value + 1 WHERE metric_name = ?",
                (DOWNLOADS_METRIC,),
            ).rowcount
            if updated == 0:
                self._execute(
                    cursor,
                    "INSERT INTO torrent_aggregate_metrics (metric_name, value) VALUES (?, 1)",
                    (DOWNLOADS_METRIC,),
                )
            return True

        return bool(self.transaction(work))


# --------------------------------------------------------------------------- state


class Tracker:
    def __init__(self, settings: Settings, write_interval: float, db_wait_seconds: float) -> None:
        self.settings = settings
        self.write_interval = write_interval
        self.db_wait_seconds = db_wait_seconds
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.torrents = 0
        self.completed = 0
        self.writes = 0
        self.announces = {"tcp4": 0, "udp4": 0}
        self.database = Database(settings)
        self.random = random.Random()
        self.run_id = hashlib.sha1(
            f"{socket.gethostname()}-{time.time_ns()}".encode(), usedforsecurity=False
        ).hexdigest()[:12]

    def open_database(self) -> bool:
        """Connects and creates the tables, retrying until db_wait_seconds pass."""
        deadline = time.monotonic() + self.db_wait_seconds
        attempt = 0
        while not self.stop.is_set():
            attempt += 1
            try:
                self.database.connect()
                self.database.create_tables()
                self.torrents, self.completed = self.database.counts()
                log(
                    f"database ready: {self.database.describe()} ({self.torrents} torrents, {self.completed} downloads)"
                )
                return True
            except Exception as error:  # any driver error means "not yet"
                self.database.close()
                if time.monotonic() >= deadline:
                    log(
                        f"giving up on {self.database.describe()} after {attempt} attempts: {error}"
                    )
                    return False
                log(f"waiting for {self.database.describe()} (attempt {attempt}): {error}")
                self.pause(1.0)
        return False

    def pause(self, seconds: float) -> None:
        """Sleeps in the main thread, where signal handlers run, until stop or timeout."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)

    def write_once(self, step: int) -> None:
        if self.torrents == 0 or step % 3 == 0:
            info_hash = hashlib.sha1(
                f"standin-{self.run_id}-{step}".encode(), usedforsecurity=False
            ).hexdigest()
            self.database.add_torrent(info_hash)
            with self.lock:
                self.torrents += 1
        elif self.database.count_download(self.random.random()):
            with self.lock:
                self.completed += 1
        with self.lock:
            self.writes += 1

    def writer(self) -> None:
        step = 0
        while not self.stop.is_set():
            try:
                if self.database.connection is None:
                    self.database.connect()
                    counts = self.database.counts()
                    with self.lock:
                        self.torrents, self.completed = counts
                self.write_once(step)
                step += 1
            except Exception as error:  # keep running, like a tracker would
                log(f"database write failed, will reconnect: {error}")
                self.database.close()
                self.stop.wait(1.0)
                continue
            self.stop.wait(self.write_interval)
        self.database.close()
        log(f"writer stopped cleanly after {self.writes} transactions")

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {
                "torrents": self.torrents,
                "seeders": 0,
                "completed": self.completed,
                "leechers": 0,
                "tcp4_connections_handled": self.announces["tcp4"],
                "tcp4_announces_handled": self.announces["tcp4"],
                "udp4_announces_handled": self.announces["udp4"],
            }


# --------------------------------------------------------------------------- http


def bencode(value: Any) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(k) + bencode(value[k]) for k in sorted(value)) + b"e"
    raise TypeError(type(value))


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "tracker-standin"
    tracker: Tracker
    role: str
    query: dict[str, list[str]]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: ARG002 - stdlib signature
        return  # no access log: keep the container log for what matters

    def reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status: int, value: Any) -> None:
        self.reply(status, json.dumps(value, separators=(",", ":")).encode(), "application/json")

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        self.query = urllib.parse.parse_qs(url.query)
        getattr(self, f"route_{self.role}")(url.path)

    def route_health(self, path: str) -> None:
        if path == "/health_check":
            self.reply_json(200, {"status": "Ok", "message": "", "details": []})
        else:
            self.reply(404, b"not found", "text/plain")

    def route_api(self, path: str) -> None:
        query = self.query
        if path == "/api/health_check":
            self.reply_json(200, {"status": "Ok"})
            return
        if not path.startswith("/api/v1/"):
            self.reply(404, b"not found", "text/plain")
            return
        token = (query.get("token") or [""])[0]
        header = self.headers.get("Authorization", "")
        if not token and header.startswith("Bearer "):
            token = header[len("Bearer ") :]
        if not token:
            self.reply(500, b'Unhandled rejection: Err { reason: "unauthorized" }', "text/plain")
            return
        if token not in self.tracker.settings.access_tokens:
            self.reply(500, b'Unhandled rejection: Err { reason: "token not valid" }', "text/plain")
            return
        if path != "/api/v1/stats":
            self.reply(404, b"not found", "text/plain")
            return
        stats = self.tracker.stats()
        if (query.get("format") or [""])[0] == "prometheus":
            text = "".join(f"{name} {value}\n" for name, value in stats.items())
            self.reply(200, text.encode(), "text/plain; version=0.0.4")
        else:
            self.reply_json(200, stats)

    def route_http_tracker(self, path: str) -> None:
        query = self.query
        if path == "/health_check":
            self.reply_json(200, {"status": "Ok"})
            return
        if not path.startswith("/announce"):
            self.reply(404, b"not found", "text/plain")
            return
        with self.tracker.lock:
            self.tracker.announces["tcp4"] += 1
        if "info_hash" not in query:
            body = bencode({"failure reason": "missing param info_hash"})
        else:
            body = bencode(
                {
                    "complete": 0,
                    "incomplete": 0,
                    "interval": ANNOUNCE_INTERVAL,
                    "min interval": ANNOUNCE_INTERVAL,
                    "peers": b"",
                }
            )
        self.reply(200, body, "text/plain")


class HttpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_http(tracker: Tracker, address: tuple[str, int], role: str) -> HttpServer:
    handler = type(f"{role}Handler", (Handler,), {"tracker": tracker, "role": role})
    server = HttpServer(address, handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    ).start()
    log(f"{role} listening on http://{address[0]}:{address[1]}")
    return server


def serve_udp(tracker: Tracker, sock: socket.socket) -> None:
    """Minimal BEP 15: connect and announce (no peers)."""
    connection_id = random.getrandbits(63)
    while not tracker.stop.is_set():
        try:
            data, peer = sock.recvfrom(2048)
        except TimeoutError:
            continue
        except OSError:
            return
        if len(data) < 16:
            continue
        action, transaction = struct.unpack_from(">II", data, 8)
        if action == 0 and struct.unpack_from(">Q", data, 0)[0] == 0x41727101980:
            sock.sendto(struct.pack(">IIQ", 0, transaction, connection_id), peer)
        elif action == 1 and len(data) >= 98:
            with tracker.lock:
                tracker.announces["udp4"] += 1
            sock.sendto(struct.pack(">IIIII", 1, transaction, ANNOUNCE_INTERVAL, 0, 0), peer)


def start_udp(tracker: Tracker, address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.2)
    threading.Thread(target=serve_udp, args=(tracker, sock), daemon=True).start()
    log(f"udp tracker listening on udp://{address[0]}:{address[1]}")
    return sock


# --------------------------------------------------------------------------- main


def main(environ: dict[str, str]) -> int:
    os.umask(0o027)
    log("this is the TRACKER STAND-IN for e2e tests, not the Torrust tracker")
    try:
        config, source = load_config(environ)
        settings = settings_from(config)
        if settings.driver == "mysql":
            parse_mysql_url(settings.database_path)
    except StandinError as error:
        log(f"error: {error}")
        return 1
    log(f"config: {source} (driver {settings.driver}, uid {os.getuid()})")
    if not environ.get(OVERRIDE_PREFIX + "CORE__DATABASE__DRIVER"):
        log(
            f"warning: {OVERRIDE_PREFIX}CORE__DATABASE__DRIVER is not set; the real image's entry script exits on that"
        )
    tracker = Tracker(
        settings,
        write_interval=float(environ.get("TRACKER_STANDIN_WRITE_INTERVAL", "0.1")),
        db_wait_seconds=float(environ.get("TRACKER_STANDIN_DB_WAIT_SECONDS", "60")),
    )

    def request_stop(signum: int, _frame: Any) -> None:
        log(f"received {signal.Signals(signum).name}, stopping")
        tracker.stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    if not tracker.open_database():
        return 0 if tracker.stop.is_set() else 1
    servers: list[HttpServer] = []
    sockets: list[socket.socket] = []
    exit_code = 0
    try:
        for address in settings.udp_tracker_addresses:
            sockets.append(start_udp(tracker, address))
        for address in settings.http_tracker_addresses:
            servers.append(start_http(tracker, address, "http_tracker"))
        if settings.api_address:
            servers.append(start_http(tracker, settings.api_address, "api"))
        servers.append(start_http(tracker, settings.health_check_address, "health"))
    except OSError as error:
        log(f"error: cannot listen: {error}")
        tracker.stop.set()
        exit_code = 1
    writer = threading.Thread(target=tracker.writer, name="writer")
    writer.start()
    while not tracker.stop.is_set():
        tracker.pause(3600)  # the signal handler runs here and sets stop
    writer.join(timeout=15)
    for server in servers:
        server.shutdown()
        server.server_close()
    for sock in sockets:
        sock.close()
    if writer.is_alive():
        log("error: the writer did not finish its transaction within 15 s")
        return 1
    log("stopped")
    return exit_code


if __name__ == "__main__":
    sys.exit(main(dict(os.environ)))
