"""The pure planner: diff, the apply script it renders, and which services restart."""

from __future__ import annotations

import hashlib
import os
import resource
import shlex
import stat
import subprocess
from pathlib import Path, PurePosixPath

import pytest
from tracker_deployer import paths
from tracker_deployer.errors import RemoteError
from tracker_deployer.remote.plan import (
    CRON_FILES,
    PENDING_RESTART_FILE,
    PROBE_SCRIPT,
    REMOVE_STALE,
    STATE_FILE,
    Change,
    FileState,
    Plan,
    Scope,
    diff,
    dry_run_plan,
    parse_pending_restart,
    parse_probe,
    parse_state_file,
    probe_paths,
    render_apply_script,
    services_to_restart,
)
from tracker_deployer.render import Directory, RenderedFile, RenderedTree

COMPOSE = paths.COMPOSE_FILE
DOTENV = paths.DOTENV_FILE
TRACKER = paths.TRACKER_CONFIG
CRON = paths.CRON_FILE


def _file(path: PurePosixPath, text: str, mode: int = 0o644, gid: int = 0) -> RenderedFile:
    return RenderedFile(path, text.encode(), mode, 0, gid)


def _tree(*files: RenderedFile) -> RenderedTree:
    directories = (Directory(paths.DEPLOY_DIR), Directory(paths.STORAGE_DIR, 0o750, 0, 1000))
    return RenderedTree("test", files, directories)


def _on_host(
    item: RenderedFile, *, sha256: str | None = None, mode: int | None = None
) -> FileState:
    return FileState(item.path, sha256 or item.sha256, mode or item.mode, item.uid, item.gid)


def _changes(plan: Plan) -> dict[PurePosixPath, Change]:
    return {step.path: step.change for step in plan.steps}


# --------------------------------------------------------------------------- diff


def test_diff_sorts_each_file_into_create_update_metadata_or_unchanged() -> None:
    new, changed, chmoded, same = (
        _file(COMPOSE, "services: {}\n"),
        _file(DOTENV, "A=1\n", 0o640, 1000),
        _file(TRACKER, "[core]\n", 0o640, 1000),
        _file(paths.BACKUP_CONF, "BACKUP_MODE='single'\n"),
    )
    found = {
        DOTENV: _on_host(changed, sha256="0" * 64),
        TRACKER: _on_host(chmoded, mode=0o644),
        paths.BACKUP_CONF: _on_host(same),
    }
    plan = diff(_tree(new, changed, chmoded, same), Scope.PUSH, found)
    assert _changes(plan) == {
        COMPOSE: Change.CREATE,
        DOTENV: Change.UPDATE,
        TRACKER: Change.METADATA,
        paths.BACKUP_CONF: Change.UNCHANGED,
    }
    assert plan.summary() == ("1 created, 1 changed, 1 mode/owner fixed, 0 removed, 1 unchanged")
    assert plan.changed_paths == (COMPOSE, DOTENV, TRACKER)
    assert plan.managed_after == tuple(sorted((COMPOSE, DOTENV, TRACKER, paths.BACKUP_CONF)))


def test_diff_treats_a_probed_but_missing_file_as_new() -> None:
    item = _file(COMPOSE, "x\n")
    plan = diff(_tree(item), Scope.PUSH, {COMPOSE: FileState(COMPOSE, None)})
    assert _changes(plan) == {COMPOSE: Change.CREATE}


def test_diff_keeps_to_its_scope() -> None:
    tree = _tree(_file(COMPOSE, "x\n"), _file(CRON, "0 3 * * * root x\n"))
    push = diff(tree, Scope.PUSH, {})
    cron = diff(tree, Scope.CRON, {})
    assert [step.path for step in push.steps] == [COMPOSE]
    assert [step.path for step in cron.steps] == [CRON]
    assert push.directories == tree.directories
    assert cron.directories == ()  # the cron files' directories are the system's


def test_diff_removes_what_it_put_there_before_and_nothing_else() -> None:
    kept = _file(COMPOSE, "x\n")
    dropped = paths.CADDYFILE  # https was turned off
    gone = paths.PROMETHEUS_CONFIG  # recorded, but already deleted on the host
    foreign = paths.STORAGE_DIR / "tracker/lib/database/tracker.db"  # never ours
    found = {
        COMPOSE: _on_host(kept),
        dropped: FileState(dropped, "1" * 64, 0o644),
        gone: FileState(gone, None),
        foreign: FileState(foreign, "2" * 64, 0o600),
    }
    plan = diff(_tree(kept), Scope.PUSH, found, previously=(COMPOSE, dropped, gone, CRON))
    assert _changes(plan) == {COMPOSE: Change.UNCHANGED, dropped: Change.REMOVE}
    assert plan.managed_after == (COMPOSE,)


def test_diff_with_backups_off_removes_every_cron_file_present() -> None:
    present = CRON_FILES[:2]
    found = {path: FileState(path, "3" * 64, 0o644) for path in present}
    plan = diff(_tree(), Scope.CRON, found)
    assert _changes(plan) == dict.fromkeys(present, Change.REMOVE)
    assert plan.managed_after == ()


def test_diff_content_wins_over_metadata_and_an_owner_change_is_metadata() -> None:
    content, owner = _file(COMPOSE, "x\n"), _file(TRACKER, "[core]\n", 0o640, 1000)
    found = {
        COMPOSE: FileState(COMPOSE, "0" * 64, 0o600, 5, 5),  # content and metadata differ
        TRACKER: FileState(TRACKER, owner.sha256, 0o640, 0, 0),  # only the group differs
    }
    plan = diff(_tree(content, owner), Scope.PUSH, found)
    assert _changes(plan) == {COMPOSE: Change.UPDATE, TRACKER: Change.METADATA}


def test_diff_of_a_host_that_matches_has_no_changes() -> None:
    item = _file(COMPOSE, "x\n")
    plan = diff(_tree(item), Scope.PUSH, {COMPOSE: _on_host(item)}, previously=(COMPOSE,))
    assert not plan.has_changes
    assert plan.changed_paths == ()
    assert plan.summary() == "0 created, 0 changed, 0 mode/owner fixed, 0 removed, 1 unchanged"


def test_diff_in_cron_scope_never_removes_the_push_scopes_files() -> None:
    found = {COMPOSE: FileState(COMPOSE, "1" * 64, 0o644), CRON: FileState(CRON, "2" * 64)}
    plan = diff(_tree(), Scope.CRON, found, previously=(COMPOSE, CRON))
    assert _changes(plan) == {CRON: Change.REMOVE}


def test_dry_run_plan_ensures_every_desired_file_of_the_scope() -> None:
    tree = _tree(_file(COMPOSE, "x\n"), _file(DOTENV, "A=1\n", 0o640, 1000), _file(CRON, "y\n"))
    plan = dry_run_plan(tree, Scope.PUSH)
    assert _changes(plan) == {COMPOSE: Change.ENSURE, DOTENV: Change.ENSURE}
    assert [step.describe() for step in plan.steps] == [
        f"ensure    {COMPOSE}  (0644 0:0)",
        f"ensure    {DOTENV}  (0640 0:1000)",
    ]
    assert plan.directories == tree.directories


def test_probe_paths_are_the_desired_and_previously_managed_files_of_the_scope() -> None:
    tree = _tree(_file(COMPOSE, "x\n"), _file(CRON, "y\n"))
    previously = (paths.CADDYFILE, paths.MAINTENANCE_SCRIPT)
    assert probe_paths(tree, Scope.PUSH, previously) == sorted([str(COMPOSE), str(paths.CADDYFILE)])
    # cron: every file it may manage, wanted or not, so it can remove the stale ones
    assert probe_paths(tree, Scope.CRON, previously) == sorted(str(p) for p in CRON_FILES)


def test_the_probe_script_reports_what_parse_probe_reads(tmp_path: Path) -> None:
    present = tmp_path / "it's here.txt"
    present.write_bytes(b"content\n")
    present.chmod(0o640)
    missing = tmp_path / "not there"
    result = subprocess.run(
        ["bash", "-c", PROBE_SCRIPT, "probe", str(present), str(missing)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    info = present.stat()
    assert parse_probe(result.stdout) == {
        PurePosixPath(present): FileState(
            PurePosixPath(present),
            hashlib.sha256(b"content\n").hexdigest(),
            stat.S_IMODE(info.st_mode),
            info.st_uid,
            info.st_gid,
        ),
        PurePosixPath(missing): FileState(PurePosixPath(missing), None),
    }
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_uid == os.getuid()


def test_parse_state_file_keeps_only_absolute_paths() -> None:
    text = f"{COMPOSE}\n\nrelative/path\n  \n{CRON}\n"
    assert parse_state_file(text) == (COMPOSE, CRON)


# --------------------------------------------------------------------------- apply script


def test_apply_script_installs_beside_the_target_then_renames_over_it() -> None:
    weird = paths.STORAGE_DIR / "it's a $(dir)" / "file name"
    item = _file(weird, "x\n", 0o640, 1000)
    plan = diff(_tree(item), Scope.PUSH, {})
    lines = render_apply_script(plan, "/tmp/up load", ()).splitlines()
    temporary = f"{weird.parent}/.{weird.name}.tracker-deployer.tmp"
    index = lines.index(f"mkdir -p -- {shlex.quote(str(weird.parent))}")
    assert lines[index + 1] == (
        f"install -m 0640 -o 0 -g 1000 -T {shlex.quote('/tmp/up load/0')} {shlex.quote(temporary)}"
        f" || {{ rm -f -- {shlex.quote(temporary)}; exit 1; }}"
    )
    assert lines[index + 2] == f"mv -f -T {shlex.quote(temporary)} {shlex.quote(str(weird))}"
    assert lines[:2] == ["set -o errexit -o nounset", "umask 077"]
    assert "install -d -m 0750 -o 0 -g 1000 /opt/torrust/storage" in lines


def test_apply_script_fixes_metadata_and_removes_without_uploading() -> None:
    item = _file(TRACKER, "[core]\n", 0o640, 1000)
    found = {
        TRACKER: _on_host(item, mode=0o666),
        paths.CADDYFILE: FileState(paths.CADDYFILE, "1" * 64, 0o644),
    }
    plan = diff(_tree(item), Scope.PUSH, found, previously=(paths.CADDYFILE,))
    script = render_apply_script(plan, "/tmp/upload", (paths.CADDYFILE,))
    assert f"chown 0:1000 -- {TRACKER}\nchmod 0640 -- {TRACKER}\n" in script
    assert f"remove_stale {paths.CADDYFILE}\n" in script
    assert "/tmp/upload/" not in script  # nothing to upload


def test_apply_script_records_this_scope_and_keeps_the_other_scopes_record() -> None:
    item = _file(COMPOSE, "x\n")
    plan = diff(_tree(item), Scope.PUSH, {}, previously=(paths.CADDYFILE, CRON))
    script = render_apply_script(plan, "/tmp/upload", (paths.CADDYFILE, CRON))
    record = next(line for line in script.splitlines() if line.startswith("printf "))
    words = shlex.split(record.split(">", 1)[0])
    assert parse_state_file("\n".join(words[2:])) == (CRON, COMPOSE)  # sorted, CADDYFILE gone
    assert record.endswith(f"> {STATE_FILE}.tmp")
    assert script.endswith(f"mv -f {STATE_FILE}.tmp {STATE_FILE}\n")


def test_apply_script_names_each_upload_by_its_step_index() -> None:
    same, new = _file(COMPOSE, "x\n"), _file(DOTENV, "A=1\n", 0o640, 1000)
    plan = diff(_tree(same, new), Scope.PUSH, {COMPOSE: _on_host(same)})
    assert [step.change for step in plan.steps] == [Change.UNCHANGED, Change.CREATE]
    script = render_apply_script(plan, "/tmp/upload", ())
    assert f"-T /tmp/upload/1 {DOTENV.parent}/.{DOTENV.name}.tracker-deployer.tmp || " in script
    assert "/tmp/upload/0" not in script  # an unchanged file is not uploaded
    assert f" {COMPOSE}" not in script.split("printf ")[0]  # nor touched


def test_apply_script_creates_directories_before_installing_files() -> None:
    plan = diff(_tree(_file(COMPOSE, "x\n")), Scope.PUSH, {})
    lines = render_apply_script(plan, "/tmp/upload", ()).splitlines()
    first_install = next(i for i, line in enumerate(lines) if line.startswith("install -m "))
    directories = [i for i, line in enumerate(lines) if line.startswith("install -d -m 07")]
    assert directories
    assert max(directories[:-1]) < first_install  # the last one is the state directory


def test_apply_script_is_valid_bash() -> None:
    item = _file(paths.STORAGE_DIR / "a'b c", "x\n")
    plan = diff(_tree(item), Scope.PUSH, {}, previously=(paths.CADDYFILE,))
    script = render_apply_script(plan, "/tmp/it's", (paths.CADDYFILE,))
    checked = subprocess.run(["bash", "-n"], input=script, text=True, check=False)
    assert checked.returncode == 0


# --------------------------------------------------------------------------- restarts


@pytest.mark.parametrize(
    ("changed", "restarted"),
    [
        ((), ()),
        ((COMPOSE, DOTENV), ()),  # compose itself recreates on these
        ((TRACKER,), ("tracker",)),
        ((paths.PROMETHEUS_CONFIG,), ("prometheus",)),
        ((paths.PROMETHEUS_RULES,), ("prometheus",)),  # the backup alert rules
        ((paths.CADDYFILE,), ("caddy",)),
        ((paths.GRAFANA_PROVISIONING / "dashboards/torrust/tracker.json",), ("grafana",)),
        (
            (paths.CADDYFILE, paths.GRAFANA_PROVISIONING / "x.yml", TRACKER, TRACKER),
            ("tracker", "grafana", "caddy"),
        ),
        ((paths.BACKUP_CONF, paths.BACKUP_PATHS), ()),  # read by each backup run
    ],
)
def test_services_to_restart_are_those_whose_bind_mounted_config_changed(
    changed: tuple[PurePosixPath, ...], restarted: tuple[str, ...]
) -> None:
    assert services_to_restart(changed) == restarted


# --------------------------------------------------------------------------- links uid 1000 plants


def test_no_root_file_or_directory_sits_in_a_directory_another_user_owns() -> None:
    """uid 1000 may rename what is in its own directories and plant a link there:
    root would write (install, mv) or chown (install -d) through it. So nothing
    root writes lives in such a directory (backup.conf and the off-host secrets
    were in storage/backup/etc), and the directories there are that user's."""
    from tracker_deployer.render import render

    from tests.helpers import parse, sample_data

    data = sample_data("manual-test-mysql")
    data["backup"]["offsite"] = {
        "repository": "sftp:backup@offsite.example.com:/srv/t",
        "password": "a long passphrase",
        "keep": {"daily": 7},
    }
    tree = render(parse(data))
    owners = {directory.path: directory.uid for directory in tree.directories}
    for item in tree.files:
        assert owners.get(item.path.parent, 0) == 0, item.path
    for directory in tree.directories:
        parent = owners.get(directory.path.parent, 0)
        assert parent in (0, directory.uid), directory.path


def test_apply_script_makes_a_directory_in_another_users_directory_as_that_user() -> None:
    lib = Directory(paths.TRACKER_LIB_DIR, 0o750, 1000, 1000)
    database = Directory(paths.SQLITE_DIR, 0o750, 1000, 1000)
    tree = RenderedTree("test", files=(), directories=(lib, database))
    script = render_apply_script(diff(tree, Scope.PUSH, {}), "/tmp/upload", ()).splitlines()
    assert f"install -d -m 0750 -o 1000 -g 1000 {paths.TRACKER_LIB_DIR}" in script
    assert (
        f"setpriv --reuid=1000 --regid=1000 --clear-groups install -d -m 0750 {paths.SQLITE_DIR}"
        in script
    )


# --------------------------------------------------------------------------- pending restarts


def test_a_push_that_changes_a_mounted_config_records_the_restart_it_needs(
    tmp_path: Path,
) -> None:
    """A deploy whose compose up or restart never happened (a busy lock, a failed pull,
    Ctrl-C) left the new tracker.toml unread, and the next deploy, whose push changed
    nothing, restarted nothing and said `nothing changed`. The push now records the
    restart with the files; the restart clears it."""
    item = _file(TRACKER, "[core]\n", 0o640, 1000)
    changed = diff(_tree(item), Scope.PUSH, {TRACKER: _on_host(item, sha256="0" * 64)})
    script = render_apply_script(changed, "/tmp/upload", ())
    pending = shlex.quote(str(PENDING_RESTART_FILE))
    assert f"printf '%s\\n' tracker >> {pending}" in script.splitlines()
    # The line as bash runs it: one name a line, appended to what is there.
    record = tmp_path / "pending"
    record.write_text("prometheus\n")
    line = f"printf '%s\\n' tracker >> {shlex.quote(str(record))}"
    subprocess.run(["bash", "-c", line], check=True)
    assert parse_pending_restart(record.read_text()) == ("tracker", "prometheus")
    unchanged = diff(_tree(item), Scope.PUSH, {TRACKER: _on_host(item)})
    assert "pending" not in render_apply_script(unchanged, "/tmp/upload", ())


@pytest.mark.skipif(os.geteuid() != 0, reason="the apply script chowns to root (CI runs as root)")
def test_a_push_cut_off_after_a_mounted_config_changed_still_leaves_its_restart(
    tmp_path: Path,
) -> None:
    """The record was written after the last file: a push that stopped between
    (a full disk, its uploads removed by an interrupted task) left the new
    tracker.toml in place and no record, and the next deploy, finding the new file,
    restarted nothing. Run here with the host's paths under ``tmp_path``."""
    tracker = _file(TRACKER, "[core]\n", 0o640, 1000)
    compose = _file(COMPOSE, "services: {}\n")
    host = {TRACKER: _on_host(tracker, sha256="0" * 64)}
    plan = diff(_tree(tracker, compose), Scope.PUSH, host)
    uploads = tmp_path / "upload"
    uploads.mkdir()
    indexes = {step.path: index for index, step in enumerate(plan.steps)}
    assert indexes[TRACKER] < indexes[COMPOSE]
    (uploads / str(indexes[TRACKER])).write_bytes(tracker.content)  # the compose file's is gone
    root = tmp_path / "host"
    script = render_apply_script(plan, str(uploads), ())
    script = script.replace(str(paths.DEPLOY_DIR), f"{root}{paths.DEPLOY_DIR}")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert Path(f"{root}{TRACKER}").read_bytes() == b"[core]\n"
    record = Path(f"{root}{PENDING_RESTART_FILE}")
    assert parse_pending_restart(record.read_text()) == ("tracker",)


def test_a_push_whose_install_fails_half_way_leaves_no_partial_copy(tmp_path: Path) -> None:
    """GNU install keeps what it wrote when a write fails (a full disk, here a file
    size limit): the partial temporary file kept the disk full until the next push."""
    tracker = _file(TRACKER, "x" * 60_000, 0o640, 1000)
    plan = diff(_tree(tracker), Scope.PUSH, {TRACKER: _on_host(tracker, sha256="0" * 64)})
    uploads = tmp_path / "upload"
    uploads.mkdir()
    (uploads / "0").write_bytes(tracker.content)
    root = tmp_path / "host"
    live = Path(f"{root}{TRACKER}")
    live.parent.mkdir(parents=True)
    live.write_text("[core]\n")
    script = render_apply_script(plan, str(uploads), ())
    script = script.replace(str(paths.DEPLOY_DIR), f"{root}{paths.DEPLOY_DIR}")
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, 16_384)),
    )
    assert done.returncode != 0
    assert live.read_text() == "[core]\n"
    assert sorted(path.name for path in live.parent.iterdir()) == [live.name]


def test_the_pending_restart_record_from_the_host_names_known_services_only() -> None:
    text = "tracker\n$(reboot)\ncaddy; rm -rf /\n\ngrafana\ntracker\n"
    assert parse_pending_restart(text) == ("tracker", "grafana")


@pytest.mark.parametrize(
    "line",
    [
        "F\tabc\t\t/opt/torrust/.env",  # a file gone between its test and its stat
        "F\t" + "0" * 64 + "\t644 0\t/opt/torrust/.env",
        "F\t" + "0" * 64 + "\t999 0 0\t/opt/torrust/.env",
        "F\t" + "G" * 64 + "\t644 0 0\t/opt/torrust/.env",
        "X\t-\t-\t/opt/torrust/.env",
        "M\t-\t-\trelative",
    ],
)
def test_a_probe_line_this_tool_never_writes_is_one_clear_error(line: str) -> None:
    with pytest.raises(RemoteError, match="the host's file probe printed a line"):
        parse_probe(f"M\t-\t-\t{TRACKER}\n{line}\n")


def test_the_state_file_keeps_absolute_normal_paths_only() -> None:
    text = f"{COMPOSE}\n/opt/torrust/../../etc/shadow\n/opt/torrust//x\n/opt/./torrust/y\n{CRON}\n"
    assert parse_state_file(text) == (COMPOSE, CRON)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: files of another user")
def test_a_stale_file_is_removed_but_never_through_another_users_link(tmp_path: Path) -> None:
    """An earlier deploy's files under storage/backup (uid 1000's): the user renamed a
    directory on the way and put a link to one of root's there. Root's `rm -f` deleted
    root's file of that name (a review): it stays. A stale file reached without such a
    link goes: in root's directories, in the user's, in a root-owned directory inside
    the user's (the layout before 1e7fb30: storage/backup/etc, root:1000 0750, which a
    first fix, removing as the user, could not empty), and through root's own link."""
    base = tmp_path / "host"
    owned = base / "storage/backup"
    owned.mkdir(parents=True)
    os.chown(owned, 4242, 4242)
    victim = base / "root-only"
    victim.mkdir()
    (victim / "backup.conf").write_text("root's\n")
    (owned / "planted").symlink_to(victim)  # the user's link
    os.lchown(owned / "planted", 4242, 4242)
    etc = owned / "etc"
    etc.mkdir(mode=0o750)
    os.chown(etc, 0, 4242)
    (etc / "offsite.password").write_text("stale secret\n")
    plain = owned / "plain"
    plain.mkdir()
    os.chown(plain, 4242, 4242)
    (plain / "old.txt").write_text("stale\n")
    (base / "root.txt").write_text("stale\n")
    (base / "real").mkdir()
    (base / "real/linked.txt").write_text("stale\n")
    (base / "link").symlink_to(base / "real")  # root's own link
    (plain / "now-a-directory").mkdir()  # the user's, at a stale file's name: left
    os.chown(plain / "now-a-directory", 4242, 4242)
    stale = [
        owned / "planted/backup.conf",
        etc / "offsite.password",
        plain / "old.txt",
        base / "root.txt",
        base / "link/linked.txt",
        base / "gone/nothing.txt",
        plain / "now-a-directory",
    ]
    script = "\n".join(
        ["set -o errexit -o nounset", REMOVE_STALE]
        + [f"remove_stale {shlex.quote(str(path))}" for path in stale]
    )
    done = subprocess.run(["bash", "-c", script], check=False)
    assert done.returncode == 0
    assert (victim / "backup.conf").read_text() == "root's\n"
    for path in stale[1:-1]:
        assert not path.exists(), path
    assert (plain / "now-a-directory").is_dir()  # and the deploy went on (exit 0)
