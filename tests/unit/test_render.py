"""Rendering: layout, modes, determinism, quoting of secrets, manifest."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from tracker_deployer import __version__, paths
from tracker_deployer.errors import DeployError
from tracker_deployer.render import render, write_tree
from tracker_deployer.render.tree import (
    DUMP_TIMEOUT_SECONDS,
    FINISH_TIMEOUT_SECONDS,
    RENDER_OLD_INFIX,
    RENDER_STAGING_INFIX,
)

from tests.helpers import SAMPLES, parse, sample_data

HOSTILE = "p a'ss\"w$(touch /tmp/pwned)`id`;#\\ ünï 🙂"


def test_mysql_backup_tree_has_every_file_of_the_design(mysql_data: dict[str, Any]) -> None:
    tree = render(parse(mysql_data))
    assert [str(path) for path in tree.paths] == [
        "/etc/cron.d/tracker-backup",
        "/etc/cron.d/tracker-backup-drill",
        "/etc/logrotate.d/tracker-backup",
        "/opt/torrust/.env",
        "/opt/torrust/docker-compose.yml",
        "/opt/torrust/storage/backup-etc/backup-paths.txt",
        "/opt/torrust/storage/backup-etc/backup.conf",
        "/opt/torrust/storage/grafana/provisioning/dashboards/torrust.yml",
        "/opt/torrust/storage/grafana/provisioning/dashboards/torrust/backups.json",
        "/opt/torrust/storage/grafana/provisioning/dashboards/torrust/tracker.json",
        "/opt/torrust/storage/grafana/provisioning/datasources/prometheus.yml",
        "/opt/torrust/storage/prometheus/etc/backup-alerts.yml",
        "/opt/torrust/storage/prometheus/etc/prometheus.yml",
        "/opt/torrust/storage/tracker/etc/tracker.toml",
        "/usr/local/bin/maintenance-backup.sh",
        "/usr/local/bin/tracker-backup-drill.sh",
        "/usr/local/bin/tracker-backup-metrics.sh",
        "/usr/local/bin/tracker-backup-verify.sh",
    ]


def test_no_backup_means_no_backup_files(sqlite_data: dict[str, Any]) -> None:
    del sqlite_data["backup"]
    names = [str(path) for path in render(parse(sqlite_data)).paths]
    assert not [name for name in names if "backup" in name]
    assert "backup:" not in render(parse(sqlite_data)).text("/opt/torrust/docker-compose.yml")


def test_https_renders_a_caddyfile_with_each_proxied_domain(mysql_data: dict[str, Any]) -> None:
    mysql_data["tracker"]["http_api"].update({"domain": "api.example.com", "use_tls_proxy": True})
    mysql_data["https"] = {"admin_email": "admin@example.com", "use_staging": True}
    caddyfile = render(parse(mysql_data)).text("/opt/torrust/storage/caddy/etc/Caddyfile")
    assert "email admin@example.com" in caddyfile
    assert "acme-staging-v02" in caddyfile
    assert "api.example.com {\n\treverse_proxy tracker:1212\n}" in caddyfile


@pytest.mark.parametrize("name", SAMPLES)
def test_rendering_twice_gives_byte_identical_trees(name: str, tmp_path: Path) -> None:
    env = parse(sample_data(name))
    first = write_tree(render(env), tmp_path / "a")
    second = write_tree(render(env), tmp_path / "b")
    files_a = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert files_a == files_b
    for relative in files_a:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
        assert (first / relative).stat().st_mode == (second / relative).stat().st_mode


@pytest.mark.parametrize("name", SAMPLES)
def test_manifest_lists_every_file_with_its_checksum_and_mode(name: str, tmp_path: Path) -> None:
    out = write_tree(render(parse(sample_data(name))), tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = sorted("/" + str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    on_disk.remove("/manifest.json")
    assert [entry["path"] for entry in manifest["files"]] == on_disk
    for entry in manifest["files"]:
        local = out / entry["path"].lstrip("/")
        if not entry["secret"]:
            assert hashlib.sha256(local.read_bytes()).hexdigest() == entry["sha256"]
            assert local.stat().st_size == entry["size"]
        # The manifest holds the host's mode; a secret's local copy is the operator's alone.
        local_mode = f"{stat.S_IMODE(local.stat().st_mode):04o}"
        assert local_mode == ("0600" if entry["secret"] else entry["mode"])


@pytest.mark.parametrize("name", SAMPLES)
def test_files_with_secrets_are_never_world_readable(name: str) -> None:
    data = sample_data(name)
    data["tracker"]["http_api"]["admin_token"] = "secret-token-1f3a"
    if "grafana" in data:
        data["grafana"]["admin_password"] = "secret-grafana-9c2e"
    if "mysql" in data:
        data["mysql"]["root_password"] = "secret-root-4b7d"
        data["tracker"]["core"]["database"]["password"] = "secret-db-8e1f"
    if "backup" in data:  # a credential too (threat model), though not a Secret
        data["backup"]["notify_url"] = "https://hc-ping.com/secret-uuid-77aa"
    env = parse(data)
    tree = render(env)
    secrets = [*env.secrets(), "secret-uuid-77aa"]
    for item in tree.files:
        text = item.content.decode()
        holds_secret = any(secret in text for secret in secrets)
        if holds_secret:
            assert item.secret, item.path
        if item.secret:
            assert item.mode & 0o007 == 0, f"{item.path} is {item.mode:04o}"


def test_hostile_secrets_read_back_exactly_from_toml_and_yaml(mysql_data: dict[str, Any]) -> None:
    mysql_data["tracker"]["core"]["database"]["password"] = HOSTILE
    mysql_data["tracker"]["http_api"]["admin_token"] = HOSTILE + "-token"
    tree = render(parse(mysql_data))
    toml = tomllib.loads(tree.text("/opt/torrust/storage/tracker/etc/tracker.toml"))
    assert toml["http_api"]["access_tokens"]["admin"] == HOSTILE + "-token"
    url = urlsplit(toml["core"]["database"]["path"])
    assert url.scheme == "mysql"
    assert unquote(url.username or "") == "tracker_user"
    assert unquote(url.password or "") == HOSTILE
    assert (url.hostname, url.port, url.path) == ("mysql", 3306, "/torrust_tracker")
    prometheus = yaml.safe_load(tree.text("/opt/torrust/storage/prometheus/etc/prometheus.yml"))
    assert prometheus["scrape_configs"][0]["params"]["token"] == [HOSTILE + "-token"]


def test_hostile_password_reads_back_exactly_from_backup_conf_in_bash(
    mysql_data: dict[str, Any], tmp_path: Path
) -> None:
    mysql_data["tracker"]["core"]["database"]["password"] = HOSTILE
    conf = tmp_path / "backup.conf"
    conf.write_bytes(
        render(parse(mysql_data)).file("/opt/torrust/storage/backup-etc/backup.conf").content
    )
    result = subprocess.run(
        ["bash", "-c", '. "$1"; printf "%s" "$DB_PASSWORD"', "_", str(conf)],
        capture_output=True,
        check=True,
        cwd=tmp_path,
    )
    assert result.stdout.decode() == HOSTILE
    assert not Path("/tmp/pwned").exists()


def test_sqlite_backup_conf_points_at_the_tracker_database(sqlite_data: dict[str, Any]) -> None:
    text = render(parse(sqlite_data)).text("/opt/torrust/storage/backup-etc/backup.conf")
    assert "DB_TYPE='sqlite'\n" in text
    assert "DB_PATH='/data/storage/tracker/lib/database/tracker.db'\n" in text
    assert "DB_PASSWORD" not in text
    toml = tomllib.loads(
        render(parse(sqlite_data)).text("/opt/torrust/storage/tracker/etc/tracker.toml")
    )
    assert toml["core"]["database"] == {
        "driver": "sqlite3",
        "path": "/var/lib/torrust/tracker/database/tracker.db",
    }


def test_backup_paths_list_every_config_file_once(mysql_data: dict[str, Any]) -> None:
    text = render(parse(mysql_data)).text("/opt/torrust/storage/backup-etc/backup-paths.txt")
    entries = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(entries) == len(set(entries))
    assert "/data/storage/tracker/etc/tracker.toml" in entries
    assert "/data/compose/docker-compose.yml" in entries
    assert "/data/compose/.env" in entries
    assert all(entry.startswith(("/data/storage/", "/data/compose/")) for entry in entries)


def test_cron_file_follows_cron_d_rules(mysql_data: dict[str, Any]) -> None:
    mysql_data["backup"]["schedule"] = "*/30 1-5 * * mon-fri"
    item = render(parse(mysql_data)).file("/etc/cron.d/tracker-backup")
    text = item.content.decode()
    assert item.mode == 0o644
    assert "." not in item.path.name
    assert text.endswith("\n")
    assert "\r" not in text
    assert 'MAILTO=""\n' in text
    job = [
        line
        for line in text.splitlines()
        if line and not line.startswith("#") and "=" not in line.split()[0]
    ]
    assert job == [
        "*/30 1-5 * * mon-fri root cd /opt/torrust && /usr/local/bin/maintenance-backup.sh --quiet",
        "@reboot root cd /opt/torrust && /usr/local/bin/maintenance-backup.sh --recover --quiet",
    ]
    assert not [line for line in job if "%" in line]


def test_hardening_04_cron_file_starts_a_tracker_left_stopped_at_boot(
    sqlite_data: dict[str, Any],
) -> None:
    text = render(parse(sqlite_data)).text("/etc/cron.d/tracker-backup")
    assert (
        "\n@reboot root cd /opt/torrust && /usr/local/bin/maintenance-backup.sh --recover --quiet\n"
        in text
    )


def test_hardening_09_status_lives_in_a_root_owned_directory_outside_the_backup_dir(
    sqlite_data: dict[str, Any],
) -> None:
    tree = render(parse(sqlite_data))
    directories = {str(d.path): d for d in tree.directories}
    status = directories["/opt/torrust/backup-status"]
    assert (status.mode, status.uid, status.gid) == (0o755, 0, 0)
    # every ancestor is root's and not writable by others: uid 1000 cannot swap it
    parent = directories["/opt/torrust"]
    assert (parent.uid, parent.mode & 0o022) == (0, 0)
    assert not str(status.path).startswith(str(paths.BACKUP_DIR))
    script = tree.text("/usr/local/bin/maintenance-backup.sh")
    assert "readonly STATUS_DIR='/opt/torrust/backup-status'\n" in script
    assert "readonly MARKER_FILE='/opt/torrust/backup-status/tracker-stopped-by-backup'\n" in script


def test_hardening_10_max_downtime_reaches_the_maintenance_script(
    sqlite_data: dict[str, Any],
) -> None:
    script = render(parse(sqlite_data)).text("/usr/local/bin/maintenance-backup.sh")
    assert "readonly MAX_DOWNTIME_SECONDS=600\n" in script
    sqlite_data["backup"]["max_downtime_seconds"] = 45
    script = render(parse(sqlite_data)).text("/usr/local/bin/maintenance-backup.sh")
    assert "readonly MAX_DOWNTIME_SECONDS=45\n" in script


def test_write_tree_refuses_a_foreign_non_empty_directory(
    sqlite_data: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(Exception, match=r"holds no manifest\.json"):
        write_tree(render(parse(sqlite_data)), tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "manifest",
    [
        '{"name": "my-web-app", "version": "1.0.0"}',  # some other tool's manifest.json
        '{"generator": "other-tool 1.0", "format": 1}',
        '{"generator": "tracker-deployer 0.1.0"}',  # no format key
        '{"generator": "tracker-deployer 0.1.0", "format": true}',
        '{"generator": "tracker-deployer 0.1.0", "format": 99}',
        '["tracker-deployer"]',
        "not json at all",
    ],
)
def test_hardening_13_render_out_refuses_a_directory_it_did_not_write(
    sqlite_data: dict[str, Any], tmp_path: Path, manifest: str
) -> None:
    out = tmp_path / "project"
    out.mkdir()
    (out / "manifest.json").write_text(manifest)
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DeployError) as error:
        write_tree(render(parse(sqlite_data)), out)
    assert str(error.value).startswith(f"{out} holds a manifest.json that this tool did not write")
    assert "only a directory that `inv render` wrote itself is replaced" in str(error.value)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "precious.txt"]
    assert (out / "manifest.json").read_text() == manifest
    assert [p.name for p in tmp_path.iterdir()] == ["project"]


def test_hardening_13_a_linked_manifest_json_does_not_make_a_directory_ours(
    sqlite_data: dict[str, Any], tmp_path: Path
) -> None:
    ours = write_tree(render(parse(sqlite_data)), tmp_path / "ours")
    out = tmp_path / "project"
    out.mkdir()
    (out / "manifest.json").symlink_to(ours / "manifest.json")
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DeployError, match="that this tool did not write"):
        write_tree(render(parse(sqlite_data)), out)
    assert (out / "precious.txt").read_text() == "keep me"


def test_hardening_13_render_out_refuses_a_file(
    sqlite_data: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    with pytest.raises(DeployError, match="exists and is not a directory"):
        write_tree(render(parse(sqlite_data)), out)
    assert out.read_text() == "keep me"


def test_hardening_13_the_manifest_names_its_generator_and_format(
    sqlite_data: dict[str, Any], tmp_path: Path
) -> None:
    out = write_tree(render(parse(sqlite_data)), tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generator"] == f"tracker-deployer {__version__}"
    assert manifest["format"] == 1
    (out / "opt/torrust/stray.txt").write_text("left by hand")
    write_tree(render(parse(sqlite_data)), out)  # an earlier render is replaced
    assert not (out / "opt/torrust/stray.txt").exists()


@pytest.mark.parametrize("name", SAMPLES)
def test_hardening_14_manifest_holds_no_hash_or_size_of_a_file_with_secrets(
    name: str, tmp_path: Path
) -> None:
    data = sample_data(name)
    data["tracker"]["http_api"]["admin_token"] = "guessable"
    tree = render(parse(data))
    out = write_tree(tree, tmp_path / "out")
    text = (out / "manifest.json").read_text()
    entries = {entry["path"]: entry for entry in json.loads(text)["files"]}
    secret_files = [item for item in tree.files if item.secret]
    assert "/opt/torrust/storage/tracker/etc/tracker.toml" in entries
    assert secret_files
    for item in secret_files:
        entry = entries[str(item.path)]
        assert entry["secret"] is True
        assert "sha256" not in entry
        assert "size" not in entry
        assert item.sha256 not in text
    for item in tree.files:
        if not item.secret:
            assert entries[str(item.path)]["sha256"] == item.sha256


def test_write_tree_replaces_an_earlier_render_without_leftovers(
    mysql_data: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    write_tree(render(parse(mysql_data)), out)
    del mysql_data["backup"]
    write_tree(render(parse(mysql_data)), out)
    assert not (out / "etc/cron.d/tracker-backup").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert os.access(out / "opt/torrust/docker-compose.yml", os.R_OK)


def test_the_dump_and_finish_bounds_reach_the_script_and_the_docs(
    sqlite_data: dict[str, Any],
) -> None:
    script = render(parse(sqlite_data)).text("/usr/local/bin/maintenance-backup.sh")
    assert f"readonly DUMP_TIMEOUT_SECONDS={DUMP_TIMEOUT_SECONDS}\n" in script
    assert f"readonly FINISH_TIMEOUT_SECONDS={FINISH_TIMEOUT_SECONDS}\n" in script
    docs = " ".join((paths.REPO_ROOT / "docs/user-guide/backup.md").read_text().split())
    assert f"may take at most **{DUMP_TIMEOUT_SECONDS // 3600} hours**" in docs
    assert f"`finish` at most **{FINISH_TIMEOUT_SECONDS // 3600} hours**" in docs
    assert f"within {DUMP_TIMEOUT_SECONDS} s after the snapshot was open" in docs


def test_shellcheck_sees_every_operation_script(tmp_path: Path) -> None:
    """nox -s shellcheck checks what scripts/render_shell_for_lint.py renders: every
    template of templates/operations/ (output-relay is included by the others)."""
    out = tmp_path / "rendered"
    result = subprocess.run(
        [sys.executable, str(paths.REPO_ROOT / "scripts/render_shell_for_lint.py"), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    templates = {
        path.name.removesuffix(".sh.j2")
        for path in (paths.TEMPLATES_DIR / "operations").glob("*.sh.j2")
    }
    rendered = {path.name.removesuffix(".sh") for path in (out / "operations").glob("*.sh")}
    assert templates - {"output-relay"} <= rendered


def test_a_render_stopped_between_its_renames_puts_the_earlier_render_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = parse(sample_data("manual-test-sqlite"))
    out = write_tree(render(env), tmp_path / "out")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    real_rename = Path.rename

    def rename(self: Path, target: Any) -> Path:
        if Path(target) == out and self.name.startswith(f".out{RENDER_STAGING_INFIX}"):
            raise KeyboardInterrupt  # Ctrl-C after the earlier render was moved away
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        write_tree(render(env), out)
    monkeypatch.undo()
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_two_renders_of_one_environment_at_once_both_land_and_leave_nothing_beside(
    tmp_path: Path,
) -> None:
    """Each swapped its tree in over the other's: one failed (Directory not empty)
    and left a copy of the earlier render, secrets and all, beside the output."""
    env = parse(sample_data("manual-test-sqlite"))
    tree = render(env)
    out = write_tree(tree, tmp_path / "out")
    failures: list[BaseException] = []

    def again() -> None:
        try:
            for _ in range(15):
                write_tree(tree, out)
        except BaseException as error:  # collected, asserted below
            failures.append(error)

    threads = [threading.Thread(target=again) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert failures == []
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert json.loads((out / "manifest.json").read_text())["files"]


@pytest.mark.parametrize("script", [paths.MAINTENANCE_SCRIPT, paths.METRICS_SCRIPT])
def test_a_file_written_over_in_place_counts_as_written(script: Path, tmp_path: Path) -> None:
    """No room for a temporary copy (mktemp fails): the file is written over in place,
    and that counts as written even when the note about it cannot be written (the log
    closed, stderr a dropped session): otherwise the run's status counted as unwritten
    and the metrics kept saying that the run before had succeeded."""
    text = render(parse(sample_data("manual-test-sqlite"))).text(str(script))
    function = re.search(r"^replace_file\(\) \{\n.*?^\}\n", text, re.MULTILINE | re.DOTALL)
    assert function is not None, f"{script} has no replace_file"
    target = tmp_path / "last-run.env"
    target.write_text("result=success\n")
    test = (
        f"{function.group(0)}"
        "mktemp() { return 1; }\n"
        "replace_file_note() { printf 'note: %s\\n' \"$1\"; return 1; }\n"
        f'replace_file {shlex.quote(str(target))} "result=failure"; echo "rc=$?"\n'
    )
    done = subprocess.run(["bash", "-c", test], capture_output=True, text=True, timeout=30)
    assert target.read_text() == "result=failure"
    assert "written over in place" in done.stdout
    assert done.stdout.endswith("rc=0\n"), done.stdout + done.stderr


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_killed_render_leaves_no_copy_of_a_render_beside_the_output_for_long(
    tmp_path: Path,
) -> None:
    """SIGKILL runs no cleanup: the hidden earlier render (secrets and all) and the
    half-written staging tree stayed beside the output for good (a review)."""
    env = parse(sample_data("manual-test-sqlite"))
    out = write_tree(render(env), tmp_path / "out")
    old = f".out{RENDER_OLD_INFIX}ab_c1234"
    (tmp_path / old).mkdir()
    (out / "").rename(tmp_path / old / "out")  # as a kill left it...
    write_tree(render(env), out)
    staging = tmp_path / f".out{RENDER_STAGING_INFIX}zz9_0000"
    (staging / "opt").mkdir(parents=True)  # ...and a staging tree
    (staging / "opt/secret").write_text("s3cret")
    other = f".other{RENDER_OLD_INFIX}ab_c1234"
    (tmp_path / other).mkdir()  # another output's: not ours to touch
    (tmp_path / ".out.notours").mkdir()
    (tmp_path / ".out.original").mkdir()  # an operator's, named like mkdtemp's (a review)
    write_tree(render(env), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [other, ".out.notours", ".out.original", "out"]
    )


def test_a_render_killed_between_its_renames_gets_the_earlier_render_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the earlier render was moved aside: the next render puts it back
    before anything else, so a failure of that render loses nothing."""
    env = parse(sample_data("manual-test-sqlite"))
    out = write_tree(render(env), tmp_path / "out")
    before = _files(out)
    (tmp_path / f".out{RENDER_OLD_INFIX}ab_c1234").mkdir()
    out.rename(tmp_path / f".out{RENDER_OLD_INFIX}ab_c1234/out")

    def no_space(**options: Any) -> str:
        raise OSError(28, "No space left on device", str(tmp_path / ".out.x"))

    monkeypatch.setattr("tracker_deployer.render.tree.tempfile.mkdtemp", no_space)
    with pytest.raises(DeployError) as caught:
        write_tree(render(env), out)
    monkeypatch.undo()
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert str(caught.value).startswith(
        f"cannot write the rendered files to {out}: No space left on device ("
    )


def test_a_render_below_a_file_names_the_output_and_the_file(tmp_path: Path) -> None:
    """It was 'error: File exists (/tmp/x/afile)': no --out, and the wrong reason."""
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile/sub/out"
    with pytest.raises(DeployError) as caught:
        write_tree(render(parse(sample_data("manual-test-sqlite"))), out)
    assert str(caught.value).startswith(
        f"cannot write the rendered files to {out}: {tmp_path / 'afile'} is not a directory"
        " — hint: check that the path is a directory you can write"
    )
