"""The CLI surface: flags declared once reach every task that connects to a host."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from invoke.exceptions import Exit
from tracker_deployer.errors import DeployError, RemoteError
from tracker_deployer.remote import backups as operations
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


@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [
        (signal.SIGINT, 130, "interrupted before the task started: nothing was done"),
        (signal.SIGTERM, 143, "terminated (SIGTERM) before the task started: nothing was done"),
    ],
)
def test_a_signal_while_tasks_py_imports_the_library_is_a_failure_that_says_so(
    signum: int, code: int, said: str
) -> None:
    """The handlers came after tasks.py's imports (a quarter of a second): Ctrl-C then
    was a traceback (a review). The signal comes as the first library module is
    looked for, from an import hook: no timing involved."""
    program = (
        "import os, signal, sys\n"
        "sys.argv[0] = 'inv'\n"
        "class Hook:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tracker_deployer':\n"
        f"            os.kill(os.getpid(), {int(signum)})\n"
        "        return None\n"
        "sys.meta_path.insert(0, Hook())\n"
        "import tasks\n"
        "print('imported')\n"
    )
    done = _python(program)
    assert (done.returncode, done.stdout, done.stderr) == (code, "", f"{said}\n")


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


@pytest.mark.parametrize("below", ["afile/sub", "afile/sub/deeper", "afile"])
def test_fetch_backup_refuses_a_to_below_a_file_before_it_connects(
    tmp_path: Path, below: str
) -> None:
    """--to that cannot be made (its parent is a file) failed only after the host's
    work, which can be long and holds the host's lock (a review)."""
    (tmp_path / "afile").write_text("x")
    result = _inv(
        tmp_path,
        "fetch-backup",
        *("--env", "manual-test-sqlite", "--to", str(tmp_path / below)),
        *("--host", "127.0.0.1", "--known-hosts", str(tmp_path / "known_hosts")),
    )
    stderr = _one_error(result)
    assert f"--to {tmp_path / below} " in stderr
    assert "is not a directory" in stderr
    assert "hint: pass a directory for --to" in stderr
    assert not (tmp_path / "known_hosts").exists()  # no connection was made
    assert not (tmp_path / "state").exists()


def test_fetch_backup_refuses_a_to_where_nothing_can_be_made() -> None:
    with pytest.raises(DeployError) as caught:
        operations.local_destination(Path("/proc/1/x"))
    assert "--to /proc/1/x cannot be made in /proc/1: no write permission" in str(caught.value)


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


@pytest.mark.parametrize(
    ("tag", "said"),
    [
        ("a b:1", "is not a Docker image reference"),
        ("UPPER/x:1", "is not a Docker image reference"),
        ("torrust/tracker-backup", "has no version"),
        ("x/y:1@sha256:" + "0" * 64, "has a digest"),
    ],
)
def test_build_image_refuses_a_bad_tag_before_building(tmp_path: Path, tag: str, said: str) -> None:
    """docker-py refused 'a b:1' with a traceback, after reaching the daemon (a review)."""
    stderr = _one_error(_inv(tmp_path, "build-image", "--tag", tag))
    assert f"--tag {tag!r} {said}" in stderr
    assert "hint: use NAME:VERSION" in stderr
    assert "building" not in stderr


def _no_file_growth() -> None:
    """A child's RLIMIT_FSIZE 0: its writes fail with EFBIG ('File too large'; Python
    ignores SIGXFSZ), as on a full disk."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))


def _inv_unable_to_grow_files(*args: str) -> subprocess.CompletedProcess[str]:
    """`inv ARGS` with a file size limit of 0: every write fails (as on a full disk)."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("inv")), "--search-root", str(REPO_ROOT), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        timeout=120,
        preexec_fn=_no_file_growth,
    )


@pytest.mark.parametrize("force", [True, False])
def test_create_template_that_cannot_be_written_leaves_no_file_and_keeps_the_old_one(
    tmp_path: Path, force: bool
) -> None:
    """The file was opened with O_TRUNC and written in place: a failed write left 0
    bytes, in place of the operator's config with --force (a review)."""
    existing = tmp_path / "old.json"
    existing.write_text('{"kept": true}\n')
    target = existing if force else tmp_path / "new.json"
    result = _inv_unable_to_grow_files(
        "create-template", "--out", str(target), *(["--force"] if force else [])
    )
    assert f"cannot write {target}: File too large" in _one_error(result)
    assert existing.read_text() == '{"kept": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # no temporary file


def test_create_template_with_force_writes_through_a_link_and_keeps_it(tmp_path: Path) -> None:
    """envs/prod.json -> ../secure/prod.json: --force replaced the link with a file
    of its own, and the config it pointed to kept its old content (a review)."""
    real = tmp_path / "secure" / "prod.json"
    real.parent.mkdir()
    real.write_text('{"old": 1}\n')
    link = tmp_path / "envs" / "prod.json"
    link.parent.mkdir()
    link.symlink_to("../secure/prod.json")
    tasks._write_whole(link, "new\n", replace=True)
    assert link.is_symlink()
    assert real.read_text() == "new\n"
    assert sorted(p.name for p in real.parent.iterdir()) == ["prod.json"]


def test_create_template_without_force_refuses_a_file_made_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check that --out does not exist comes before the write: a file made in
    between is refused, not overwritten."""
    target = tmp_path / "x.json"
    real_link = os.link

    def link_after_another_writer(source: object, destination: object) -> None:
        target.write_text("theirs\n")
        real_link(source, destination)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", link_after_another_writer)
    with pytest.raises(DeployError) as caught:
        tasks._write_whole(target, "ours\n", replace=False)
    assert "already exists" in str(caught.value)
    assert target.read_text() == "theirs\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_render_that_cannot_be_written_names_the_output_directory(tmp_path: Path) -> None:
    """It was 'error: File too large', naming no path (a review)."""
    out = tmp_path / "out"
    result = _inv_unable_to_grow_files("render", "--env", "manual-test-sqlite", "--out", str(out))
    stderr = _one_error(result)
    assert f"error: cannot write the rendered files to {out}: File too large — hint:" in stderr
    assert "or pick another --out" in stderr
    assert list(tmp_path.iterdir()) == []


def test_publish_refusals_come_one_a_line(tmp_path: Path) -> None:
    """They came out as one line joined by a literal backslash-n (a review)."""
    result = _inv(tmp_path, "publish", "--version", "v1", "--repository", "Bad\x1b[2J", "--dry-run")
    _one_error(result)
    assert result.stderr.splitlines() == [
        "error: 'Bad\\x1b[2J' is not an image repository name — hint: use a repository "
        "name without a tag or digest, e.g. --repository torrust/tracker-backup",
        "error: version 'v1' is not a release version X.Y.Z — hint: use three numbers "
        "without a prefix or suffix, e.g. --version 1.0.0",
    ]
