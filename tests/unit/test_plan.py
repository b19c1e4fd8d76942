"""The pure planner: diff, the apply script it renders, and which services restart."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import PurePosixPath

import pytest
from tracker_deployer import paths
from tracker_deployer.remote.plan import (
    CRON_FILES,
    STATE_FILE,
    Change,
    FileState,
    Plan,
    Scope,
    diff,
    parse_state_file,
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
    assert f"rm -f -- {paths.CADDYFILE}\n" in script
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
