"""The small domain values: valid by construction, clear errors otherwise."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from tracker_deployer.config.model import (
    BindAddress,
    CronSchedule,
    InvalidValue,
    Secret,
    parse_backup_image,
    parse_environment_name,
    parse_host,
)

from tests.helpers import parse


@pytest.mark.parametrize(
    "expression",
    [
        "0 3 * * *",
        "*/15 * * * *",
        "0 0 1,15 * mon-fri",
        "5 4 * * sun",
        "0 22 * jan-mar 1-5",
        "0 3 * * 7",
        "* * * * *",
    ],
)
def test_cron_schedule_accepts_real_five_field_cron(expression: str) -> None:
    assert str(CronSchedule.parse(expression)) == expression


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("0 25 * * *", "hour 25 is out of range 0-23"),
        ("*/0 * * * *", "step '0' must be a whole number of at least 1"),
        ("* * * *", "it has 4 fields"),
        ("0 3 * * * *", "it has 6 fields"),
        ("@daily", "cron nickname"),
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("* * 0 * *", "day of month 0 is out of range 1-31"),
        ("* * * 13 *", "month 13 is out of range 1-12"),
        ("* * * * 8", "day of week 8 is out of range 0-7"),
        ("5-1 * * * *", "runs backwards"),
        ("a * * * *", "is not a number"),
        ("1,,2 * * * *", "empty list item"),
        ("", "it has 0 fields"),
    ],
)
def test_cron_schedule_rejects_with_the_reason(expression: str, fragment: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        CronSchedule.parse(expression)
    assert fragment in caught.value.message
    assert caught.value.hint


def test_cron_schedule_next_runs_takes_time_as_a_parameter() -> None:
    start = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    runs = CronSchedule.parse("0 3 * * *").next_runs(start, 2)
    assert [run.isoformat() for run in runs] == [
        "2026-11-28T03:00:00+00:00",
        "2026-11-29T03:00:00+00:00",
    ]


def test_cron_schedule_next_runs_are_crons_own_for_a_starred_day_field() -> None:
    """ "*/2" in the day of month AND-s with the day of week, as cron runs it (croniter
    alone ran every odd day too, and `inv describe` showed runs that never come)."""
    start = datetime(2001, 1, 1, tzinfo=UTC)
    runs = CronSchedule.parse("0 3 */2 * mon").next_runs(start, 3)
    assert [run.date().isoformat() for run in runs] == ["2001-01-01", "2001-01-15", "2001-01-29"]


def test_secret_never_shows_its_value() -> None:
    secret = Secret.parse("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret} {secret!r}"
    assert secret.reveal() == "hunter2"


@pytest.mark.parametrize("value", ["a\nb", "tab\there", "nul\x00", ""])
def test_secret_rejects_control_characters_and_empty(value: str) -> None:
    with pytest.raises(InvalidValue):
        Secret.parse(value)


def test_parsed_env_repr_hides_every_secret(mysql_data: dict[str, Any]) -> None:
    mysql_data["tracker"]["core"]["database"]["password"] = "db-pass-XYZ"
    mysql_data["mysql"]["root_password"] = "root-pass-XYZ"
    mysql_data["tracker"]["http_api"]["admin_token"] = "token-XYZ"
    env = parse(mysql_data)
    text = repr(env)
    for secret in ("db-pass-XYZ", "root-pass-XYZ", "token-XYZ"):
        assert secret not in text
    assert set(env.secrets()) >= {"db-pass-XYZ", "root-pass-XYZ", "token-XYZ"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:6969", "0.0.0.0:6969"),
        ("[::]:7070", "[::]:7070"),
        ("127.0.0.1:1313", "127.0.0.1:1313"),
    ],
)
def test_bind_address_parses_ipv4_and_ipv6(text: str, expected: str) -> None:
    assert str(BindAddress.parse(text)) == expected


@pytest.mark.parametrize("text", ["6969", "localhost:6969", "0.0.0.0:99999", "0.0.0.0:", "[::1]"])
def test_bind_address_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidValue):
        BindAddress.parse(text)


def test_environment_name_limits() -> None:
    assert parse_environment_name("a" * 63) == "a" * 63
    with pytest.raises(InvalidValue, match="63"):
        parse_environment_name("a" * 64)


def test_backup_section_empty_means_defaults(sqlite_data: dict[str, Any]) -> None:
    sqlite_data["backup"] = {}
    env = parse(sqlite_data)
    assert env.backup is not None
    assert str(env.backup.schedule) == "0 3 * * *"
    assert env.backup.retention_days == 7
    assert env.backup.compression == "zstd"
    assert env.backup.compression_level == 3
    assert env.backup.max_downtime_seconds == 600


def test_backup_absent_means_off(sqlite_data: dict[str, Any]) -> None:
    del sqlite_data["backup"]
    assert parse(sqlite_data).backup is None


@pytest.mark.parametrize("value", ["Tracker.Example.COM", "tracker", "203.0.113.10", "::1"])
def test_ssh_host_accepts_names_and_addresses(value: str) -> None:
    assert parse_host(value) in (value.lower(), value)


@pytest.mark.parametrize(
    "value", ["\u212a", "tra\u212acker.example.com", "tr\u0130cker", "a b", "1.2.3"]
)
def test_ssh_host_refuses_what_is_no_ascii_host_name(value: str) -> None:
    # Lowering first turned the Kelvin sign into "k" and let it pass (the schema refused it).
    with pytest.raises(InvalidValue, match="is neither an IP address nor a host name"):
        parse_host(value)


@pytest.mark.parametrize(
    "image",
    [
        "torrust/tracker-backup:2.1.0",
        "torrust/tracker-backup:v2.1.0-rc1",
        "torrust/tracker-backup:2.4",
        "torrust/tracker-backup:2",
        "torrust/tracker-backup:latest",
        "registry.example.com:5000/torrust/tracker-backup",
        f"torrust/tracker-backup:2.1.3@sha256:{'a' * 64}",
        "example/other-image:1.0.0",
    ],
)
def test_a_backup_image_of_this_major_or_without_a_version_is_taken(image: str) -> None:
    assert parse_backup_image(image) == image


@pytest.mark.parametrize(
    "image",
    [
        "torrust/tracker-backup:2.0.0",
        "torrust/tracker-backup:v2.0.0-rc1",
        "torrust/tracker-backup:2.0",
        f"torrust/tracker-backup:2.0.0@sha256:{'a' * 64}",
    ],
)
def test_a_backup_image_older_than_the_minor_the_scripts_rely_on_is_refused(image: str) -> None:
    """A 2.0.0 image ignores OFFSITE_ALLOW_INIT: it made a vanished off-host repository
    anew, empty, and the run succeeded (a review)."""
    with pytest.raises(InvalidValue, match=r"is older than 2\.1, whose commands"):
        parse_backup_image(image)


@pytest.mark.parametrize(
    ("image", "major"),
    [
        ("torrust/tracker-backup:1.0.0", "1"),
        ("torrust/tracker-backup:1.2.3-rc1", "1"),
        ("torrust/tracker-backup:1.4", "1"),
        ("registry.example.com:5000/torrust/tracker-backup:1", "1"),
        ("torrust/tracker-backup:v3.0.0", "3"),
    ],
)
def test_a_backup_image_of_another_major_is_refused(image: str, major: str) -> None:
    with pytest.raises(InvalidValue, match=rf"is a {major}\.x backup image"):
        parse_backup_image(image)
