"""The CLI surface: flags declared once reach every task that connects to a host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from invoke.exceptions import Exit
from tracker_deployer.errors import RemoteError
from tracker_deployer.say import printable

import tasks  # the CLI module at the repository's root
from tests.helpers import REPO_ROOT, sample_data

HOST_TASKS = (
    "push",
    "install-cron",
    "deploy",
    "configure",
    "backup",
    "backups",
    "verify",
    "restore",
    "fetch-backup",
)


def _inv(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("inv")), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")},
        timeout=120,
    )


@pytest.mark.parametrize("name", HOST_TASKS)
def test_every_host_task_takes_the_host_flags_with_their_help(tmp_path: Path, name: str) -> None:
    result = _inv(tmp_path, "--help", name)
    assert result.returncode == 0, result.stderr
    assert "--host=STRING" in result.stdout
    assert "overrides the recorded host" in result.stdout
    assert "--known-hosts=STRING" in result.stdout
    assert "--accept-new-host-key" in result.stdout
    assert "--where" not in result.stdout


@pytest.mark.parametrize(("name", "title"), [("push", "push: ensure"), ("install-cron", "cron:")])
def test_push_and_install_cron_dry_runs_use_the_given_host(
    tmp_path: Path, name: str, title: str
) -> None:
    result = _inv(
        tmp_path,
        name,
        "--env",
        "manual-test-sqlite",
        "--dry-run",
        "--host",
        "203.0.113.9",
        "--known-hosts",
        str(tmp_path / "known_hosts"),
    )
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("dry run for manual-test-sqlite on ")
    assert "@203.0.113.9:" in first
    assert "no connection is opened" in first
    assert any(line.startswith(title) for line in result.stdout.splitlines())
    assert not (tmp_path / "known_hosts").exists()


def test_build_image_has_no_uid_or_gid_flags(tmp_path: Path) -> None:
    result = _inv(tmp_path, "--help", "build-image")
    assert result.returncode == 0, result.stderr
    assert "--tag" in result.stdout
    assert "--uid" not in result.stdout
    assert "--gid" not in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("verify", "--offsite", "--set", "latest"),
        ("fetch-backup", "--offsite", "--set", "latest", "--to", "fetched"),
    ],
)
def test_offsite_flags_refuse_an_environment_without_backup_offsite_before_connecting(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """No host is recorded and none is given: the refusal comes first, in one line."""
    result = _inv(tmp_path, *args, "--env", "manual-test-sqlite")
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: environment manual-test-sqlite has no backup.offsite")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("name", ["verify", "fetch-backup"])
def test_verify_and_fetch_backup_take_the_offsite_flag(tmp_path: Path, name: str) -> None:
    result = _inv(tmp_path, "--help", name)
    assert result.returncode == 0, result.stderr
    assert "--offsite" in result.stdout
    assert "off-host repository" in result.stdout


def test_an_error_quoting_a_hosts_words_reaches_the_terminal_escaped() -> None:
    """A DeployError may carry a host's stderr: the CLI prints every character a
    terminal would obey escaped, on one line."""
    with pytest.raises(Exit) as raised, tasks._errors():
        raise RemoteError("sudo said: \x1b]2;owned\x07\nno", "see \u202eexe.txt")
    assert (
        raised.value.message
        == "error: sudo said: \\x1b]2;owned\\x07\\nno — hint: see \\u202eexe.txt"
    )
    assert raised.value.code == RemoteError.exit_code


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, unicode é ü and 'quotes'", "plain text, unicode é ü and 'quotes'"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("a\rb\tc\x7f\x9b\u2028\u202e\ufeff", "a\\rb\\tc\\x7f\\x9b\\u2028\\u202e\\ufeff"),
    ],
)
def test_printable_escapes_what_a_terminal_would_obey(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable("one\ntwo\x1b", keep="\n") == "one\ntwo\\x1b"


@pytest.mark.parametrize("extra", [(), ("--dry-run",), ("--from", "offsite", "--yes")])
def test_restore_refuses_a_wrong_only_before_anything_runs(
    tmp_path: Path, extra: tuple[str, ...]
) -> None:
    """Before, --dry-run never checked it and --from offsite fetched the set first
    (hours, under the backup lock, a new set on the host), then refused."""
    env = tmp_path / "env.json"
    data = sample_data("manual-test-sqlite")
    data["backup"]["offsite"] = {
        "repository": "/mnt/offsite/restic",
        "password": "a long passphrase",
        "keep": {"daily": 7},
    }
    env.write_text(json.dumps(data))
    result = _inv(
        tmp_path, "restore", "--env", str(env), "--set", "latest", "--only", "dbb", *extra
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "--only 'dbb' is not db or config" in result.stderr
    assert "fetch" not in result.stdout
    assert not (tmp_path / "state").exists()  # no key, no connection


def test_create_template_refuses_a_bad_name_and_unwritable_paths(tmp_path: Path) -> None:
    """Before: a starter config `inv validate` rejected, and tracebacks."""
    bad = _inv(tmp_path, "create-template", "--name", "Bad Name", "--out", str(tmp_path / "a.json"))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "--name: 'Bad Name' is not a lowercase-dash name" in bad.stderr
    assert not (tmp_path / "a.json").exists()
    directory = tmp_path / "dir"
    directory.mkdir()
    into_dir = _inv(tmp_path, "create-template", "--out", str(directory), "--force")
    assert into_dir.returncode == 1, into_dir.stdout + into_dir.stderr
    assert "is a directory" in into_dir.stderr
    nowhere = _inv(tmp_path, "create-template", "--out", "/proc/1/nope/x.json")
    assert nowhere.returncode == 1, nowhere.stdout + nowhere.stderr
    assert "cannot write /proc/1/nope/x.json" in nowhere.stderr
    for result in (bad, into_dir, nowhere):
        assert "Traceback" not in result.stderr
