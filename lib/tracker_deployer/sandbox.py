"""A local target host to try the deployer on: ``inv sandbox.up|down|status``.

The sandbox is made the way the e2e tests make their target hosts, by the
scripts in ``scripts/``:

- ``lxd``: an LXD system container with its own systemd, dockerd and cron
  (``scripts/lxd-target.sh``), the most realistic host;
- ``container``: a Docker container running sshd + cron that drives this
  machine's Docker daemon (``scripts/container-target.sh``). The stack's
  containers then run on this machine, and ``/opt/torrust`` is this machine's
  ``/opt/torrust`` (the daemon resolves bind mounts here).

Both answer SSH on the address in the sandbox environment
(``envs/sandbox-sqlite.json``: 127.0.0.1:2222; LXD through a proxy device), with
the key pair and known_hosts file that environment names, so the environment
file is static and nothing in ``~/.ssh`` is touched.

This module drives the scripts through subprocesses; it never opens an SSH
connection itself (only the system ``ssh`` client checks the login at the end).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tracker_deployer import paths
from tracker_deployer.config.model import Env
from tracker_deployer.errors import DeployError
from tracker_deployer.topology import derive

Say = Callable[[str], None]

LXD = "lxd"
CONTAINER = "container"
AUTO = "auto"
KINDS = (LXD, CONTAINER)

DEFAULT_ENV = "sandbox-sqlite"
SANDBOX_NAME = "tracker-sandbox"
# Where `sandbox up` keeps its record (key pair and known_hosts: see the env file).
STATE_DIR = "~/.local/state/tracker-deployer/sandbox"
RECORD_FILE = "target.json"
PROXY_DEVICE = "sandbox-ssh"

SCRIPTS_DIR = paths.REPO_ROOT / "scripts"
SCRIPT = {LXD: SCRIPTS_DIR / "lxd-target.sh", CONTAINER: SCRIPTS_DIR / "container-target.sh"}
E2E_SETUP = SCRIPTS_DIR / "e2e-setup.sh"
STANDIN_IMAGE = "tracker-deployer-test/tracker-standin:e2e"
MARIADB_IMAGE = "tracker-deployer-test/mariadb:e2e"
# lxd-target.sh always loads these into the instance.
LXD_DEFAULT_IMAGES = (STANDIN_IMAGE, MARIADB_IMAGE)

UP_TIMEOUT_SECONDS = 1200  # a first LXD `up` debootstraps an image (~80 s measured)
DOWN_TIMEOUT_SECONDS = 300
STATUS_TIMEOUT_SECONDS = 60
SETUP_TIMEOUT_SECONDS = 1800
SSH_CHECK_TIMEOUT_SECONDS = 30

STANDIN_NOTICE = (
    "note: the sandbox runs the tracker STAND-IN image ({image}), a test double, not the "
    "Torrust tracker: torrust/tracker cannot be pulled on this machine (no image registry). "
    "Everything else (compose stack, cron, backups, restore) is the real thing."
)


# --------------------------------------------------------------------------- target hosts


@dataclass(frozen=True, slots=True)
class TargetAddress:
    """Where a target host answers SSH (the scripts' last stdout line)."""

    kind: str
    name: str
    host: str
    port: int
    user: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port} ({self.kind} target {self.name})"


def parse_target_line(kind: str, line: str) -> TargetAddress | None:
    """``host=H port=P user=U name=N ...`` -> TargetAddress; None for ``state=absent``."""
    fields: dict[str, str] = {}
    for item in shlex.split(line):
        key, sep, value = item.partition("=")
        if sep:
            fields[key] = value
    if fields.get("state") == "absent" or "host" not in fields:
        return None
    return TargetAddress(kind, fields["name"], fields["host"], int(fields["port"]), fields["user"])


def _run_script(args: Sequence[str], timeout: int, what: str) -> str:
    """Run a scripts/ tool (its progress goes to our stderr); its last stdout line."""
    try:
        result = subprocess.run(
            [str(arg) for arg in args],
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise DeployError(
            f"{what} did not finish within {timeout} s", "see the script's log lines above"
        ) from None
    except OSError as error:
        raise DeployError(f"{what} could not start: {error}") from None
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0:
        raise DeployError(
            f"{what} failed (exit {result.returncode})",
            "see the script's error above; scripts/setup.sh installs what it needs",
        )
    return lines[-1] if lines else ""


def lxd_usable() -> bool:
    """LXD works here or can be installed (lxd-target.sh installs Debian's lxd)."""
    if os.geteuid() != 0:
        return False  # lxd-target.sh needs root
    if shutil.which("lxc") and shutil.which("lxd"):
        return True
    if not shutil.which("apt-cache"):
        return False
    policy = subprocess.run(
        ["apt-cache", "policy", "lxd"], capture_output=True, text=True, check=False, timeout=60
    )
    return "Candidate:" in policy.stdout and "Candidate: (none)" not in policy.stdout


def choose_kind(requested: str) -> str:
    if requested == AUTO:
        return LXD if lxd_usable() else CONTAINER
    if requested not in KINDS:
        raise DeployError(
            f"--target {requested!r} is not a sandbox target", "use lxd, container or auto"
        )
    return requested


def start_target(
    kind: str,
    name: str,
    public_key: Path,
    *,
    images: Sequence[str] = (),
    port: int | None = None,
) -> TargetAddress:
    """Create (or re-create) target host ``name``; ``images`` are loaded into an LXD host."""
    args: list[str] = [str(SCRIPT[kind]), "up", name, "--key", str(public_key)]
    if kind == LXD:
        for image in images:
            args += ["--image", image]
    elif port is not None:
        args += ["--port", str(port)]
    line = _run_script(args, UP_TIMEOUT_SECONDS, f"{SCRIPT[kind].name} up {name}")
    address = parse_target_line(kind, line)
    if address is None:
        raise DeployError(f"{SCRIPT[kind].name} up {name} printed no address: {line!r}")
    return address


def stop_target(kind: str, name: str) -> None:
    _run_script(
        [str(SCRIPT[kind]), "down", name], DOWN_TIMEOUT_SECONDS, f"{SCRIPT[kind].name} down {name}"
    )


def target_status(kind: str, name: str) -> TargetAddress | None:
    if kind == LXD and not shutil.which("lxc"):
        return None
    result = subprocess.run(
        [str(SCRIPT[kind]), "status", name],
        capture_output=True,
        text=True,
        check=False,
        timeout=STATUS_TIMEOUT_SECONDS,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return None
    return parse_target_line(kind, lines[-1])


def _exec_in(kind: str, name: str, command: str) -> list[str]:
    if kind == LXD:
        return ["lxc", "exec", name, "--", "sh", "-c", command]
    return ["docker", "exec", name, "sh", "-c", command]


def host_keys(kind: str, name: str) -> list[str]:
    """The target's SSH host public keys (``TYPE BASE64``), read from inside it."""
    result = subprocess.run(
        _exec_in(kind, name, "cat /etc/ssh/ssh_host_*_key.pub"),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    keys = [" ".join(line.split()[:2]) for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not keys:
        raise DeployError(
            f"could not read the host keys of {kind} target {name}: {result.stderr.strip()}",
            f"is it running? `scripts/{SCRIPT[kind].name} status {name}`",
        )
    return keys


def known_hosts_text(host: str, port: int, keys: Sequence[str]) -> str:
    where = host if port == 22 else f"[{host}]:{port}"
    return "".join(f"{where} {key}\n" for key in keys)


def ensure_key_pair(private_key: Path, comment: str) -> Path:
    """An ed25519 key pair at ``private_key`` (made when missing); the public key's path."""
    public_key = private_key.with_name(private_key.name + ".pub")
    private_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not shutil.which("ssh-keygen"):
        raise DeployError("ssh-keygen is missing", "install openssh-client (scripts/setup.sh)")
    if not private_key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private_key)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    elif not public_key.exists():
        derived = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(private_key)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if derived.returncode != 0:
            raise DeployError(
                f"cannot read the key {private_key}: {derived.stderr.strip()}",
                "remove it (and its .pub) to let a new pair be made",
            )
        public_key.write_text(derived.stdout)
    return public_key


def missing_images(images: Sequence[str]) -> list[str]:
    missing = []
    for image in images:
        inspected = subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, check=False, timeout=60
        )
        if inspected.returncode != 0:
            missing.append(image)
    return missing


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


# --------------------------------------------------------------------------- the sandbox


@dataclass(frozen=True, slots=True)
class Sandbox:
    """What ``up`` made, as recorded in STATE_DIR/target.json."""

    kind: str
    name: str
    host: str
    port: int
    created_deploy_dir: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "name": self.name,
                "host": self.host,
                "port": self.port,
                "created_deploy_dir": self.created_deploy_dir,
            },
            indent=2,
        )


def state_dir() -> Path:
    return Path(STATE_DIR).expanduser()


def read_record() -> Sandbox | None:
    path = state_dir() / RECORD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Sandbox(
            kind=str(data["kind"]),
            name=str(data["name"]),
            host=str(data["host"]),
            port=int(data["port"]),
            created_deploy_dir=bool(data.get("created_deploy_dir", False)),
        )
    except (ValueError, KeyError, TypeError):
        raise DeployError(
            f"{path} is not a sandbox record",
            "remove it, then `inv sandbox.down --target lxd|container` to clean up",
        ) from None


def _write_record(sandbox: Sandbox) -> None:
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / RECORD_FILE).write_text(sandbox.to_json() + "\n", encoding="utf-8")


def _address_of(env: Env) -> tuple[str, int]:
    host = env.ssh.host
    if host not in ("127.0.0.1", "localhost"):
        shown = repr(host) if host else "not set"
        raise DeployError(
            f"environment {env.name} is not a sandbox environment: ssh_credentials.host is "
            f"{shown}, not 127.0.0.1",
            f"use --env {DEFAULT_ENV} (the sandbox listens on this machine's loopback)",
        )
    if env.ssh.port == 22:
        raise DeployError(
            f"environment {env.name} uses SSH port 22 on 127.0.0.1, this machine's own sshd",
            "give the sandbox its own port, e.g. 2222 (as envs/sandbox-sqlite.json does)",
        )
    if env.ssh.username != "root":
        raise DeployError(
            f"the sandbox authorizes root only; environment {env.name} logs in as "
            f"{env.ssh.username!r}",
            'set ssh_credentials.username to "root"',
        )
    return "127.0.0.1", env.ssh.port


def _known_hosts_path(env: Env) -> Path:
    if not env.ssh.known_hosts_path:
        raise DeployError(
            f"environment {env.name} sets no ssh_credentials.known_hosts_path",
            "the sandbox writes its host key there (and never touches ~/.ssh); "
            'add e.g. "~/.local/state/tracker-deployer/sandbox/known_hosts"',
        )
    return Path(env.ssh.known_hosts_path).expanduser()


def _images_for(env: Env) -> list[str]:
    return sorted({service.image for service in derive(env).services})


def _deploy_dir_free(deploy_dir: Path) -> bool:
    """True when ``deploy_dir`` is missing or empty (ours to create and remove)."""
    return not deploy_dir.exists() or not any(deploy_dir.iterdir())


def _check_ssh_login(env: Env, host: str, port: int, known_hosts: Path) -> None:
    """Log in once with the system ssh client, exactly as the env file says."""
    if not shutil.which("ssh"):
        return
    result = subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "ConnectTimeout=10",
            "-i",
            str(Path(env.ssh.private_key_path).expanduser()),
            "-p",
            str(port),
            f"{env.ssh.username}@{host}",
            "true",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=SSH_CHECK_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        raise DeployError(
            f"the sandbox is up but SSH to {host}:{port} fails: {result.stderr.strip()}",
            "run `inv sandbox.down`, then `inv sandbox.up` again",
        )


def up(env: Env, requested: str, say: Say) -> Sandbox:
    """Create the sandbox target for ``env`` (or refresh it when it is already up)."""
    host, port = _address_of(env)
    known_hosts = _known_hosts_path(env)
    kind = choose_kind(requested)
    record = read_record()
    if record is not None and target_status(record.kind, record.name) is not None:
        if requested not in (AUTO, record.kind):
            raise DeployError(
                f"a {record.kind} sandbox is already up",
                "remove it first: inv sandbox.down",
            )
        say(f"the {record.kind} sandbox {record.name} is already up at {host}:{record.port}")
        _write_known_hosts(known_hosts, host, record.port, host_keys(record.kind, record.name))
        _check_ssh_login(env, host, record.port, known_hosts)
        return record
    if port_in_use(host, port):
        raise DeployError(
            f"{host}:{port} is already in use on this machine",
            "stop what listens there, or change ssh_credentials.port in the sandbox environment",
        )
    images = _images_for(env)
    say(f"sandbox: {kind} target {SANDBOX_NAME}, SSH on {host}:{port}")
    say("sandbox: building the test images if needed (scripts/e2e-setup.sh)")
    _run_script([str(E2E_SETUP)], SETUP_TIMEOUT_SECONDS, "scripts/e2e-setup.sh")
    missing = missing_images(images)
    if missing:
        raise DeployError(
            f"images missing on this machine: {', '.join(missing)}",
            "build the backup image with `inv build-image` (scripts/setup.sh does it); no "
            "registry is reachable, so every image the environment names must be built here",
        )
    public_key = ensure_key_pair(
        Path(env.ssh.private_key_path).expanduser(), comment=f"tracker-deployer {SANDBOX_NAME}"
    )
    created_deploy_dir = False
    if kind == CONTAINER:
        deploy_dir = Path(str(paths.DEPLOY_DIR))
        if not _deploy_dir_free(deploy_dir):
            raise DeployError(
                f"{deploy_dir} exists on this machine and is not empty; the container sandbox "
                "would deploy into it (it shares this machine's Docker daemon and paths)",
                "move it away, or use the LXD sandbox: inv sandbox.up --target lxd",
            )
        created_deploy_dir = True
        address = start_target(CONTAINER, SANDBOX_NAME, public_key, port=port)
    else:
        extra = [image for image in images if image not in LXD_DEFAULT_IMAGES]
        address = start_target(LXD, SANDBOX_NAME, public_key, images=extra)
        _add_proxy(SANDBOX_NAME, host, port)
    sandbox = Sandbox(kind, SANDBOX_NAME, host, port, created_deploy_dir)
    _write_record(sandbox)
    _write_known_hosts(known_hosts, host, port, host_keys(kind, SANDBOX_NAME))
    _check_ssh_login(env, host, port, known_hosts)
    say(f"sandbox: {address.kind} target {address.name} is up; SSH on {host}:{port}")
    return sandbox


def _add_proxy(name: str, host: str, port: int) -> None:
    """Forward host:port on this machine to the instance's sshd (an LXD proxy device)."""
    result = subprocess.run(
        [
            "lxc",
            "config",
            "device",
            "add",
            name,
            PROXY_DEVICE,
            "proxy",
            f"listen=tcp:{host}:{port}",
            "connect=tcp:127.0.0.1:22",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise DeployError(
            f"could not forward {host}:{port} to the LXD sandbox: {result.stderr.strip()}",
            "is the port free? `inv sandbox.down`, then try again",
        )


def _write_known_hosts(path: Path, host: str, port: int, keys: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(known_hosts_text(host, port, keys), encoding="utf-8")
    temporary.chmod(0o600)
    temporary.replace(path)


def down(env: Env, requested: str, say: Say) -> None:
    """Remove the sandbox target (and, for the container target, its /opt/torrust)."""
    known_hosts = _known_hosts_path(env)
    record = read_record()
    if requested == AUTO:
        kinds = [record.kind] if record is not None else [CONTAINER, LXD]
    else:
        kinds = [choose_kind(requested)]
    name = record.name if record is not None else SANDBOX_NAME
    for kind in kinds:
        if kind == LXD and not shutil.which("lxc"):
            continue
        say(f"sandbox: removing {kind} target {name}")
        stop_target(kind, name)
    if record is not None and record.kind == CONTAINER and record.created_deploy_dir:
        deploy_dir = Path(str(paths.DEPLOY_DIR))
        say(f"sandbox: removing {deploy_dir} (created by the container sandbox)")
        try:
            shutil.rmtree(deploy_dir, ignore_errors=False)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise DeployError(
                f"could not remove {deploy_dir}: {error}", "run `inv sandbox.down` as root"
            ) from None
    known_hosts.unlink(missing_ok=True)
    (state_dir() / RECORD_FILE).unlink(missing_ok=True)
    say("sandbox: removed (the SSH key pair stays for the next sandbox)")


def status(env: Env) -> tuple[Sandbox | None, TargetAddress | None]:
    """The recorded sandbox and whether its target runs."""
    _address_of(env)
    record = read_record()
    if record is None:
        return None, None
    return record, target_status(record.kind, record.name)
