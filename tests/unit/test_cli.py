"""The CLI surface: flags declared once reach every task that connects to a host."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
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


def _inv(tmp_path: Path, *args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("inv")), "--search-root", str(REPO_ROOT), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
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


# --------------------------------------------------------------------------- bad input


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a command that failed with one clear message, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert "error:" in result.stderr, result.stderr
    return result.stderr


@pytest.mark.parametrize("host", ["root@127.0.0.1", "127.0.0.1:2222", "-oProxyCommand=x", "a b"])
def test_a_host_flag_that_is_no_address_is_one_clear_error(tmp_path: Path, host: str) -> None:
    result = _inv(tmp_path, "push", "--env", "manual-test-sqlite", "--dry-run", "--host", host)
    assert f"--host {host!r}" in _one_error(result)


@pytest.mark.parametrize("port", ["abc", "1e3", "-1"])
def test_register_port_that_is_no_number_is_one_clear_error(tmp_path: Path, port: str) -> None:
    existing = tmp_path / "existing.json"
    data = sample_data("manual-test-sqlite")
    data["provider"] = {"provider": "existing"}
    existing.write_text(json.dumps(data))
    result = _inv(
        tmp_path, "register", "--env", str(existing), "--host", "10.0.0.5", "--port", port
    )
    assert "is not a TCP port" in _one_error(result)


def test_render_into_a_path_below_a_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile/sub"
    result = _inv(tmp_path, "render", "--env", "manual-test-sqlite", "--out", str(out))
    assert "afile" in _one_error(result)


@pytest.mark.parametrize(
    ("text", "said"),
    [("[" * 100_000, "nested too deeply"), ('{"a": ' + "9" * 5000 + "}", "cannot be read")],
)
def test_json_python_cannot_read_is_one_clear_error(tmp_path: Path, text: str, said: str) -> None:
    config = tmp_path / "x.json"
    config.write_text(text)
    assert said in _one_error(_inv(tmp_path, "validate", "--env", str(config)))


def test_a_fifo_as_the_config_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert "is not a regular file" in _one_error(_inv(tmp_path, "validate", "--env", str(fifo)))


def test_sigterm_is_a_failure_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    """A host that accepts the connection and never speaks: `inv backups` waits for
    its SSH banner until SIGTERM comes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        config = tmp_path / "x.json"
        data = sample_data("manual-test-sqlite")
        data["ssh_credentials"]["port"] = listener.getsockname()[1]
        config.write_text(json.dumps(data))
        process = subprocess.Popen(
            [
                *(str(Path(sys.executable).with_name("inv")), "backups", "--env", str(config)),
                *("--host", "127.0.0.1", "--known-hosts", str(tmp_path / "known_hosts")),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")},
        )
        listener.settimeout(60)
        connection, _ = listener.accept()  # the task is connecting now
        with connection:
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert "terminated (SIGTERM) — hint: a script already running on the host" in stderr
    assert "goes on there to its end" in stderr


def _python(program: str) -> subprocess.CompletedProcess[str]:
    """``program`` in a Python of its own, in the repository (it imports tasks)."""
    return subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [
        (signal.SIGINT, 130, "interrupted before the task started: nothing was done"),
        (signal.SIGTERM, 143, "terminated (SIGTERM) before the task started: nothing was done"),
    ],
)
def test_a_signal_before_the_task_starts_is_a_failure_that_says_so(
    signum: int, code: int, said: str
) -> None:
    """While Invoke read the command line, Ctrl-C ended it with a silent exit 1 and
    SIGTERM killed it without a word. The handlers are there once Invoke (argv[0]
    inv) has loaded tasks.py; the signal comes at that point here."""
    program = (
        "import os, signal, sys, time\n"
        "sys.argv[0] = 'inv'\n"
        "import tasks\n"
        f"os.kill(os.getpid(), {int(signum)})\n"
        "time.sleep(30)\n"
    )
    done = _python(program)
    assert done.returncode == code, done.stderr
    assert done.stderr == f"{said}\n"


def test_an_ignored_sigint_stays_ignored() -> None:
    """`inv ... &` in a script starts with SIGINT ignored: the terminal's Ctrl-C is
    not for it, and must not end it (a review)."""
    program = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "sys.argv[0] = 'inv'\n"
        "import tasks\n"
        "with tasks._errors():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.2)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.2)\n"
        "print('still here')\n"
    )
    done = _python(program)
    assert (done.returncode, done.stdout, done.stderr) == (0, "still here\n", "")


@pytest.mark.parametrize("wanted", ["../../etc", "bad id", "x\x1b[2J", "20261399_999999"])
def test_restore_dry_run_refuses_a_set_that_is_no_set_id(tmp_path: Path, wanted: str) -> None:
    result = _inv(tmp_path, "restore", "--env", "manual-test-sqlite", "--set", wanted, "--dry-run")
    stderr = _one_error(result)
    assert "is not a set id" in stderr
    assert "\x1b" not in stderr
    assert result.stdout == ""


def test_restore_dry_run_refuses_an_environment_without_backups(tmp_path: Path) -> None:
    config = tmp_path / "x.json"
    data = sample_data("manual-test-sqlite")
    data.pop("backup")
    config.write_text(json.dumps(data))
    result = _inv(tmp_path, "restore", "--env", str(config), "--set", "latest", "--dry-run")
    assert "backups are off" in _one_error(result)


def test_fetch_backup_checks_to_before_it_connects(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    result = _inv(
        tmp_path,
        "fetch-backup",
        *("--env", "manual-test-sqlite", "--to", str(loop / "sub")),
        *("--host", "127.0.0.1", "--known-hosts", str(tmp_path / "known_hosts")),
    )
    assert "--to " in _one_error(result)
    assert not (tmp_path / "known_hosts").exists()


def test_create_template_writes_a_private_file_and_names_it_as_env_reads_it(
    tmp_path: Path,
) -> None:
    result = _inv(tmp_path, "create-template", "--out", "mycfg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mycfg").stat().st_mode & 0o777 == 0o600
    assert result.stdout.rstrip().endswith("inv validate --env ./mycfg")


def test_a_config_name_with_an_escape_is_shown_escaped(tmp_path: Path) -> None:
    result = _inv(tmp_path, "validate", "--env", "a\x1b[31m")
    assert result.returncode != 0
    assert "\x1b" not in result.stderr


def test_a_directory_as_the_config_is_refused_as_a_whole_file(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    result = _inv(tmp_path, "validate", "--env", str(tmp_path / "adir"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "is not a regular file" in result.stderr
    assert "error: 1 problem in" in result.stderr
