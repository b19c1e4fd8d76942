"""The shape of an environment config, declared once.

Why a Python model generates the JSON Schema, and not the other way round: the
parser needs more than a schema says (value parsers that return domain values,
messages with a hint, rules across sections), while the schema needs nothing this
table lacks. So every key is declared here once: its type and value parser,
required or not, bounds, description and examples; its default is the one of the
model's dataclass (:func:`section` reads it), so that too has one owner.
:mod:`tracker_deployer.config.load` walks a config along these tables and
:mod:`tracker_deployer.config.schema` generates ``schemas/environment-config.json``
from them; a test regenerates the file and compares, so the two cannot drift.
Descriptions stay short: the prose is in docs/user-guide/configuration.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any

from tracker_deployer import ports
from tracker_deployer.config import model as m

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
    other_keys: bool  # with an unknown kind, still check the other keys
    missing_hint: str = ""  # the hint when the key is missing (the other hint if empty)
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


def example(kind: Kind | Section | Union) -> Any:
    """An object's example, made of its parts: the first kind of a union, each required
    key with its first example (so no object repeats its keys' examples)."""
    if isinstance(kind, Union):
        name, variant = next(iter(kind.variants.items()))
        return {kind.key: name, **example(variant)}
    assert isinstance(kind, Section), "a value's examples are given"
    return {f.key: f.examples[0] for f in kind.fields if f.required}


def need(key: str, kind: Kind | Section | Union, doc: str, *examples: Any, **more: Any) -> Field:
    """A required key; an object's example is made of its keys' unless one is given."""
    if not examples:
        examples = ([example(kind)] if more.get("array") else example(kind),)
    return Field(key, kind, doc, list(examples), True, **more)


def opt(key: str, kind: Kind | Section | Union, doc: str, *examples: Any, **more: Any) -> Field:
    """An optional key; without examples, :func:`section` gives it its default."""
    return Field(key, kind, doc, list(examples), **more)


def section(
    name: str, build: Callable[..., Any], *fields: Field, ref: str | None = None, model: Any = None
) -> Section:
    """An object. An optional key without examples takes the default of the dataclass
    (``model``, else ``build``) as default and example; with none, an example of its keys."""
    defaults = _defaults(model or build)
    filled = (f if f.examples else _default(f, defaults.get(f.key)) for f in fields)
    return Section(name, tuple(filled), build, ref)


def _defaults(model: Any) -> dict[str, Any]:
    """The defaults of the dataclass ``model`` as JSON values (none if it is no dataclass)."""
    values: dict[str, Any] = {}
    for each in dataclasses.fields(model) if dataclasses.is_dataclass(model) else ():
        value = each.default if each.default_factory is MISSING else each.default_factory()
        if isinstance(value, m.CronSchedule | m.KeepPolicy):
            value = str(value) if isinstance(value, m.CronSchedule) else dict(value.rules)
        values[each.name] = value
    return values


def _default(f: Field, default: Any) -> Field:
    if default is None or default is MISSING or default == ():
        return dataclasses.replace(f, examples=[example(f.kind)])
    return dataclasses.replace(f, default=default, examples=[default])


def _cron_pattern() -> str:
    """What a 5-field schedule looks like, with each field's range (names included)."""

    def value(low: int, high: int, names: tuple[str, ...]) -> str:
        numbers = "|".join(str(n) for n in range(high, low - 1, -1))
        spelled = "".join(f"|{''.join(f'[{c.upper()}{c}]' for c in name)}" for name in names)
        return f"(?:0*(?:{numbers}){spelled})"

    fields = []
    for _, low, high, names in m.CRON_FIELDS:
        one = value(low, high, names)
        step = "|".join(str(n) for n in range(high, 0, -1))
        item = rf"(?:\*|{one}(?:-{one})?)(?:/0*(?:{step}))?"
        fields.append(f"{item}(?:,{item})*")
    return r"^\s*" + r"\s+".join(fields) + r"\s*$"


_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IPV6 = r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%[^\s%\]]+)?"
_PORT = "0*(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_ANY_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PRINTABLE = r"[^\u0000-\u001F\u007F-\u009F\uD800-\uDFFF"
_HOST = rf"^(?:{_ANY_LABEL}(?:\.{_ANY_LABEL})*|{_IPV6})$"
_EXPANSION = {"not": {"pattern": m.GRAFANA_EXPANSION}}
_MYSQL_USER = {**m.MYSQL_USER.schema(), "not": {"pattern": "^[Rr][Oo][Oo][Tt]$"}}

STRING = Kind("string")
BOOL = Kind("boolean")
INT = Kind("integer")
POSITIVE = Kind("number", schema={"exclusiveMinimum": 0})
PERCENT = Kind("number", schema={"minimum": 0, "maximum": 100})
_NAME_SCHEMA = {"maxLength": m.ENV_NAME_MAX, **m.ENV_NAME.schema()}
NAME = Kind("string", m.parse_environment_name, _NAME_SCHEMA, "lowercase_dash_name")
SECRET = Kind(
    "string", m.Secret.parse, {"minLength": 1, "pattern": rf"^{_PRINTABLE}]*(?![\s\S])"}, "secret"
)


def text(parse: m.Pattern, ref: str | None = None, blank: bool = False) -> Kind:
    """A string checked by a :class:`~model.Pattern`, which gives the schema too."""
    return Kind("string", parse, parse.schema(), ref, blank)


KEY_PATH = text(m.parse_key_path, "key_path")
PORT = Kind("integer", None, {"minimum": 1, "maximum": 65535}, "port")
_BIND = rf"^(?:{_IPV4}|\[{_IPV4}\]|{_IPV6}|\[{_IPV6}\]):{_PORT}$"
BIND = Kind("string", m.BindAddress.parse, {"pattern": _BIND}, "bind_address")
DOMAIN = text(m.parse_domain, "domain")
EMAIL = text(m.parse_email, "email")
IMAGE = text(m.parse_image, "image")
BACKUP_IMAGE = Kind("string", m.parse_backup_image, m.parse_image.schema(), "image")
CRON = Kind("string", m.CronSchedule.parse, {"pattern": _cron_pattern()})
HETZNER = text(m.parse_hetzner_name, blank=True)
_SECRETS = {"patternProperties": {m.ENV_VAR.regex: {"$ref": "#/$defs/secret"}}}


def _string(parse: Callable[[str], Any], pattern: str, **schema: Any) -> Kind:
    return Kind("string", parse, {"pattern": pattern, **schema})


def _endpoint(name: str, what: str, protocol: str, bind: str, *more: Field) -> tuple[Field, ...]:
    where = f"IP:PORT of the host {what} is published on ({protocol}) unless proxied."
    if protocol == "udp":
        return (need("bind_address", BIND, where, bind),)
    return (
        need("bind_address", BIND, where, bind),
        opt(
            "domain",
            DOMAIN,
            f"Public DNS name of {what} (for use_tls_proxy).",
            f"{name}.example.com",
        ),
        opt("use_tls_proxy", BOOL, f"Serve {what} over HTTPS via Caddy (needs domain)."),
        *more,
    )


def _keep_rule(rule: str) -> Field:
    n = dict(m.DEFAULT_OFFSITE_KEEP).get(rule, 3)
    hint = f"how many {rule} snapshots to keep, e.g. {n}; leave the rule out instead of 0"
    doc = f"Keep the newest snapshot of the last N {rule} periods (--keep-{rule})."
    return opt(rule, INT, doc, n, schema={"minimum": 1, "maximum": m.MAX_KEEP}, hint=hint)


def _compression_limits(section: Mapping[str, Any]) -> tuple[int, int, str]:
    given = section.get("compression")
    name = given if isinstance(given, str) and given in m.COMPRESSIONS else m.DEFAULT_COMPRESSION
    low, high, default = m.COMPRESSIONS[name]
    return (
        low,
        high,
        f"{name} levels run from {low} (fastest) to {high} (smallest); default {default}",
    )


def _backup(**values: Any) -> m.BackupConfig:
    """The compression level's default depends on the compression."""
    level = m.COMPRESSIONS[values.get("compression", m.DEFAULT_COMPRESSION)][2]
    return m.BackupConfig(**{"compression_level": level, **values})


def _mailto(value: str) -> str:
    return m.parse_email_list(value) if value else value


def _range(low: float, high: float) -> dict[str, Any]:
    return {"minimum": low, "maximum": high}


_USER = text(m.parse_unix_user)
SSH = section(
    "ssh_credentials",
    m.SshCredentials,
    need(
        "private_key_path", KEY_PATH, "Private key on the deployer's machine.", "~/.ssh/id_ed25519"
    ),
    need("public_key_path", KEY_PATH, "Its public half (the .pub file).", "~/.ssh/id_ed25519.pub"),
    need("username", _USER, "Linux user the deployer logs in as (needs sudo).", "torrust"),
    opt("port", PORT, "SSH port of the host.", hint="use the SSH port, usually 22"),
    opt(
        "host",
        _string(m.parse_host, _HOST, maxLength=253),
        "The host's IP address or DNS name; --host overrides it.",
        "203.0.113.10",
        "tracker.example.com",
    ),
    opt(
        "known_hosts_path", KEY_PATH, "known_hosts file (~/.ssh/known_hosts).", "~/.ssh/known_hosts"
    ),
)
_IMAGE = text(m.parse_hetzner_image, blank=True)
PROVIDER = Union(
    "provider",
    {
        "lxd": section(
            "lxd",
            m.LxdProvider,
            need("profile_name", NAME, "Name of the LXD instance.", "torrust-prod"),
        ),
        "hetzner": section(
            "hetzner",
            m.HetznerProvider,
            need("api_token", SECRET, "Hetzner Cloud API token.", "hetzner-api-token"),
            need("server_type", HETZNER, "Hetzner server type.", "cx22", "cpx31"),
            need("location", HETZNER, "Hetzner location (data centre).", "nbg1", "fsn1"),
            opt("image", _IMAGE, "Operating system image."),
        ),
        "existing": section("existing", m.ExistingProvider),
    },
    "Kind of host: lxd (`inv provision` creates it), hetzner or existing (`inv register`).",
    "is not a known provider",
    'use "lxd", "hetzner" or "existing"',
    other_keys=True,
    missing_hint='add "provider": "lxd"',
)
_MYSQL_PORT = Kind("integer", m.parse_mysql_port, {**PORT.schema, "const": ports.MYSQL})
_MYSQL_HOST = Kind("string", m.parse_mysql_host, {"const": "mysql"})
_MYSQL_NAME = text(m.parse_mysql_identifier)
DATABASE = Union(
    "driver",
    {
        "sqlite3": section(
            "sqlite3",
            m.SqliteDatabase,
            need(
                "database_name",
                text(m.parse_sqlite_name),
                "SQLite file name.",
                "tracker.db",
            ),
        ),
        "mysql": section(
            "mysql",
            m.MysqlDatabase,
            need("host", _MYSQL_HOST, 'Always "mysql", the stack\'s service.', "mysql"),
            need(
                "port",
                _MYSQL_PORT,
                "Always the stack's MySQL port.",
                ports.MYSQL,
                hint=f"MySQL listens on {ports.MYSQL}",
            ),
            need("database_name", _MYSQL_NAME, "MySQL database name.", "torrust_tracker"),
            need(
                "username",
                Kind("string", m.parse_mysql_user, _MYSQL_USER),
                "The tracker's user (not root).",
                "tracker_user",
            ),
            need("password", SECRET, "Password of the tracker's MySQL user.", "tracker_password"),
        ),
    },
    '"sqlite3" (a file) or "mysql" (a mysql service; needs the `mysql` section).',
    "is not a supported database driver",
    'use "sqlite3" or "mysql"',
    other_keys=False,
    ref="database",
)
_UDP_FIELDS = _endpoint("udp", "the UDP tracker", "udp", "0.0.0.0:6969")
_HTTP_FIELDS = _endpoint("tracker", "the HTTP tracker", "tcp", "0.0.0.0:7070")
_TOKEN = need("admin_token", SECRET, "Token of the API's admin endpoints.", "MyAccessToken")
_API = section(
    "http_api",
    lambda admin_token, **endpoint: m.HttpApi(m.Endpoint(**endpoint), admin_token),
    *_endpoint("api", "the HTTP API", "tcp", "0.0.0.0:1212", _TOKEN),
    model=m.Endpoint,
)
_HEALTH_FIELDS = _endpoint("health", "the health check API", "tcp", "127.0.0.1:1313")
_ARRAY = 'use [{"bind_address": "0.0.0.0:6969"}]'
_CORE = section(
    "core",
    m.TrackerCore,
    opt("private", BOOL, "Private tracker mode (peers need a key)."),
    need("database", DATABASE, "Where the tracker keeps its data."),
)
TRACKER = section(
    "tracker",
    m.Tracker,
    need("core", _CORE, "Core tracker settings."),
    need(
        "udp_trackers",
        section("udp_tracker", m.Endpoint, *_UDP_FIELDS, ref="udp_tracker"),
        "UDP tracker sockets (may be empty).",
        array=True,
        hint=_ARRAY,
    ),
    need(
        "http_trackers",
        section("http_tracker", m.Endpoint, *_HTTP_FIELDS, ref="http_tracker"),
        "HTTP tracker sockets (may be empty).",
        array=True,
        hint=_ARRAY,
    ),
    need("http_api", _API, "The tracker's REST API."),
    need(
        "health_check_api",
        section("health", m.Endpoint, *_HEALTH_FIELDS),
        "The tracker's health check endpoint.",
    ),
)
_READ_DATA = m.DEFAULT_OFFSITE_CHECK_READ_DATA
_READ_HINT = (
    "the share of the repository's data each `restic check` reads, in percent "
    f"(0 = structure only, 100 = everything), e.g. {_READ_DATA:g}"
)
_KEEP = section(
    "keep",
    lambda **rules: m.KeepPolicy(
        tuple((rule, rules[rule]) for rule in m.KEEP_RULES if rule in rules)
    ),
    *(_keep_rule(rule) for rule in m.KEEP_RULES),
)
_REPOSITORY = _string(
    m.parse_restic_repository, "^(?:/|s3:|sftp:|rest:https?://)[!-~]*$", minLength=1
)
_PASSWORD = Kind("string", m.parse_offsite_password, ref="secret")
_KEYS = dict(zip(m.S3_KEYS, ("AKIAEXAMPLE", "secret"), strict=True))
OFFSITE = section(
    "offsite",
    m.OffsiteConfig,
    need(
        "repository",
        _REPOSITORY,
        "The restic repository: s3:, sftp:, rest: or an absolute path.",
        "/mnt/offsite/restic",
        "s3:https://s3.eu-central-1.amazonaws.com/tracker-backups/prod",
        "sftp:backup@backup.example.com:/srv/restic/tracker",
    ),
    need("password", _PASSWORD, "The repository's password; keep a copy.", "a long passphrase"),
    opt("env", Kind("map", schema=_SECRETS), "The backend's credentials (secrets).", _KEYS),
    opt("keep", _KEEP, "Which snapshots `restic forget` keeps.", schema={"minProperties": 1}),
    opt("check_schedule", CRON, "When `restic check` runs."),
    opt("check_read_data", PERCENT, "Percent of the data a check reads.", hint=_READ_HINT),
)
_LEVELS = "; ".join(
    f"{name} {low} to {high}, default {default}"
    for name, (low, high, default) in m.COMPRESSIONS.items()
)
_LEVEL_RANGE = _range(
    min(c[0] for c in m.COMPRESSIONS.values()), max(c[1] for c in m.COMPRESSIONS.values())
)
_COMPRESSION = Kind("string", m.parse_compression, {"enum": list(m.COMPRESSIONS)})
_BUDGET = m.DEFAULT_DOWNTIME_BUDGET_SECONDS
_BUDGET_HINT = (
    "the longest tracker downtime per backup run before BackupDowntimeOverBudget "
    f"fires, in seconds, e.g. {_BUDGET}"
)
_DOWNTIME = m.DEFAULT_MAX_DOWNTIME_SECONDS
_DOWNTIME_HINT = (
    "the longest the tracker may stay stopped for a snapshot, in seconds, "
    f"e.g. {_DOWNTIME} (the default)"
)
_RETENTION = m.DEFAULT_RETENTION_DAYS
_MAILTO = _string(_mailto, f"^$|{m.EMAIL_LIST}")
_URL = Kind("string", m.parse_http_url, m.HTTP_URL.schema())
BACKUP = section(
    "backup",
    _backup,
    opt("schedule", CRON, "When backups run (cron, host time)."),
    opt(
        "retention_days",
        INT,
        "Delete sets older than this many days.",
        schema=_range(1, m.MAX_RETENTION_DAYS),
        hint=f"keep backups for at least 1 day, e.g. {_RETENTION}",
    ),
    opt("compression", _COMPRESSION, "How a set's database file is compressed."),
    opt(
        "compression_level",
        INT,
        f"Compression level: {_LEVELS}.",
        *(c[2] for c in m.COMPRESSIONS.values()),
        schema=_LEVEL_RANGE,
        limits=_compression_limits,
    ),
    opt(
        "max_downtime_seconds",
        INT,
        "The longest the tracker may stay stopped for a snapshot (its stop + the snapshot until "
        "it is open), in seconds.",
        schema=_range(1, m.MAX_MAX_DOWNTIME_SECONDS),
        hint=_DOWNTIME_HINT,
    ),
    opt("mailto", _MAILTO, "Where cron mails a failed run's output."),
    opt("notify_url", _URL, "healthchecks.io-style ping URL.", "https://hc-ping.com/your-uuid"),
    opt("drill_schedule", CRON, "When the restore drill runs."),
    opt(
        "downtime_budget_seconds",
        POSITIVE,
        "Downtime per run that fires an alert, in seconds.",
        schema={"maximum": m.MAX_DOWNTIME_BUDGET_SECONDS},
        hint=_BUDGET_HINT,
    ),
    opt("offsite", OFFSITE, "Off-host, encrypted copies (restic)."),
    model=m.BackupConfig,
)
IMAGES = section(
    "images",
    m.Images,
    *(
        opt(key, BACKUP_IMAGE if key == "backup" else IMAGE, f"Image of the {key} service.")
        for key in m.DEFAULT_IMAGES
    ),
)
_GRAFANA_USER = Kind(
    "string",
    m.parse_grafana_user,
    {"minLength": 1, "pattern": rf"^(?=[\s\S]*\S){_PRINTABLE}\u2028\u2029]+$", **_EXPANSION},
    blank=True,
)
_GRAFANA_PASSWORD = Kind("string", m.parse_grafana_password, ref="secret")
GRAFANA = section(
    "grafana",
    m.Grafana,
    need("admin_user", _GRAFANA_USER, "Grafana admin login.", "admin"),
    need(
        "admin_password",
        _GRAFANA_PASSWORD,
        "Grafana admin password.",
        "s3cret pass",
        schema=_EXPANSION,
    ),
    *_endpoint("grafana", "the Grafana UI", "tcp", "")[1:],
)
HTTPS = section(
    "https",
    m.Https,
    need("admin_email", EMAIL, "Contact address for Let's Encrypt.", "admin@example.com"),
    opt("use_staging", BOOL, "Use Let's Encrypt's staging CA while testing."),
)
_SCRAPE_HINT = (
    f"use a number of seconds from 1 to 3600, e.g. {m.Prometheus().scrape_interval_in_secs}"
)
_SCRAPE = opt(
    "scrape_interval_in_secs",
    INT,
    "Seconds between scrapes.",
    schema=_range(1, 3600),
    hint=_SCRAPE_HINT,
)
_MYSQL = section(
    "mysql", m.MysqlServer, need("root_password", SECRET, "MySQL root password.", "root_secret")
)
_ENVIRONMENT = section(
    "environment", dict, need("name", NAME, "The environment's name (build/NAME).", "tracker-prod")
)
_SCHEMA_HINT = "point it at schemas/environment-config.json"
ENV = section(
    "",
    dict,
    opt(
        "$schema",
        STRING,
        "The schema, for editors (ignored).",
        "../schemas/environment-config.json",
        hint=_SCHEMA_HINT,
    ),
    need("environment", _ENVIRONMENT, "Identity of this environment."),
    need("ssh_credentials", SSH, "How the deployer logs in over SSH."),
    need("provider", PROVIDER, "Where the host comes from."),
    need("tracker", TRACKER, "The tracker: its database and sockets."),
    opt("mysql", _MYSQL, "The stack's MySQL server (with the mysql driver)."),
    opt("prometheus", section("prometheus", m.Prometheus, _SCRAPE), "Run Prometheus."),
    opt("grafana", GRAFANA, "Run Grafana (needs prometheus)."),
    opt("https", HTTPS, "Run Caddy as TLS proxy (when a service uses it)."),
    opt("backup", BACKUP, "Scheduled backups; `{}` = all defaults."),
    opt(
        "images",
        IMAGES,
        "Per-service Docker image overrides.",
        {"tracker": "torrust/tracker:develop"},
    ),
)
