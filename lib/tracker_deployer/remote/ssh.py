"""The one module that talks to a host: Fabric (and paramiko) live here only.

:class:`SshHost` runs commands (as root: directly when logged in as root,
otherwise through ``sudo -n``) and uploads bytes. Host keys are checked
against a known_hosts file (:class:`KnownHosts`); an unknown host is refused
unless the caller explicitly accepts a new key (then one line is appended to
the file). A changed key, or one marked ``@revoked``, is always refused.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut
from paramiko.ssh_exception import (
    AuthenticationException,
    BadHostKeyException,
    NoValidConnectionsError,
    SSHException,
)

from tracker_deployer.errors import DeployError, RemoteError
from tracker_deployer.render.tree import operation_script
from tracker_deployer.say import printable

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
# OpenSSH's ServerAliveInterval and ServerAliveCountMax: a host that answers nothing
# for ALIVE_INTERVAL_SECONDS * ALIVE_COUNT seconds is given up (see _Liveness).
ALIVE_INTERVAL_SECONDS = 15.0
ALIVE_COUNT = 4


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to connect."""

    host: str
    port: int
    user: str
    private_key_path: str
    known_hosts_path: str = DEFAULT_KNOWN_HOSTS
    accept_new_host_key: bool = False
    connect_timeout: int = 15
    alive_interval: float = ALIVE_INTERVAL_SECONDS
    alive_count: int = ALIVE_COUNT

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


REVOKED_MARKER = "@revoked"


class RevokedHostKey(SSHException):
    """The host offered a key that known_hosts marks ``@revoked``."""


@dataclass(frozen=True, slots=True)
class KnownHosts:
    """What a known_hosts file says, read the way OpenSSH reads it.

    Plain lines become host keys (paramiko parses each one; a line it cannot
    parse, e.g. an ``sk-`` key, is skipped as OpenSSH skips what it does not
    understand). ``@revoked`` lines are honoured: such a key is refused for any
    host, even where a plain line lists it. ``@cert-authority`` lines are
    skipped: host certificates are not checked by this tool, so they never
    vouch for a host here.
    """

    entries: tuple[paramiko.hostkeys.HostKeyEntry, ...]
    revoked: tuple[paramiko.PKey, ...]

    @classmethod
    def read(cls, path: Path) -> KnownHosts:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return cls((), ())
        except OSError as error:
            raise DeployError(
                f"cannot read the known_hosts file {path}: {error.strerror}",
                "check ssh_credentials.known_hosts_path (or --known-hosts, on the tasks that "
                "take it)",
            ) from None
        entries: list[paramiko.hostkeys.HostKeyEntry] = []
        revoked: list[paramiko.PKey] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("@"):
                marker, _, rest = line.partition(" ")
                if marker == REVOKED_MARKER:
                    entry = _parse_host_line(rest.strip(), number)
                    if entry is not None:
                        revoked.append(entry.key)
                continue  # @cert-authority and unknown markers vouch for nothing here
            entry = _parse_host_line(line, number)
            if entry is not None:
                entries.append(entry)
        return cls(tuple(entries), tuple(revoked))

    def is_revoked(self, key: paramiko.PKey) -> bool:
        return any(key == bad for bad in self.revoked)

    def add_to(self, keys: paramiko.HostKeys) -> None:
        """Every listed key that is not revoked, into paramiko's host keys."""
        for entry in self.entries:
            if self.is_revoked(entry.key):
                continue
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)


def _parse_host_line(line: str, number: int) -> paramiko.hostkeys.HostKeyEntry | None:
    try:
        entry: paramiko.hostkeys.HostKeyEntry | None = paramiko.hostkeys.HostKeyEntry.from_line(
            line, number
        )
    except (paramiko.hostkeys.InvalidHostKey, SSHException, ValueError, TypeError):
        return None
    return entry


def append_known_host(path: Path, hostname: str, key: paramiko.PKey) -> None:
    """Add one OpenSSH line for ``hostname`` at the end of ``path``; nothing else changes."""
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n".encode("ascii")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
    finally:
        os.close(fd)


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """A host key that no known_hosts line lists: refused if revoked, else
    recorded when the operator accepts new keys, else refused."""

    def __init__(self, known_hosts: Path, known: KnownHosts, accept_new: bool) -> None:
        self.known_hosts = known_hosts
        self.known = known
        self.accept_new = accept_new

    def missing_host_key(
        self,
        client: paramiko.SSHClient,  # noqa: ARG002 - paramiko's signature
        hostname: str,
        key: paramiko.PKey,
    ) -> None:
        if self.known.is_revoked(key):
            raise RevokedHostKey(f"{hostname} offered a revoked {key.get_name()} key")
        if not self.accept_new:
            raise SSHException(f"Server {hostname!r} not found in known_hosts")
        try:
            append_known_host(self.known_hosts, hostname, key)
        except OSError as error:
            raise DeployError(
                f"cannot record the host key of {hostname} in {self.known_hosts}: {error.strerror}",
                "make the known_hosts file writable, or add the key yourself after checking "
                "its fingerprint (ssh-keyscan)",
            ) from None


class _Liveness:
    """OpenSSH's ServerAliveInterval for paramiko, whose own keepalive expects no answer.

    Every ``interval`` seconds the server is asked for an answer (a global request it
    refuses, as OpenSSH's client asks). With none within ``interval * count`` seconds,
    and nothing else received meanwhile, the connection is closed: a command waiting
    on a host that vanished, or on an sshd that hangs, then fails instead of waiting
    for ever (TCP alone may wait a quarter of an hour, or for ever on an idle channel).
    The answer queues behind the data in flight: on a slow link a download delays it,
    which is why data still arriving counts as alive.
    """

    def __init__(self, transport: paramiko.Transport, interval: float, count: int) -> None:
        self._transport = transport
        self._interval = interval
        self.patience = interval * count
        self._stop = threading.Event()
        self.dead = False
        self._thread = threading.Thread(target=self._watch, name="ssh-liveness", daemon=True)
        self._thread.start()

    def _received(self) -> object:
        """What the transport has read so far (paramiko keeps no public count: None
        without one, and then only answers count)."""
        packetizer = getattr(self._transport, "packetizer", None)
        return getattr(packetizer, "_Packetizer__received_packets", None)

    def _ask(self, answered: threading.Event) -> None:
        try:
            self._transport.global_request("keepalive@openssh.com", wait=True)
        except (SSHException, OSError, EOFError):
            # Not an answer: the transport ended (the watch sees that), or a key
            # exchange timed out on a host that went silent (the watch's bound holds).
            return
        answered.set()

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            answered = threading.Event()
            seen = self._received()
            threading.Thread(target=self._ask, args=(answered,), daemon=True).start()
            while not answered.wait(self.patience):
                if self._stop.is_set() or not self._transport.is_active():
                    return
                now = self._received()
                if seen is not None and now != seen:
                    seen = now  # still receiving: busy, not gone
                    continue
                self.dead = True
                self._transport.close()
                return

    def stop(self) -> None:
        self._stop.set()


def detached_command(staging: str, *args: str) -> str:
    """The command that runs ``staging``/script.sh with ``args`` behind
    ``staging``/run-detached.sh (templates/operations/run-detached.sh.j2)."""
    words = [f"{staging}/run-detached.sh", f"{staging}/script.sh", *args]
    return "bash " + " ".join(shlex.quote(word) for word in words)


class SshHost:
    """A connected target host. Use as a context manager.

    ``host_flags``: the command takes --host and --accept-new-host-key, so its
    error hints may name them (destroy and status take neither).
    """

    def __init__(self, target: Target, *, host_flags: bool = True) -> None:
        self.target = target
        self.host_flags = host_flags
        key_path = str(Path(target.private_key_path).expanduser())
        if not Path(key_path).is_file():
            raise DeployError(
                f"SSH private key {target.private_key_path} not found",
                "fix ssh_credentials.private_key_path in the environment config",
            )
        self._known_hosts = Path(target.known_hosts_path).expanduser()
        self._conn = Connection(
            target.host,
            user=target.user,
            port=target.port,
            config=Config(lazy=True),
            connect_timeout=target.connect_timeout,
            connect_kwargs={
                "key_filename": key_path,
                "look_for_keys": False,
                "allow_agent": False,
            },
        )
        client = self._conn.client
        self._known = KnownHosts.read(self._known_hosts)
        self._known.add_to(client.get_host_keys())
        client.set_missing_host_key_policy(
            _KnownHostsPolicy(self._known_hosts, self._known, target.accept_new_host_key)
        )
        self.is_root = target.user == "root"
        self._liveness: _Liveness | None = None

    # -- connection ------------------------------------------------------------

    def __enter__(self) -> SshHost:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        target = self.target
        try:
            self._conn.open()
        except RevokedHostKey:
            raise RemoteError(
                f"the host key of {target.host}:{target.port} is marked @revoked in "
                f"{self._known_hosts}",
                "do not connect: the key was revoked on purpose. If the host got a new key, "
                "check its fingerprint and add that key",
            ) from None
        except BadHostKeyException as error:
            if self._known.is_revoked(error.key):
                raise RemoteError(
                    f"the host key of {target.host}:{target.port} is marked @revoked in "
                    f"{self._known_hosts}",
                    "do not connect: the key was revoked on purpose",
                ) from None
            # How known_hosts names the host: port 22 without brackets.
            name = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
            raise RemoteError(
                f"the host key of {target.host}:{target.port} does not match the one in "
                f"{self._known_hosts}",
                "if the host was rebuilt, remove its old line with "
                f"`ssh-keygen -R '{name}' -f {self._known_hosts}`; "
                "otherwise someone may be intercepting the connection",
            ) from None
        except SSHException as error:
            if "not found in known_hosts" in str(error):
                how = (
                    "pass --accept-new-host-key once (or add it with ssh-keyscan)"
                    if self.host_flags
                    else "add its key with "
                    f"`ssh-keyscan -p {target.port} {target.host} >> {self._known_hosts}`"
                )
                raise RemoteError(
                    f"{target.host}:{target.port} is not in {self._known_hosts}",
                    f"check the host's fingerprint, then {how}",
                ) from None
            if isinstance(error, AuthenticationException):
                raise RemoteError(
                    f"SSH login as {target.user} to {target.host}:{target.port} was refused",
                    "check ssh_credentials.username and that the public key is in the "
                    "user's ~/.ssh/authorized_keys on the host",
                ) from None
            raise RemoteError(
                f"SSH to {target} failed: {error}", "check that sshd runs on the host"
            ) from None
        except NoValidConnectionsError:
            raise RemoteError(
                f"cannot connect to {target.host}:{target.port} (connection refused)",
                "check the host address, ssh_credentials.port and that sshd is running",
            ) from None
        except TimeoutError:
            raise RemoteError(
                f"connecting to {target.host}:{target.port} timed out after "
                f"{target.connect_timeout} s",
                "check the address and any firewall between you and the host",
            ) from None
        except (socket.gaierror, OSError) as error:
            raise RemoteError(
                f"cannot connect to {target.host}:{target.port}: {error}",
                "check the host address in ssh_credentials.host"
                + (" or --host" if self.host_flags else " or the host record"),
            ) from None

        transport = self._conn.client.get_transport()
        if transport is not None:  # connected: open() returned
            self._liveness = _Liveness(transport, target.alive_interval, target.alive_count)

    def close(self) -> None:
        if self._liveness is not None:
            self._liveness.stop()
        self._conn.close()

    def _check_alive(self) -> None:
        """Refuse to go on once the host stopped answering (Fabric would connect anew)."""
        if self._liveness is not None and self._liveness.dead:
            raise RemoteError(
                f"{self.target} stopped answering over SSH for "
                f"{self._liveness.patience:g} s: the connection was closed",
                "check the host (is it up, is sshd hanging?); a script this task started "
                "there goes on without this connection: look with `inv status` once the "
                "host answers",
            )

    # -- commands --------------------------------------------------------------

    def as_root(self, command: str) -> str:
        """``command`` (a shell string) wrapped to run as root."""
        if self.is_root:
            return command
        return f"sudo -n -- bash -c {shlex.quote(command)}"

    def run(
        self,
        command: str,
        *,
        root: bool = True,
        stream: Callable[[str], None] | None = None,
        timeout: int | None = None,
    ) -> Result:
        """Run a shell command; never raises for a non-zero exit (see ``Result``)."""
        full = self.as_root(command) if root else command
        # One writer a stream (each keeps its own partial line), one lock for both:
        # stdout and stderr arrive in two threads, and their lines never mix.
        lock = threading.Lock()
        writers = [_LineWriter(stream, lock) for _ in ("out", "err")] if stream else []
        kwargs: dict[str, Any] = {
            "hide": True,
            "warn": True,
            "pty": False,
            "in_stream": False,
            "timeout": timeout,
        }
        if writers:
            kwargs["out_stream"], kwargs["err_stream"] = writers
        self._check_alive()
        try:
            result = self._conn.run(full, **kwargs)
        except CommandTimedOut:
            raise RemoteError(
                f"a command on {self.target.host} did not finish within {timeout} s",
                "look at the host: `docker compose ps` and the backup log",
            ) from None
        except (SSHException, OSError, EOFError) as error:
            self._check_alive()
            raise RemoteError(f"lost the SSH connection to {self.target}: {error}") from None
        finally:
            for writer in writers:
                writer.finish()
        self._check_alive()  # the watchdog closed the channel: its exit code is no answer
        if not self.is_root and root and result.exited == 1 and "sudo:" in result.stderr:
            raise RemoteError(
                f"sudo on {self.target.host} asks for a password or is not allowed for "
                f"{self.target.user}: {result.stderr.strip()}",
                f"allow passwordless sudo for {self.target.user} "
                f"(e.g. '{self.target.user} ALL=(ALL) NOPASSWD:ALL' in /etc/sudoers.d/), "
                "or connect as root",
            )
        return Result(result.exited, result.stdout, result.stderr)

    def check(self, command: str, what: str, *, root: bool = True) -> Result:
        """Run and raise :class:`RemoteError` naming ``what`` when it fails."""
        result = self.run(command, root=root)
        if not result.ok:
            detail = (result.stderr or result.stdout).strip().splitlines()
            last = detail[-1] if detail else f"exit code {result.exit_code}"
            raise RemoteError(f"{what} failed on {self.target.host}: {last}")
        return result

    @contextmanager
    def staging(self) -> Iterator[str]:
        """A fresh directory under /tmp owned by the SSH user, removed afterwards."""
        directory = self._new_staging()
        try:
            yield directory
        finally:
            self.run(f"rm -rf -- {shlex.quote(directory)}", root=False)

    def _new_staging(self) -> str:
        made = self.check("mktemp -d /tmp/tracker-deployer.XXXXXXXX", "mktemp", root=False)
        return made.stdout.strip()

    def run_script(
        self,
        script: str,
        *args: str,
        stream: Callable[[str], None] | None = None,
        companions: Mapping[str, str] | None = None,
        timeout: int | None = None,
    ) -> Result:
        """Upload ``script`` and run it as root (scripts never go through stdin:
        Invoke feeds stdin a byte at a time, which takes seconds per kilobyte).
        ``companions`` (file name -> text) are uploaded next to it, for the script to run.
        It runs behind templates/operations/run-detached.sh.j2: should this session
        drop, the script goes on and ends as it would have (no SIGPIPE half-way), and
        run-detached.sh, not this task, removes the upload once the script has ended."""
        staging = self._new_staging()
        try:
            for name, text in (companions or {}).items():
                self.put(text.encode(), f"{staging}/{name}")
            self.put(script.encode(), f"{staging}/script.sh")
            self.put(operation_script("run-detached").encode(), f"{staging}/run-detached.sh")
        except BaseException:
            with contextlib.suppress(DeployError):
                self.run(f"rm -rf -- {shlex.quote(staging)}", root=False)
            raise
        return self.run(detached_command(staging, *args), stream=stream, timeout=timeout)

    def put(self, content: bytes, remote_path: str) -> None:
        """Upload ``content`` to ``remote_path`` as the SSH user (not root)."""
        self._check_alive()
        try:
            self._conn.put(io.BytesIO(content), remote=remote_path)
        except (SSHException, OSError, EOFError) as error:
            self._check_alive()
            raise RemoteError(f"uploading {remote_path} to {self.target} failed: {error}") from None

    def download(self, remote_path: str, local_path: Path, *, limit: int | None = None) -> None:
        """Fetch a file readable only by root into a NEW local file (never through a
        symlink, never over an existing file); at most ``limit`` bytes are accepted."""
        try:
            fd = os.open(local_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as error:
            raise DeployError(
                f"cannot create {local_path}: {error.strerror}",
                "check the destination directory (it must be writable and hold no link there)",
            ) from None
        with os.fdopen(fd, "wb") as handle:
            self._fetch(remote_path, _LimitedSink(handle, limit, remote_path))

    def read_bytes(self, remote_path: str, *, limit: int) -> bytes:
        """A small file readable only by root, in memory (at most ``limit`` bytes)."""
        buffer = io.BytesIO()
        self._fetch(remote_path, _LimitedSink(buffer, limit, remote_path))
        return buffer.getvalue()

    def _fetch(self, remote_path: str, sink: _LimitedSink) -> None:
        source = remote_path
        staging = ""
        if not self.is_root:
            made = self.run("mktemp -d /tmp/tracker-deployer-fetch.XXXXXXXX", root=False)
            staging = made.stdout.strip()
            if not made.ok or not staging:
                raise RemoteError(f"mktemp failed on {self.target.host}: {made.stderr.strip()}")
            source = f"{staging}/file"
            copied = self.run(
                f"install -m 0600 -o {shlex.quote(self.target.user)} "
                f"{shlex.quote(remote_path)} {shlex.quote(source)}"
            )
            if not copied.ok:
                self.run(f"rm -rf -- {shlex.quote(staging)}", root=False)
                raise RemoteError(
                    f"cannot read {remote_path} on {self.target.host}: {copied.stderr.strip()}"
                )
        try:
            self._conn.get(source, local=sink)
        except (SSHException, OSError, EOFError) as error:
            if sink.local_error is not None:  # this machine's disk, not the host: the caller's
                raise sink.local_error from None
            self._check_alive()
            raise RemoteError(
                f"downloading {remote_path} from {self.target} failed: {error}"
            ) from None
        finally:
            if staging:
                self.run(f"rm -rf -- {shlex.quote(staging)}", root=False)


class TooLarge(RemoteError):
    """The host sent more bytes than it said a file holds."""


class _LimitedSink:
    """A writable that refuses more than ``limit`` bytes (a host may lie about sizes)."""

    def __init__(self, handle: io.IOBase | io.BufferedWriter, limit: int | None, name: str) -> None:
        self._handle = handle
        self._limit = limit
        self._name = name
        self.written = 0
        self.local_error: OSError | None = None  # writing here failed (a full disk)

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self._limit is not None and self.written > self._limit:
            raise TooLarge(
                f"the host sent more than {self._limit} bytes for {self._name}",
                "the file changed on the host or the host is not trustworthy; "
                "list the sets with `inv backups` and try again",
            )
        try:
            written: int = self._handle.write(data)
        except OSError as error:
            self.local_error = error
            raise
        return written


class _LineWriter(io.TextIOBase):
    """A text stream that hands complete lines to a callback, each :func:`printable`:
    the host's output never reaches the terminal with an escape sequence in it (a
    tab, which moves only the cursor, stays a tab)."""

    def __init__(self, callback: Callable[[str], None], lock: threading.Lock) -> None:
        self._callback = callback
        self._lock = lock  # shared with the other stream's writer
        self._buffer = ""

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._hand(line)
        return len(text)

    def flush(self) -> None:
        """Nothing: Invoke flushes after every chunk, and a chunk may end mid-line."""

    def finish(self) -> None:
        """The command has ended: hand on a last line without its newline."""
        if self._buffer:
            self._hand(self._buffer)
            self._buffer = ""

    def _hand(self, line: str) -> None:
        with self._lock:
            self._callback(printable(line, keep="\t"))
