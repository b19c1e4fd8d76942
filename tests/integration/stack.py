"""A real compose stack from a rendered tree, in a temporary deploy directory.

The maintenance script is rendered from its real template with the deploy
directory, log, lock and status paths pointed at the temporary directory, and
run directly on this machine against the real Docker engine (the SSH side is
covered by test_remote.py). Images: the tracker stand-in and MariaDB from
test-doubles/images (scripts/e2e-setup.sh) and the backup image (inv build-image).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tracker_deployer import paths
from tracker_deployer.backup_layout import set_layout
from tracker_deployer.config import Env
from tracker_deployer.image import default_tag
from tracker_deployer.render import render
from tracker_deployer.render.tree import (
    DUMP_TIMEOUT_SECONDS,
    READY_TIMEOUT_SECONDS,
    maintenance_script,
)
from tracker_deployer.sandbox import (
    MARIADB_IMAGE,
    NODE_EXPORTER_IMAGE,
    PROMETHEUS_IMAGE,
    STANDIN_IMAGE,
)

from tests.integration.ports import free_port

# The test doubles' names, owned by tracker_deployer.sandbox; re-exported for the tests.
__all__ = ["MARIADB_IMAGE", "NODE_EXPORTER_IMAGE", "PROMETHEUS_IMAGE", "STANDIN_IMAGE"]

BACKUP_IMAGE = os.environ.get("TRACKER_DEPLOYER_BACKUP_IMAGE", default_tag())


def image_exists(name: str) -> bool:
    result = subprocess.run(["docker", "image", "inspect", name], capture_output=True, check=False)
    return result.returncode == 0


def missing_images(*names: str) -> list[str]:
    return [name for name in names if not image_exists(name)]


def require_images(*names: str) -> None:
    """Fail (never skip) with the command that builds what is missing."""
    import pytest

    missing = missing_images(*names)
    if missing:
        pytest.fail(f"missing images {missing}: run scripts/setup.sh (it builds them)")


class Stack:
    """A deploy directory with the stack's files and a compose project name of its own."""

    def __init__(self, env: Env, base: Path) -> None:
        self.env = env
        self.base = base
        self.deploy_dir = base / "deploy"
        self.log_file = base / "log/tracker-backup.log"
        self.lock_file = base / "lock/tracker-backup.lock"
        self.status_dir = self.deploy_dir / str(
            paths.BACKUP_STATUS_DIR.relative_to(paths.DEPLOY_DIR)
        )
        self.marker = self.status_dir / paths.TRACKER_STOPPED_MARKER.name
        self.script = base / "maintenance-backup.sh"
        # The maintenance script calls it on its way out when a test writes it here.
        self.metrics_script = base / "tracker-backup-metrics.sh"
        self.project = f"tdtest-{uuid.uuid4().hex[:10]}"

    def install(
        self,
        *,
        dump_timeout_seconds: int = DUMP_TIMEOUT_SECONDS,
        ready_timeout_seconds: int = READY_TIMEOUT_SECONDS,
    ) -> Stack:
        """Lay out the rendered /opt/torrust tree under deploy_dir, owners and modes included."""
        tree = render(self.env)
        for directory in tree.directories:
            local = self._local(directory.path)
            local.mkdir(parents=True, exist_ok=True)
            os.chown(local, directory.uid, directory.gid)
            local.chmod(directory.mode)
        for item in tree.files:
            if not item.path.is_relative_to(paths.DEPLOY_DIR):
                continue
            local = self._local(item.path)
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(item.content)
            os.chown(local, item.uid, item.gid)
            local.chmod(item.mode)
        self.base.chmod(0o755)
        self.script.write_bytes(
            maintenance_script(
                self.env,
                deploy_dir=str(self.deploy_dir),
                log_file=str(self.log_file),
                lock_file=str(self.lock_file),
                status_dir=str(self.status_dir),
                metrics_script=str(self.metrics_script),
                dump_timeout_seconds=dump_timeout_seconds,
                ready_timeout_seconds=ready_timeout_seconds,
            )
        )
        self.script.chmod(0o755)
        return self

    def _local(self, host_path: Any) -> Path:
        return self.deploy_dir / str(host_path.relative_to(paths.DEPLOY_DIR))

    @property
    def backups(self) -> Path:
        return self.deploy_dir / "storage/backup"

    def environ(self) -> dict[str, str]:
        return {**os.environ, "COMPOSE_PROJECT_NAME": self.project}

    def compose(
        self, *args: str, check: bool = True, timeout: int = 300
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["docker", "compose", "--project-directory", str(self.deploy_dir), *args],
            capture_output=True,
            text=True,
            check=False,
            env=self.environ(),
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} failed:\n{result.stderr}")
        return result

    def up(self) -> None:
        self.compose("up", "-d", "--wait", timeout=300)

    def down(self) -> None:
        self.compose("--profile", "backup", "down", "--volumes", "--remove-orphans", check=False)

    def running_services(self) -> set[str]:
        result = self.compose("ps", "--status", "running", "--services")
        return set(result.stdout.split())

    def start_maintenance(
        self, *args: str, environ: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """The maintenance script in the background, in a process group of its own."""
        return subprocess.Popen(
            [str(self.script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ or self.environ(),
            cwd=self.deploy_dir,
            start_new_session=True,
        )

    def wait_for_log(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_file.exists() and text in self.log_file.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise AssertionError(f"{text!r} did not appear in {self.log_file} within {timeout} s")

    def run_maintenance(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.script), *args],
            capture_output=True,
            text=True,
            check=False,
            env=self.environ(),
            cwd=self.deploy_dir,
            timeout=timeout,
        )

    def mysql_query(self, sql: str, password: str = "root_secret") -> str:
        """Run SQL as MySQL root in the stack's mysql service; tab-separated rows."""
        result = self.compose(
            "exec",
            "-T",
            "-e",
            f"MYSQL_PWD={password}",
            "mysql",
            "mariadb",
            "-uroot",
            "-N",
            "-e",
            sql,
            "torrust_tracker",
        )
        return result.stdout

    def status(self) -> dict[str, str]:
        text = (self.status_dir / "last-run.env").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def sets(self) -> list[str]:
        manifests = self.backups / "manifests"
        if not manifests.is_dir():
            return []
        return sorted(p.name[len("set_") : -len(".sha256")] for p in manifests.glob("set_*.sha256"))

    def set_files(self, set_id: str) -> list[str]:
        """The files set_id holds (relative to the backups), by the set layout's names."""
        return [name for name in set_layout(set_id) if (self.backups / name).is_file()]

    def database_file(self, set_id: str) -> Path:
        """The set's one database file, whichever its compression (.gz or .zst)."""
        [name] = [
            name
            for name in self.set_files(set_id)
            if set_layout(set_id)[name] in ("mysql", "sqlite")
        ]
        return self.backups / name

    def meta(self, set_id: str) -> dict[str, str]:
        text = (self.backups / "manifests" / f"set_{set_id}.meta").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def cleanup(self) -> None:
        self.down()
        shutil.rmtree(self.base, ignore_errors=True)


def decompress(path: Path) -> bytes:
    """A set's database file decompressed by its suffix, as backup.sh does (zstd by
    Debian's zstd)."""
    if path.suffix == ".zst":
        return subprocess.run(
            ["zstd", "-q", "-d", "-c", str(path)], capture_output=True, check=True, timeout=600
        ).stdout
    return gzip.decompress(path.read_bytes())


def env_for_stack(data: dict[str, Any], *, backup_image: str = BACKUP_IMAGE) -> dict[str, Any]:
    """A config using the test images (published ports moved out of the way)."""
    data = json.loads(json.dumps(data))
    data["images"] = {"tracker": STANDIN_IMAGE, "mysql": MARIADB_IMAGE, "backup": backup_image}
    data.pop("grafana", None)
    data.pop("prometheus", None)
    tracker = data["tracker"]
    # Published on this machine's loopback, on ports free now: several stacks can
    # run side by side.
    udp, http, api, health = _free_ports()
    tracker["udp_trackers"] = [{"bind_address": f"127.0.0.1:{udp}"}]
    tracker["http_trackers"] = [{"bind_address": f"127.0.0.1:{http}"}]
    tracker["http_api"]["bind_address"] = f"127.0.0.1:{api}"
    tracker["health_check_api"] = {"bind_address": f"127.0.0.1:{health}"}
    return data


def _free_ports() -> tuple[int, int, int, int]:
    """A UDP port and three TCP ports, distinct, free on 127.0.0.1 now (ports.py)."""
    return free_port(), free_port(), free_port(), free_port()


# Test doubles for the backup image, built from the local debian:bookworm-slim
# in a second; the tag carries a digest of the script, so a changed double is
# rebuilt.
def backup_double_image(name: str, script: str) -> str:
    entrypoint = json.dumps(["/bin/sh", "-c", script, "backup-double"])
    tag = f"{name}:{hashlib.sha256(script.encode()).hexdigest()[:12]}"
    if not image_exists(tag):
        subprocess.run(
            ["docker", "build", "-q", "-t", tag, "-"],
            input=f"FROM debian:bookworm-slim\nENTRYPOINT {entrypoint}\n",
            text=True,
            capture_output=True,
            check=True,
        )
    return tag


# `snapshot --gate`'s start: the ready line, then one line from stdin (the go).
_READY_THEN_GO = f"printf '%s\\n' {shlex.quote(paths.SNAPSHOT_READY_LINE)}; read -r go_line;"


def hanging_backup_image() -> str:
    """Its `snapshot` gets ready, and after the go never ends (a hung database or
    disk) and never opens."""
    return backup_double_image(
        "tracker-deployer-test/backup-hangs",
        f"{_READY_THEN_GO} echo backup double: hanging >&2; exec sleep infinity",
    )


def hanging_dump_backup_image() -> str:
    """Its `snapshot` gets ready, prints the open line after the go, then never ends
    (a dump that hangs)."""
    return backup_double_image(
        "tracker-deployer-test/backup-dump-hangs",
        f"{_READY_THEN_GO} printf '%s\\n' {shlex.quote(paths.SNAPSHOT_OPEN_LINE)};"
        " echo backup double: snapshot open, the dump hangs >&2; exec sleep infinity",
    )


def failing_finish_backup_image(set_id: str, code: int) -> str:
    """Its `snapshot` takes set ``set_id`` (ready, open, the id); its `finish` exits
    ``code`` at once (3: a disk that fills while the set is compressed; 137: killed,
    as the kernel's out-of-memory killer would, long before its time limit)."""
    return backup_double_image(
        f"tracker-deployer-test/backup-finish-exits-{code}",
        f"case \"$1\" in snapshot) {_READY_THEN_GO} printf '%s\\n' "
        f"{shlex.quote(paths.SNAPSHOT_OPEN_LINE)} {set_id};; "
        f"*) echo backup double: finish exits {code} >&2; exit {code};; esac",
    )


def hanging_finish_backup_image(set_id: str) -> str:
    """Its `snapshot` takes set ``set_id``; its `finish` never ends."""
    return backup_double_image(
        "tracker-deployer-test/backup-finish-hangs",
        f"case \"$1\" in snapshot) {_READY_THEN_GO} printf '%s\\n' "
        f"{shlex.quote(paths.SNAPSHOT_OPEN_LINE)} {set_id};; "
        "*) echo backup double: finish hangs >&2; exec sleep infinity;; esac",
    )


def slow_ready_backup_image() -> str:
    """Its `snapshot` takes 4 s to get ready (time for a test to break the compose
    file), then hangs after the go."""
    return backup_double_image(
        "tracker-deployer-test/backup-slow-ready",
        f"echo backup double: preparing slowly >&2; sleep 4; {_READY_THEN_GO}"
        " echo backup double: hanging >&2; exec sleep infinity",
    )


def never_ready_backup_image() -> str:
    """Its `snapshot` never gets ready (a database that does not answer while the
    snapshot is prepared)."""
    return backup_double_image(
        "tracker-deployer-test/backup-never-ready",
        "echo backup double: preparing, never ready >&2; exec sleep infinity",
    )


class PingServer:
    """An HTTP server on loopback that records the notify pings (paths) it gets."""

    def __init__(self, delay: float = 0) -> None:
        """``delay``: seconds each ping waits before its answer."""
        pings: list[str] = []
        self.pings = pings

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                pings.append(self.path)
                time.sleep(delay)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ping"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> PingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class DockerProxy:
    """A Unix socket in front of the Docker daemon's: a test double of a daemon that
    stops answering. After :meth:`refuse`, each new connection is closed at once;
    those already open (a running `compose run`'s attach) go on. Use it as
    ``DOCKER_HOST=unix://PATH`` (:attr:`url`)."""

    def __init__(self, path: Path, daemon: str = "/var/run/docker.sock") -> None:
        self.path, self.daemon, self.refusing = path, daemon, False
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(64)
        self.url = f"unix://{path}"
        threading.Thread(target=self._accept, daemon=True).start()

    def refuse(self) -> None:
        self.refusing = True

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            if self.refusing:
                client.close()
                continue
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        """Both directions of one connection; both sockets closed once both end."""
        with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
            upstream.connect(self.daemon)
            back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
            back.start()
            self._pump(client, upstream)
            back.join()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)


def drop_reader(process: subprocess.Popen[str], *, after: str) -> int:
    """Read ``process``'s first line (it must hold ``after``), then close its stdout
    and stderr, as a dropped SSH session does; its exit code once it has ended."""
    assert process.stdout is not None
    assert process.stderr is not None
    first = process.stdout.readline()
    assert after in first, first
    process.stdout.close()
    process.stderr.close()
    return process.wait(timeout=300)


def containers_named(name: str) -> list[str]:
    """The containers (running or not) whose name is ``name``."""
    listed = subprocess.run(
        ["docker", "ps", "--all", "--filter", f"name=^{name}$", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def tracker_started_at_text(stack: Stack) -> str:
    """The tracker container's State.StartedAt, to the nanosecond."""
    container = stack.compose("ps", "-q", "tracker").stdout.strip()
    inspected = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.StartedAt}}", container],
        capture_output=True,
        text=True,
        check=True,
    )
    return inspected.stdout.strip()
