"""A real sshd (and optionally a real cron) on 127.0.0.1 with a throw-away root.

The daemons run in their own mount namespace (``unshare --mount``), where
temporary directories are bind-mounted over the paths the deployer writes
(/opt, /etc/cron.d, /etc/logrotate.d, /usr/local/bin, /var/log, /run) and over
the account files (/etc/passwd, /etc/shadow, /etc/group, /etc/sudoers.d), so
the deployer sees a normal host with root and a sudo user, and nothing on the
test machine changes. Cron gets an empty /etc/crontab, so only our
/etc/cron.d file can fire. See ../shared/INFRA.md (sshd pitfalls).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

from tracker_deployer.remote.ssh import Target

from tests.helpers import ssh_argv
from tests.integration.ports import free_port

SUDO_USER = "tddeploy"
SUDO_UID = 4242
STARTUP_TIMEOUT = 15.0


class SshTarget:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager)."""

    def __init__(
        self,
        base: Path,
        *,
        with_cron: bool = False,
        with_docker: bool = True,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.base = base
        self.with_cron = with_cron
        # Variables sshd sets in every session (sshd_config SetEnv), e.g. the compose
        # project name of a test stack, so host scripts run over SSH address that stack.
        self.environment = dict(environment or {})
        # The machine's Docker daemon resolves bind mounts in ITS filesystem, not in
        # our namespace: a stack started from here would mount the machine's real
        # /opt/torrust (and create directories there). Leave it out where a
        # maintenance run could start one (cron).
        self.with_docker = with_docker
        self.port = free_port()
        self.root = base / "root"  # throw-away target paths live here
        self.client_key = base / "client_key"
        self.known_hosts = base / "known_hosts"
        self.host_key = base / "ssh_host_ed25519_key"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = base / "daemons.log"

    # -- paths as the namespace sees them ---------------------------------------

    def host_path(self, path: str) -> Path:
        """The test machine's path behind ``path`` on the target."""
        mapping = {
            "/opt": self.root / "opt",
            "/etc/cron.d": self.root / "etc/cron.d",
            "/etc/logrotate.d": self.root / "etc/logrotate.d",
            "/usr/local/bin": self.root / "usr/local/bin",
            "/var/log": self.root / "var/log",
            "/run": self.root / "run",
        }
        for prefix, local in mapping.items():
            if path == prefix or path.startswith(prefix + "/"):
                return local / path[len(prefix) :].lstrip("/")
        raise ValueError(f"{path} is not inside the throw-away root")

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> SshTarget:
        for sub in ("opt", "etc/cron.d", "etc/logrotate.d", "usr/local/bin", "var/log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # Inside the namespace, root/run is /run: world-traversable, unlike tmp_path,
        # so the unprivileged user can reach its home and sshd its key file.
        self.root.chmod(0o755)
        (self.root / "run").chmod(0o755)
        home = self.root / "run/tdhome"
        (home / ".ssh").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True
        )
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)], check=True
        )
        public = (self.base / "client_key.pub").read_text()
        (self.root / "run/tdkeys").mkdir()
        keys = self.root / "run/tdkeys/authorized_keys"
        keys.write_text(public)
        keys.chmod(0o644)
        # Account files: the machine's own plus one sudo user, seen only inside.
        accounts = self.base / "accounts"
        accounts.mkdir()
        passwd = Path("/etc/passwd").read_text()
        passwd += f"{SUDO_USER}:x:{SUDO_UID}:{SUDO_UID}::/run/tdhome:/bin/bash\n"
        (accounts / "passwd").write_text(passwd)
        group = Path("/etc/group").read_text() + f"{SUDO_USER}:x:{SUDO_UID}:\n"
        (accounts / "group").write_text(group)
        shadow = Path("/etc/shadow").read_text() + f"{SUDO_USER}:*:19000:0:99999:7:::\n"
        (accounts / "shadow").write_text(shadow)
        (accounts / "shadow").chmod(0o640)
        sudoers = accounts / "sudoers.d"
        sudoers.mkdir()
        (sudoers / "tddeploy").write_text(f"{SUDO_USER} ALL=(ALL) NOPASSWD:ALL\n")
        (sudoers / "tddeploy").chmod(0o440)
        os.chown(home, SUDO_UID, SUDO_UID)
        os.chown(home / ".ssh", SUDO_UID, SUDO_UID)
        (self.base / "crontab").write_text("# empty: only /etc/cron.d jobs run here\n")
        config = self.base / "sshd_config"
        config.write_text(
            textwrap.dedent(
                f"""\
                Port {self.port}
                ListenAddress 127.0.0.1
                HostKey {self.host_key}
                PidFile /run/sshd.pid
                AuthorizedKeysFile /run/tdkeys/authorized_keys
                StrictModes no
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                PermitRootLogin prohibit-password
                UsePAM no
                Subsystem sftp internal-sftp
                """
            )
            + "".join(f"SetEnv {name}={value}\n" for name, value in self.environment.items())
        )
        # Known hosts as an operator would have them after checking the fingerprint.
        host_public = (self.base / "ssh_host_ed25519_key.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_public[0]} {host_public[1]}\n")

        docker_sock = Path("/run/docker.sock")
        share_docker = self.with_docker and docker_sock.exists()
        mounts = [
            f"mount --bind {self.root / 'opt'} /opt",
            f"mount --bind {self.root / 'etc/cron.d'} /etc/cron.d",
            f"mount --bind {self.root / 'etc/logrotate.d'} /etc/logrotate.d",
            f"mount --bind {self.root / 'usr/local/bin'} /usr/local/bin",
            f"mount --bind {self.root / 'var/log'} /var/log",
            f"mount --bind {accounts / 'passwd'} /etc/passwd",
            f"mount --bind {accounts / 'group'} /etc/group",
            f"mount --bind {accounts / 'shadow'} /etc/shadow",
            f"mount --bind {sudoers} /etc/sudoers.d",
            f"mount --bind {self.base / 'crontab'} /etc/crontab",
        ]
        if share_docker:
            keep = self.base / "docker.sock"
            keep.touch()
            mounts.append(f"mount --bind {docker_sock} {keep}")
        mounts.append(f"mount --bind {self.root / 'run'} /run")
        mounts.append("mkdir -p /run/sshd /run/lock && chmod 0755 /run/sshd")
        if share_docker:
            mounts.append(
                f"touch /run/docker.sock && mount --bind {self.base / 'docker.sock'} /run/docker.sock"
            )
        daemons = f"exec /usr/sbin/sshd -D -e -f {config}"
        if self.with_cron:
            daemons = f"/usr/sbin/cron -f -L 15 & {daemons}"
        script = "set -e\n" + "\n".join(mounts) + "\n" + daemons + "\n"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited early:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"sshd did not listen within {STARTUP_TIMEOUT} s:\n{self.log.read_text()}"
        )

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> SshTarget:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ---------------------------------------------------------------

    def target(self, user: str = "root") -> Target:
        """The deployer's connection settings for this target."""
        return Target(
            host="127.0.0.1",
            port=self.port,
            user=user,
            private_key_path=str(self.client_key),
            known_hosts_path=str(self.known_hosts),
        )

    def ssh_argv(self, user: str = "root") -> list[str]:
        """The system ssh client's command line for this target, without the command."""
        return ssh_argv(self.client_key, self.port, self.known_hosts, f"{user}@127.0.0.1")

    def ssh(self, command: str, user: str = "root") -> subprocess.CompletedProcess[str]:
        """Run a command on the target with the system ssh client (independent of Fabric)."""
        return subprocess.run(
            [*self.ssh_argv(user), command],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def env_data(self, data: dict[str, object], user: str = "root") -> dict[str, object]:
        """A config pointing at this target."""
        ssh = dict(data["ssh_credentials"])  # type: ignore[call-overload]
        ssh.update(
            private_key_path=str(self.client_key),
            public_key_path=str(self.client_key) + ".pub",
            username=user,
            port=self.port,
            host="127.0.0.1",
        )
        return {**data, "ssh_credentials": ssh}


def require_tools() -> str | None:
    """Why this machine cannot run the target, or None."""
    for tool in ("unshare", "/usr/sbin/sshd", "ssh-keygen", "ssh"):
        if shutil.which(tool) is None and not Path(tool).exists():
            return f"{tool} is missing: run scripts/setup.sh"
    if os.geteuid() != 0:
        return "the SSH target needs root (mount namespaces): run the tests as root"
    return None
