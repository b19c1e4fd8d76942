"""The shape of an environment config, written once.

Why a Python model and not the JSON Schema as the source: the parser needs more than
a schema can say (value parsers that return domain values, messages with a hint,
rules across sections), and the schema needs only what this table already holds.
So each key is declared here once (type, parser, required, default, bounds,
description, examples); :mod:`tracker_deployer.config.load` walks a config along
this table and :mod:`tracker_deployer.config.schema` generates
``schemas/environment-config.json`` from it. A test regenerates the schema and
compares it byte for byte, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracker_deployer.config.model import (
    _CRON_FIELDS,
    _DAY_NAMES,
    _EMAIL,
    _ENV_NAME,
    _ENV_NAME_RE,
    _HETZNER_IMAGE,
    _HETZNER_NAME,
    _IMAGE_REF,
    _MONTH_NAMES,
    _UNIX_USER,
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    DEFAULT_DOWNTIME_BUDGET_SECONDS,
    DEFAULT_DRILL_SCHEDULE,
    DEFAULT_IMAGES,
    DEFAULT_MAX_DOWNTIME_SECONDS,
    DEFAULT_OFFSITE_CHECK_READ_DATA,
    DEFAULT_OFFSITE_CHECK_SCHEDULE,
    DEFAULT_OFFSITE_KEEP,
    DEFAULT_RETENTION_DAYS,
    DEFAULT_SCHEDULE,
    ENV_NAME_MAX,
    GRAFANA_EXPANSION,
    KEEP_RULES,
    MAX_DOWNTIME_BUDGET_SECONDS,
    MAX_KEEP,
    MAX_MAX_DOWNTIME_SECONDS,
    MAX_RETENTION_DAYS,
    BackupConfig,
    BindAddress,
    CronSchedule,
    Endpoint,
    ExistingProvider,
    Grafana,
    HetznerProvider,
    HttpApi,
    Https,
    Images,
    KeepPolicy,
    LxdProvider,
    MysqlDatabase,
    MysqlServer,
    OffsiteConfig,
    Prometheus,
    Secret,
    SqliteDatabase,
    SshCredentials,
    Tracker,
    TrackerCore,
    parse_compression,
    parse_domain,
    parse_email,
    parse_email_list,
    parse_environment_name,
    parse_grafana_password,
    parse_grafana_user,
    parse_hetzner_image,
    parse_hetzner_name,
    parse_host,
    parse_http_url,
    parse_image,
    parse_key_path,
    parse_mysql_host,
    parse_mysql_identifier,
    parse_mysql_port,
    parse_mysql_user,
    parse_offsite_password,
    parse_restic_repository,
    parse_sqlite_name,
    parse_unix_user,
)

NO_DEFAULT: Any = object()
FAILED: Any = object()  # a key whose value did not parse (its issue is recorded)


@dataclass(frozen=True)
class Kind:
    """A JSON type, the parser of its values and the schema keywords they obey."""

    type: str  # "string", "integer", "number", "boolean" or "map" (names to secrets)
    parse: Callable[[Any], Any] | None = None
    schema: dict[str, Any] = field(default_factory=dict)
    ref: str | None = None  # the name under "$defs" in the schema
    blank: bool = False  # a blank string is "must not be empty" (before the parser)


@dataclass(frozen=True)
class Section:
    """A JSON object: its keys in order; ``build`` makes the domain value of them."""

    name: str
    fields: tuple[Field, ...]
    build: Callable[..., Any] = dict
    ref: str | None = None


@dataclass(frozen=True)
class Union:
    """An object whose ``key`` selects the section (provider, database)."""

    key: str
    variants: dict[str, Section]
    doc: str
    unknown: str  # "is not a known provider"
    hint: str
    missing_hint: str
    other_keys: bool  # with an unknown kind, still check the other keys
    ref: str | None = None


@dataclass(frozen=True)
class Field:
    key: str
    kind: Kind | Section | Union
    doc: str
    examples: list[Any]
    required: bool = False
    default: Any = NO_DEFAULT
    schema: dict[str, Any] = field(default_factory=dict)
    hint: str = ""  # for a number out of bounds or a value of the wrong type
    array: bool = False
    limits: Callable[[Mapping[str, Any]], tuple[int, int, str]] | None = None


def _cron_pattern() -> str:
    """What a 5-field schedule looks like, with each field's range (names included)."""

    def value(low: int, high: int, names: tuple[str, ...]) -> str:
        numbers = "|".join(str(n) for n in range(high, low - 1, -1))
        spelled = "".join(f"|{''.join(f'[{c.upper()}{c}]' for c in name)}" for name in names)
        return f"(?:0*(?:{numbers}){spelled})"

    fields = []
    for name, low, high in _CRON_FIELDS:
        names = _MONTH_NAMES if name == "month" else _DAY_NAMES if name == "day of week" else ()
        one = value(low, high, names)
        step = "|".join(str(n) for n in range(high, 0, -1))
        item = rf"(?:\*|{one}(?:-{one})?)(?:/0*(?:{step}))?"
        fields.append(f"{item}(?:,{item})*")
    return r"^\s*" + r"\s+".join(fields) + r"\s*$"


_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IPV6 = r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%[^\s%\]]+)?"
_PORT = "0*(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_LABEL = "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ANY_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAILS = _EMAIL.pattern.strip("^$")
_PRINTABLE = r"[^\u0000-\u001F\u007F-\u009F\uD800-\uDFFF"

STRING = Kind("string")
BOOL = Kind("boolean")
INT = Kind("integer")
POSITIVE = Kind("number", schema={"exclusiveMinimum": 0})
PERCENT = Kind("number", schema={"minimum": 0, "maximum": 100})
NAME = Kind(
    "string",
    parse_environment_name,
    {"maxLength": ENV_NAME_MAX, "pattern": _ENV_NAME.pattern},
    "lowercase_dash_name",
)
SECRET = Kind(
    "string", Secret.parse, {"minLength": 1, "pattern": rf"^{_PRINTABLE}]*(?![\s\S])"}, "secret"
)
KEY_PATH = Kind("string", parse_key_path, {"pattern": "^(?:/|~/)"}, "key_path")
PORT = Kind("integer", None, {"minimum": 1, "maximum": 65535}, "port")
BIND = Kind(
    "string",
    BindAddress.parse,
    {"pattern": rf"^(?:{_IPV4}|\[{_IPV4}\]|{_IPV6}|\[{_IPV6}\]):{_PORT}$"},
    "bind_address",
)
DOMAIN = Kind(
    "string",
    parse_domain,
    {"maxLength": 253, "pattern": rf"^(?:{_LABEL}\.)+(?![0-9]+$){_LABEL}$"},
    "domain",
)
EMAIL = Kind("string", parse_email, {"pattern": _EMAIL.pattern}, "email")
IMAGE = Kind("string", parse_image, {"pattern": _IMAGE_REF.pattern}, "image")
CRON = Kind("string", CronSchedule.parse, {"pattern": _cron_pattern()})
HETZNER_NAME = Kind("string", parse_hetzner_name, {"pattern": _HETZNER_NAME.pattern}, blank=True)
OFFSITE_ENV = Kind(
    "map", schema={"patternProperties": {_ENV_NAME_RE.pattern: {"$ref": "#/$defs/secret"}}}
)

_TLS_DOC = "Serve {} over HTTPS through the Caddy TLS proxy (needs `domain` and `https`); a proxied service is not published."
_DOMAIN_DOC = "Public DNS name of {}, used with use_tls_proxy."
_BIND_DOC = "IP:PORT {} listens on in the tracker container ({}); published on the host unless loopback or proxied."


def _endpoint(
    name: str, what: str, protocol: str, example: str, *extra: Field
) -> tuple[Field, ...]:
    bind = Field("bind_address", BIND, _BIND_DOC.format(what, protocol), [example], required=True)
    if protocol == "udp":
        return (bind,)
    domain = Field("domain", DOMAIN, _DOMAIN_DOC.format(what), [f"{name}.example.com"])
    tls = Field("use_tls_proxy", BOOL, _TLS_DOC.format(what), [True, False], default=False)
    return (bind, domain, tls, *extra)


def _keep_rule(rule: str) -> Field:
    example = dict(DEFAULT_OFFSITE_KEEP).get(rule, 3)
    return Field(
        rule,
        INT,
        f"Keep the newest snapshot of each of the last N {rule} periods (--keep-{rule}).",
        [example],
        schema={"minimum": 1, "maximum": MAX_KEEP},
        hint=f"how many {rule} snapshots to keep, e.g. {example}; leave the rule out instead of 0",
    )


def _compression_limits(section: Mapping[str, Any]) -> tuple[int, int, str]:
    given = section.get("compression")
    algorithm = given if isinstance(given, str) and given in COMPRESSIONS else DEFAULT_COMPRESSION
    low, high, default = COMPRESSIONS[algorithm]
    hint = f"{algorithm} levels run from {low} (fastest) to {high} (smallest); default {default}"
    return low, high, hint


def _backup(**values: Any) -> BackupConfig:
    """The compression level's default depends on the compression."""
    level = COMPRESSIONS[values.get("compression", DEFAULT_COMPRESSION)][2]
    return BackupConfig(**{"compression_level": level, **values})


def _parse_mailto(value: str) -> str:
    return parse_email_list(value) if value else value


_BLANK_TEXT = rf"^(?=[\s\S]*\S){_PRINTABLE}\u2028\u2029]+$"
_EXPANSION = {"not": {"pattern": GRAFANA_EXPANSION}}
_LEVELS = "; ".join(
    f"{name} {low} to {high}, default {default}"
    for name, (low, high, default) in COMPRESSIONS.items()
)

SSH = Section(
    "ssh_credentials",
    (
        Field(
            "private_key_path",
            KEY_PATH,
            "Private SSH key on the machine running the deployer.",
            ["~/.ssh/id_ed25519"],
            True,
        ),
        Field(
            "public_key_path",
            KEY_PATH,
            "Public half of the key pair (the .pub file); not the private key.",
            ["~/.ssh/id_ed25519.pub"],
            True,
        ),
        Field(
            "username",
            Kind("string", parse_unix_user, {"pattern": _UNIX_USER.pattern}),
            "Linux user the deployer logs in as (needs sudo).",
            ["torrust", "deploy"],
            True,
        ),
        Field(
            "port",
            PORT,
            "SSH port of the target host.",
            [22, 2222],
            default=22,
            hint="use the SSH port, usually 22",
        ),
        Field(
            "host",
            Kind(
                "string",
                parse_host,
                {"maxLength": 253, "pattern": rf"^(?:{_ANY_LABEL}(?:\.{_ANY_LABEL})*|{_IPV6})$"},
            ),
            "The host's IP address or DNS name; --host overrides it.",
            ["203.0.113.10", "tracker.example.com", "2001:db8::10"],
        ),
        Field(
            "known_hosts_path",
            KEY_PATH,
            "known_hosts file the host key is checked against (default ~/.ssh/known_hosts).",
            ["~/.ssh/known_hosts"],
        ),
    ),
    SshCredentials,
)
PROVIDER = Union(
    "provider",
    {
        "lxd": Section(
            "lxd",
            (
                Field(
                    "profile_name",
                    NAME,
                    "Name of the LXD instance `inv provision` creates.",
                    ["torrust-profile-prod"],
                    True,
                ),
            ),
            LxdProvider,
        ),
        "hetzner": Section(
            "hetzner",
            (
                Field("api_token", SECRET, "Hetzner Cloud API token.", ["hetzner-api-token"], True),
                Field("server_type", HETZNER_NAME, "Hetzner server type.", ["cx22", "cpx31"], True),
                Field(
                    "location",
                    HETZNER_NAME,
                    "Hetzner location (data centre).",
                    ["nbg1", "fsn1"],
                    True,
                ),
                Field(
                    "image",
                    Kind(
                        "string",
                        parse_hetzner_image,
                        {"pattern": _HETZNER_IMAGE.pattern},
                        blank=True,
                    ),
                    "Operating system image.",
                    ["ubuntu-24.04", "debian-12"],
                    default=HetznerProvider.__dataclass_fields__["image"].default,
                ),
            ),
            HetznerProvider,
        ),
        "existing": Section("existing", (), ExistingProvider),
    },
    "Kind of host: lxd (created by `inv provision`), hetzner or existing (recorded with `inv register`).",
    "is not a known provider",
    'use "lxd", "hetzner" or "existing"',
    'add "provider": "lxd"',
    other_keys=True,
)
DATABASE = Union(
    "driver",
    {
        "sqlite3": Section(
            "sqlite3",
            (
                Field(
                    "database_name",
                    Kind(
                        "string",
                        parse_sqlite_name,
                        {"pattern": r"^(?!\.\.?$)(?:[A-Za-z0-9._-]|[^\u0000-\u009F\s])+$"},
                    ),
                    "SQLite file name, without directories.",
                    ["tracker.db"],
                    True,
                ),
            ),
            SqliteDatabase,
        ),
        "mysql": Section(
            "mysql",
            (
                Field(
                    "host",
                    Kind("string", parse_mysql_host, {"const": "mysql"}),
                    'Always "mysql", the stack\'s MySQL service.',
                    ["mysql"],
                    True,
                ),
                Field(
                    "port",
                    Kind(
                        "integer", parse_mysql_port, {"minimum": 1, "maximum": 65535, "const": 3306}
                    ),
                    "Always 3306, the port of the stack's MySQL service.",
                    [3306],
                    True,
                    hint="MySQL listens on 3306",
                ),
                Field(
                    "database_name",
                    Kind("string", parse_mysql_identifier, {"pattern": "^[A-Za-z0-9_]{1,64}$"}),
                    "MySQL database name.",
                    ["torrust_tracker"],
                    True,
                ),
                Field(
                    "username",
                    Kind(
                        "string",
                        parse_mysql_user,
                        {
                            "pattern": "^[A-Za-z0-9_-]{1,32}$",
                            "not": {"pattern": "^[Rr][Oo][Oo][Tt]$"},
                        },
                    ),
                    "The tracker's MySQL user (never root).",
                    ["tracker_user"],
                    True,
                ),
                Field(
                    "password",
                    SECRET,
                    "Password of the tracker's MySQL user.",
                    ["tracker_password"],
                    True,
                ),
            ),
            MysqlDatabase,
        ),
    },
    '"sqlite3" (a file) or "mysql" (adds a mysql service and needs the `mysql` section).',
    "is not a supported database driver",
    'use "sqlite3" or "mysql"',
    'use "sqlite3" or "mysql"',
    other_keys=False,
    ref="database",
)
_HTTP_TRACKER = Section(
    "http_tracker",
    _endpoint("tracker", "the HTTP tracker", "tcp", "0.0.0.0:7070"),
    Endpoint,
    "http_tracker",
)
TRACKER = Section(
    "tracker",
    (
        Field(
            "core",
            Section(
                "core",
                (
                    Field(
                        "private",
                        BOOL,
                        "Private tracker mode (peers need a key).",
                        [False, True],
                        default=False,
                    ),
                    Field(
                        "database",
                        DATABASE,
                        "Where the tracker keeps its data: SQLite or MySQL.",
                        [{"driver": "sqlite3", "database_name": "tracker.db"}],
                        True,
                    ),
                ),
                TrackerCore,
            ),
            "Core tracker settings.",
            [{"database": {"driver": "sqlite3", "database_name": "tracker.db"}, "private": False}],
            True,
        ),
        Field(
            "udp_trackers",
            Section(
                "udp_tracker",
                _endpoint("udp", "the UDP tracker", "udp", "0.0.0.0:6969"),
                Endpoint,
                "udp_tracker",
            ),
            "UDP tracker sockets, each on its own port (may be empty).",
            [[{"bind_address": "0.0.0.0:6969"}]],
            True,
            array=True,
            hint='use [{"bind_address": "0.0.0.0:6969"}]',
        ),
        Field(
            "http_trackers",
            _HTTP_TRACKER,
            "HTTP tracker sockets, each on its own port (may be empty).",
            [[{"bind_address": "0.0.0.0:7070"}]],
            True,
            array=True,
            hint='use [{"bind_address": "0.0.0.0:6969"}]',
        ),
        Field(
            "http_api",
            Section(
                "http_api",
                _endpoint(
                    "api",
                    "the HTTP API",
                    "tcp",
                    "0.0.0.0:1212",
                    Field(
                        "admin_token",
                        SECRET,
                        "Token of the API's admin endpoints.",
                        ["MyAccessToken"],
                        True,
                    ),
                ),
                lambda admin_token, **endpoint: HttpApi(Endpoint(**endpoint), admin_token),
            ),
            "The tracker's REST API.",
            [{"bind_address": "0.0.0.0:1212", "admin_token": "MyAccessToken"}],
            True,
        ),
        Field(
            "health_check_api",
            Section(
                "health_check_api",
                _endpoint("health", "the health check API", "tcp", "127.0.0.1:1313"),
                Endpoint,
            ),
            "The tracker's health check endpoint.",
            [{"bind_address": "127.0.0.1:1313"}],
            True,
        ),
    ),
    Tracker,
)
OFFSITE = Section(
    "offsite",
    (
        Field(
            "repository",
            Kind(
                "string",
                parse_restic_repository,
                {"minLength": 1, "pattern": "^(?:/|s3:|sftp:|rest:https?://)[!-~]*$"},
            ),
            "The restic repository: s3:, sftp:, rest: or an absolute local path.",
            [
                "s3:https://s3.eu-central-1.amazonaws.com/tracker-backups/prod",
                "sftp:backup@backup.example.com:/srv/restic/tracker",
                "/mnt/offsite/restic",
            ],
            True,
        ),
        Field(
            "password",
            Kind("string", parse_offsite_password, ref="secret"),
            "The repository's password; keep a copy off the host.",
            ["correct horse battery staple"],
            True,
        ),
        Field(
            "env",
            OFFSITE_ENV,
            "The backend's credentials for restic (required for s3:); every value is a secret.",
            [{"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"}],
        ),
        Field(
            "keep",
            Section(
                "keep",
                tuple(_keep_rule(rule) for rule in KEEP_RULES),
                lambda **rules: KeepPolicy(
                    tuple((rule, rules[rule]) for rule in KEEP_RULES if rule in rules)
                ),
            ),
            "Which snapshots `restic forget --prune` keeps; at least one rule.",
            [dict(DEFAULT_OFFSITE_KEEP), {"last": 3, "yearly": 5}],
            default=dict(DEFAULT_OFFSITE_KEEP),
            schema={"minProperties": 1},
        ),
        Field(
            "check_schedule",
            CRON,
            "When `restic check` verifies the repository (cron, host time).",
            ["0 5 * * 0", "15 6 1 * *"],
            default=DEFAULT_OFFSITE_CHECK_SCHEDULE,
        ),
        Field(
            "check_read_data",
            PERCENT,
            "Percent of the repository's data each check reads (0 = structure only).",
            [5, 0, 100, 2.5],
            default=DEFAULT_OFFSITE_CHECK_READ_DATA,
            hint="the share of the repository's data each `restic check` reads, in percent "
            f"(0 = structure only, 100 = everything), e.g. {DEFAULT_OFFSITE_CHECK_READ_DATA:g}",
        ),
    ),
    OffsiteConfig,
)
BACKUP = Section(
    "backup",
    (
        Field(
            "schedule",
            CRON,
            "When backups run: 5 cron fields, host time.",
            ["0 3 * * *", "*/30 * * * *", "15 2 * * mon-fri"],
            default=DEFAULT_SCHEDULE,
        ),
        Field(
            "retention_days",
            INT,
            "Delete sets older than this many days (the newest good set stays).",
            [7, 30],
            default=DEFAULT_RETENTION_DAYS,
            schema={"minimum": 1, "maximum": MAX_RETENTION_DAYS},
            hint=f"keep backups for at least 1 day, e.g. {DEFAULT_RETENTION_DAYS}",
        ),
        Field(
            "compression",
            Kind("string", parse_compression, {"enum": list(COMPRESSIONS)}),
            "How the database file of a set is compressed.",
            list(COMPRESSIONS),
            default=DEFAULT_COMPRESSION,
        ),
        Field(
            "compression_level",
            INT,
            f"Compression level: {_LEVELS}.",
            [default for _, _, default in COMPRESSIONS.values()],
            schema={
                "minimum": min(low for low, _, _ in COMPRESSIONS.values()),
                "maximum": max(high for _, high, _ in COMPRESSIONS.values()),
            },
            limits=_compression_limits,
        ),
        Field(
            "max_downtime_seconds",
            INT,
            "The longest the tracker may stay stopped for a snapshot, in seconds.",
            [600, 1800],
            default=DEFAULT_MAX_DOWNTIME_SECONDS,
            schema={"minimum": 1, "maximum": MAX_MAX_DOWNTIME_SECONDS},
            hint="the longest the tracker may stay stopped for a snapshot, in seconds, "
            f"e.g. {DEFAULT_MAX_DOWNTIME_SECONDS} (the default)",
        ),
        Field(
            "mailto",
            Kind("string", _parse_mailto, {"pattern": f"^(?:{_EMAILS}(?: *, *{_EMAILS})*)?$"}),
            'Where cron mails a failed run\'s output: addresses, comma-separated, or "".',
            ["ops@example.com", "ops@example.com,admin@example.com", ""],
            default="",
        ),
        Field(
            "notify_url",
            Kind("string", parse_http_url, {"pattern": r"^https?://(?![/$.?#])[!-~]+(?![\s\S])"}),
            "healthchecks.io-style ping URL (/start, success, /fail).",
            ["https://hc-ping.com/your-uuid"],
        ),
        Field(
            "drill_schedule",
            CRON,
            "When the restore drill runs: 5 cron fields, host time.",
            ["0 4 * * 0", "30 5 * * *"],
            default=DEFAULT_DRILL_SCHEDULE,
        ),
        Field(
            "downtime_budget_seconds",
            POSITIVE,
            "Tracker downtime per run over which BackupDowntimeOverBudget fires, in seconds.",
            [60, 5.5],
            default=DEFAULT_DOWNTIME_BUDGET_SECONDS,
            schema={"maximum": MAX_DOWNTIME_BUDGET_SECONDS},
            hint="the longest tracker downtime per backup run before BackupDowntimeOverBudget "
            f"fires, in seconds, e.g. {DEFAULT_DOWNTIME_BUDGET_SECONDS}",
        ),
        Field(
            "offsite",
            OFFSITE,
            "Off-host, encrypted copies of every complete set (restic); see offsite.md.",
            [
                {
                    "repository": "/mnt/offsite/restic",
                    "password": "a long random passphrase",
                    "keep": {"daily": 7},
                }
            ],
        ),
    ),
    _backup,
)
IMAGES = Section(
    "images",
    tuple(
        Field(key, IMAGE, f"Image of the {key.replace('_', '-')} service.", [image], default=image)
        for key, image in DEFAULT_IMAGES.items()
    ),
    Images,
)
ENV = Section(
    "",
    (
        Field(
            "$schema",
            STRING,
            "The JSON Schema this file follows, for editors (ignored).",
            ["../schemas/environment-config.json"],
            hint="point it at schemas/environment-config.json",
        ),
        Field(
            "environment",
            Section(
                "environment",
                (
                    Field(
                        "name",
                        NAME,
                        "Name of the environment (build/NAME, generated files).",
                        ["tracker-prod"],
                        True,
                    ),
                ),
            ),
            "Identity of this deployment environment.",
            [{"name": "tracker-prod"}],
            True,
        ),
        Field(
            "ssh_credentials",
            SSH,
            "How the deployer logs in to the host over SSH.",
            [
                {
                    "private_key_path": "~/.ssh/id_ed25519",
                    "public_key_path": "~/.ssh/id_ed25519.pub",
                    "username": "torrust",
                }
            ],
            True,
        ),
        Field(
            "provider",
            PROVIDER,
            "Where the host comes from; `provider` selects the other keys.",
            [{"provider": "lxd", "profile_name": "torrust-profile-prod"}, {"provider": "existing"}],
            True,
        ),
        Field(
            "tracker",
            TRACKER,
            "The tracker: its database and the sockets it serves.",
            [
                {
                    "core": {"database": {"driver": "sqlite3", "database_name": "tracker.db"}},
                    "udp_trackers": [{"bind_address": "0.0.0.0:6969"}],
                    "http_trackers": [],
                    "http_api": {"bind_address": "0.0.0.0:1212", "admin_token": "MyAccessToken"},
                    "health_check_api": {"bind_address": "127.0.0.1:1313"},
                }
            ],
            True,
        ),
        Field(
            "mysql",
            Section(
                "mysql",
                (
                    Field(
                        "root_password",
                        SECRET,
                        "Password of MySQL's root account.",
                        ["root_secret"],
                        True,
                    ),
                ),
                MysqlServer,
            ),
            "The stack's MySQL server; exactly with the mysql driver.",
            [{"root_password": "root_secret"}],
        ),
        Field(
            "prometheus",
            Section(
                "prometheus",
                (
                    Field(
                        "scrape_interval_in_secs",
                        INT,
                        "Seconds between scrapes.",
                        [15, 60],
                        default=15,
                        schema={"minimum": 1, "maximum": 3600},
                        hint="use a number of seconds from 1 to 3600, e.g. 15",
                    ),
                ),
                Prometheus,
            ),
            "Run Prometheus (127.0.0.1:9090). `{}` = defaults.",
            [{"scrape_interval_in_secs": 15}, {}],
        ),
        Field(
            "grafana",
            Section(
                "grafana",
                (
                    Field(
                        "admin_user",
                        Kind(
                            "string",
                            parse_grafana_user,
                            {"minLength": 1, "pattern": _BLANK_TEXT, **_EXPANSION},
                            blank=True,
                        ),
                        "Grafana admin login; no ${...} expansions.",
                        ["admin"],
                        True,
                    ),
                    Field(
                        "admin_password",
                        Kind("string", parse_grafana_password, ref="secret"),
                        "Grafana admin password; no ${...} expansions.",
                        ["admin", "s3cret pass"],
                        True,
                        schema=_EXPANSION,
                    ),
                    *_endpoint("grafana", "the Grafana UI", "tcp", "")[1:],
                ),
                Grafana,
            ),
            "Run Grafana over Prometheus (3000/tcp unless proxied).",
            [{"admin_user": "admin", "admin_password": "admin"}],
        ),
        Field(
            "https",
            Section(
                "https",
                (
                    Field(
                        "admin_email",
                        EMAIL,
                        "Contact address for Let's Encrypt.",
                        ["admin@example.com"],
                        True,
                    ),
                    Field(
                        "use_staging",
                        BOOL,
                        "Use Let's Encrypt's staging CA while testing.",
                        [False, True],
                        default=False,
                    ),
                ),
                Https,
            ),
            "Run Caddy as TLS proxy (80/tcp, 443/tcp, 443/udp); exactly when a service uses it.",
            [{"admin_email": "admin@example.com", "use_staging": False}],
        ),
        Field(
            "backup",
            BACKUP,
            "Scheduled backups; present = on, `{}` = all defaults.",
            [{"schedule": DEFAULT_SCHEDULE, "retention_days": DEFAULT_RETENTION_DAYS}, {}],
        ),
        Field(
            "images",
            IMAGES,
            "Per-service Docker image overrides (NAME[:TAG][@sha256:DIGEST]).",
            [{"tracker": "torrust/tracker:develop"}, {}],
        ),
    ),
)
