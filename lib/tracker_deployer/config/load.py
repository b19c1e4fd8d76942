"""Parse an environment config (JSON) into an :class:`Env`.

This is the only module that sees the raw JSON. It reports every problem at
once, each with its JSON path and a hint (borgmatic's style), and refuses
unknown keys with a did-you-mean suggestion.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tracker_deployer.config.model import (
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
    KEEP_RULES,
    MAX_DOWNTIME_BUDGET_SECONDS,
    MAX_KEEP,
    MAX_MAX_DOWNTIME_SECONDS,
    BackupConfig,
    BindAddress,
    CronSchedule,
    Database,
    Endpoint,
    Env,
    ExistingProvider,
    Grafana,
    HetznerProvider,
    HttpApi,
    Https,
    Images,
    InvalidValue,
    KeepPolicy,
    LxdProvider,
    MysqlDatabase,
    MysqlServer,
    OffsiteConfig,
    Prometheus,
    Protocol,
    Provider,
    Secret,
    SqliteDatabase,
    SshCredentials,
    Tracker,
    TrackerCore,
    parse_domain,
    parse_email,
    parse_email_list,
    parse_environment_name,
    parse_hetzner_image,
    parse_hetzner_name,
    parse_host,
    parse_http_url,
    parse_image,
    parse_key_path,
    parse_offsite_env_name,
    parse_offsite_password,
    parse_restic_repository,
    parse_unix_user,
    repository_kind,
)
from tracker_deployer.errors import ConfigError, ConfigIssue

T = TypeVar("T")

MAX_RETENTION_DAYS = 3650


def env_path(name_or_path: str, envs_dir: Path) -> Path:
    """``NAME`` means ``envs/NAME.json``; anything with a slash or ``.json`` is a path."""
    if "/" in name_or_path or name_or_path.endswith(".json"):
        return Path(name_or_path)
    return envs_dir / f"{name_or_path}.json"


def load_env(path: Path, *, display: str | None = None) -> Env:
    """Read and parse ``path``; raise :class:`ConfigError` listing every problem."""
    source = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            source,
            [ConfigIssue("", "file not found", "pass --env NAME for envs/NAME.json, or a path")],
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(source, [ConfigIssue("", f"cannot read the file ({error})")]) from None
    return parse_env_text(text, source=source, path=path)


def parse_env_text(text: str, *, source: str, path: Path | None = None) -> Env:
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as error:
        raise ConfigError(
            source,
            [ConfigIssue("", f"key {error.key!r} appears twice", "keep only one of them")],
        ) from None
    except json.JSONDecodeError as error:
        raise ConfigError(
            source,
            [
                ConfigIssue(
                    "",
                    f"not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})",
                    "check for a missing comma or quote near that spot",
                )
            ],
        ) from None
    return parse_env(data, source=source, path=path or Path(source))


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def parse_env(data: object, *, source: str, path: Path) -> Env:
    """Parse already-decoded JSON; raise :class:`ConfigError` with every issue."""
    reader = _Reader()
    # A lone surrogate (a "\\uD800" escape without its pair) is no character: no
    # file can hold it, and rendering would crash. Reported once, at its path.
    unencodable = list(_lone_surrogates(data, ""))
    env = reader.env(data, path)
    if unencodable:
        where = {issue.path for issue in unencodable}
        unencodable += [issue for issue in reader.issues if issue.path not in where]
        raise ConfigError(source, unencodable)
    if reader.issues or env is None:
        raise ConfigError(source, reader.issues or [ConfigIssue("", "invalid config")])
    return env


def _lone_surrogates(data: object, path: str) -> Iterator[ConfigIssue]:
    """An issue for every key or string value that holds a lone surrogate."""
    hint = (
        "JSON escapes \\uD800-\\uDFFF only come in pairs (one character); "
        "write the character itself in UTF-8 instead"
    )

    def first(text: str) -> str | None:
        return next((f"U+{ord(c):04X}" for c in text if "\ud800" <= c <= "\udfff"), None)

    if isinstance(data, str):
        if (code := first(data)) is not None:
            yield ConfigIssue(
                path, f"contains a lone surrogate {code}, which is no character", hint
            )
    elif isinstance(data, list):
        for index, item in enumerate(data):
            yield from _lone_surrogates(item, f"{path}[{index}]")
    elif isinstance(data, dict):
        for key, value in data.items():
            where = _join(path, key)
            if (code := first(key)) is not None:
                yield ConfigIssue(where, f"the key holds a lone surrogate {code}", hint)
            else:
                yield from _lone_surrogates(value, where)


# --------------------------------------------------------------------------- the reader


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(slots=True)
class _TrackerParts:
    """What parsed of the tracker section, for checks across sections.

    Kept apart from :class:`Tracker` so that one broken field (say the database)
    does not hide port or TLS problems elsewhere: every error is reported at once.
    """

    database: Database | None = None
    driver: str | None = None  # as written, even when the database section is broken
    udp_trackers: tuple[Endpoint, ...] = ()
    http_trackers: tuple[Endpoint, ...] = ()
    http_api: Endpoint | None = None
    health_check_api: Endpoint | None = None


class _Reader:
    """Walks the JSON, collecting :class:`ConfigIssue` instead of stopping."""

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []
        self.parts = _TrackerParts()

    def error(self, path: str, message: str, hint: str | None = None) -> None:
        self.issues.append(ConfigIssue(path, message, hint))

    # -- structure -------------------------------------------------------------

    def obj(
        self, value: object, path: str, required: tuple[str, ...], optional: tuple[str, ...]
    ) -> Mapping[str, Any] | None:
        """Check ``value`` is an object with these keys (and no others)."""
        if not isinstance(value, dict):
            self.error(path, f"must be an object, not {_type_name(value)}", "use { ... }")
            return None
        known = required + optional
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else (f"allowed keys here: {', '.join(known)}" if known else "remove it")
                )
                self.error(_join(path, key), "unknown key", hint)
        for key in required:
            if key not in value:
                self.error(_join(path, key), "is required but missing", f'add "{key}"')
        return value

    def str_(self, parent: Mapping[str, Any], key: str, path: str) -> str | None:
        value = parent.get(key)
        where = _join(path, key)
        if key not in parent:
            return None
        if not isinstance(value, str):
            self.error(where, f"must be a string, not {_type_name(value)}", 'use "..."')
            return None
        return value

    def hetzner(
        self, parent: Mapping[str, Any], key: str, path: str, parser: Callable[[str], str]
    ) -> str | None:
        """A Hetzner name: not blank ("must not be empty"), then well-formed."""
        if key in parent and isinstance(parent[key], str) and parent[key].strip() == "":
            self.error(_join(path, key), "must not be empty")
            return None
        return self.typed(parent, key, path, parser)

    def nonempty_str(self, parent: Mapping[str, Any], key: str, path: str) -> str | None:
        value = self.str_(parent, key, path)
        if value is not None and value.strip() == "":
            self.error(_join(path, key), "must not be empty")
            return None
        return value

    def typed(
        self,
        parent: Mapping[str, Any],
        key: str,
        path: str,
        parser: Callable[[str], T],
    ) -> T | None:
        text = self.str_(parent, key, path)
        if text is None:
            return None
        return self.apply(_join(path, key), text, parser)

    def apply(self, where: str, value: Any, parser: Callable[[Any], T]) -> T | None:
        try:
            return parser(value)
        except InvalidValue as error:
            self.error(where, error.message, error.hint)
            return None

    def int_(
        self, parent: Mapping[str, Any], key: str, path: str, low: int, high: int, hint: str
    ) -> int | None:
        if key not in parent:
            return None
        value = parent[key]
        where = _join(path, key)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                self.error(
                    where,
                    f"{_show(value)} is not an integer",
                    f"write it without a decimal point: {hint}",
                )
            else:
                self.error(
                    where, f"must be an integer, not {_type_name(value)} ({_show(value)})", hint
                )
            return None
        if value < low:
            self.error(where, f"{value} is less than the minimum of {low}", hint)
            return None
        if value > high:
            self.error(where, f"{value} is more than the maximum of {high}", hint)
            return None
        return value

    def positive_number(
        self, parent: Mapping[str, Any], key: str, path: str, high: float, hint: str
    ) -> float | None:
        """A number (integer or decimal) above 0 and at most ``high``."""
        if key not in parent:
            return None
        value = parent[key]
        where = _join(path, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(where, f"must be a number, not {_type_name(value)} ({_show(value)})", hint)
            return None
        if not math.isfinite(value) or value <= 0:
            self.error(where, f"{_show(value)} is not a positive number", hint)
            return None
        if value > high:
            self.error(where, f"{_show(value)} is more than the maximum of {_show(high)}", hint)
            return None
        return value

    def bool_(self, parent: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        if key not in parent:
            return default
        value = parent[key]
        if not isinstance(value, bool):
            self.error(
                _join(path, key),
                f"must be true or false, not {_type_name(value)}",
                "use true or false without quotes",
            )
            return default
        return value

    def secret(self, parent: Mapping[str, Any], key: str, path: str) -> Secret | None:
        value = self.str_(parent, key, path)
        if value is None:
            return None
        return self.apply(_join(path, key), value, Secret.parse)

    # -- sections --------------------------------------------------------------

    def env(self, data: object, path: Path) -> Env | None:
        top = self.obj(
            data,
            "",
            required=("environment", "ssh_credentials", "provider", "tracker"),
            optional=("$schema", "mysql", "prometheus", "grafana", "https", "backup", "images"),
        )
        if top is None:
            return None
        if "$schema" in top and not isinstance(top["$schema"], str):
            self.error("$schema", "must be a string", "point it at schemas/environment-config.json")
        name = self.environment(top.get("environment")) if "environment" in top else None
        ssh = self.ssh(top["ssh_credentials"]) if "ssh_credentials" in top else None
        provider = self.provider(top["provider"]) if "provider" in top else None
        tracker = self.tracker(top["tracker"]) if "tracker" in top else None
        mysql = self.mysql(top["mysql"]) if "mysql" in top else None
        prometheus = self.prometheus(top["prometheus"]) if "prometheus" in top else None
        grafana = self.grafana(top["grafana"]) if "grafana" in top else None
        https = self.https(top["https"]) if "https" in top else None
        backup = self.backup(top["backup"]) if "backup" in top else None
        images = self.images(top["images"]) if "images" in top else Images()

        if "tracker" in top:
            self.cross_checks(top, grafana)
        optional_sections = {
            "mysql": mysql,
            "prometheus": prometheus,
            "grafana": grafana,
            "https": https,
            "backup": backup,
        }
        broken = any(key in top and parsed is None for key, parsed in optional_sections.items())
        if self.issues or broken:
            return None
        if name is None or ssh is None or provider is None or tracker is None or images is None:
            return None
        return Env(
            name=name,
            source=path,
            ssh=ssh,
            provider=provider,
            tracker=tracker,
            mysql=mysql,
            prometheus=prometheus,
            grafana=grafana,
            https=https,
            backup=backup,
            images=images,
        )

    def environment(self, value: object) -> str | None:
        section = self.obj(value, "environment", required=("name",), optional=())
        if section is None:
            return None
        return self.typed(section, "name", "environment", parse_environment_name)

    def ssh(self, value: object) -> SshCredentials | None:
        path = "ssh_credentials"
        section = self.obj(
            value,
            path,
            required=("private_key_path", "public_key_path", "username"),
            optional=("port", "host", "known_hosts_path"),
        )
        if section is None:
            return None
        private = self.typed(section, "private_key_path", path, parse_key_path)
        public = self.typed(section, "public_key_path", path, parse_key_path)
        username = self.typed(section, "username", path, parse_unix_user)
        port = self.int_(section, "port", path, 1, 65535, "use the SSH port, usually 22")
        host = self.typed(section, "host", path, parse_host)
        known_hosts = self.typed(section, "known_hosts_path", path, parse_key_path)
        if None in (private, public, username) or ("port" in section and port is None):
            return None
        if ("host" in section and host is None) or (
            "known_hosts_path" in section and known_hosts is None
        ):
            return None
        assert private is not None
        assert public is not None
        assert username is not None
        if private == public:
            self.error(
                _join(path, "public_key_path"),
                "is the same file as private_key_path",
                "point it at the .pub file of the key pair",
            )
            return None
        return SshCredentials(
            private, public, username, port if port is not None else 22, host, known_hosts
        )

    def provider(self, value: object) -> Provider | None:
        path = "provider"
        if not isinstance(value, dict):
            self.obj(value, path, required=("provider",), optional=())
            return None
        kind = value.get("provider")
        if kind == "lxd":
            section = self.obj(value, path, required=("provider", "profile_name"), optional=())
            if section is None:
                return None
            profile = self.typed(section, "profile_name", path, parse_environment_name)
            return LxdProvider(profile) if profile is not None else None
        if kind == "hetzner":
            section = self.obj(
                value,
                path,
                required=("provider", "api_token", "server_type", "location"),
                optional=("image",),
            )
            if section is None:
                return None
            token = self.secret(section, "api_token", path)
            server_type = self.hetzner(section, "server_type", path, parse_hetzner_name)
            location = self.hetzner(section, "location", path, parse_hetzner_name)
            image = self.hetzner(section, "image", path, parse_hetzner_image)
            if token is None or server_type is None or location is None:
                return None
            if "image" in section and image is None:
                return None
            if image is None:
                return HetznerProvider(token, server_type, location)
            return HetznerProvider(token, server_type, location, image)
        if kind == "existing":
            section = self.obj(value, path, required=("provider",), optional=())
            return ExistingProvider() if section is not None else None
        # Unknown or missing kind: still report keys no provider knows.
        self.obj(
            {k: v for k, v in value.items() if k != "provider"},
            path,
            required=(),
            optional=("profile_name", "api_token", "server_type", "location", "image"),
        )
        if "provider" not in value:
            self.error(_join(path, "provider"), "is required but missing", 'add "provider": "lxd"')
        else:
            self.error(
                _join(path, "provider"),
                f"{_show(kind)} is not a known provider",
                'use "lxd", "hetzner" or "existing"',
            )
        return None

    def endpoint(
        self,
        value: object,
        path: str,
        *,
        required: tuple[str, ...] = ("bind_address",),
        extra: tuple[str, ...] = (),
        tls: bool = True,
    ) -> tuple[Endpoint | None, Mapping[str, Any] | None]:
        optional = (("domain", "use_tls_proxy") if tls else ()) + extra
        section = self.obj(value, path, required=required, optional=optional)
        if section is None:
            return None, None
        bind = self.typed(section, "bind_address", path, BindAddress.parse)
        domain = self.typed(section, "domain", path, parse_domain)
        use_tls = self.bool_(section, "use_tls_proxy", path, False)
        if bind is None or ("domain" in section and domain is None):
            return None, section
        return Endpoint(bind, domain, use_tls), section

    def tracker(self, value: object) -> Tracker | None:
        path = "tracker"
        section = self.obj(
            value,
            path,
            required=("core", "udp_trackers", "http_trackers", "http_api", "health_check_api"),
            optional=(),
        )
        if section is None:
            return None
        core = self.core(section["core"]) if "core" in section else None
        self.parts.database = core.database if core is not None else None
        udp = self.endpoint_list(section, "udp_trackers", tls=False)
        http = self.endpoint_list(section, "http_trackers", tls=True)
        api: HttpApi | None = None
        if "http_api" in section:
            endpoint, api_section = self.endpoint(
                section["http_api"], "tracker.http_api", required=("bind_address", "admin_token")
            )
            token = (
                self.secret(api_section, "admin_token", "tracker.http_api") if api_section else None
            )
            if endpoint is not None and token is not None:
                api = HttpApi(endpoint, token)
        health = None
        if "health_check_api" in section:
            health, _ = self.endpoint(section["health_check_api"], "tracker.health_check_api")
        if udp == () and http == ():
            self.error(
                "tracker",
                "has no UDP and no HTTP tracker: it would serve nothing",
                'add e.g. "udp_trackers": [{"bind_address": "0.0.0.0:6969"}]',
            )
        self.parts.udp_trackers = udp or ()
        self.parts.http_trackers = http or ()
        self.parts.http_api = api.endpoint if api is not None else None
        self.parts.health_check_api = health
        if core is None or udp is None or http is None or api is None or health is None:
            return None
        return Tracker(core, udp, http, api, health)

    def endpoint_list(
        self, section: Mapping[str, Any], key: str, *, tls: bool
    ) -> tuple[Endpoint, ...] | None:
        path = _join("tracker", key)
        if key not in section:
            return None
        items = section[key]
        if not isinstance(items, list):
            self.error(
                path,
                f"must be an array, not {_type_name(items)}",
                'use [{"bind_address": "0.0.0.0:6969"}]',
            )
            return None
        result: list[Endpoint] = []
        ok = True
        for index, item in enumerate(items):
            endpoint, _ = self.endpoint(item, f"{path}[{index}]", tls=tls)
            if endpoint is None:
                ok = False
            else:
                result.append(endpoint)
        return tuple(result) if ok else None

    def core(self, value: object) -> TrackerCore | None:
        path = "tracker.core"
        section = self.obj(value, path, required=("database",), optional=("private",))
        if section is None:
            return None
        private = self.bool_(section, "private", path, False)
        database = self.database(section["database"]) if "database" in section else None
        return TrackerCore(database, private) if database is not None else None

    def database(self, value: object) -> Database | None:
        path = "tracker.core.database"
        if not isinstance(value, dict):
            self.obj(value, path, required=("driver",), optional=())
            return None
        driver = value.get("driver")
        self.parts.driver = driver if isinstance(driver, str) else None
        if driver == "sqlite3":
            section = self.obj(value, path, required=("driver", "database_name"), optional=())
            if section is None:
                return None
            name = self.typed(section, "database_name", path, _parse_sqlite_name)
            return SqliteDatabase(name) if name is not None else None
        if driver == "mysql":
            section = self.obj(
                value,
                path,
                required=("driver", "host", "port", "database_name", "username", "password"),
                optional=(),
            )
            if section is None:
                return None
            host = self.typed(section, "host", path, _parse_mysql_host)
            port = self.int_(section, "port", path, 1, 65535, "MySQL listens on 3306")
            name = self.typed(section, "database_name", path, _parse_mysql_identifier)
            user = self.typed(section, "username", path, _parse_mysql_user)
            password = self.secret(section, "password", path)
            if host is None or port is None or name is None or user is None or password is None:
                return None
            if port != 3306:
                self.error(
                    _join(path, "port"),
                    f"{port} is not the port of the stack's MySQL service",
                    "the deployer runs MySQL itself on 3306; use 3306",
                )
                return None
            return MysqlDatabase(host, port, name, user, password)
        if "driver" not in value:
            self.error(_join(path, "driver"), "is required but missing", 'use "sqlite3" or "mysql"')
        else:
            self.error(
                _join(path, "driver"),
                f"{_show(driver)} is not a supported database driver",
                'use "sqlite3" or "mysql"',
            )
        return None

    def mysql(self, value: object) -> MysqlServer | None:
        section = self.obj(value, "mysql", required=("root_password",), optional=())
        if section is None:
            return None
        password = self.secret(section, "root_password", "mysql")
        return MysqlServer(password) if password is not None else None

    def prometheus(self, value: object) -> Prometheus | None:
        section = self.obj(value, "prometheus", required=(), optional=("scrape_interval_in_secs",))
        if section is None:
            return None
        interval = self.int_(
            section,
            "scrape_interval_in_secs",
            "prometheus",
            1,
            3600,
            "use a number of seconds from 1 to 3600, e.g. 15",
        )
        if "scrape_interval_in_secs" in section and interval is None:
            return None
        return Prometheus(interval if interval is not None else 15)

    def grafana(self, value: object) -> Grafana | None:
        path = "grafana"
        section = self.obj(
            value,
            path,
            required=("admin_user", "admin_password"),
            optional=("domain", "use_tls_proxy"),
        )
        if section is None:
            return None
        user = self.nonempty_str(section, "admin_user", path)
        password = self.secret(section, "admin_password", path)
        domain = self.typed(section, "domain", path, parse_domain)
        use_tls = self.bool_(section, "use_tls_proxy", path, False)
        if user is not None:
            user = self.apply(_join(path, "admin_user"), user, _parse_plain_name)
        if user is not None:
            user = self.apply(_join(path, "admin_user"), user, _refuse_grafana_expansion)
        if password is not None:
            where = _join(path, "admin_password")
            if self.apply(where, password.reveal(), _refuse_grafana_expansion) is None:
                password = None
        if user is None or password is None or ("domain" in section and domain is None):
            return None
        return Grafana(user, password, domain, use_tls)

    def https(self, value: object) -> Https | None:
        section = self.obj(value, "https", required=("admin_email",), optional=("use_staging",))
        if section is None:
            return None
        email = self.typed(section, "admin_email", "https", parse_email)
        staging = self.bool_(section, "use_staging", "https", False)
        return Https(email, staging) if email is not None else None

    def backup(self, value: object) -> BackupConfig | None:
        path = "backup"
        section = self.obj(
            value,
            path,
            required=(),
            optional=(
                "schedule",
                "retention_days",
                "compression",
                "compression_level",
                "max_downtime_seconds",
                "mailto",
                "notify_url",
                "drill_schedule",
                "downtime_budget_seconds",
                "offsite",
            ),
        )
        if section is None:
            return None
        schedule = self.typed(section, "schedule", path, CronSchedule.parse)
        retention = self.int_(
            section,
            "retention_days",
            path,
            1,
            MAX_RETENTION_DAYS,
            f"keep backups for at least 1 day, e.g. {DEFAULT_RETENTION_DAYS}",
        )
        compression = self.str_(section, "compression", path)
        if compression is not None and compression not in COMPRESSIONS:
            self.error(
                _join(path, "compression"),
                f"{_show(compression)} is not a compression this deployer knows",
                f"use one of {', '.join(repr(name) for name in COMPRESSIONS)}; "
                f"default {DEFAULT_COMPRESSION!r}",
            )
            compression = None
        algorithm = compression or DEFAULT_COMPRESSION
        lowest, highest, default_level = COMPRESSIONS[algorithm]
        level = self.int_(
            section,
            "compression_level",
            path,
            lowest,
            highest,
            f"{algorithm} levels run from {lowest} (fastest) to {highest} (smallest); "
            f"default {default_level}",
        )
        downtime = self.int_(
            section,
            "max_downtime_seconds",
            path,
            1,
            MAX_MAX_DOWNTIME_SECONDS,
            "the longest the tracker may stay stopped for a snapshot, in seconds, "
            f"e.g. {DEFAULT_MAX_DOWNTIME_SECONDS} (the default)",
        )
        mailto = self.str_(section, "mailto", path)
        if mailto:
            mailto = self.apply(_join(path, "mailto"), mailto, parse_email_list)
        notify = self.typed(section, "notify_url", path, parse_http_url)
        drill_schedule = self.typed(section, "drill_schedule", path, CronSchedule.parse)
        budget = self.positive_number(
            section,
            "downtime_budget_seconds",
            path,
            MAX_DOWNTIME_BUDGET_SECONDS,
            "the longest tracker downtime per backup run before BackupDowntimeOverBudget "
            f"fires, in seconds, e.g. {DEFAULT_DOWNTIME_BUDGET_SECONDS}",
        )
        offsite = self.offsite(section["offsite"]) if "offsite" in section else None
        failed = [
            key
            for key, parsed in (
                ("schedule", schedule),
                ("retention_days", retention),
                ("compression", compression),
                ("compression_level", level),
                ("max_downtime_seconds", downtime),
                ("mailto", mailto),
                ("notify_url", notify),
                ("drill_schedule", drill_schedule),
                ("downtime_budget_seconds", budget),
                ("offsite", offsite),
            )
            if key in section and parsed is None
        ]
        if failed:
            return None
        return BackupConfig(
            schedule=schedule or CronSchedule(DEFAULT_SCHEDULE),
            retention_days=retention if retention is not None else DEFAULT_RETENTION_DAYS,
            compression=algorithm,
            compression_level=level if level is not None else default_level,
            max_downtime_seconds=(
                downtime if downtime is not None else DEFAULT_MAX_DOWNTIME_SECONDS
            ),
            mailto=mailto or "",
            notify_url=notify,
            drill_schedule=drill_schedule or CronSchedule(DEFAULT_DRILL_SCHEDULE),
            downtime_budget_seconds=(
                budget if budget is not None else DEFAULT_DOWNTIME_BUDGET_SECONDS
            ),
            offsite=offsite,
        )

    def offsite(self, value: object) -> OffsiteConfig | None:
        """``backup.offsite``: the restic repository that gets a copy of every set."""
        path = "backup.offsite"
        section = self.obj(
            value,
            path,
            required=("repository", "password"),
            optional=("env", "keep", "check_schedule", "check_read_data"),
        )
        if section is None:
            return None
        repository = self.typed(section, "repository", path, parse_restic_repository)
        password = self.typed(section, "password", path, parse_offsite_password)
        env = self.offsite_env(section["env"], repository) if "env" in section else ()
        if "env" not in section and repository and repository_kind(repository) == "s3":
            self.error(
                _join(path, "env"),
                "is required for an s3: repository",
                'add "env": {"AWS_ACCESS_KEY_ID": "...", "AWS_SECRET_ACCESS_KEY": "..."}',
            )
            env = None
        keep = self.keep(section["keep"]) if "keep" in section else KeepPolicy(DEFAULT_OFFSITE_KEEP)
        check_schedule = self.typed(section, "check_schedule", path, CronSchedule.parse)
        read_data = self.percentage(
            section,
            "check_read_data",
            path,
            "the share of the repository's data each `restic check` reads, in percent "
            f"(0 = structure only, 100 = everything), e.g. {DEFAULT_OFFSITE_CHECK_READ_DATA:g}",
        )
        if (
            repository is None
            or password is None
            or env is None
            or keep is None
            or ("check_schedule" in section and check_schedule is None)
            or ("check_read_data" in section and read_data is None)
        ):
            return None
        return OffsiteConfig(
            repository=repository,
            password=password,
            env=env,
            keep=keep,
            check_schedule=check_schedule or CronSchedule(DEFAULT_OFFSITE_CHECK_SCHEDULE),
            check_read_data=(
                read_data if read_data is not None else DEFAULT_OFFSITE_CHECK_READ_DATA
            ),
        )

    def offsite_env(
        self, value: object, repository: str | None
    ) -> tuple[tuple[str, Secret], ...] | None:
        path = "backup.offsite.env"
        if not isinstance(value, dict):
            self.error(
                path,
                f"must be an object, not {_type_name(value)}",
                'use {"AWS_ACCESS_KEY_ID": "...", "AWS_SECRET_ACCESS_KEY": "..."}',
            )
            return None
        pairs: list[tuple[str, Secret]] = []
        ok = True
        for name in value:
            where = _join(path, name)
            checked = self.apply(where, name, parse_offsite_env_name)
            secret = self.secret(value, name, path)
            if checked is None or secret is None:
                ok = False
            else:
                pairs.append((checked, secret))
        if repository and repository_kind(repository) == "s3":
            for needed in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                if needed not in value:
                    self.error(
                        _join(path, needed),
                        "is required for an s3: repository",
                        "add the access key of a key that may read and write the bucket",
                    )
                    ok = False
        return tuple(sorted(pairs)) if ok else None

    def keep(self, value: object) -> KeepPolicy | None:
        path = "backup.offsite.keep"
        section = self.obj(value, path, required=(), optional=KEEP_RULES)
        if section is None:
            return None
        if not section:
            self.error(
                path,
                "is empty: restic refuses to forget with no policy (it would keep nothing)",
                'keep at least one rule, e.g. {"daily": 7, "weekly": 4, "monthly": 12}',
            )
            return None
        rules: list[tuple[str, int]] = []
        ok = True
        for rule in KEEP_RULES:
            count = self.int_(
                section,
                rule,
                path,
                1,
                MAX_KEEP,
                f"how many {rule} snapshots to keep, e.g. "
                f"{dict(DEFAULT_OFFSITE_KEEP).get(rule, 3)}; leave the rule out instead of 0",
            )
            if rule in section and count is None:
                ok = False
            elif count is not None:
                rules.append((rule, count))
        return KeepPolicy(tuple(rules)) if ok else None

    def percentage(self, parent: Mapping[str, Any], key: str, path: str, hint: str) -> float | None:
        """A number from 0 to 100."""
        if key not in parent:
            return None
        value = parent[key]
        where = _join(path, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(where, f"must be a number, not {_type_name(value)} ({_show(value)})", hint)
            return None
        if not math.isfinite(value) or not 0 <= value <= 100:
            self.error(where, f"{_show(value)} is not a percentage from 0 to 100", hint)
            return None
        return float(value)

    def images(self, value: object) -> Images | None:
        keys = tuple(DEFAULT_IMAGES)
        section = self.obj(value, "images", required=(), optional=keys)
        if section is None:
            return None
        chosen = dict(DEFAULT_IMAGES)
        ok = True
        for key in keys:
            if key in section:
                image = self.typed(section, key, "images", parse_image)
                if image is None:
                    ok = False
                else:
                    chosen[key] = image
        return Images(**chosen) if ok else None

    # -- rules across sections -------------------------------------------------

    def cross_checks(
        self,
        top: Mapping[str, Any],
        grafana: Grafana | None,
    ) -> None:
        parts = self.parts
        if parts.driver == "mysql" and "mysql" not in top:
            self.error(
                "mysql",
                'is required when tracker.core.database.driver is "mysql"',
                'add "mysql": {"root_password": "..."}',
            )
        if parts.driver == "sqlite3" and "mysql" in top:
            self.error(
                "mysql",
                "is given but the tracker uses SQLite",
                'remove the "mysql" section, or set tracker.core.database.driver to "mysql"',
            )
        if "grafana" in top and "prometheus" not in top:
            self.error(
                "grafana",
                "needs prometheus, which is not configured",
                'add "prometheus": {"scrape_interval_in_secs": 15} or remove "grafana"',
            )
        tls_services = list(self.tls_services(parts, grafana))
        for where, endpoint_domain, use_tls in tls_services:
            if use_tls and endpoint_domain is None:
                self.error(
                    _join(where, "use_tls_proxy"),
                    "is true but the service has no domain",
                    f'add "domain" to {where}, e.g. "tracker.example.com"',
                )
        any_tls = any(use_tls for _, _, use_tls in tls_services)
        if any_tls and "https" not in top:
            first = next(where for where, _, use_tls in tls_services if use_tls)
            self.error(
                "https",
                f"is required because {first} uses the TLS proxy",
                'add "https": {"admin_email": "admin@example.com"}',
            )
        if "https" in top and not any_tls:
            self.error(
                "https",
                "is given but no service uses the TLS proxy",
                'set "use_tls_proxy": true (with a "domain") on a service, or remove "https"',
            )
        self.port_conflicts(parts, grafana, "prometheus" in top, "https" in top)

    @staticmethod
    def tls_services(
        parts: _TrackerParts, grafana: Grafana | None
    ) -> Iterator[tuple[str, str | None, bool]]:
        for index, endpoint in enumerate(parts.http_trackers):
            yield f"tracker.http_trackers[{index}]", endpoint.domain, endpoint.use_tls_proxy
        for where, single in (
            ("tracker.http_api", parts.http_api),
            ("tracker.health_check_api", parts.health_check_api),
        ):
            if single is not None:
                yield where, single.domain, single.use_tls_proxy
        if grafana is not None:
            yield "grafana", grafana.domain, grafana.use_tls_proxy

    def port_conflicts(
        self, parts: _TrackerParts, grafana: Grafana | None, prometheus: bool, https: bool
    ) -> None:
        """Two tracker sockets on one port/protocol, or two services on one host port."""
        binds: list[tuple[str, Endpoint, Protocol]] = [
            (f"tracker.udp_trackers[{i}]", e, Protocol.UDP)
            for i, e in enumerate(parts.udp_trackers)
        ]
        binds += [
            (f"tracker.http_trackers[{i}]", e, Protocol.TCP)
            for i, e in enumerate(parts.http_trackers)
        ]
        for where, single in (
            ("tracker.http_api", parts.http_api),
            ("tracker.health_check_api", parts.health_check_api),
        ):
            if single is not None:
                binds.append((where, single, Protocol.TCP))
        # Inside the tracker container every socket needs its own port.
        seen: dict[tuple[int, Protocol], str] = {}
        for where, endpoint, protocol in binds:
            key = (endpoint.bind_address.port, protocol)
            if key in seen:
                self.error(
                    _join(where, "bind_address"),
                    f"port {key[0]}/{protocol.value} is already used by {seen[key]}",
                    "give each tracker service its own port",
                )
            else:
                seen[key] = where
        # On the host, published tracker ports must not collide with the other services.
        reserved: list[tuple[str, int, Protocol]] = []
        if prometheus:
            reserved.append(("prometheus (127.0.0.1:9090)", 9090, Protocol.TCP))
        if grafana is not None and not grafana.use_tls_proxy:
            reserved.append(("grafana (3000/tcp)", 3000, Protocol.TCP))
        if https:
            reserved += [
                ("caddy (80/tcp)", 80, Protocol.TCP),
                ("caddy (443/tcp)", 443, Protocol.TCP),
                ("caddy (443/udp)", 443, Protocol.UDP),
            ]
        for where, endpoint, protocol in binds:
            if not endpoint.published:
                continue
            for owner, port, reserved_protocol in reserved:
                if endpoint.bind_address.port == port and protocol == reserved_protocol:
                    self.error(
                        _join(where, "bind_address"),
                        f"port {port}/{protocol.value} is also published by {owner}",
                        "pick another port for this tracker service",
                    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _parse_sqlite_name(value: str) -> str:
    if (
        not value
        or "/" in value
        or value in (".", "..")
        or not all(c.isascii() and (c.isalnum() or c in "._-") for c in value)
    ):
        raise InvalidValue(
            f"{value!r} is not a plain file name",
            "use a file name without directories, e.g. 'tracker.db'",
        )
    return value


def _parse_mysql_identifier(value: str) -> str:
    if (
        not value
        or len(value) > 64
        or not all(c.isascii() and (c.isalnum() or c == "_") for c in value)
    ):
        raise InvalidValue(
            f"{value!r} is not a plain MySQL database name",
            "use letters, digits and '_' (at most 64), e.g. 'torrust_tracker'",
        )
    return value


def _parse_mysql_user(value: str) -> str:
    if value.lower() == "root":
        raise InvalidValue(
            "the tracker must not use the MySQL root account",
            "use an application user such as 'tracker_user'; the root password goes in "
            "mysql.root_password",
        )
    if (
        not value
        or len(value) > 32
        or not all(c.isascii() and (c.isalnum() or c in "_-") for c in value)
    ):
        raise InvalidValue(
            f"{value!r} is not a plain MySQL user name",
            "use letters, digits, '_' and '-' (at most 32), e.g. 'tracker_user'",
        )
    return value


def _parse_mysql_host(value: str) -> str:
    if value != "mysql":
        raise InvalidValue(
            f"{value!r} is not the stack's MySQL service",
            'the deployer runs MySQL in the stack as service "mysql"; use "mysql"',
        )
    return value


# Grafana expands ``${NAME}``, ``$__env{NAME}``, ``$__file{PATH}`` (and ``$__vault{...}``)
# in every setting, GF_* environment variables included, and has no escape for them:
# the regex of grafana/pkg/setting/expanders.go. Also in the schema (a test compares).
GRAFANA_EXPANSION = r"\$(?:__[0-9A-Za-z_]+)?\{[^}]+\}"
_GRAFANA_EXPANSION = re.compile(GRAFANA_EXPANSION)


def _refuse_grafana_expansion(value: str) -> str:
    """Refuse a Grafana setting that Grafana would not take literally.

    The message shows only the kind of expansion, never the value (it may be a secret).
    """
    found = _GRAFANA_EXPANSION.search(value)
    if found is None:
        return value
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


def _parse_plain_name(value: str) -> str:
    if not all(c.isprintable() for c in value):
        raise InvalidValue("contains control characters", "use a plain user name such as 'admin'")
    return value
