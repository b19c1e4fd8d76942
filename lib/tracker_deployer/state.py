"""The user's state directory: the one owner of every path the deployer keeps there.

``$XDG_STATE_HOME/tracker-deployer`` (default ``~/.local/state/tracker-deployer``)
holds what is the user's and not the repository's:

- ``ssh/id_ed25519`` (+ ``.pub``): the project's key pair, made on first use;
  the sample environments name it as ``~/.local/state/tracker-deployer/ssh/...``;
- ``hosts/NAME.json``: where environment NAME's host is (provider, address,
  port), written by ``inv provision`` or ``inv register``; never in ``envs/``;
- ``hosts/NAME.known_hosts``: that host's SSH host keys (the lxd provider reads
  them through LXD; otherwise the first ``--accept-new-host-key`` records them).

Environment files are static and shared, so they spell the state directory
as ``~/.local/state/tracker-deployer``; :func:`resolve` maps that spelling to
``$XDG_STATE_HOME/tracker-deployer`` when the variable is set. Nothing here
reads the environment at import time: ``environ`` is a parameter.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from tracker_deployer.config.model import InvalidValue, parse_host
from tracker_deployer.errors import DeployError

APP = "tracker-deployer"
# How environment files spell the state directory (see resolve()).
SPELLED = f"~/.local/state/{APP}"
KEY_NAME = "id_ed25519"
KEY_TIMEOUT_SECONDS = 60


def root(environ: Mapping[str, str] | None = None) -> Path:
    """The state directory: ``$XDG_STATE_HOME/tracker-deployer`` or ``~/.local/state/...``."""
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_STATE_HOME", "")
    # The XDG spec: a relative value is invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / APP
    return Path(SPELLED).expanduser()


def resolve(path_text: str, environ: Mapping[str, str] | None = None) -> Path:
    """A path from an environment file, with ``~`` and the state directory resolved."""
    if path_text == SPELLED or path_text.startswith(SPELLED + "/"):
        return root(environ) / path_text[len(SPELLED) + 1 :]
    return Path(path_text).expanduser()


def key_path(environ: Mapping[str, str] | None = None) -> Path:
    """The project's private key (the public one is next to it, ``.pub``)."""
    return root(environ) / "ssh" / KEY_NAME


def is_project_key(private_key: Path, environ: Mapping[str, str] | None = None) -> bool:
    """True for a key inside the state directory: the project may make it."""
    return private_key.is_relative_to(root(environ))


def ensure_key_pair(
    private_text: str, public_text: str, environ: Mapping[str, str] | None = None
) -> tuple[Path, Path, bool]:
    """The key pair an environment names: (private, public, made_now).

    A pair inside the state directory is made on first use (ed25519, no
    passphrase, 0600 in a 0700 directory). Any other missing key is an error
    naming the path and how to make it; nothing is created outside the state
    directory.
    """
    private = resolve(private_text, environ)
    public = resolve(public_text, environ)
    if private.is_file() and public.is_file():
        return private, public, False
    if not is_project_key(private, environ) or public != private.with_name(private.name + ".pub"):
        missing = private if not private.is_file() else public
        raise DeployError(
            f"SSH key {missing} (ssh_credentials."
            f"{'private' if missing == private else 'public'}_key_path) does not exist",
            f"make a pair with `ssh-keygen -t ed25519 -N '' -f {private}`, or point "
            f"ssh_credentials at {SPELLED}/ssh/{KEY_NAME} (the project makes that one itself)",
        )
    if not shutil.which("ssh-keygen"):
        raise DeployError("ssh-keygen is missing", "install openssh-client (scripts/setup.sh)")
    private.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private.parent.chmod(0o700)
    if private.is_file():
        # -P '': a key with a passphrase fails at once (never a prompt on the terminal).
        derived = _keygen(private, ["-y", "-P", ""], f"read the key {private}")
        _write_private(public, derived, 0o644)
        return private, public, True
    public.unlink(missing_ok=True)  # a lone .pub cannot be trusted to match
    _keygen(
        private,
        ["-q", "-t", "ed25519", "-N", "", "-C", f"{APP}@{os.uname().nodename}"],
        f"make the key pair {private}",
    )
    return private, public, True


def _keygen(key: Path, args: list[str], what: str) -> str:
    """ssh-keygen ``args`` on the key file ``key``; it reads nothing from this terminal."""
    command = ["ssh-keygen", *args, "-f", str(key)]
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=KEY_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise DeployError(
            f"could not {what}: ssh-keygen did not finish within {KEY_TIMEOUT_SECONDS} s",
            f"run `{shlex.join(command)}` yourself to see what it waits for",
        ) from None
    if result.returncode != 0:
        if "passphrase" in result.stderr:
            raise DeployError(
                f"could not {what}: it has a passphrase",
                f"write its public key next to it (`ssh-keygen -y -f {key} > {key}.pub`), "
                "or remove the key to let a new pair be made",
            )
        raise DeployError(
            f"could not {what}: {result.stderr.strip()}",
            "remove the broken key files to let a new pair be made",
        )
    return result.stdout


def _write_private(path: Path, content: str | bytes, mode: int) -> None:
    """A state file: :func:`write_whole` in a directory of the user's alone."""
    write_whole(path, content, mode, dir_mode=0o700)


def write_whole(
    path: Path,
    content: str | bytes,
    mode: int,
    *,
    replace: bool = True,
    dir_mode: int = 0o777,
    hint: str | None = None,
) -> bool:
    """Write ``content`` to ``path`` atomically with ``mode`` (never briefly wider),
    through a temporary file of its own beside it (two commands may write one file at
    once), synced, and moved into place only once whole: a failure names the file and
    leaves no temporary file behind (Ctrl-C too), and never harms the file there.
    Without ``replace`` an existing ``path`` is left alone, atomically (a hard link),
    and False returned. ``dir_mode``: of a directory made for it (umask applies)."""
    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
        descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        temporary = Path(name)
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            temporary.replace(path)
            return True
        try:
            os.link(temporary, path)  # fails if path exists, whatever wrote it
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            # A file system without hard links: checked, then moved (a narrow race).
            if path.exists():
                return False
            temporary.replace(path)
        return True
    except OSError as error:
        raise DeployError(
            f"cannot write {path}: {error.strerror or error}",
            hint
            or f"check free space and permissions in {path.parent}, then run the command again",
        ) from None
    finally:  # a refusal and Ctrl-C too (moved into place: nothing to remove)
        if temporary is not None:
            temporary.unlink(missing_ok=True)


# --------------------------------------------------------------------------- host records


@dataclass(frozen=True, slots=True)
class HostRecord:
    """Where an environment's host is: written by provision or register."""

    provider: str  # lxd | existing | hetzner
    host: str
    port: int
    instance: str = ""  # the lxd instance name; empty for others

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def hosts_dir(environ: Mapping[str, str] | None = None) -> Path:
    return root(environ) / "hosts"


def record_path(env_name: str, environ: Mapping[str, str] | None = None) -> Path:
    return hosts_dir(environ) / f"{env_name}.json"


def known_hosts_path(env_name: str, environ: Mapping[str, str] | None = None) -> Path:
    return hosts_dir(environ) / f"{env_name}.known_hosts"


def read_record(env_name: str, environ: Mapping[str, str] | None = None) -> HostRecord | None:
    path = record_path(env_name, environ)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        text = ""  # unreadable or not UTF-8: not a record of ours
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    fields = data if isinstance(data, dict) else {}
    host, port = fields.get("host"), fields.get("port")
    hint = f"remove it, then `inv provision --env {env_name}` or `inv register --env {env_name}`"
    if not (
        all(isinstance(fields.get(key, ""), str) for key in ("provider", "host", "instance"))
        and "provider" in fields
        and type(port) is int  # not a bool, not 22.9
    ):
        raise DeployError(f"{path} is not a host record of {APP}", hint)
    if not isinstance(host, str) or not 0 < port < 65536 or not _is_host(host):
        raise DeployError(f"{path} names no usable host: {text.strip()[:200]!r}", hint)
    return HostRecord(fields["provider"], host, port, fields.get("instance", ""))


def _is_host(text: str) -> bool:
    """An IP address or a DNS name, as the config's ssh_credentials.host takes it
    (known_hosts lines are written with it: no comma, no space)."""
    try:
        return parse_host(text) == text.lower()
    except InvalidValue:
        return False


def write_record(
    env_name: str, record: HostRecord, environ: Mapping[str, str] | None = None
) -> Path:
    path = record_path(env_name, environ)
    _write_private(path, record.to_json(), 0o600)
    return path


def write_known_hosts(
    env_name: str, host: str, port: int, keys: list[str], environ: Mapping[str, str] | None = None
) -> Path:
    path = known_hosts_path(env_name, environ)
    _write_private(path, known_hosts_text(host, port, keys), 0o600)
    return path


def merge_known_hosts(path: Path, host: str, port: int, keys: list[str]) -> Path:
    """Replace host:port's lines in a known_hosts file the user named, plain and
    hashed (``|1|…``, HashKnownHosts); keep the rest."""
    lines = known_hosts_text(host, port, keys)  # checks the host first
    where = (host if port == 22 else f"[{host}]:{port}").encode()
    try:
        # Bytes: the user's other lines are kept as they are, whatever their encoding.
        kept = [
            line
            for line in path.read_bytes().splitlines(keepends=True)
            if not _names(line.split(b" ", 1)[0], where)
        ]
    except FileNotFoundError:
        kept = []
    except OSError as error:
        raise DeployError(
            f"cannot read {path}: {error.strerror}",
            "check ssh_credentials.known_hosts_path (a readable file, or one that does not "
            "exist yet)",
        ) from None
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += b"\n"
    _write_private(path, b"".join(kept) + lines.encode(), 0o600)
    return path


def _names(field: bytes, where: bytes) -> bool:
    """Whether a known_hosts line's first field names ``where``: listed plainly, or
    hashed as OpenSSH hashes it (``|1|`` base64 salt ``|`` base64 HMAC-SHA1 of the name)."""
    if not field.startswith(b"|1|"):
        return where in field.split(b",")
    salt, _, digest = field[3:].partition(b"|")
    try:
        key, wanted = base64.b64decode(salt, validate=True), base64.b64decode(digest, validate=True)
    except binascii.Error:
        return False  # not a hashed name OpenSSH would read either
    return hmac.compare_digest(hmac.new(key, where, hashlib.sha1).digest(), wanted)


def known_hosts_text(host: str, port: int, keys: list[str]) -> str:
    """known_hosts lines for ``keys`` (each ``TYPE BASE64``) of host:port; ``host`` is
    an address or a name (``10.0.0.5,github.com`` would vouch for github.com too)."""
    if not _is_host(host):
        raise DeployError(
            f"{host!r} is not a host address or name; no known_hosts line was written",
            "check the host's address (for an LXD instance: lxc list)",
        )
    where = host if port == 22 else f"[{host}]:{port}"
    return "".join(f"{where} {key}\n" for key in keys)


def forget(env_name: str, environ: Mapping[str, str] | None = None) -> None:
    """Remove the host record and its known_hosts file."""
    record_path(env_name, environ).unlink(missing_ok=True)
    known_hosts_path(env_name, environ).unlink(missing_ok=True)
