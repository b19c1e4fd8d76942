"""Domain values of an environment config.

Everything here is immutable and valid by construction: the value classes check
their input in ``parse`` (raising :class:`ValueError` with a message and a hint),
and :func:`tracker_deployer.config.load.load_env` is the only place that sees the
raw JSON. Nothing after parsing looks at a dict.
"""

from __future__ import annotations

import ipaddress
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from croniter import CroniterBadDateError, croniter

from tracker_deployer import ports


class InvalidValue(ValueError):
    """A value that does not fit its type: a message and a hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# --------------------------------------------------------------------------- secrets


class Secret:
    """A password or token. Its repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    @classmethod
    def parse(cls, value: str) -> Secret:
        if value == "":
            raise InvalidValue("must not be empty", "set a password or token")
        for char in value:
            if unicodedata.category(char) in ("Cc", "Cs"):
                raise InvalidValue(
                    f"contains the control character U+{ord(char):04X}",
                    "secrets may contain any printable character (spaces, quotes, $, "
                    "unicode), but no newlines, tabs or other control characters",
                )
        return cls(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


# --------------------------------------------------------------------------- small values


def show(value: object) -> str:
    """``value`` as JSON, shortened for a message."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes superscript and full-width digits)."""
    return text.isascii() and text.isdigit()


@dataclass(frozen=True, slots=True)
class Pattern:
    """A string value that must match ``regex`` whole: the parser and, as the JSON
    Schema's ``pattern`` (and ``maxLength``), the schema, so the regex has one owner.

    ``message`` follows the value in the error: ``'x y' is not a ...``.
    """

    regex: str
    message: str
    hint: str
    longest: int | None = None  # a longer value gets the same message

    def __call__(self, value: str) -> str:
        too_long = self.longest is not None and len(value) > self.longest
        if too_long or not re.fullmatch(self.regex, value):
            raise InvalidValue(f"{value!r} {self.message}", self.hint)
        return value

    def schema(self) -> dict[str, Any]:
        longest = {} if self.longest is None else {"maxLength": self.longest}
        return {**longest, "pattern": self.regex}


ENV_NAME_MAX = 63
ENV_NAME = Pattern(
    r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$",
    "is not a lowercase-dash name",
    "use lowercase letters, digits and '-', starting and ending with a letter or "
    "digit, e.g. 'tracker-prod'",
)


def parse_environment_name(value: str) -> str:
    if len(value) > ENV_NAME_MAX:
        raise InvalidValue(
            f"{value!r} is {len(value)} characters long, more than the {ENV_NAME_MAX} "
            "a hostname label allows",
            "use a shorter name, e.g. 'tracker-prod'",
        )
    return ENV_NAME(value)


parse_unix_user = Pattern(
    r"^[a-z_][a-z0-9_-]{0,31}$",
    "is not a valid Linux user name",
    "use lowercase letters, digits, '_' and '-', starting with a letter, "
    "at most 32 characters, e.g. 'torrust'",
)


def parse_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise InvalidValue(f"{value} is not a port number", "use a number from 1 to 65535")
    return value


HOSTNAME_LABEL = "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# At least two labels; the last one (the TLD) is not all digits.
parse_domain = Pattern(
    rf"^(?:{HOSTNAME_LABEL}\.)+(?![0-9]+$){HOSTNAME_LABEL}$",
    "is not a fully qualified domain name",
    "use a lowercase DNS name such as 'tracker.example.com'",
    longest=253,
)


def parse_host(value: str) -> str:
    """An SSH target: an IP address or a DNS name (single labels allowed)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.lower().split(".")
    if (
        not value.isascii()  # "\u212a" (Kelvin) lowercases to "k": check before lowering
        or len(value) > 253
        or not all(re.fullmatch(HOSTNAME_LABEL, label) for label in labels)
        or _digits(labels[-1])
    ):
        raise InvalidValue(
            f"{value!r} is neither an IP address nor a host name",
            "use e.g. '203.0.113.10' or 'tracker.example.com'",
        )
    return value.lower()


EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
parse_email = Pattern(f"^{EMAIL}$", "is not an e-mail address", "use e.g. 'admin@example.com'")


EMAIL_LIST = rf"^ *{EMAIL} *(?:, *{EMAIL} *)*$"  # spaces around the addresses are dropped


def parse_email_list(value: str) -> str:
    """cron's MAILTO: one address or a comma-separated list."""
    if not re.fullmatch(EMAIL_LIST, value):
        raise InvalidValue(
            f"{value!r} is not an e-mail address or a comma-separated list of them",
            "use e.g. 'ops@example.com' or 'ops@example.com,admin@example.com'",
        )
    return ",".join(part.strip(" ") for part in value.split(","))


# A Hetzner server type or location, e.g. 'cx22', 'nbg1'.
parse_hetzner_name = Pattern(
    r"^[a-z][a-z0-9-]{0,62}$",
    "is not a Hetzner name",
    "use lowercase letters, digits and '-', starting with a letter, e.g. 'cx22' or 'nbg1'",
)
# A Hetzner image name, e.g. 'ubuntu-24.04'.
parse_hetzner_image = Pattern(
    r"^[a-z0-9][a-z0-9._-]{0,62}$",
    "is not a Hetzner image name",
    "use lowercase letters, digits, '.', '_' and '-', e.g. 'ubuntu-24.04' or 'debian-12'",
)
parse_key_path = Pattern(
    r"^(?:/|~/)[\s\S]*$",
    "is a relative path",
    "use an absolute path (or one starting with '~/'), e.g. '/home/me/.ssh/id_ed25519'",
)
parse_image = Pattern(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$",
    "is not a Docker image reference",
    "use NAME[:TAG] or NAME@sha256:DIGEST, e.g. 'torrust/tracker:v3.0.0'",
)
HTTP_URL = Pattern(
    r"^https?://(?![/$.?#])[!-~]+(?![\s\S])",
    "is not an http(s) URL",
    "use e.g. 'https://hc-ping.com/your-uuid'",
)


def parse_http_url(value: str) -> str:
    """A ping URL. Its messages never show it: the URL is the credential (a check's
    uuid, a user and password)."""
    # Printable ASCII only: bash drops a NUL, a terminal obeys ESC, and curl and the
    # backup.conf grammar need nothing else (anything else is percent-encoded).
    for position, char in enumerate(value):
        if not " " <= char <= "~":
            raise InvalidValue(
                f"has the character U+{ord(char):04X} at position {position + 1}; "
                "a URL holds only printable ASCII",
                "percent-encode anything else (e.g. 'é' as '%C3%A9'), "
                "e.g. 'https://hc-ping.com/your-uuid'",
            )
    if not re.fullmatch(HTTP_URL.regex, value):
        raise InvalidValue(
            f"{HTTP_URL.message} (the value is not shown: it may hold a token)", HTTP_URL.hint
        )
    return value


# ASCII only, so 255 characters are the 255 bytes a file name may have.
parse_sqlite_name = Pattern(
    r"^(?!\.\.?$)[A-Za-z0-9._-]+$",
    "is not a plain file name",
    "use a file name without directories, at most 255 characters, e.g. 'tracker.db'",
    longest=255,
)
parse_mysql_identifier = Pattern(
    r"^[A-Za-z0-9_]{1,64}$",
    "is not a plain MySQL database name",
    "use letters, digits and '_' (at most 64), e.g. 'torrust_tracker'",
)
MYSQL_USER = Pattern(
    r"^[A-Za-z0-9_-]{1,32}$",
    "is not a plain MySQL user name",
    "use letters, digits, '_' and '-' (at most 32), e.g. 'tracker_user'",
)


def parse_mysql_user(value: str) -> str:
    if value.lower() == "root":
        raise InvalidValue(
            "the tracker must not use the MySQL root account",
            "use an application user such as 'tracker_user'; the root password goes in "
            "mysql.root_password",
        )
    return MYSQL_USER(value)


def parse_mysql_host(value: str) -> str:
    if value != "mysql":
        raise InvalidValue(
            f"{value!r} is not the stack's MySQL service",
            'the deployer runs MySQL in the stack as service "mysql"; use "mysql"',
        )
    return value


def parse_mysql_port(value: int) -> int:
    if value != ports.MYSQL:
        raise InvalidValue(
            f"{value} is not the port of the stack's MySQL service",
            f"the deployer runs MySQL itself on {ports.MYSQL}; use {ports.MYSQL}",
        )
    return value


# Grafana expands ``${NAME}``, ``$__env{NAME}``, ``$__file{PATH}`` (and ``$__vault{...}``)
# in every setting, GF_* environment variables included, and has no escape for them:
# the regex of grafana/pkg/setting/expanders.go. Its ini library (go-ini, Key.String)
# then replaces ``%(KEY)s`` with another key's value. Also in the schema (a test compares).
GRAFANA_EXPANSION = r"\$(?:__[0-9A-Za-z_]+)?\{[^}]+\}|%\([^)]+\)s"
_GRAFANA_EXPANSION = re.compile(GRAFANA_EXPANSION)


def _refuse_grafana_expansion(value: str) -> str:
    """Refuse a Grafana setting that Grafana would not take literally.

    The message shows only the kind of expansion, never the value (it may be a secret).
    """
    found = _GRAFANA_EXPANSION.search(value)
    if found is None:
        return value
    if found.group(0).startswith("%"):
        raise InvalidValue(
            "contains %(...)s, which Grafana's ini reader replaces with another setting's value",
            'Grafana has no escape for this: change the value so that no "%(" is closed by ")s"',
        )
    provider = found.group(0)[1 : found.group(0).index("{")]
    form, replacement = {
        "": ("${...}", "the value of an environment variable"),
        "__env": ("$__env{...}", "the value of an environment variable"),
        "__file": ("$__file{...}", "the contents of a file"),
    }.get(provider, ("$__NAME{...}", "what that provider returns (Vault, for one)"))
    raise InvalidValue(
        f"contains {form}, which Grafana replaces with {replacement}",
        'Grafana has no escape for this: change the value so that no "$" is followed '
        'by "{...}" or by "__name{...}" (a "$" or "{" on its own is fine)',
    )


def parse_grafana_user(value: str) -> str:
    if not all(c.isprintable() for c in value):
        raise InvalidValue("contains control characters", "use a plain user name such as 'admin'")
    return _refuse_grafana_expansion(value)


def parse_grafana_password(value: str) -> Secret:
    secret = Secret.parse(value)
    _refuse_grafana_expansion(value)
    return secret


# --------------------------------------------------------------------------- addresses


class Protocol(Enum):
    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True, slots=True)
class BindAddress:
    """``IP:PORT`` a service listens on inside its container."""

    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @classmethod
    def parse(cls, value: str) -> BindAddress:
        hint = "use IP:PORT, e.g. '0.0.0.0:6969' (or '[::]:6969' for IPv6)"
        host, sep, port_text = value.rpartition(":")
        if not sep or not _digits(port_text):
            raise InvalidValue(f"{value!r} is not an IP:PORT address", hint)
        bracketed = host.startswith("[") and host.endswith("]")
        if bracketed:
            host = host[1:-1]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise InvalidValue(f"{value!r} does not start with an IP address", hint) from None
        if (ip.version == 6) != bracketed:
            raise InvalidValue(
                f"{value!r} mixes up the address forms",
                "write IPv6 addresses in brackets ('[::]:6969') and IPv4 ones without",
            )
        return cls(ip, parse_port(int(port_text)))

    @property
    def is_loopback(self) -> bool:
        return self.ip.is_loopback

    @property
    def in_container(self) -> BindAddress:
        """Where the service listens in its container: every address of the family.
        The IP given is the host's (the port is published there): the container has
        no such address, and on its own loopback no other container reaches it."""
        any_ip = ipaddress.ip_address("::" if self.ip.version == 6 else "0.0.0.0")  # noqa: S104
        return BindAddress(any_ip, self.port)

    @property
    def host_ip(self) -> str | None:
        """The host address the port is published on; None for every address."""
        return None if self.ip.is_unspecified else str(self.ip)

    def __str__(self) -> str:
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


# --------------------------------------------------------------------------- cron

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# Each field: its name, its range and the names it also takes (the first one is ``low``).
CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTH_NAMES),
    ("day of week", 0, 7, _DAY_NAMES),
)
_CRON_HINT = 'e.g. "0 3 * * *" = 03:00 daily, "*/30 * * * *" = every 30 minutes'


def _check_cron_field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> None:
    def number(token: str) -> int:
        lowered = token.lower()
        if names and lowered in names:
            return names.index(lowered) + low
        if not _digits(token):
            raise InvalidValue(f"{name} {token!r} is not a number")
        value = int(token)
        if not low <= value <= high:
            raise InvalidValue(f"{name} {value} is out of range {low}-{high}")
        return value

    for part in text.split(","):
        if part == "":
            raise InvalidValue(f"{name} has an empty list item")
        base, slash, step = part.partition("/")
        if slash:
            if not _digits(step) or int(step) == 0:
                raise InvalidValue(f"{name} step {step!r} must be a whole number of at least 1")
            if int(step) > high:
                raise InvalidValue(f"{name} step {step} is larger than {high}")
        if base == "*":
            continue
        start_text, dash, end_text = base.partition("-")
        start = number(start_text)
        if dash:
            end = number(end_text)
            if end < start:
                raise InvalidValue(f"{name} range {base} runs backwards")


def cron_fires(expression: str, start: datetime) -> croniter:
    """The fires of ``expression`` after ``start``, as cron fires them: when the day of
    month or the day of week starts with "*" (e.g. "*/2"), a day must match both (Vixie
    cron and cronie test the first character); otherwise either. croniter alone takes
    either whenever neither field is a bare "*"."""
    return croniter(expression, start, implement_cron_bug=True)


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A 5-field cron expression, as written into ``/etc/cron.d`` (ranges checked).

    Nicknames like ``@daily`` and 6-field (seconds) forms are refused: the
    cron.d file takes exactly five fields, and we check each one.
    """

    expression: str

    @classmethod
    def parse(cls, value: str) -> CronSchedule:
        fields = value.split()
        if value.startswith("@"):
            raise InvalidValue(
                f"{value!r} is a cron nickname, not a 5-field cron schedule",
                f"write the five fields instead, {_CRON_HINT}",
            )
        if len(fields) != 5:
            raise InvalidValue(
                f"{value!r} is not a valid 5-field cron schedule "
                f"(it has {len(fields)} field{'s' if len(fields) != 1 else ''})",
                f"use minute hour day-of-month month day-of-week, {_CRON_HINT}",
            )
        for text, cron_field in zip(fields, CRON_FIELDS, strict=True):
            try:
                _check_cron_field(text, *cron_field)
            except InvalidValue as error:
                raise InvalidValue(
                    f"{value!r} is not a valid 5-field cron schedule ({error.message})", _CRON_HINT
                ) from None
        # Second opinion: croniter must agree (it also knows names and specials).
        if not croniter.is_valid(value):
            raise InvalidValue(f"{value!r} is not a valid 5-field cron schedule", _CRON_HINT)
        # A valid expression may still never fire (e.g. "0 3 30 2 *": February 30th).
        try:
            cron_fires(value, datetime(2000, 1, 1)).get_next(datetime)
        except CroniterBadDateError:
            raise InvalidValue(
                f"{value!r} never fires (no such date in any year)", _CRON_HINT
            ) from None
        return cls(" ".join(fields))

    def next_runs(self, start: datetime, count: int) -> list[datetime]:
        """The next ``count`` run times after ``start`` (time is a parameter)."""
        iterator = cron_fires(self.expression, start)
        return [iterator.get_next(datetime) for _ in range(count)]

    def __str__(self) -> str:
        return self.expression


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class SshCredentials:
    private_key_path: str
    public_key_path: str
    username: str
    port: int = 22
    host: str | None = None
    known_hosts_path: str | None = None


@dataclass(frozen=True, slots=True)
class LxdProvider:
    profile_name: str
    kind: str = "lxd"


@dataclass(frozen=True, slots=True)
class HetznerProvider:
    api_token: Secret
    server_type: str
    location: str
    image: str = "ubuntu-24.04"
    kind: str = "hetzner"


@dataclass(frozen=True, slots=True)
class ExistingProvider:
    """A host the user prepared; ``inv register`` records its address."""

    kind: str = "existing"


Provider = LxdProvider | HetznerProvider | ExistingProvider


@dataclass(frozen=True, slots=True)
class SqliteDatabase:
    database_name: str
    driver: str = "sqlite3"


@dataclass(frozen=True, slots=True)
class MysqlDatabase:
    host: str
    port: int
    database_name: str
    username: str
    password: Secret
    driver: str = "mysql"


Database = SqliteDatabase | MysqlDatabase


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A tracker service: where it listens and how it is exposed."""

    bind_address: BindAddress
    domain: str | None = None
    use_tls_proxy: bool = False

    @property
    def on_host(self) -> bool:
        """Published on the host (on the IP of ``bind_address``), unless behind Caddy."""
        return not self.use_tls_proxy

    @property
    def published(self) -> bool:
        """Reachable from outside the host: on the host, not on its loopback."""
        return self.on_host and not self.bind_address.is_loopback


@dataclass(frozen=True, slots=True)
class HttpApi:
    endpoint: Endpoint
    admin_token: Secret


@dataclass(frozen=True, slots=True)
class TrackerCore:
    database: Database
    private: bool = False


@dataclass(frozen=True, slots=True)
class Tracker:
    core: TrackerCore
    udp_trackers: tuple[Endpoint, ...]
    http_trackers: tuple[Endpoint, ...]
    http_api: HttpApi
    health_check_api: Endpoint


@dataclass(frozen=True, slots=True)
class MysqlServer:
    root_password: Secret


@dataclass(frozen=True, slots=True)
class Prometheus:
    scrape_interval_in_secs: int = 15


@dataclass(frozen=True, slots=True)
class Grafana:
    admin_user: str
    admin_password: Secret
    domain: str | None = None
    use_tls_proxy: bool = False


@dataclass(frozen=True, slots=True)
class Https:
    admin_email: str
    use_staging: bool = False


DEFAULT_SCHEDULE = "0 3 * * *"
DEFAULT_RETENTION_DAYS = 7
MAX_RETENTION_DAYS = 3650
# backup.compression -> (lowest level, highest level, default level). gzip runs
# through pigz (gzip when the image lacks it); zstd is Debian's, multithreaded
# (-T0). Levels above 19 need zstd's --ultra and much memory: not offered.
COMPRESSIONS: dict[str, tuple[int, int, int]] = {"gzip": (1, 9, 6), "zstd": (1, 19, 3)}
DEFAULT_COMPRESSION = "zstd"
DEFAULT_COMPRESSION_LEVEL = COMPRESSIONS[DEFAULT_COMPRESSION][2]


def parse_compression(value: str) -> str:
    if value not in COMPRESSIONS:
        raise InvalidValue(
            f"{show(value)} is not a compression this deployer knows",
            f"use one of {', '.join(repr(name) for name in COMPRESSIONS)}; "
            f"default {DEFAULT_COMPRESSION!r}",
        )
    return value


# The longest the tracker may stay stopped for a snapshot (its stop + the snapshot
# until it is open); then the snapshot is killed, the tracker started, the run failed.
DEFAULT_MAX_DOWNTIME_SECONDS = 600
MAX_MAX_DOWNTIME_SECONDS = 86400
# Weekly restore drill, Sunday 04:00: an hour after the default backup.
DEFAULT_DRILL_SCHEDULE = "0 4 * * 0"
DEFAULT_DOWNTIME_BUDGET_SECONDS = 60
MAX_DOWNTIME_BUDGET_SECONDS = 86400


# --------------------------------------------------------------------------- off-host copies

# Weekly repository check, Sunday 05:00: after the default drill (04:00).
DEFAULT_OFFSITE_CHECK_SCHEDULE = "0 5 * * 0"
# Share of the repository's data `restic check` reads each time (percent).
DEFAULT_OFFSITE_CHECK_READ_DATA = 5.0
KEEP_RULES = ("last", "daily", "weekly", "monthly", "yearly")
DEFAULT_OFFSITE_KEEP: tuple[tuple[str, int], ...] = (("daily", 7), ("weekly", 4), ("monthly", 12))
MAX_KEEP = 100000
_REPOSITORY_HINT = (
    "use 's3:https://HOST/BUCKET[/PREFIX]', 'sftp:USER@HOST:/PATH', "
    "'rest:https://HOST:PORT/PATH' or an absolute local path such as '/mnt/offsite/restic'"
)
ENV_VAR = Pattern(
    r"^[A-Z_][A-Z0-9_]{0,127}$",
    "is not an environment variable name",
    "use uppercase letters, digits and '_', e.g. 'AWS_ACCESS_KEY_ID'",
)
# Set by the deployer itself (or the container's basics): never from backup.offsite.env.
RESERVED_OFFSITE_ENV = frozenset(
    {
        "RESTIC_REPOSITORY",
        "RESTIC_REPOSITORY_FILE",
        "RESTIC_PASSWORD",
        "RESTIC_PASSWORD_FILE",
        "RESTIC_PASSWORD_COMMAND",
        "RESTIC_CACHE_DIR",
        "PATH",
        "HOME",
        "TZ",
        "TMPDIR",
    }
)
RESERVED_OFFSITE_ENV_PREFIX = "OFFSITE_"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")  # an s3: repository needs both


# Up to the last "@" before the host (a password may hold a raw "@"); offsite.sh's
# redact uses the same pattern (tests/unit/test_offsite.py holds them together).
_USERINFO = re.compile(r"//[^/\s]*@")


def redact_repository(value: str) -> str:
    """``value`` with any ``//USER:PASSWORD@`` userinfo shown as ``//***@``."""
    return _USERINFO.sub("//***@", value)


def parse_restic_repository(value: str) -> str:
    """A restic repository: ``s3:``, ``sftp:``, ``rest:`` or an absolute local path.

    Messages show it with any userinfo redacted (``//***@``): a URL may carry a password.
    """
    shown = redact_repository(value)
    for position, char in enumerate(value):
        if not "!" <= char <= "~":
            # Not shown: the redaction ends at a space, which a password may hold.
            raise InvalidValue(
                f"has {'a space' if char == ' ' else f'the character U+{ord(char):04X}'} "
                f"at position {position + 1}; a repository holds printable ASCII without spaces",
                "percent-encode anything else in a URL; pick a local path without spaces",
            )
    if value.startswith("/"):
        if any(part == ".." for part in value.split("/")):
            raise InvalidValue(f"{shown!r} contains '..'", "write the path without '..'")
        if ":" in value or "$" in value:
            raise InvalidValue(
                f"{shown!r} contains {':' if ':' in value else '$'}, which the compose file's "
                "mount of it cannot hold (':' separates its fields, '$' names a variable)",
                "pick a directory whose path has neither ':' nor '$'",
            )
        # One spelling of each directory ('//opt//x/./y/' is /opt/x/y): a check by
        # path (gone_with_host: under the deploy directory?) sees what Linux sees.
        parts = [part for part in value.split("/") if part not in ("", ".")]
        if not parts:
            raise InvalidValue(f"{shown!r} is the root directory", _REPOSITORY_HINT)
        return "/" + "/".join(parts)
    kind, colon, rest = value.partition(":")
    if not colon or kind not in ("s3", "sftp", "rest"):
        raise InvalidValue(
            f"{shown!r} is not a restic repository this deployer supports", _REPOSITORY_HINT
        )
    if rest == "" or rest == "//":
        raise InvalidValue(f"{shown!r} names no {kind} location", _REPOSITORY_HINT)
    if kind == "rest" and not re.fullmatch(r"https?://[^/\s]+(/.*)?", rest):
        raise InvalidValue(
            f"{shown!r} is not a rest: URL",
            "use e.g. 'rest:https://backup.example.com:8000/tracker'",
        )
    if kind == "rest" and "@" in rest.partition("//")[2].partition("/")[2]:
        # restic would take the part before the "/" as the host, and its error would
        # show the password (the redaction ends at a "/" too). Not shown here either.
        raise InvalidValue(
            "is a rest: URL with an '@' after a '/': a '/' in its user or password, "
            "which ends the host part of the URL",
            "percent-encode a '/' in the user or password as '%2F' (and an '@' in the "
            "path as '%40')",
        )
    if kind == "sftp" and not re.fullmatch(r"(//[^/]+/.+|[^/:]+:.+)", rest):
        raise InvalidValue(
            f"{shown!r} is not an sftp: location",
            "use 'sftp:USER@HOST:/PATH' or 'sftp://USER@HOST:PORT//PATH'",
        )
    return value


def parse_offsite_password(value: str) -> Secret:
    """The repository password: a secret that restic's password file keeps whole."""
    secret = Secret.parse(value)
    if value != value.strip():
        raise InvalidValue(
            "starts or ends with whitespace, which restic strips from a password file "
            "(the repository would then open only with the stripped password)",
            "remove the leading and trailing spaces",
        )
    if value.startswith("\ufeff"):
        raise InvalidValue(
            "starts with U+FEFF (a byte order mark), which restic strips from a password "
            "file (the repository would then open only without it)",
            "remove the invisible first character",
        )
    return secret


def parse_offsite_env_name(value: str) -> str:
    if ENV_VAR(value) in RESERVED_OFFSITE_ENV or value.startswith(RESERVED_OFFSITE_ENV_PREFIX):
        raise InvalidValue(
            f"{value!r} is set by the deployer itself",
            "set the repository with 'repository' and the password with 'password'; "
            "'env' holds only the backend's credentials, e.g. 'AWS_ACCESS_KEY_ID'",
        )
    return value


def repository_kind(repository: str) -> str:
    """``s3``, ``sftp``, ``rest`` or ``local``."""
    return "local" if repository.startswith("/") else repository.partition(":")[0]


@dataclass(frozen=True, slots=True)
class KeepPolicy:
    """restic's ``forget`` rules (GFS); never empty."""

    rules: tuple[tuple[str, int], ...]

    def restic_args(self) -> tuple[str, ...]:
        args: list[str] = []
        for rule, count in self.rules:
            args += [f"--keep-{rule}", str(count)]
        return tuple(args)


@dataclass(frozen=True, slots=True)
class OffsiteConfig:
    """Off-host, encrypted copies of every complete set (restic)."""

    repository: str
    password: Secret
    env: tuple[tuple[str, Secret], ...] = ()
    keep: KeepPolicy = field(default_factory=lambda: KeepPolicy(DEFAULT_OFFSITE_KEEP))
    check_schedule: CronSchedule = field(
        default_factory=lambda: CronSchedule(DEFAULT_OFFSITE_CHECK_SCHEDULE)
    )
    check_read_data: float = DEFAULT_OFFSITE_CHECK_READ_DATA

    @property
    def kind(self) -> str:
        return repository_kind(self.repository)


@dataclass(frozen=True, slots=True)
class BackupConfig:
    """Backups are on when this exists (``"backup": {}`` = all defaults)."""

    schedule: CronSchedule = field(default_factory=lambda: CronSchedule(DEFAULT_SCHEDULE))
    retention_days: int = DEFAULT_RETENTION_DAYS
    compression: str = DEFAULT_COMPRESSION
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    max_downtime_seconds: int = DEFAULT_MAX_DOWNTIME_SECONDS
    mailto: str = ""
    notify_url: str | None = None
    drill_schedule: CronSchedule = field(
        default_factory=lambda: CronSchedule(DEFAULT_DRILL_SCHEDULE)
    )
    downtime_budget_seconds: float = DEFAULT_DOWNTIME_BUDGET_SECONDS
    offsite: OffsiteConfig | None = None


BACKUP_IMAGE_REPOSITORY = "torrust/tracker-backup"
BACKUP_IMAGE_VERSION = "2.1.0"  # the one owner: `inv build-image --build-arg VERSION`, see image.py


def parse_backup_image(value: str) -> str:
    """The backup image: the scripts the deployer renders drive the commands of one
    major version, from the minor version it names on (2.0.0 added ``snapshot --gate``
    and ``list --records``; 2.1.0 added ``offsite.sh``'s ``OFFSITE_ALLOW_INIT`` and exit
    27, which a 2.0.0 image ignores: it made a vanished repository anew, empty)."""
    name, _, tag = parse_image(value).partition("@")[0].rpartition(":")
    major, minor = (int(part) for part in BACKUP_IMAGE_VERSION.split(".")[:2])
    # A version tag: '1', '1.4', 'v1.2.3', '1.2.3-rc1' (not 'latest' or 'develop').
    version = r"v?([0-9]+)(?:\.([0-9]+))?(?:\.[0-9]+)?(?:[-+][0-9A-Za-z.-]+)?"
    semver = re.fullmatch(version, tag) if "/" not in tag else None
    if name.rpartition("/")[2] != "tracker-backup" or semver is None:
        return value
    use = f"use {BACKUP_IMAGE_REPOSITORY}:{BACKUP_IMAGE_VERSION} or a later {major}.x version"
    if int(semver[1]) != major:
        raise InvalidValue(
            f"{value!r} is a {int(semver[1])}.x backup image; this deployer drives {major}.x "
            "(its commands and backup set format)",
            use,
        )
    if semver[2] is not None and int(semver[2]) < minor:
        raise InvalidValue(
            f"{value!r} is older than {major}.{minor}, whose commands the scripts this "
            "deployer renders rely on",
            use,
        )
    return value


@dataclass(frozen=True, slots=True)
class Images:
    """The image of each service; the defaults are the ones the deployer is tested with."""

    tracker: str = "torrust/tracker:v3.0.0"
    mysql: str = "mysql:8.4"
    prometheus: str = "prom/prometheus:v3.5.0"
    grafana: str = "grafana/grafana:12.1.0"
    caddy: str = "caddy:2.10"
    backup: str = f"{BACKUP_IMAGE_REPOSITORY}:{BACKUP_IMAGE_VERSION}"
    # Reads the backup metrics (textfile collector) when backup and prometheus are on.
    node_exporter: str = "prom/node-exporter:v1.9.1"


DEFAULT_IMAGES: dict[str, str] = asdict(Images())


@dataclass(frozen=True, slots=True)
class Env:
    """A parsed, valid environment config."""

    name: str
    source: Path
    ssh: SshCredentials
    provider: Provider
    tracker: Tracker
    mysql: MysqlServer | None = None
    prometheus: Prometheus | None = None
    grafana: Grafana | None = None
    https: Https | None = None
    backup: BackupConfig | None = None
    images: Images = field(default_factory=Images)

    @property
    def database(self) -> Database:
        return self.tracker.core.database

    @property
    def uses_mysql(self) -> bool:
        return isinstance(self.tracker.core.database, MysqlDatabase)

    def secrets(self) -> list[str]:
        """Every secret value, for masking in plans and logs: each :class:`Secret` in it."""
        found = [secret.reveal() for secret in _secrets(self)]
        # A ping URL is a credential too (plain text: the scripts need it whole).
        if self.backup is not None and self.backup.notify_url:
            found.append(self.backup.notify_url)
        return found


def _secrets(value: object) -> Iterator[Secret]:
    if isinstance(value, Secret):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from _secrets(item)
    elif is_dataclass(value):
        for each in fields(value):
            yield from _secrets(getattr(value, each.name))
