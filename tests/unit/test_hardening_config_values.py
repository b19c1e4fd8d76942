"""Issue 11, items 12, 15 and 16: config values that reach Grafana, bash or a terminal.

- 12: Grafana expands ``${...}``, ``$__env{...}`` and ``$__file{...}`` in its settings.
- 15: ``notify_url`` is printable ASCII; a lone surrogate anywhere is one clear issue.
- 16: error messages show a value's ESC and newline escaped, never raw.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tracker_deployer.config import parse_env_text
from tracker_deployer.config.model import GRAFANA_EXPANSION, CronSchedule, InvalidValue
from tracker_deployer.errors import ConfigError
from tracker_deployer.paths import SCHEMA_FILE

from tests.helpers import REPO_ROOT, apply_patch, parse, sample_data

CONTROL = {chr(code) for code in [*range(0x20), *range(0x7F, 0xA0)]}


def _issues(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(data)
    return caught.value


def _inv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "inv"), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --------------------------------------------------------------------------- 12: Grafana


@pytest.mark.parametrize(
    ("key", "value", "form"),
    [
        ("admin_password", "pa${HOME}ss", "${...}"),
        ("admin_password", "$__file{/etc/passwd}", "$__file{...}"),
        ("admin_password", "x$__env{GF_X}y", "$__env{...}"),
        ("admin_password", "$__vault{kv:secret:key}", "$__NAME{...}"),
        ("admin_user", "${USER}", "${...}"),
        ("admin_user", "adm$__file{/x}", "$__file{...}"),
        ("admin_password", "pw%(admin_user)s!", "%(...)s"),
        ("admin_user", "%(secret_key)s", "%(...)s"),
    ],
)
def test_hardening_12_grafana_expansions_are_refused_with_a_hint(
    key: str, value: str, form: str
) -> None:
    data = apply_patch(sample_data("manual-test-mysql"), {f"grafana.{key}": value})

    error = _issues(data)

    (issue,) = error.issues
    assert issue.path == f"grafana.{key}"
    assert f"contains {form}, which Grafana" in issue.message
    assert issue.hint is not None
    assert "no escape" in issue.hint
    if key == "admin_password":
        assert value not in str(error)


@pytest.mark.parametrize(
    "value",
    ["$HOME", "${}", "$ {HOME}", "{HOME}", "$__env", "${unclosed", "$__{x}", "$$", "%()s", "%(x)"],
)
def test_hardening_12_a_dollar_or_brace_that_grafana_keeps_is_fine(value: str) -> None:
    env = parse(apply_patch(sample_data("manual-test-mysql"), {"grafana.admin_password": value}))
    assert env.grafana is not None
    assert env.grafana.admin_password.reveal() == value


def test_hardening_12_schema_refuses_the_same_pattern_as_the_parser() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    grafana = schema["properties"]["grafana"]["properties"]
    assert grafana["admin_password"]["not"] == {"pattern": GRAFANA_EXPANSION}
    assert grafana["admin_user"]["not"] == {"pattern": GRAFANA_EXPANSION}


# --------------------------------------------------------------------------- 15: notify_url


@pytest.mark.parametrize(
    "char", ["\x00", "\x1b", "\x7f", "\x85", "\u00e9", "\u2028", "\U0001f642"], ids=repr
)
def test_hardening_15_notify_url_is_printable_ascii_only(char: str) -> None:
    url = f"https://hc-ping.com/a{char}b"
    data = apply_patch(sample_data("manual-test-sqlite"), {"backup.notify_url": url})

    (issue,) = _issues(data).issues

    assert issue.path == "backup.notify_url"
    assert f"U+{ord(char):04X} at position 22" in issue.message
    assert "printable ASCII" in issue.message
    assert not CONTROL & set(issue.message)
    assert "hc-ping.com/a" not in str(_issues(data))  # the URL is a credential


@pytest.mark.parametrize(
    "url", ["https://user:S3cret@hc-ping.com/uuid x", "ftp://user:S3cret@host/uuid"]
)
def test_a_notify_url_that_is_no_url_is_refused_without_showing_it(url: str) -> None:
    data = apply_patch(sample_data("manual-test-sqlite"), {"backup.notify_url": url})

    error = _issues(data)

    assert [issue.path for issue in error.issues] == ["backup.notify_url"]
    assert "is not an http(s) URL" in str(error)
    assert "S3cret" not in str(error)


def test_the_notify_url_is_masked_like_a_secret() -> None:
    url = "https://hc-ping.com/0f1e-secret-uuid"
    env = parse(apply_patch(sample_data("manual-test-sqlite"), {"backup.notify_url": url}))
    assert url in env.secrets()


def _text_with(path: str, json_string: str) -> str:
    """The sample config as JSON text, with a raw JSON string literal at ``path``."""
    marker = "@@MARKER@@"
    data = apply_patch(sample_data("manual-test-mysql"), {path: marker})
    return json.dumps(data).replace(f'"{marker}"', json_string)


@pytest.mark.parametrize(
    "path",
    [
        "backup.notify_url",
        "backup.mailto",
        "grafana.admin_user",
        "grafana.admin_password",
        "ssh_credentials.private_key_path",
        "$schema",
    ],
)
def test_hardening_15_a_lone_surrogate_is_one_issue_at_its_path(path: str) -> None:
    text = _text_with(path, '"/x\\ud800y"')

    with pytest.raises(ConfigError) as caught:
        parse_env_text(text, source="envs/x.json")

    (issue,) = caught.value.issues
    assert issue.path == path
    assert "lone surrogate U+D800" in issue.message
    str(caught.value).encode("utf-8")  # printable as it is


def test_hardening_15_a_lone_surrogate_in_a_key_is_shown_escaped() -> None:
    text = json.dumps(sample_data("manual-test-mysql")).replace(
        '"retention_days"', '"retention_days\\udc00"'
    )

    with pytest.raises(ConfigError) as caught:
        parse_env_text(text, source="envs/x.json")

    (issue,) = caught.value.issues
    assert "lone surrogate U+DC00" in issue.message
    assert "at 'backup.retention_days\\udc00': " in str(caught.value)
    str(caught.value).encode("utf-8")


@pytest.mark.parametrize("command", ["validate", "render"])
def test_hardening_15_cli_refuses_a_surrogate_or_nul_without_a_traceback(
    command: str, tmp_path: Path
) -> None:
    path = tmp_path / "surrogate.json"
    text = _text_with("backup.notify_url", '"https://hc-ping.com/\\ud800"')
    path.write_text(text.replace('"admin_user": "admin"', '"admin_user": "a\\u0000"'))
    out = ["--out", str(tmp_path / "out")] if command == "render" else []

    result = _inv(command, "--env", str(path), *out)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{path}: at 'backup.notify_url': contains a lone surrogate U+D800" in result.stderr
    assert f"{path}: at 'grafana.admin_user': " in result.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 16: escaped values


@pytest.mark.parametrize(
    "schedule",
    [
        "0 3 * * *\x1b[31m\nrm -rf /",  # 6 fields
        "0 3\x1b[2J * * *",  # a field that is not a number
        "@daily\x1b]0;title\x07",  # a nickname
        "0\n3 30 2 *",  # never fires
    ],
    ids=["fields", "field", "nickname", "never-fires"],
)
def test_hardening_16_cron_errors_show_control_characters_escaped(schedule: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        CronSchedule.parse(schedule)

    message = caught.value.message
    assert not CONTROL & set(message), repr(message)
    assert repr(schedule) in message

    data = apply_patch(sample_data("manual-test-sqlite"), {"backup.schedule": schedule})
    assert not CONTROL & set(str(_issues(data)))


def test_hardening_16_a_key_with_control_characters_is_shown_escaped() -> None:
    data = sample_data("manual-test-sqlite")
    data["backup"]["sched\x1b[2Jule"] = "x"

    error = _issues(data)

    assert not CONTROL & set(str(error))
    assert "at 'backup.sched\\x1b[2Jule': unknown key" in str(error)
