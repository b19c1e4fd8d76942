"""Each quoting rule, checked against its real consumer where one runs here."""

from __future__ import annotations

import subprocess
import tomllib

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from tracker_deployer.remote import mysql_passwords
from tracker_deployer.render import quoting

from tests.helpers import parse, sample_data

HOSTILE = [
    "plain",
    "p a'ss\"w$(x)`;#\\",
    "'",
    "''",
    "\\'",
    "$HOME ${HOME} $$ $",
    "back`tick` and $(echo pwned)",
    "semi;colon # hash",
    "tab-less unicode: pässwörd ✓ 密码 🙂",
    "trailing backslash \\",
    " leading and trailing spaces ",
    "=equals=",
    '"double"',
    "%percent% and \\n not a newline",
]

printable = st.text(
    alphabet=st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=40
)


def bash_reads(assignment: str) -> str:
    """What bash gets for VALUE after sourcing ``VALUE=<quoted>``."""
    result = subprocess.run(
        ["bash", "-c", f'{assignment}\nprintf "%s" "$VALUE"'],
        capture_output=True,
        check=True,
    )
    return result.stdout.decode("utf-8")


@pytest.mark.parametrize("value", HOSTILE)
def test_shell_quote_reads_back_exactly_in_bash(value: str) -> None:
    assert bash_reads(f"VALUE={quoting.shell(value)}") == value


@settings(max_examples=60, deadline=None)
@given(printable)
def test_shell_quote_round_trips_any_printable_text(value: str) -> None:
    assert bash_reads(f"VALUE={quoting.shell(value)}") == value


@pytest.mark.parametrize("value", HOSTILE)
def test_toml_string_reads_back_exactly(value: str) -> None:
    assert tomllib.loads(f"key = {quoting.toml(value)}\n")["key"] == value


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60))
def test_toml_string_round_trips_any_text(value: str) -> None:
    assert tomllib.loads(f"key = {quoting.toml(value)}\n")["key"] == value


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60))
def test_yaml_string_round_trips_any_text(value: str) -> None:
    assert yaml.safe_load(f"key: {quoting.yaml(value)}\n") == {"key": value}


def test_dotenv_always_double_quotes_and_escapes_backslash_quote_dollar() -> None:
    # The round trip through the real compose is in tests/integration/test_compose_file.py.
    assert quoting.dotenv("a$b\\c") == '"a\\$b\\\\c"'
    assert quoting.dotenv('it\'s "$x"') == '"it\'s \\"\\$x\\""'
    assert quoting.dotenv("ends in \\") == '"ends in \\\\"'


def test_url_part_escapes_everything_but_unreserved() -> None:
    assert quoting.url_part("a:b@c/d?e#f g%") == "a%3Ab%40c%2Fd%3Fe%23f%20g%25"


def test_yaml_quote_escapes_what_yaml_cannot_hold_raw() -> None:
    assert quoting.yaml('say "hi"\\ \x7f') == '"say \\"hi\\"\\\\ \\x7F"'


def test_sql_statements_double_quotes_and_set_no_backslash_escapes_first() -> None:
    data = sample_data("manual-test-mysql")
    data["mysql"]["root_password"] = "r'oot\\"
    data["tracker"]["core"]["database"]["password"] = "it's"
    sql = mysql_passwords.statements(parse(data)).split("\n")
    assert sql == [
        "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES';",
        "ALTER USER 'tracker_user'@'%' IDENTIFIED BY 'it''s';",
        "ALTER USER IF EXISTS 'root'@'%' IDENTIFIED BY 'r''oot\\';",
        "ALTER USER IF EXISTS 'root'@'localhost' IDENTIFIED BY 'r''oot\\';",
        "",
    ]
    # The script carries no secret: they are in its companions.
    assert "r'oot" not in mysql_passwords.script()
