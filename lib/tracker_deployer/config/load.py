"""Parse an environment config (JSON) into an :class:`Env`.

This is the only module that sees the raw JSON. It reports every problem at
once, each with its JSON path and a hint (borgmatic's style), and refuses
unknown keys with a did-you-mean suggestion.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeGuard

from tracker_deployer import ports
from tracker_deployer.config import spec
from tracker_deployer.config.model import (
    DEFAULT_OFFSITE_KEEP,
    S3_KEYS,
    Endpoint,
    Env,
    Grafana,
    HttpApi,
    InvalidValue,
    Prometheus,
    Protocol,
    Secret,
    parse_offsite_env_name,
    repository_kind,
    show,
)
from tracker_deployer.config.spec import FAILED, Field, Kind, Section, Union
from tracker_deployer.errors import ConfigError, ConfigIssue


def env_path(name_or_path: str, envs_dir: Path) -> Path:
    """``NAME`` means ``envs/NAME.json``; anything with a slash or ``.json`` is a path."""
    if "/" in name_or_path or name_or_path.endswith(".json"):
        return Path(name_or_path)
    return envs_dir / f"{name_or_path}.json"


MAX_CONFIG_BYTES = 1024 * 1024  # a config is a few KiB; /dev/zero is not one


def load_env(path: Path, *, display: str | None = None) -> Env:
    """Read and parse ``path``; raise :class:`ConfigError` listing every problem."""
    source = display or str(path)
    try:
        # Non-blocking: a FIFO given as the config must not hang the command.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        hint = "pass --env NAME for envs/NAME.json, or a path"
        raise _whole_file(source, "file not found", hint) from None
    except OSError as error:
        raise _whole_file(source, f"cannot open the file: {error.strerror}", _READ_HINT) from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):  # a directory, a FIFO, a device
        os.close(descriptor)
        raise _whole_file(source, "is not a regular file", "pass a JSON file")
    with os.fdopen(descriptor, "rb") as handle:
        try:
            data = handle.read(MAX_CONFIG_BYTES + 1)
        except OSError as error:
            raise _whole_file(
                source, f"cannot read the file: {error.strerror}", _READ_HINT
            ) from None
    if len(data) > MAX_CONFIG_BYTES:
        message = f"is larger than {MAX_CONFIG_BYTES // 1024} KiB, too large for a config"
        raise _whole_file(source, message, "pass the environment's JSON config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        message = f"is not UTF-8 text (byte {error.start + 1})"
        raise _whole_file(source, message, "save the file as UTF-8") from None
    return parse_env_text(text, source=source, path=path)


_READ_HINT = "check the path and its permissions"
_TOO_DEEP = (
    "not a config: its JSON is nested too deeply to read",
    "a config nests a few levels only",
)


def parse_env_text(text: str, *, source: str, path: Path | None = None) -> Env:
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as error:
        message = f"key {error.key!r} appears twice"
        raise _whole_file(source, message, "keep only one of them") from None
    except json.JSONDecodeError as error:
        message = f"not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        hint = "check for a missing comma or quote near that spot"
        raise _whole_file(source, message, hint) from None
    except RecursionError:
        raise _whole_file(source, *_TOO_DEEP) from None
    except ValueError as error:  # an integer of more than 4300 digits, for one
        message = f"not a config: its JSON cannot be read ({error})"
        raise _whole_file(source, message, "check the numbers in the file") from None
    try:
        return parse_env(data, source=source, path=path or Path(source))
    except RecursionError:  # JSON deeper than the parser's walk (newer Pythons read more)
        raise _whole_file(source, *_TOO_DEEP) from None


def _whole_file(source: str, message: str, hint: str | None = None) -> ConfigError:
    """The one issue of a file that cannot be read as JSON."""
    return ConfigError(source, [ConfigIssue("", message, hint)])


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


# --------------------------------------------------------------------------- the walker


_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    *((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string")),
    *((list, "an array"), (dict, "an object"), (type(None), "null")),
)


def _type_name(value: object) -> str:
    return next((name for cls, name in _TYPE_NAMES if isinstance(value, cls)), type(value).__name__)


# A boolean or string: the Python type, "must be ..." and the hint if the key has none.
_PLAIN = {
    "boolean": (bool, "true or false", "use true or false without quotes"),
    "string": (str, "a string", 'use "..."'),
}


class _Reader:
    """Walks the JSON along :mod:`spec`, collecting :class:`ConfigIssue` instead of stopping.

    A section's value is built only when all its keys parsed (a wrong boolean keeps
    its default); every issue is reported either way.
    """

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []
        self.seen: dict[str, dict[str, Any]] = {}  # the parsed keys of each section, by path

    def error(self, path: str, message: str, hint: str | None = None) -> None:
        self.issues.append(ConfigIssue(path, message, hint))

    def keys(self, value: Mapping[str, Any], path: str, fields: tuple[Field, ...]) -> None:
        """Unknown keys (with a did-you-mean) and missing required ones."""
        required = [f.key for f in fields if f.required]
        known = required + [f.key for f in fields if not f.required]
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

    def is_object(
        self, value: object, path: str, hint: str = "use { ... }"
    ) -> TypeGuard[dict[str, Any]]:
        if not isinstance(value, dict):
            self.error(path, f"must be an object, not {_type_name(value)}", hint)
        return isinstance(value, dict)

    def section(self, section: Section, value: object, path: str) -> Any:
        if not self.is_object(value, path):
            return FAILED
        self.keys(value, path, section.fields)
        values: dict[str, Any] = {}
        ok = all(f.key in value for f in section.fields if f.required)
        for f in section.fields:
            if f.key in value:
                parsed = self.field(f, value, path)
                if parsed is not FAILED:
                    values[f.key] = parsed
                elif f.kind is not spec.BOOL:  # a wrong boolean keeps its default
                    ok = False
        self.seen[path] = values
        check = _CHECKS.get(section.name)
        if check is not None:
            ok = check(self, values, value, path, ok) and ok
        return section.build(**values) if ok else FAILED

    def union(self, union: Union, value: object, path: str) -> Any:
        kind = value.get(union.key) if isinstance(value, dict) else None
        if isinstance(kind, str) and kind in union.variants:
            variant = union.variants[kind]
            key = Field(union.key, spec.STRING, "", [], required=True)
            build = variant.build
            return self.section(
                Section(
                    variant.name,
                    (key, *variant.fields),
                    lambda **v: build(**_without(v, union.key)),
                ),
                value,
                path,
            )
        if not self.is_object(value, path):
            return FAILED
        if union.other_keys:  # still report keys no kind knows
            others = {f.key: f for v in union.variants.values() for f in v.fields}
            fields = tuple(Field(f.key, f.kind, "", []) for f in others.values())
            self.keys({k: v for k, v in value.items() if k != union.key}, path, fields)
        missing = union.key not in value
        message = "is required but missing" if missing else f"{show(kind)} {union.unknown}"
        self.error(_join(path, union.key), message, (missing and union.missing_hint) or union.hint)
        return FAILED

    def field(self, f: Field, parent: Mapping[str, Any], path: str) -> Any:
        where, value = _join(path, f.key), parent[f.key]
        if not f.array:
            return self.value(f, f.kind, value, where, parent)
        if not isinstance(value, list):
            self.error(where, f"must be an array, not {_type_name(value)}", f.hint)
            return FAILED
        items = [
            self.value(f, f.kind, item, f"{where}[{i}]", parent) for i, item in enumerate(value)
        ]
        return FAILED if FAILED in items else tuple(items)

    def value(
        self,
        f: Field,
        kind: Kind | Section | Union,
        value: Any,
        where: str,
        parent: Mapping[str, Any],
    ) -> Any:
        if isinstance(kind, Section):
            return self.section(kind, value, where)
        if isinstance(kind, Union):
            return self.union(kind, value, where)
        if kind.type == "map":
            return self.offsite_env(value, where)
        if kind.type in _PLAIN:
            cls, name, hint = _PLAIN[kind.type]
            if kind.blank and isinstance(value, str) and value.strip() == "":
                self.error(where, "must not be empty")
                return FAILED
            if not isinstance(value, cls):
                self.error(where, f"must be {name}, not {_type_name(value)}", f.hint or hint)
                return FAILED
        elif not self.number(f, kind, value, where, parent):
            return FAILED
        if kind.parse is None:
            return float(value) if kind is spec.PERCENT else value
        try:
            return kind.parse(value)
        except InvalidValue as error:
            self.error(where, error.message, error.hint)
            return FAILED

    def number(
        self, f: Field, kind: Kind, value: Any, where: str, parent: Mapping[str, Any]
    ) -> bool:
        """An integer or a number, within the bounds of its schema (or of ``f.limits``)."""
        bounds = {**kind.schema, **f.schema}
        low, high, hint = bounds.get("minimum"), bounds["maximum"], f.hint
        if f.limits is not None:
            low, high, hint = f.limits(parent)
        integer = kind.type == "integer"
        if integer and isinstance(value, float) and value.is_integer():
            self.error(
                where,
                f"{show(value)} is not an integer",
                f"write it without a decimal point: {hint}",
            )
        elif isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            noun = "an integer" if integer else "a number"
            self.error(where, f"must be {noun}, not {_type_name(value)} ({show(value)})", hint)
        elif kind is spec.PERCENT and (not math.isfinite(value) or not 0 <= value <= high):
            self.error(where, f"{show(value)} is not a percentage from 0 to 100", hint)
        elif kind is spec.POSITIVE and (not math.isfinite(value) or value <= 0):
            self.error(where, f"{show(value)} is not a positive number", hint)
        elif low is not None and value < low:
            self.error(where, f"{value} is less than the minimum of {low}", hint)
        elif value > high:
            self.error(where, f"{show(value)} is more than the maximum of {show(high)}", hint)
        else:
            return True
        return False

    def offsite_env(self, value: object, path: str) -> Any:
        if not self.is_object(value, path, f"use {_S3_ENV}"):
            return FAILED
        pairs: list[tuple[str, Secret]] = []
        secret = Field("", spec.SECRET, "", [])
        for name, text in value.items():
            where = _join(path, name)
            try:
                checked = parse_offsite_env_name(name)
            except InvalidValue as error:
                self.error(where, error.message, error.hint)
                checked = None
            parsed = self.value(secret, spec.SECRET, text, where, value)
            if checked is not None and parsed is not FAILED:
                pairs.append((checked, parsed))
        return tuple(sorted(pairs)) if len(pairs) == len(value) else FAILED

    # -- the whole file --------------------------------------------------------

    def env(self, data: object, path: Path) -> Env | None:
        top = self.section(spec.ENV, data, "")
        if not isinstance(data, dict):
            return None
        if "tracker" in data:
            self.cross_checks(data)
        if self.issues or top is FAILED:
            return None
        # The other top-level keys are named like the fields of Env.
        sections = _without(top, "$schema")
        name, ssh = sections.pop("environment")["name"], sections.pop("ssh_credentials")
        return Env(name=name, source=path, ssh=ssh, **sections)

    # -- rules across sections -------------------------------------------------

    def cross_checks(self, top: Mapping[str, Any]) -> None:
        """They see what parsed, so that one broken key does not hide the other problems."""
        driver = _dig(top, "tracker", "core", "database", "driver")
        if driver == "mysql" and "mysql" not in top:
            self.error(
                "mysql",
                'is required when tracker.core.database.driver is "mysql"',
                'add "mysql": {"root_password": "..."}',
            )
        if driver == "sqlite3" and "mysql" in top:
            self.error(
                "mysql",
                "is given but the tracker uses SQLite",
                'remove the "mysql" section, or set tracker.core.database.driver to "mysql"',
            )
        if "grafana" in top and "prometheus" not in top:
            self.error(
                "grafana",
                "needs prometheus, which is not configured",
                f'add "prometheus": {json.dumps(asdict(Prometheus()))} or remove "grafana"',
            )
        tracker, grafana = self.seen.get("tracker", {}), self.seen.get("", {}).get("grafana")
        api: HttpApi | None = tracker.get("http_api")
        udp, http = tracker.get("udp_trackers", ()), tracker.get("http_trackers", ())
        http_trackers = [(f"tracker.http_trackers[{i}]", e) for i, e in enumerate(http)]
        sockets: list[tuple[str, Endpoint | None, Protocol]] = [
            *((f"tracker.udp_trackers[{i}]", e, Protocol.UDP) for i, e in enumerate(udp)),
            *((where, e, Protocol.TCP) for where, e in http_trackers),
            ("tracker.http_api", api.endpoint if api else None, Protocol.TCP),
            ("tracker.health_check_api", tracker.get("health_check_api"), Protocol.TCP),
        ]
        binds = [(where, e, protocol) for where, e, protocol in sockets if e is not None]
        tls = [
            (where, e.domain, e.use_tls_proxy) for where, e, kind in binds if kind is Protocol.TCP
        ]
        if grafana is not None:
            tls.append(("grafana", grafana.domain, grafana.use_tls_proxy))
        for where, domain, use_tls in tls:
            if use_tls and domain is None:
                self.error(
                    _join(where, "use_tls_proxy"),
                    "is true but the service has no domain",
                    f'add "domain" to {where}, e.g. "tracker.example.com"',
                )
        proxied = [where for where, _, use_tls in tls if use_tls]
        if proxied and "https" not in top:
            self.error(
                "https",
                f"is required because {proxied[0]} uses the TLS proxy",
                'add "https": {"admin_email": "admin@example.com"}',
            )
        if "https" in top and not proxied:
            self.error(
                "https",
                "is given but no service uses the TLS proxy",
                'set "use_tls_proxy": true (with a "domain") on a service, or remove "https"',
            )
        self.one_site_per_domain(tls)
        self.http_trackers_alike(http_trackers)
        self.port_conflicts(binds, grafana, "prometheus" in top, "https" in top)

    def one_site_per_domain(self, tls: list[tuple[str, str | None, bool]]) -> None:
        """Caddy serves one site per domain (a second one stops it from starting)."""
        sites: dict[str, str] = {}
        for where, domain, use_tls in tls:
            if not use_tls or domain is None:
                continue
            if domain in sites:
                self.error(
                    _join(where, "domain"),
                    f"{domain!r} is also the domain of {sites[domain]}, behind the TLS "
                    "proxy too: Caddy serves one site per domain and would not start",
                    f"give each service behind the proxy a domain of its own, e.g. 'api.{domain}'",
                )
            else:
                sites[domain] = where

    def http_trackers_alike(self, trackers: list[tuple[str, Endpoint]]) -> None:
        """The tracker's ``on_reverse_proxy`` is one setting for every HTTP tracker: on,
        it takes the client's address from the proxy's X-Forwarded-For header, so a
        request that did not come through the proxy fails (or names any address)."""
        proxied = [where for where, endpoint in trackers if endpoint.use_tls_proxy]
        if not proxied:
            return
        for where, endpoint in trackers:
            if not endpoint.use_tls_proxy:
                self.error(
                    _join(where, "use_tls_proxy"),
                    f"is false while {proxied[0]} uses the TLS proxy: the tracker then "
                    "expects the proxy's X-Forwarded-For header on every HTTP tracker, "
                    "and announces to this one would fail",
                    'put every HTTP tracker behind the proxy ("use_tls_proxy": true with a '
                    '"domain") or none of them',
                )

    def port_conflicts(
        self, binds: list[Any], grafana: Grafana | None, prometheus: bool, https: bool
    ) -> None:
        """Two tracker sockets on one port/protocol, or two services on one host port."""
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
        tcp, udp = Protocol.TCP, Protocol.UDP
        # (port, protocol) -> (the service, the host IP it is published on; None: all)
        reserved: dict[tuple[int, Protocol], tuple[str, str | None]] = {}
        if prometheus:
            local = ports.PROMETHEUS_HOST_IP
            reserved[ports.PROMETHEUS, tcp] = (f"prometheus ({local}:{ports.PROMETHEUS})", local)
        if grafana is not None and not grafana.use_tls_proxy:
            reserved[ports.GRAFANA, tcp] = (f"grafana ({ports.GRAFANA}/tcp)", None)
        if https:
            for port, protocol in (
                (ports.CADDY_HTTP, tcp),
                (ports.CADDY_HTTPS, tcp),
                (ports.CADDY_HTTPS, udp),
            ):
                reserved[port, protocol] = (f"caddy ({port}/{protocol.value})", None)
        for where, endpoint, protocol in binds:
            key = (endpoint.bind_address.port, protocol)
            if not endpoint.on_host or key not in reserved:
                continue
            owner, owner_ip = reserved[key]
            ip = endpoint.bind_address.host_ip
            if owner_ip is None or ip is None or ip == owner_ip:
                self.error(
                    _join(where, "bind_address"),
                    f"port {key[0]}/{protocol.value} is also published by {owner}",
                    "pick another port for this tracker service",
                )


def _without(values: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k != key}


def _dig(data: object, *keys: str) -> object:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


# --------------------------------------------------------------------------- rules in a section


def _check_ssh(
    reader: _Reader, values: dict[str, Any], _raw: Mapping[str, Any], path: str, ok: bool
) -> bool:
    if ok and values["private_key_path"] == values["public_key_path"]:
        reader.error(
            _join(path, "public_key_path"),
            "is the same file as private_key_path",
            "point it at the .pub file of the key pair",
        )
        return False
    return True


def _check_tracker(
    reader: _Reader, values: dict[str, Any], _raw: Mapping[str, Any], _path: str, _ok: bool
) -> bool:
    if values.get("udp_trackers") == () and values.get("http_trackers") == ():
        reader.error(
            "tracker",
            "has no UDP and no HTTP tracker: it would serve nothing",
            'add e.g. "udp_trackers": [{"bind_address": "0.0.0.0:6969"}]',
        )
    return True


def _check_offsite(
    reader: _Reader, values: dict[str, Any], raw: Mapping[str, Any], path: str, _ok: bool
) -> bool:
    """An s3: repository needs the access key (in ``env``)."""
    repository = values.get("repository")
    if repository is None or repository_kind(repository) != "s3":
        return True
    if "env" not in raw:
        reader.error(
            _join(path, "env"), "is required for an s3: repository", f'add "env": {_S3_ENV}'
        )
        return False
    missing = [name for name in S3_KEYS if isinstance(raw["env"], dict) and name not in raw["env"]]
    for name in missing:
        reader.error(
            _join(path, f"env.{name}"),
            "is required for an s3: repository",
            "add the access key of a key that may read and write the bucket",
        )
    return not missing


def _check_keep(
    reader: _Reader, _values: dict[str, Any], raw: Mapping[str, Any], path: str, _ok: bool
) -> bool:
    if raw:
        return True
    reader.error(
        path,
        "is empty: restic refuses to forget with no policy (it would keep nothing)",
        f"keep at least one rule, e.g. {json.dumps(dict(DEFAULT_OFFSITE_KEEP))}",
    )
    return False


_CHECKS: dict[str, Callable[[_Reader, dict[str, Any], Mapping[str, Any], str, bool], bool]] = {
    "ssh_credentials": _check_ssh,
    "tracker": _check_tracker,
    "offsite": _check_offsite,
    "keep": _check_keep,
}


_S3_ENV = json.dumps(dict.fromkeys(S3_KEYS, "..."))  # {"AWS_ACCESS_KEY_ID": "...", ...}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
