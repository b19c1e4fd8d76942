"""The ``lxd`` provider: a real LXD system container on this machine.

``provision`` prepares LXD (``scripts/lxd-host.sh prepare``: the daemon without
systemd, the bridge, the cached Debian 12 image from debootstrap), launches the
instance named by ``provider.profile_name`` with nesting (Docker runs inside),
and runs a first-boot step through ``lxc exec``: the SSH user
(``ssh_credentials.username``) with the key at ``public_key_path`` and
passwordless sudo. It then reads the instance's SSH host keys through
``lxc exec`` (a trusted channel) into the environment's known_hosts file, so the
first SSH contact needs no ``--accept-new-host-key``, and records the address
in the user's state directory.

Instances this project made carry the LXD config key ``user.tracker-deployer``
(the environment's name). An instance without it is never touched: not
started, not changed, not deleted.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tracker_deployer import paths, state
from tracker_deployer.config.model import Env, LxdProvider
from tracker_deployer.errors import DeployError
from tracker_deployer.say import Say

OWNER_KEY = "user.tracker-deployer"
PREPARE_SCRIPT = paths.REPO_ROOT / "scripts" / "lxd-host.sh"
SETUP_HINT = "run scripts/setup.sh (it installs Debian's lxd, lxd-client and dnsmasq-base)"

PREPARE_TIMEOUT_SECONDS = 1200  # a first run debootstraps the image (~80 s measured)
LXC_TIMEOUT_SECONDS = 120
START_TIMEOUT_SECONDS = 960  # the setup lock (900 s) plus the daemon's own 60 s
BOOT_TIMEOUT_SECONDS = 120
SSH_TIMEOUT_SECONDS = 60
LOAD_TIMEOUT_SECONDS = 900

# One OpenSSH public key line: TYPE BASE64 [COMMENT].
_PUBLIC_KEY = re.compile(r"(?:ssh|ecdsa|sk)-[a-z0-9@.-]+ [A-Za-z0-9+/]+=* ?[ -~]*")


def _public_key_line(path: Path) -> str:
    """The public key at ``path``, checked: a private key given as public_key_path
    would otherwise go on lxc's command line and into authorized_keys."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise DeployError(f"cannot read the public key {path}: {error}") from None
    if "\n" in text or not _PUBLIC_KEY.fullmatch(text):
        raise DeployError(
            f"{path} is not an OpenSSH public key (one line: TYPE BASE64 [COMMENT])",
            "point ssh_credentials.public_key_path at the .pub file of the key pair",
        )
    return text


FIRST_BOOT = r"""
set -o errexit -o nounset -o pipefail
user="$1" key="$2" port="$3"
# The image has no resolver of its own (systemd-networkd only): use the bridge.
if [ ! -s /etc/resolv.conf ]; then
  gateway="$(ip -4 route show default | awk '{print $3; exit}')"
  if [ -n "${gateway}" ]; then printf 'nameserver %s\n' "${gateway}" >/etc/resolv.conf; fi
fi
if [ "${user}" != root ]; then
  if ! id -u "${user}" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "${user}"
  fi
  # A new account is locked ('!'): sshd refuses even key logins for it. A password
  # someone set since is left alone.
  case "$(getent shadow "${user}" | cut -d: -f2)" in
    '!' | '!!' | '!*') usermod -p '*' "${user}" ;;
  esac
  # sudo ignores files with a dot in the name: the temporary one is inert.
  printf '%s ALL=(ALL) NOPASSWD:ALL\n' "${user}" >/etc/sudoers.d/tracker-deployer.tmp
  chmod 0440 /etc/sudoers.d/tracker-deployer.tmp
  visudo -cqf /etc/sudoers.d/tracker-deployer.tmp
  mv -f /etc/sudoers.d/tracker-deployer.tmp /etc/sudoers.d/tracker-deployer
fi
home="$(getent passwd "${user}" | cut -d: -f6)"
group="$(id -gn "${user}")"
install -d -m 0700 -o "${user}" -g "${group}" "${home}/.ssh"
keys="${home}/.ssh/authorized_keys"
# The key added when missing (a first boot, a key pair made anew): the keys
# already there stay (someone may have added theirs). (The user has passwordless
# sudo: nothing it could plant here gives it more.)
if ! grep -qxF -- "${key}" "${keys}" 2>/dev/null; then
  { if [ -f "${keys}" ] && [ ! -L "${keys}" ]; then cat -- "${keys}"; fi; printf '%s\n' "${key}"; } \
    >"${home}/.ssh/.authorized_keys.tmp"
  chown "${user}:${group}" "${home}/.ssh/.authorized_keys.tmp"
  chmod 0600 "${home}/.ssh/.authorized_keys.tmp"
  mv -f "${home}/.ssh/.authorized_keys.tmp" "${keys}"
fi
conf=/etc/ssh/sshd_config.d/tracker-deployer-port.conf
# sshd restarted only when its port changes.
if [ "${port}" != 22 ]; then
  if [ "$(cat "${conf}" 2>/dev/null)" != "Port ${port}" ]; then
    printf 'Port %s\n' "${port}" >"${conf}"
    systemctl restart ssh
  fi
elif [ -e "${conf}" ]; then  # back to 22: an earlier port must not stay
  rm -f "${conf}"
  systemctl restart ssh
fi
"""

READ_HOST_KEYS = (
    "systemctl is-active --quiet ssh && test -s /etc/ssh/ssh_host_ed25519_key.pub "
    "&& cat /etc/ssh/ssh_host_*_key.pub"
)


DOCKER_HINT = (
    "is Docker running on this machine (`docker info`)? Run the command again once it answers"
)


def require_lxd() -> None:
    if not (shutil.which("lxc") and shutil.which("lxd")):
        raise DeployError("LXD is not installed on this machine", SETUP_HINT)


def _run(
    argv: list[str], what: str, timeout: int, hint: str | None = None, **options: Any
) -> subprocess.CompletedProcess[Any]:
    """``argv``, bounded by ``timeout``; a timeout or a missing program is one clear error."""
    try:
        return subprocess.run(argv, check=False, timeout=timeout, **options)
    except subprocess.TimeoutExpired:
        raise DeployError(f"{what} did not finish within {timeout} s", hint) from None
    except OSError as error:
        missing_hint = SETUP_HINT if argv[0] in ("lxc", "lxd") else (hint or SETUP_HINT)
        raise DeployError(f"cannot run {argv[0]}: {error}", missing_hint) from None


def lxc(
    *args: str, timeout: int = LXC_TIMEOUT_SECONDS, input_bytes: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return _run(
        ["lxc", *args],
        f"`lxc {' '.join(args[:3])}`",
        timeout,
        "is the LXD daemon healthy? `lxc list`",
        input=input_bytes,
        capture_output=True,
    )


def _text(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stderr or result.stdout).decode(errors="replace").strip()


def _daemon_down(result: subprocess.CompletedProcess[bytes]) -> bool:
    """lxc's answer when no daemon listens on its socket (not, say, "permission
    denied" for a user outside the lxd group: starting a daemon would not help)."""
    text = _text(result).lower()
    return "unix.socket" in text and (
        "no such file or directory" in text or "connection refused" in text
    )


def _host_script(command: str, timeout: int) -> subprocess.CompletedProcess[str]:
    """scripts/lxd-host.sh COMMAND; its progress lines go straight to the operator."""
    return _run(
        ["bash", str(PREPARE_SCRIPT), command],
        f"scripts/lxd-host.sh {command}",
        timeout,
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
    )


def start_daemon() -> None:
    """Start the LXD daemon when it does not run (scripts/lxd-host.sh start)."""
    result = _host_script("start", START_TIMEOUT_SECONDS)
    if result.returncode != 0:
        raise DeployError(
            f"the LXD daemon is not running and could not be started "
            f"(scripts/lxd-host.sh start exit {result.returncode})",
            "see its error above; " + SETUP_HINT,
        )


class Lxd:
    kind = "lxd"

    def __init__(self, env: Env) -> None:
        assert isinstance(env.provider, LxdProvider)
        self.env = env
        self.name = env.provider.profile_name
        # A profile_name changed since provision: everything would act on the new
        # name ("not there") while the recorded instance runs on, its record gone.
        record = state.read_record(env.name)
        if record is not None and record.instance and record.instance != self.name:
            raise DeployError(
                f"the host record of {env.name} ({state.record_path(env.name)}) names LXD "
                f"instance {record.instance!r}, but provider.profile_name is {self.name!r}",
                f"set provider.profile_name back to {record.instance!r} (run `inv destroy` "
                "with it first for a new instance); if that instance is gone, remove the record",
            )

    # -- the instance ----------------------------------------------------------

    def instance(self) -> dict[str, object] | None:
        """LXD's record of the instance (config, status), or None when there is none.

        A daemon that does not run (a reboot, a killed daemon: there is no
        systemd here to start it) is started first: its database may hold the
        instance, and "not there" must never be said of one that is.
        """
        if not (shutil.which("lxc") and shutil.which("lxd")):
            return None
        result = lxc("query", f"/1.0/instances/{self.name}")
        if result.returncode != 0 and _daemon_down(result):
            start_daemon()
            result = lxc("query", f"/1.0/instances/{self.name}")
        if result.returncode != 0:
            text = _text(result).lower()
            if "not found" in text:
                return None
            raise DeployError(
                f"cannot ask LXD about instance {self.name}: {_text(result)}",
                "is the LXD daemon running? `inv provision` starts it; " + SETUP_HINT,
            )
        data: dict[str, object] = json.loads(result.stdout)
        return data

    def is_ours(self, instance: dict[str, object]) -> bool:
        """Made by this project for this environment."""
        config = instance.get("config")
        return isinstance(config, dict) and config.get(OWNER_KEY) == self.env.name

    @staticmethod
    def is_projects(instance: dict[str, object]) -> bool:
        """Made by this project (for any environment)."""
        config = instance.get("config")
        return isinstance(config, dict) and bool(config.get(OWNER_KEY))

    def _refuse_foreign(self, instance: dict[str, object]) -> None:
        if not self.is_ours(instance):
            config = instance.get("config")
            owner = config.get(OWNER_KEY) if isinstance(config, dict) else None
            made_for = f" (made for environment {owner})" if owner else ""
            raise DeployError(
                f"an LXD instance named {self.name} exists and was not created by "
                f"tracker-deployer for environment {self.env.name}{made_for}; not touching it",
                "pick another provider.profile_name, or remove that instance yourself",
            )

    def exec(
        self, command: str, *args: str, timeout: int = LXC_TIMEOUT_SECONDS
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a bash script in the instance as root (through LXD, not SSH)."""
        return lxc("exec", self.name, "--", "bash", "-c", command, "_", *args, timeout=timeout)

    # -- the interface ---------------------------------------------------------

    def address(self) -> state.HostRecord | None:
        return state.read_record(self.env.name)

    def provision(self, say: Say) -> state.HostRecord:
        require_lxd()
        _, public, made = state.ensure_key_pair(
            self.env.ssh.private_key_path, self.env.ssh.public_key_path
        )
        if made:
            say(f"  made the SSH key pair {public.with_suffix('')} (first use)")
        _public_key_line(public)  # a bad one is refused before anything changes
        existing = self.instance()
        if existing is not None:
            self._refuse_foreign(existing)
        recorded = self.address()
        if existing is not None and recorded is not None and existing.get("status") == "Running":
            # First boot again (it changes nothing in place): a key pair made anew
            # since (a lost state directory, another public_key_path) is authorized,
            # the host keys and the address are read again.
            say(f"  instance {self.name}: running at {recorded.host}; its first boot again")
            return self._first_boot(public, say)
        say("  preparing LXD (scripts/lxd-host.sh prepare: daemon, bridge, cached image)")
        alias = self._prepare()
        launched = False
        if existing is None:
            say(f"  launching {self.name} from {alias}")
            result = lxc(
                "launch",
                alias,
                self.name,
                "-c",
                "security.nesting=true",
                "-c",
                f"{OWNER_KEY}={self.env.name}",
            )
            if result.returncode != 0:
                raise DeployError(f"lxc launch {self.name} failed: {_text(result)}")
            launched = True
        elif existing.get("status") != "Running":
            say(f"  starting {self.name}")
            result = lxc("start", self.name)
            if result.returncode != 0:
                raise DeployError(f"lxc start {self.name} failed: {_text(result)}")
        try:
            record = self._first_boot(public, say)
        except BaseException:
            if launched:  # nothing half-created: the instance goes with the failure
                say(f"  removing {self.name} again (provisioning failed)")
                lxc("delete", "--force", self.name)
            raise
        return record

    def host_keys(self) -> list[str]:
        deadline = time.monotonic() + SSH_TIMEOUT_SECONDS
        while True:
            result = self.exec(READ_HOST_KEYS)
            keys = [
                " ".join(line.split()[:2])
                for line in result.stdout.decode(errors="replace").splitlines()
                if line.strip()
            ]
            if result.returncode == 0 and keys:
                return keys
            if time.monotonic() > deadline:
                raise DeployError(
                    f"could not read the SSH host keys of {self.name} through LXD: "
                    f"{_text(result) or 'sshd is not running'}",
                    f"look inside: lxc exec {self.name} -- systemctl status ssh",
                )
            time.sleep(1)

    def destroy(self, say: Say) -> None:
        # Without LXD on this machine, instance() is None: "not there", the host
        # record forgotten and "destroyed" said of an instance that may well run.
        require_lxd()
        existing = self.instance()
        if existing is None:
            say(f"  instance {self.name}: not there")
        else:
            self._refuse_foreign(existing)
            result = lxc("delete", "--force", self.name, timeout=300)
            if result.returncode != 0:
                raise DeployError(f"lxc delete {self.name} failed: {_text(result)}")
            say(f"  instance {self.name}: deleted")
        state.forget(self.env.name)

    # -- images (no registry: the stack's local images go in through LXD) -------

    def sideload(self, images: Sequence[str], say: Say) -> None:
        """Copy images that exist on this machine and not in the instance
        (one of this project's: several environments may deploy to one instance)."""
        existing = self.instance()
        if existing is None or not self.is_projects(existing):
            return
        for image in images:
            inside = self.exec('docker image inspect "$1" >/dev/null 2>&1', image)
            if inside.returncode == 0:
                continue
            local = _run(
                ["docker", "image", "inspect", image],
                f"`docker image inspect {image}` on this machine",
                60,
                DOCKER_HINT,
                capture_output=True,
            )
            if local.returncode != 0:
                continue  # not here either: compose pulls it (or says it cannot)
            say(f"  loading image {image} into {self.name} (from this machine's docker)")
            try:
                save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
            except OSError as error:
                raise DeployError(f"cannot run docker: {error}", DOCKER_HINT) from None
            try:
                load = _run(
                    ["lxc", "exec", self.name, "--", "docker", "load", "-q"],
                    f"loading image {image} into {self.name}",
                    LOAD_TIMEOUT_SECONDS,
                    DOCKER_HINT,
                    stdin=save.stdout,
                    capture_output=True,
                )
            finally:
                if save.stdout is not None:
                    save.stdout.close()
                try:
                    save.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    save.kill()
                    save.wait()
            if load.returncode != 0 or save.returncode != 0:
                raise DeployError(
                    f"loading image {image} into {self.name} failed: {_text(load)}",
                    "is Docker running in the instance? `inv configure` installs it",
                )

    # -- steps -----------------------------------------------------------------

    def _prepare(self) -> str:
        result = _host_script("prepare", PREPARE_TIMEOUT_SECONDS)
        lines = result.stdout.strip().splitlines()
        fields = dict(item.partition("=")[::2] for item in (lines[-1].split() if lines else []))
        if result.returncode != 0 or not fields.get("image"):
            raise DeployError(
                f"preparing LXD failed (scripts/lxd-host.sh exit {result.returncode})",
                "see its error above; " + SETUP_HINT,
            )
        return fields["image"]

    def _first_boot(self, public_key: Path, say: Say) -> state.HostRecord:
        address = self._wait_for_boot()
        key_line = _public_key_line(public_key)
        result = self.exec(
            FIRST_BOOT, self.env.ssh.username, key_line, str(self.env.ssh.port), timeout=300
        )
        if result.returncode != 0:
            raise DeployError(
                f"the first-boot step in {self.name} failed: {_text(result)}",
                f"look inside: lxc exec {self.name} -- bash",
            )
        say(
            f"  first boot: user {self.env.ssh.username} authorized with {public_key}"
            + (", passwordless sudo" if self.env.ssh.username != "root" else "")
        )
        keys = self.host_keys()
        port = self.env.ssh.port
        if self.env.ssh.known_hosts_path:  # the user's own file: only this host's lines
            known_hosts = state.merge_known_hosts(
                state.resolve(self.env.ssh.known_hosts_path), address, port, keys
            )
        else:
            known_hosts = state.write_known_hosts(self.env.name, address, port, keys)
        say(f"  host keys read through LXD into {known_hosts}")
        _wait_for_ssh(address, port)
        record = state.HostRecord("lxd", address, port, self.name)
        path = state.write_record(self.env.name, record)
        say(f"  recorded {address}:{port} in {path}")
        return record

    def _wait_for_boot(self) -> str:
        deadline = time.monotonic() + BOOT_TIMEOUT_SECONDS
        running = address = ""
        while time.monotonic() < deadline:
            result = self.exec(
                "systemctl is-system-running 2>/dev/null; "
                "ip -4 -o addr show dev eth0 2>/dev/null | awk '{split($4, a, \"/\"); print a[1]}'"
            )
            words = result.stdout.decode(errors="replace").split()
            running = words[0] if words else ""
            address = words[1] if len(words) > 1 else ""
            if running in ("running", "degraded") and _ipv4(address):
                return address
            time.sleep(1)
        raise DeployError(
            f"{self.name} did not boot within {BOOT_TIMEOUT_SECONDS} s "
            f"(systemd: {running or 'no answer'}, eth0: {address or 'no address'})",
            f"look inside: lxc exec {self.name} -- systemctl --failed",
        )


def _wait_for_ssh(host: str, port: int) -> None:
    """Until host:port sends an SSH banner (bounded)."""
    deadline = time.monotonic() + SSH_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=3) as sock:
                if sock.recv(4) == b"SSH-":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise DeployError(
        f"sshd in the instance does not answer on {host}:{port} after {SSH_TIMEOUT_SECONDS} s",
        "check the bridge and DOCKER-USER rules: scripts/lxd-host.sh prepare",
    )


def _ipv4(text: str) -> bool:
    """The instance's own answer is an IPv4 address, or not yet an address at all."""
    try:
        return str(ipaddress.IPv4Address(text)) == text
    except ValueError:
        return False
