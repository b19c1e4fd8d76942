"""The e2e target host as the tests see it: an LXD instance made by `inv provision`
(the lxd provider), reached with the system ssh client, which is independent of
the deployer's Fabric code, and looked into with `lxc exec`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracker_deployer import image, paths
from tracker_deployer.backup_layout import set_layout
from tracker_deployer.remote.deploy import parse_compose_ps
from tracker_deployer.remote.plan import CRON_FILES
from tracker_deployer.sandbox import TEST_DOUBLE_IMAGES

from tests.helpers import REPO_ROOT, ssh_argv

# The environment whose `inv provision` makes the target host (its
# provider.profile_name); e2e-sqlite deploys to the same host with --host.
PROVISIONED_ENV = "e2e-mysql"
TARGET_NAME = "tracker-deployer-e2e"
BACKUP_IMAGE = image.default_tag()
IMAGES = (BACKUP_IMAGE, *TEST_DOUBLE_IMAGES)

DEPLOY_DIR = str(paths.DEPLOY_DIR)
BACKUPS = str(paths.BACKUP_DIR)
STATUS_FILE = f"{paths.BACKUP_STATUS_DIR}/last-run.env"
LOG_FILE = str(paths.BACKUP_LOG)
LOCK_FILE = str(paths.BACKUP_LOCK)
COMPOSE = f"docker compose --project-directory {DEPLOY_DIR} -f {paths.COMPOSE_FILE}"

Say = Callable[[str], None]


class _EnvArgument:
    """What `--env` gets for an e2e environment: its name, or (``--images official``)
    a copy of its file whose images are the official ones."""

    def __init__(self) -> None:
        self.directory: Path | None = None
        self.backup_image = ""

    def use_official(self, directory: Path, backup_image: str) -> None:
        self.directory = directory
        self.backup_image = backup_image

    @property
    def official(self) -> bool:
        return self.directory is not None

    def data(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (REPO_ROOT / "envs" / f"{name}.json").read_text(encoding="utf-8")
        )
        if self.directory is not None:
            data["images"] = {"backup": self.backup_image}
        return data

    def __call__(self, name: str) -> str:
        if self.directory is None:
            return name
        data = self.data(name)
        copy = self.directory / f"{name}.json"
        copy.write_text(json.dumps(data, indent=2), encoding="utf-8")
        return str(copy)


env_argument = _EnvArgument()


def inv_command() -> list[str]:
    """The operator's CLI from the environment running the tests (nox's or .venv)."""
    beside = Path(sys.executable).with_name("inv")
    return [str(beside if beside.exists() else REPO_ROOT / ".venv/bin/inv")]


def inv(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*inv_command(), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        timeout=timeout,
    )


def shown(result: subprocess.CompletedProcess[str]) -> str:
    """A finished command's output, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def docker_time(text: str) -> datetime:
    """Docker's RFC 3339 time with nanoseconds (``...T07:49:03.123456789Z``)."""
    text = text.strip().replace("Z", "")
    if "." in text:
        whole, fraction = text.split(".", 1)
        text = f"{whole}.{fraction[:6]}"
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def status_time(text: str) -> datetime:
    """The maintenance script's ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def key_value_lines(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result[key] = value
    return result


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int
    user: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def lxc_exec(command: str, *, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """A shell command inside the target instance, through LXD (not SSH)."""
    return subprocess.run(
        ["lxc", "exec", TARGET_NAME, "--", "sh", "-c", command],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def host_keys() -> list[str]:
    """The instance's SSH host public keys (``TYPE BASE64``), read through LXD."""
    result = lxc_exec("cat /etc/ssh/ssh_host_*_key.pub")
    assert result.returncode == 0, result.stderr
    return [" ".join(line.split()[:2]) for line in result.stdout.splitlines() if line.strip()]


class RemoteHost:
    """The running target host (an LXD instance) and an SSH client for it."""

    kind = "lxd"

    def __init__(self, address: Address, key: Path, known_hosts: Path) -> None:
        self.address = address
        self.key = key
        self.known_hosts = known_hosts  # written by `inv provision` from the host's keys

    # -- commands --------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        timeout: int = 180,
        stdin: bytes | None = None,
        as_root: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """``command`` over SSH; as root (through ``sudo -n`` for another user) unless
        ``as_root`` is false."""
        if as_root and self.address.user != "root":
            command = f"sudo -n sh -c {shlex.quote(command)}"
        login = f"{self.address.user}@{self.address.host}"
        ssh = ssh_argv(self.key, self.address.port, self.known_hosts, login, "ConnectTimeout=15")
        return subprocess.run(
            [*ssh, command],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            check=False,
            timeout=timeout,
        )

    def check(self, command: str, *, timeout: int = 180, stdin: bytes | None = None) -> str:
        """Run ``command``; its stdout, or an AssertionError with everything it printed."""
        result = self.run(command, timeout=timeout, stdin=stdin)
        if result.returncode != 0:
            raise AssertionError(
                f"on the target: {command!r} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout.decode(errors='replace')}\n"
                f"--- stderr\n{result.stderr.decode(errors='replace')}"
            )
        return result.stdout.decode()

    def script(self, text: str, *args: str, timeout: int = 300) -> str:
        """Run a bash script on the target (uploaded first, so its commands keep stdin)."""
        path = self.check("mktemp /tmp/tracker-deployer-e2e.XXXXXXXX").strip()
        try:
            self.check(f"cat > {path}", stdin=text.encode())
            quoted = " ".join(shlex.quote(arg) for arg in args)
            return self.check(f"bash {path} {quoted}", timeout=timeout)
        finally:
            self.run(f"rm -f {path}")

    def read(self, path: str) -> bytes:
        result = self.run(f"cat {shlex.quote(path)}")
        if result.returncode != 0:
            raise AssertionError(f"cannot read {path} on the target: {result.stderr.decode()}")
        return result.stdout

    def exists(self, path: str) -> bool:
        return self.run(f"test -e {shlex.quote(path)}").returncode == 0

    # -- the stack -------------------------------------------------------------

    def compose(self, args: str, *, timeout: int = 180) -> str:
        return self.check(f"{COMPOSE} {args}", timeout=timeout)

    def services(self) -> dict[str, dict[str, str]]:
        """`docker compose ps --all` by service: state, health, status."""
        rows = parse_compose_ps(self.compose("ps --all --format json"))
        return {row["service"]: row for row in rows}

    def containers(self) -> dict[str, tuple[str, str]]:
        """Container id and StartedAt of every service container of the stack."""
        ids = self.compose("ps --all --quiet").split()
        if not ids:
            return {}
        output = self.check(
            "docker inspect -f "
            + shlex.quote(
                '{{ index .Config.Labels "com.docker.compose.service" }} {{.Id}} {{.State.StartedAt}}'
            )
            + " "
            + " ".join(ids)
        )
        result: dict[str, tuple[str, str]] = {}
        for line in output.splitlines():
            service, container_id, started = line.split()
            result[service] = (container_id, started)
        return result

    def wait_healthy(self, service: str, timeout: float, say: Say | None = None) -> dict[str, str]:
        """Wait (bounded) until ``service`` runs and its healthcheck passes."""
        deadline = time.monotonic() + timeout
        row: dict[str, str] = {}
        while time.monotonic() < deadline:
            row = self.services().get(service, {})
            if row.get("state") == "running" and row.get("health") == "healthy":
                return row
            time.sleep(2)
        if say is not None:
            say(self.compose(f"logs --tail 30 {service}"))
        raise AssertionError(f"{service} is not running + healthy after {timeout} s: {row}")

    def status(self) -> dict[str, str]:
        return key_value_lines(self.read(STATUS_FILE).decode())

    def complete_sets(self) -> list[str]:
        output = self.check(
            f"cd {BACKUPS}/manifests 2>/dev/null && ls set_*.sha256 2>/dev/null || true"
        )
        return sorted(name[len("set_") : -len(".sha256")] for name in output.split())

    def verify_set(self, set_id: str) -> str:
        """`sha256sum -c` of a set's manifest, on the host; its output."""
        return self.check(f"cd {BACKUPS} && sha256sum -c manifests/set_{set_id}.sha256")

    def database_file(self, set_id: str) -> str:
        """The set's one database file, relative to BACKUPS, whichever its compression
        (.gz or .zst): the name from the set layout's owner that exists on the host."""
        names = [name for name, part in set_layout(set_id).items() if part in ("mysql", "sqlite")]
        quoted = " ".join(shlex.quote(name) for name in names)
        output = self.check(
            f'cd {BACKUPS} && for f in {quoted}; do [ ! -f "$f" ] || echo "$f"; done'
        )
        found = output.split()
        assert len(found) == 1, f"set {set_id}: not exactly one database file: {found}"
        return found[0]

    def meta(self, set_id: str) -> dict[str, str]:
        return key_value_lines(self.read(f"{BACKUPS}/manifests/set_{set_id}.meta").decode())

    def diagnostics(self) -> str:
        """What runs on the target, for a failure message."""
        result = self.run(
            f"set -x; ps -ef; {COMPOSE} --profile backup ps --all; docker ps -a; "
            f"ls -la {BACKUPS}; stat -c '%d:%i' {BACKUPS}/.lock; cat /proc/locks; "
            f"tail -n 40 {LOG_FILE}"
        )
        return (result.stdout + result.stderr).decode(errors="replace")

    # -- cron and clean-up -----------------------------------------------------

    def pause_cron(self) -> None:
        """Stop the cron daemon and wait for a run it started: the scheduled
        backups must not race the on-demand ones (cron fires every minute)."""
        stop = "systemctl stop cron"
        self.check(
            f"{stop}; sleep 2; mkdir -p /run/lock && flock -w 150 {LOCK_FILE} true", timeout=180
        )

    def resume_cron(self) -> None:
        # Before the first deploy the host is bare: no cron to start yet.
        self.check("if systemctl cat cron >/dev/null 2>&1; then systemctl start cron; fi")

    def reset(self) -> None:
        """Remove a deployed stack and everything the deployer installed."""
        self.check(
            f"""
            set -o errexit
            if [ -f {paths.COMPOSE_FILE} ]; then
              timeout 180 {COMPOSE} --profile backup down --volumes --remove-orphans --timeout 5
            fi
            mkdir -p {DEPLOY_DIR}
            find {DEPLOY_DIR} -mindepth 1 -delete
            rm -f {" ".join(str(path) for path in CRON_FILES)} \\
              {LOG_FILE} {LOG_FILE}.* {LOCK_FILE} /tmp/tracker-backup-*
            """,
            timeout=240,
        )
