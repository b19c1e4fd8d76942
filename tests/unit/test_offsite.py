"""backup.offsite: the deployer's copy of offsite.sh's exit codes, the rendered
files (modes, where secrets go), the offsite compose service and its values."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tracker_deployer import exit_codes, offsite, paths
from tracker_deployer.config.model import (
    DEFAULT_OFFSITE_CHECK_READ_DATA,
    DEFAULT_OFFSITE_CHECK_SCHEDULE,
    DEFAULT_OFFSITE_KEEP,
    redact_repository,
)
from tracker_deployer.errors import ConfigError
from tracker_deployer.remote import offsite_fetch
from tracker_deployer.remote.backups import HostDataError
from tracker_deployer.remote.offsite import (
    format_sets,
    listing_error,
    listing_script,
    parse_listing,
    sets_json,
)
from tracker_deployer.render import render
from tracker_deployer.render.tree import offsite_check_script
from tracker_deployer.topology import derive

from tests.helpers import REPO_ROOT, parse, sample_data

OFFSITE_SH = REPO_ROOT / "docker/backup/offsite.sh"
BACKUP_SH = REPO_ROOT / "docker/backup/backup.sh"
PASSWORD = "p a'ss\"w$(x)`;#\\ ü"
SECRET_KEY = "s3 'secret\"$x\\"


def with_offsite(**fields: Any) -> dict[str, Any]:
    data = sample_data("manual-test-sqlite")
    data["backup"]["offsite"] = {
        "repository": "/mnt/offsite/restic",
        "password": PASSWORD,
        **fields,
    }
    return data


def s3_data() -> dict[str, Any]:
    return with_offsite(
        repository="s3:https://s3.example.com/bucket/tracker",
        env={"AWS_ACCESS_KEY_ID": "AKIATEST", "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
    )


def readonly_codes(text: str, prefix: str) -> dict[str, int]:
    found = re.findall(rf"^readonly {prefix}([A-Z_]+)=([0-9]+)$", text, re.MULTILINE)
    return {name: int(value) for name, value in found}


def test_offsite_sh_exit_codes_are_the_deployers_copy() -> None:
    assert readonly_codes(OFFSITE_SH.read_text(), "OFFSITE_EXIT_") == offsite.OFFSITE_SH_EXIT


def test_offsite_sh_exit_codes_are_in_the_backup_format_reference() -> None:
    text = (REPO_ROOT / "docs/reference/backup-format.md").read_text()
    section = text[text.index("### Exit codes of offsite.sh") :]
    for code in offsite.OFFSITE_SH_EXIT.values():
        assert f"\n| {code} |" in section


def test_the_maintenance_script_takes_exit_76_from_its_owner_and_no_code_collides() -> None:
    script = render(parse(s3_data())).text(paths.MAINTENANCE_SCRIPT)
    assert f"readonly EXIT_OFFSITE={offsite.EXIT_OFFSITE_FAILED}\n" in script
    codes = readonly_codes(script, "EXIT_")
    assert len(set(codes.values())) == len(codes), codes
    # nor with the backup container's codes, which the script passes through
    backup_codes = set(readonly_codes(BACKUP_SH.read_text(), "EXIT_").values())
    assert offsite.EXIT_OFFSITE_FAILED not in backup_codes
    assert offsite.EXIT_OFFSITE_FAILED not in offsite.OFFSITE_SH_EXIT.values()


def test_offsite_files_have_the_modes_of_backup_conf() -> None:
    tree = render(parse(s3_data()))
    conf = tree.file(paths.BACKUP_CONF)
    for path in (paths.OFFSITE_ENV_FILE, paths.OFFSITE_PASSWORD_FILE):
        item = tree.file(path)
        assert (item.mode, item.uid, item.gid, item.secret) == (
            conf.mode,
            conf.uid,
            conf.gid,
            True,
        )
    [ssh_dir] = [d for d in tree.directories if d.path == paths.OFFSITE_SSH_DIR]
    assert (ssh_dir.mode, ssh_dir.uid, ssh_dir.gid) == (0o750, 0, 1000)


def test_the_password_lands_only_in_the_password_file() -> None:
    tree = render(parse(s3_data()))
    holding = [str(item.path) for item in tree.files if PASSWORD.encode() in item.content]
    assert holding == [str(paths.OFFSITE_PASSWORD_FILE)]
    assert tree.file(paths.OFFSITE_PASSWORD_FILE).content == PASSWORD.encode() + b"\n"
    assert PASSWORD not in str(tree.manifest())


def test_credentials_land_only_in_the_env_file_in_compose_quoting() -> None:
    tree = render(parse(s3_data()))
    quoted = '"s3 \'secret\\"\\$x\\\\"'
    holding = [str(item.path) for item in tree.files if quoted.encode() in item.content]
    assert holding == [str(paths.OFFSITE_ENV_FILE)]
    text = tree.text(paths.OFFSITE_ENV_FILE)
    assert f"AWS_SECRET_ACCESS_KEY={quoted}\n" in text
    assert 'RESTIC_PASSWORD_FILE="/etc/backup/offsite.password"\n' in text
    assert 'OFFSITE_KEEP="--keep-daily 7 --keep-weekly 4 --keep-monthly 12"\n' in text
    assert not any(SECRET_KEY.encode() in item.content for item in tree.files)


def test_env_secrets_include_the_offsite_password_and_credentials() -> None:
    secrets = parse(s3_data()).secrets()
    assert PASSWORD in secrets
    assert SECRET_KEY in secrets


def test_no_offsite_means_no_offsite_files_service_or_upload() -> None:
    env = parse(sample_data("manual-test-sqlite"))
    tree = render(env)
    offsite_paths = {
        paths.OFFSITE_ENV_FILE,
        paths.OFFSITE_PASSWORD_FILE,
        paths.OFFSITE_CHECK_SCRIPT,
        paths.OFFSITE_CHECK_CRON_FILE,
    }
    assert not offsite_paths & set(tree.paths)
    assert offsite.SERVICE not in derive(env).service_names
    assert "offsite" not in tree.text(paths.MAINTENANCE_SCRIPT).lower()


def test_the_offsite_service_reads_the_sets_and_settings_read_only() -> None:
    service = derive(parse(s3_data())).service(offsite.SERVICE)
    assert service.entrypoint == (str(paths.OFFSITE_SCRIPT_IN_BACKUP),)
    assert service.env_file == ("./storage/backup-etc/offsite.env",)
    assert service.profiles == ("backup",)
    assert service.user == "1000:1000"
    assert service.network_mode == "host"
    assert service.hostname == "${TRACKER_OFFSITE_HOSTNAME:-tracker-offsite}"
    assert [str(mount) for mount in service.volumes] == [
        "./storage/backup-etc:/etc/backup:ro",
        "./storage/backup:/backups:ro",
    ]


def test_a_local_path_repository_is_mounted_at_its_own_path() -> None:
    service = derive(parse(with_offsite())).service(offsite.SERVICE)
    assert "/mnt/offsite/restic:/mnt/offsite/restic" in [str(m) for m in service.volumes]


def test_the_check_runs_on_its_own_cron_schedule() -> None:
    tree = render(parse(with_offsite(check_schedule="15 6 1 * *", check_read_data=2.5)))
    cron = tree.text(paths.OFFSITE_CHECK_CRON_FILE)
    assert f"15 6 1 * * root {paths.OFFSITE_CHECK_SCRIPT} --quiet\n" in cron
    assert cron.endswith("\n")
    script = tree.text(paths.OFFSITE_CHECK_SCRIPT)
    assert "readonly READ_DATA='2.5'\n" in script
    assert 'OFFSITE_CHECK_READ_DATA="2.5"\n' in tree.text(paths.OFFSITE_ENV_FILE)


@pytest.mark.skipif(os.geteuid() != 0, reason="a status directory root owns (CI runs as root)")
@pytest.mark.parametrize("unsafe", ["writable", "link", "missing"])
def test_the_check_refuses_an_unsafe_status_directory_and_says_why(
    tmp_path: Path, unsafe: str
) -> None:
    """Its status and metrics go there as root: never through a directory another
    user could plant a link in. The reason is the maintenance script's own."""
    status = tmp_path / "backup-status"
    if unsafe == "writable":
        status.mkdir(mode=0o755)
        status.chmod(0o777)
    elif unsafe == "link":
        (tmp_path / "elsewhere").mkdir()
        status.symlink_to(tmp_path / "elsewhere")
    script = offsite_check_script(
        parse(with_offsite()), status_dir=str(status), lock_file=str(tmp_path / "lock")
    )
    (tmp_path / "offsite-check.sh").write_bytes(script)
    done = subprocess.run(
        ["bash", str(tmp_path / "offsite-check.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == exit_codes.UNSAFE, done.stderr
    reason = (
        "is not owned by root or is writable by others (owner uid 0, mode 777)"
        if unsafe == "writable"
        else "is a symlink or not a directory"
    )
    assert done.stderr == (
        f"offsite check: the status directory {status} {reason}; refusing to write through it\n"
    )
    assert not (tmp_path / "lock").exists()


@pytest.mark.parametrize(
    ("percent", "text"), [(5.0, "5"), (2.5, "2.5"), (0.0, "0"), (100.0, "100"), (0.001, "0.001")]
)
def test_read_data_is_written_without_exponent_or_trailing_zeros(percent: float, text: str) -> None:
    assert offsite.read_data_text(percent) == text


def test_defaults_of_backup_offsite() -> None:
    config = parse(with_offsite()).backup
    assert config is not None
    assert config.offsite is not None
    assert config.offsite.keep.rules == DEFAULT_OFFSITE_KEEP
    assert str(config.offsite.check_schedule) == DEFAULT_OFFSITE_CHECK_SCHEDULE
    assert config.offsite.check_read_data == DEFAULT_OFFSITE_CHECK_READ_DATA
    assert config.offsite.env == ()
    assert config.offsite.kind == "local"


def test_keep_policy_becomes_restics_flags_in_a_fixed_order() -> None:
    config = parse(with_offsite(keep={"yearly": 2, "last": 3})).backup
    assert config is not None
    assert config.offsite is not None
    assert config.offsite.keep.restic_args() == ("--keep-last", "3", "--keep-yearly", "2")


@pytest.mark.parametrize(
    ("repository", "kind"),
    [
        ("s3:https://s3.example.com/bucket", "s3"),
        ("sftp:backup@host.example.com:/srv/restic", "sftp"),
        ("sftp://backup@host.example.com:2222//srv/restic", "sftp"),
        ("rest:https://user:pass@backup.example.com:8000/tracker", "rest"),
        ("/mnt/offsite/restic/", "local"),
    ],
)
def test_every_supported_repository_form_parses(repository: str, kind: str) -> None:
    data = with_offsite(repository=repository)
    if kind == "s3":
        data["backup"]["offsite"]["env"] = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    config = parse(data).backup
    assert config is not None
    assert config.offsite is not None
    assert config.offsite.kind == kind
    assert not config.offsite.repository.endswith("/") or kind != "local"


@pytest.mark.parametrize(
    "repository",
    [
        "rest:https://user:s3cr3t@backup.example.com:8000/ tracker",
        "rest:ftp://user:s3cr3t@backup.example.com/tracker",
        "sftp://user:s3cr3t@host.example.com",
        "gs://user:s3cr3t@bucket/x",
        "rest:https://user:s3@cr3t@backup.example.com:8000/ tracker",  # a raw @ in it
    ],
)
def test_a_rejected_repository_is_shown_without_its_userinfo(repository: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(with_offsite(repository=repository))
    assert "s3cr3t" not in str(raised.value)
    assert "cr3t" not in str(raised.value)
    # with a space in it, not at all (the redaction ends at a space)
    assert ("//***@" in str(raised.value)) is (" " not in repository)


@pytest.mark.parametrize(
    "repository",
    [
        "rest:https://user:ab/cr3t@backup.example.com/repo",  # restic: "invalid port"
        "rest:https://user:ab/cr3t@backup.example.com:8000/repo",
        "rest:http://us/er:cr3t@127.0.0.1:8000/",
        "rest:https://user:a cr3t@backup.example.com/repo",
    ],
)
def test_a_password_the_redaction_would_miss_is_refused_and_not_shown(repository: str) -> None:
    """The redaction of a repository URL ends at a '/' or a space: restic's error for
    such a URL (it takes the part before the '/' for the host) went unredacted into
    the 0644 status file, the log and cron mail; validate showed the one with a space."""
    with pytest.raises(ConfigError) as raised:
        parse(with_offsite(repository=repository))
    assert "cr3t" not in str(raised.value)
    assert "backup.offsite.repository" in str(raised.value)


REDACTED = [
    (
        "rest:https://user:s3cr3t@backup.example.com:8000/t",
        "rest:https://***@backup.example.com:8000/t",
    ),
    ("rest:https://backup:p@ssw0rd@rest.example.com/t", "rest:https://***@rest.example.com/t"),
    ("sftp://user@host.example.com:22//srv/restic", "sftp://***@host.example.com:22//srv/restic"),
    ("s3:https://s3.example.com/bucket/a@b", "s3:https://s3.example.com/bucket/a@b"),
    (
        "error: rest:http://tok@127.0.0.1:1/repo: refused (user@x)",
        "error: rest:http://***@127.0.0.1:1/repo: refused (user@x)",
    ),
]


@pytest.mark.parametrize(("text", "shown"), REDACTED)
def test_the_deployer_and_offsite_sh_redact_a_repository_alike(text: str, shown: str) -> None:
    """Before, both stopped at the first @: 'p@ssw0rd' showed as '***@ssw0rd@...'."""
    assert redact_repository(text) == shown
    sourced = subprocess.run(
        ["bash", "-c", 'source "$1"; printf "%s\\n" "$2" | redact', "_", str(OFFSITE_SH), text],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OFFSITE_BACKUP_SH": str(OFFSITE_SH.with_name("backup.sh"))},
    )
    assert sourced.stdout == shown + "\n"


# --------------------------------------------------------------------------- inv backups --offsite

SNAPSHOT_ID = "303e15608675c9b71eb072b9b0cde9a4b25a14827c75308aa22241459693d992"


def listing(snapshots: list[dict[str, Any]], sizes: dict[str, int] | None = None) -> str:
    lines = ["SNAPSHOTS " + json.dumps(snapshots)]
    lines += [f"SIZE {snapshot} {size}" for snapshot, size in (sizes or {}).items()]
    return "\n".join(lines) + "\n"


def snapshot(**overrides: Any) -> dict[str, Any]:
    item = {
        "time": "2026-12-04T19:00:34.123456789Z",
        "hostname": "tracker-prod",
        "tags": ["env=tracker-prod", "set=20261204_190034"],
        "id": SNAPSHOT_ID,
        "short_id": SNAPSHOT_ID[:8],
    }
    item.update(overrides)
    return item


def test_offsite_listing_gives_set_time_and_size() -> None:
    [found] = parse_listing(listing([snapshot()], {SNAPSHOT_ID: 942}), "tracker-prod")
    assert found.set_id == "20261204_190034"
    assert found.time == datetime(2026, 12, 4, 19, 0, 34, tzinfo=UTC)
    assert found.size == 942
    assert found.short_id == "303e1560"
    text = format_sets([found], "tracker-prod")
    assert "20261204_190034  2026-12-04 19:00:34      942 B  303e1560" in text
    assert json.loads(sets_json([found]))[0]["size_bytes"] == 942


def test_offsite_listing_takes_a_set_whose_size_restic_did_not_give() -> None:
    """offsite.sh prints "SIZE ID ?" then; the listing (backups --offsite, destroy's
    check) goes on without the size instead of refusing the host's output."""
    [found] = parse_listing(listing([snapshot()]) + f"SIZE {SNAPSHOT_ID} ?\n", "tracker-prod")
    assert found.set_id == "20261204_190034"
    assert found.size is None
    assert "20261204_190034  2026-12-04 19:00:34" in format_sets([found], "tracker-prod")


@pytest.mark.parametrize(
    "output",
    [
        "",
        "SNAPSHOTS not json\n",
        "SNAPSHOTS {}\n",
        listing([snapshot(id="../../etc")]),
        listing([snapshot(tags=["env=other", "set=20261204_190034"])]),
        listing([snapshot(tags=["env=tracker-prod", "set=../x"])]),
        listing([snapshot(tags=["env=tracker-prod"])]),
        listing([snapshot(time="yesterday")]),
        # times of the right shape but no moment: a traceback before, not one error
        listing([snapshot(time="2026-13-01T00:00:00Z")]),
        listing([snapshot(time="2026-12-04T19:00:34+99:00")]),
        listing([snapshot(time="\uff12\uff10\uff12\uff16-12-04T19:00:34Z")]),  # full-width
        listing([snapshot(time="0001-01-01T00:00:00+01:00")]),  # before year 1 in UTC
        listing([snapshot(time="9999-12-31T23:59:59-01:00")]),  # after year 9999 in UTC
        "SNAPSHOTS " + "[" * 100000 + "\n",
        listing([snapshot()]) + "rm -rf /\n",
        listing([snapshot()], {SNAPSHOT_ID: -1}),
    ],
)
def test_offsite_listing_refuses_what_offsite_sh_never_prints(output: str) -> None:
    with pytest.raises(HostDataError):
        parse_listing(output, "tracker-prod")


def test_offsite_listing_errors_name_the_cause() -> None:
    stderr = "2026-12-04T19:00:42Z offsite: error: opening the repository: wrong repository password (x)\n"
    error = listing_error(offsite.OFFSITE_SH_EXIT["PASSWORD"], stderr)
    assert "repository password is wrong" in str(error)
    assert "wrong repository password (x)" in str(error)
    assert "unreachable" in str(listing_error(offsite.OFFSITE_SH_EXIT["UNREACHABLE"], ""))


def test_offsite_listing_script_runs_the_sets_command_in_the_offsite_service() -> None:
    script = listing_script()
    assert f"--no-deps -T {offsite.SERVICE} sets\n" in script
    assert f"export {offsite.HOSTNAME_VARIABLE}\n" in script


def test_every_offsite_container_that_locks_the_repository_is_named_as_offsite_busy_looks_for() -> (
    None
):
    """offsite_busy (offsite.still_running_check) finds the upload, the check and the
    fetch by name; a name it does not match would let restic unlock remove a live lock."""
    env = parse(with_offsite())
    texts = [item.content.decode() for item in render(env).files if item.path.suffix == ".sh"]
    texts.append(offsite_fetch.fetch_script())
    found = set()
    for text in texts:
        found.update(re.findall(r"tracker-backup-\$\$-offsite[a-z-]*", text))
    assert found == {
        "tracker-backup-$$-offsite",
        "tracker-backup-$$-offsite-check",
        "tracker-backup-$$-offsite-fetch",
    }
    for name in found:
        assert re.fullmatch(offsite.RUN_NAME_PATTERN.replace("[0-9]+", r"\$\$"), name), name


def test_the_repository_id_names_the_location_not_its_credentials() -> None:
    """Recorded in a world-readable status file: a hash of a URL with a password in
    it would let anyone test guesses of that password against it."""
    data = s3_data()
    data["backup"]["offsite"]["repository"] = "rest:https://user:first-secret@backup.example.com/t"
    first = offsite.repository_id(parse(data))
    data["backup"]["offsite"]["repository"] = "rest:https://user:other-secret@backup.example.com/t"
    assert offsite.repository_id(parse(data)) == first
    data["backup"]["offsite"]["repository"] = "rest:https://backup.example.com/other"
    assert offsite.repository_id(parse(data)) != first
    secret = "rest:https://user:first-secret@backup.example.com/t"
    assert first != hashlib.sha256(secret.encode()).hexdigest()[:16]


def test_a_snapshot_field_with_a_raw_line_separator_stays_in_its_json_line() -> None:
    """restic's JSON leaves U+0085 (NEL) raw; str.splitlines() cut the snapshot list
    there and the whole listing was refused as not JSON."""
    output = listing([snapshot(hostname="tracker\x85prod")], {SNAPSHOT_ID: 942})
    output = output.replace("\\u0085", "\x85")  # raw, as restic writes it
    assert "\x85" in output
    [found] = parse_listing(output, "tracker-prod")
    assert found.snapshot == SNAPSHOT_ID


def test_the_upload_names_the_machine_offsite_sh_reads() -> None:
    """The maintenance script passes the machine's id as offsite.sh's uploader (the
    uploader= tag that tells a host back after a recover): one variable name for both."""
    script = (REPO_ROOT / "docker/backup/offsite.sh").read_text()
    assert f'UPLOADER="${{{offsite.UPLOADER_VARIABLE}:-$(hostname' in script
    data = sample_data("manual-test-sqlite")
    data["backup"]["offsite"] = {"repository": "/mnt/offsite/restic", "password": "p"}
    maintenance = render(parse(data)).text(paths.MAINTENANCE_SCRIPT)
    assert f"    {offsite.uploader_option()} \\\n" in maintenance
    assert offsite.uploader_option() == (
        f'-e "{offsite.UPLOADER_VARIABLE}=${{tracker_machine_id:-${{{offsite.HOSTNAME_VARIABLE}}}}}"'
    )
