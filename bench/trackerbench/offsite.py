"""The off-host upload (backup.offsite): MB/s, and the bytes a second upload sends.

What runs is what a host runs after a backup, minus the container:
`docker/backup/offsite.sh upload` on this machine (as the rest of the bench runs
backup.sh), with this machine's restic (Debian's package, the version the
backup image installs), against a real restic REST repository: `rclone serve
restic` on 127.0.0.1, as tests/integration/test_offsite.py does.

Each round:

1. a fresh, empty repository (`restic init`, not measured: a host does it once);
2. **first upload**: the backup root holds one complete set of the database
   (made by `backup.sh snapshot` + `finish`); `offsite.sh upload` verifies it,
   sends it and runs `forget --prune` (keep-last 100: nothing is forgotten);
3. **second upload**: the next set, made by backup.sh after a barely changed
   database (`changes` torrents get one more completed download, `changes` new
   torrents), is added to the backup root; `offsite.sh upload` sends only
   that set, and restic's content-defined chunks that the repository already
   holds are not sent again (deduplication).

The two sets are made once; each round links them into a backup root at the
same path, so restic sees the same file names in every round.

**Bytes sent** are counted by a TCP relay on 127.0.0.1 between restic and the
REST server: every byte restic writes to the server's socket (requests:
headers and bodies: packs, indexes, the snapshot, locks), and every byte it
reads back. The relay copies with 1 MiB buffers, one thread per direction of
each connection. The repository's growth on disk (the files under the server's
directory) is recorded next to it.

**Where the time goes**: a `restic` wrapper first on offsite.sh's PATH logs
the wall time of each restic subcommand (`snapshots`, `backup`, `forget`);
the rest of the upload's time is offsite.sh itself (verifying the set with
sha256sum and gzip -t, listing its files).
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trackerbench.measure import median, run_measured
from trackerbench.scenarios import run_ours

MB = 1_000_000
ENV_NAME = "bench"
KEEP = "--keep-last 100"
STARTUP_SECONDS = 30.0
RELAY_BUFFER = 2**20

Log = Callable[[str], None]


# --------------------------------------------------------------------------- the REST server


class RestServer:
    """`rclone serve restic` over a directory on 127.0.0.1 (its own process group)."""

    def __init__(self, directory: Path, log_file: Path) -> None:
        self.directory = directory
        self.log_file = log_file
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RestServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            "rclone",
            "serve",
            "restic",
            "--addr",
            f"127.0.0.1:{self.port}",
            str(self.directory),
        ]
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"rclone serve restic exited: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"rclone serve restic did not listen on {self.port}")

    def _log_tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self._process is None:
            return
        os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)
        self._process = None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --------------------------------------------------------------------------- the counting relay


class CountingRelay:
    """A TCP relay 127.0.0.1:port -> 127.0.0.1:target that counts the bytes both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sent = 0  # client -> server
        self._received = 0  # server -> client
        self._connections = 0
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="relay-accept", daemon=True)
        self._acceptor.start()

    def counters(self) -> tuple[int, int, int]:
        """(bytes sent to the server, bytes received from it, connections) so far."""
        with self._lock:
            return self._sent, self._received, self._connections

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._closing:
                client.close()
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += 1
            handler = threading.Thread(
                target=self._relay, args=(client, server), name="relay-connection", daemon=True
            )
            self._threads.append(handler)
            handler.start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        """Both directions of one connection; closes both sockets at the end."""
        upward = threading.Thread(target=self._pump, args=(client, server, True), daemon=True)
        upward.start()
        self._pump(server, client, upward=False)
        upward.join()
        client.close()
        server.close()

    def _pump(self, source: socket.socket, sink: socket.socket, upward: bool) -> None:
        buffer = bytearray(RELAY_BUFFER)
        view = memoryview(buffer)
        try:
            while True:
                count = source.recv_into(buffer)
                if count == 0:
                    break
                sink.sendall(view[:count])
                with self._lock:
                    if upward:
                        self._sent += count
                    else:
                        self._received += count
        except OSError:
            pass
        finally:
            # Pass the end of the stream on (half-close), as the peers did.
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def settle(self) -> None:
        """Wait for the relayed connections to end (their last bytes counted)."""
        for pump in list(self._threads):
            pump.join(timeout=10)

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        self.settle()


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Upload:
    """One `offsite.sh upload`."""

    seconds: float
    set_bytes: int  # the files of the set(s) it uploaded
    sent_bytes: int  # restic -> server, counted at the relay
    received_bytes: int  # server -> restic
    connections: int
    repository_growth_bytes: int
    peak_rss_bytes: int
    # wall seconds of each restic subcommand offsite.sh ran (snapshots, backup, forget, ...)
    restic_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def mb_per_second(self) -> float:
        return self.set_bytes / MB / self.seconds

    @property
    def backup_seconds(self) -> float:
        return self.restic_seconds.get("backup", 0.0)

    @property
    def script_seconds(self) -> float:
        """What offsite.sh spent outside restic: verifying the set, listing files."""
        return self.seconds - sum(self.restic_seconds.values())


def _medians(uploads: Sequence[Upload], set_bytes: int) -> dict[str, float]:
    backup = median([u.backup_seconds for u in uploads])
    return {
        "set_bytes": set_bytes,
        "seconds": median([u.seconds for u in uploads]),
        "mb_per_second": median([u.mb_per_second for u in uploads]),
        "restic_backup_seconds": backup,
        "restic_backup_mb_per_second": set_bytes / MB / backup if backup else 0.0,
        "restic_other_seconds": median(
            [sum(u.restic_seconds.values()) - u.backup_seconds for u in uploads]
        ),
        "script_seconds": median([u.script_seconds for u in uploads]),
        "sent_bytes": median([u.sent_bytes for u in uploads]),
        "sent_bytes_min": min(u.sent_bytes for u in uploads),
        "sent_bytes_max": max(u.sent_bytes for u in uploads),
        "received_bytes": median([u.received_bytes for u in uploads]),
        "growth_bytes": median([u.repository_growth_bytes for u in uploads]),
        "peak_rss_bytes": max(u.peak_rss_bytes for u in uploads),
    }


@dataclass(frozen=True, slots=True)
class OffsiteResult:
    """All rounds of the first and the second upload."""

    rows: int
    changes: int
    compression: str
    first: tuple[Upload, ...]
    second: tuple[Upload, ...]
    first_set_files: dict[str, int]
    second_set_files: dict[str, int]
    restic_version: str
    rclone_version: str
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """Medians (peak RSS and the sent range: over the rounds) of both uploads."""
        first = _medians(self.first, sum(self.first_set_files.values()))
        second = _medians(self.second, sum(self.second_set_files.values()))
        second["sent_share_of_set"] = second["sent_bytes"] / second["set_bytes"]
        return {"first": first, "second": second}


def format_offsite(result: OffsiteResult) -> str:
    """The medians as Markdown."""
    summary = result.summary()
    lines = [
        "| upload | set MB | total s | MB/s (set / total) | restic backup s (MB/s) "
        "| other restic s | offsite.sh own s | sent MB (range) | received MB "
        "| repository growth MB | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in (
        ("first", "first (empty repository)"),
        ("second", f"second ({result.changes} updated + {result.changes} new torrents)"),
    ):
        s = summary[key]
        lines.append(
            f"| {label} | {s['set_bytes'] / MB:.1f} | {s['seconds']:.2f} "
            f"| {s['mb_per_second']:.1f} "
            f"| {s['restic_backup_seconds']:.2f} ({s['restic_backup_mb_per_second']:.1f}) "
            f"| {s['restic_other_seconds']:.2f} | {s['script_seconds']:.2f} "
            f"| {s['sent_bytes'] / MB:.2f} ({s['sent_bytes_min'] / MB:.2f}-"
            f"{s['sent_bytes_max'] / MB:.2f}) "
            f"| {s['received_bytes'] / MB:.2f} | {s['growth_bytes'] / MB:.2f} "
            f"| {s['peak_rss_bytes'] / 2**20:.1f} |"
        )
    second = summary["second"]
    lines.append("")
    lines.append(
        f"The second upload sent {second['sent_share_of_set']:.1%} of its set's "
        f"{second['set_bytes'] / MB:.1f} MB (median)."
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- restic, timed

# A `restic` first on offsite.sh's PATH: runs the real one and appends the
# subcommand and its wall time to a log (no argument values: nothing secret is
# on restic's command line anyway, the password is in a file).
_WRAPPER = """#!/bin/bash
start="$(date +%s.%N)"
rc=0
{real} "$@" || rc=$?
end="$(date +%s.%N)"
command=unknown
for argument in "$@"; do
  case "${{argument}}" in
    snapshots | backup | forget | unlock | init | check | stats | restore) command="${{argument}}"; break ;;
  esac
done
printf '%s %s %s\\n' "${{command}}" "${{start}}" "${{end}}" >>{log}
exit "${{rc}}"
"""


def _install_wrapper(bin_dir: Path, log: Path) -> None:
    real = shutil.which("restic")
    if real is None:
        raise RuntimeError("restic is not installed")
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "restic"
    wrapper.write_text(_WRAPPER.format(real=shlex.quote(real), log=shlex.quote(str(log))))
    wrapper.chmod(0o755)


def _restic_seconds(log: Path) -> dict[str, float]:
    seconds: dict[str, float] = {}
    if not log.is_file():
        return seconds
    for line in log.read_text().splitlines():
        command, start, end = line.split()
        seconds[command] = seconds.get(command, 0.0) + float(end) - float(start)
    return seconds


# --------------------------------------------------------------------------- the bench


def change_database(database: Path, changes: int, seed: str) -> None:
    """`changes` random torrents get one more completed download; `changes` new torrents
    (random info hashes from a seed of their own, not the generator's)."""
    rng = random.Random(seed)
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        (highest,) = connection.execute("SELECT MAX(id) FROM torrents").fetchone()
        connection.execute("BEGIN")
        connection.executemany(
            "UPDATE torrents SET completed = completed + 1 WHERE id = ?",
            [(rng.randrange(1, highest + 1),) for _ in range(changes)],
        )
        connection.executemany(
            "INSERT INTO torrents (info_hash, completed) VALUES (?, 0)",
            [(rng.randbytes(20).hex(),) for _ in range(changes)],
        )
        connection.execute("COMMIT")
    finally:
        connection.close()


def _set_files(root: Path, ts: str) -> dict[str, int]:
    """The set's files (relative to the backup root) and their sizes."""
    found = {}
    for path in sorted(root.rglob(f"*{ts}*")):
        if path.is_file() and ".staging" not in path.parts:
            found[str(path.relative_to(root))] = path.stat().st_size
    return found


def _link_set(source: Path, target: Path, files: dict[str, int]) -> None:
    for relative in files:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        os.link(source / relative, target / relative)


def _tree_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _make_set(backup_sh: Path, conf: Path, root: Path, previous: str | None) -> str:
    if previous is not None:
        # Set ids have a resolution of one second.
        while time.strftime("%Y%m%d_%H%M%S", time.gmtime()) <= previous:
            time.sleep(0.2)
    run_ours(backup_sh, conf, root)
    ids = sorted(
        path.name[len("set_") : -len(".sha256")] for path in root.glob("manifests/set_*.sha256")
    )
    ids = [ts for ts in ids if previous is None or ts > previous]
    if len(ids) != 1:
        raise RuntimeError(f"backup.sh left {len(ids)} new sets in {root}, not 1")
    return ids[0]


def _version(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except OSError:
        return "missing"
    return (result.stdout or result.stderr).strip().splitlines()[0]


@dataclass(frozen=True, slots=True)
class OffsiteSettings:
    """What the offsite bench needs from the command line."""

    backup_sh: Path
    offsite_sh: Path
    source_database: Path
    rows: int
    changes: int
    repeat: int
    compression: str
    write_conf: Callable[[Path, Path], Path]  # (path, database) -> backup.conf


def bench_offsite(settings: OffsiteSettings, work: Path, log: Log) -> OffsiteResult:
    """Make the two sets, then `repeat` rounds of first and second upload."""
    work.mkdir(parents=True)
    database = work / "tracker.db"
    shutil.copyfile(settings.source_database, database)
    conf = settings.write_conf(work / "backup-offsite.conf", database)
    sets = work / "sets"
    first_ts = _make_set(settings.backup_sh, conf, sets, None)
    first_files = _set_files(sets, first_ts)
    change_database(database, settings.changes, seed=f"offsite-{settings.rows}")
    second_ts = _make_set(settings.backup_sh, conf, sets, first_ts)
    second_files = _set_files(sets, second_ts)
    log(
        f"offsite {settings.rows:.0e}: sets {first_ts} ({sum(first_files.values()) / MB:.1f} MB) "
        f"and {second_ts} ({sum(second_files.values()) / MB:.1f} MB, after "
        f"{settings.changes} updated + {settings.changes} inserted torrents)"
    )
    password_file = work / "offsite.password"
    password_file.touch(mode=0o600)
    password_file.write_text("bench password, not a secret\n")
    timing = work / "restic-times.log"
    _install_wrapper(work / "bin", timing)
    first: list[Upload] = []
    second: list[Upload] = []
    for index in range(settings.repeat):
        repository = work / "repository"
        shutil.rmtree(repository, ignore_errors=True)
        root = work / "backups"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        server = RestServer(repository, work / "rclone.log").start()
        relay = CountingRelay(server.port)
        try:
            env = {
                **os.environ,
                "BACKUP_ROOT": str(root),
                "OFFSITE_BACKUP_SH": str(settings.backup_sh),
                "RESTIC_REPOSITORY": f"rest:http://127.0.0.1:{relay.port}/",
                "RESTIC_PASSWORD_FILE": str(password_file),
                "OFFSITE_ENV_NAME": ENV_NAME,
                "OFFSITE_KEEP": KEEP,
                "TMPDIR": str(work),
                "PATH": f"{work / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            }
            for name in ("RESTIC_PASSWORD", "RESTIC_PASSWORD_COMMAND", "RESTIC_CACHE_DIR"):
                env.pop(name, None)
            init_env = {**env, "RESTIC_REPOSITORY": f"rest:http://127.0.0.1:{server.port}/"}
            subprocess.run(
                ["restic", "--no-cache", "init"],
                env=init_env,
                check=True,
                capture_output=True,
            )
            _link_set(sets, root, first_files)
            first.append(
                _upload(settings.offsite_sh, env, relay, repository, timing, first_ts, first_files)
            )
            _link_set(sets, root, second_files)
            second.append(
                _upload(
                    settings.offsite_sh, env, relay, repository, timing, second_ts, second_files
                )
            )
        finally:
            relay.close()
            server.stop()
        log(
            f"offsite {settings.rows:.0e} round {index + 1}/{settings.repeat}: "
            f"first {first[-1].seconds:.2f} s ({first[-1].mb_per_second:.1f} MB/s, "
            f"sent {first[-1].sent_bytes / MB:.2f} MB), second {second[-1].seconds:.2f} s "
            f"(sent {second[-1].sent_bytes / MB:.2f} MB of {sum(second_files.values()) / MB:.1f})"
        )
    return OffsiteResult(
        rows=settings.rows,
        changes=settings.changes,
        compression=settings.compression,
        first=tuple(first),
        second=tuple(second),
        first_set_files=first_files,
        second_set_files=second_files,
        restic_version=_version(["restic", "version"]),
        rclone_version=_version(["rclone", "version"]),
        extra={"keep": KEEP, "relay_buffer_bytes": RELAY_BUFFER},
    )


def _upload(
    offsite_sh: Path,
    env: dict[str, str],
    relay: CountingRelay,
    repository: Path,
    timing: Path,
    ts: str,
    set_files: dict[str, int],
) -> Upload:
    """`offsite.sh upload`, which must send exactly set `ts`."""
    timing.unlink(missing_ok=True)
    os.sync()
    before_sent, before_received, before_connections = relay.counters()
    before_size = _tree_bytes(repository)
    sample = run_measured(["bash", str(offsite_sh), "upload"], env=env)
    relay.settle()
    sent, received, connections = relay.counters()
    uploaded = sample.stdout.strip().splitlines()[-1:]
    if uploaded != [f"uploaded={ts}"]:
        raise RuntimeError(f"offsite.sh upload printed {uploaded}, not uploaded={ts}")
    return Upload(
        seconds=sample.seconds,
        set_bytes=sum(set_files.values()),
        sent_bytes=sent - before_sent,
        received_bytes=received - before_received,
        connections=connections - before_connections,
        repository_growth_bytes=_tree_bytes(repository) - before_size,
        peak_rss_bytes=sample.peak_rss_bytes,
        restic_seconds=_restic_seconds(timing),
    )
