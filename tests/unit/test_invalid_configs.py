"""The invalid-config corpus: every case in tests/data/invalid is refused, at its path.

Each case patches a sample config (see ``tests/helpers.py: apply_patch``) and lists
the issues the parser must report: the path exactly, the fragment anywhere in the
message or hint. All expected issues of a case must come back from ONE parse, which
is what proves that every problem is reported at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tracker_deployer.config import load_env, parse_env_text
from tracker_deployer.errors import ConfigError, ConfigIssue

from tests.helpers import (
    REPO_ROOT,
    InvalidCase,
    apply_patch,
    invalid_cases,
    parse,
    patch_path,
    sample_data,
)

CASES = invalid_cases()
CASE_IDS = [case.name for case in CASES]

# A few cases, one per kind of problem, that also go through the real CLI.
CLI_CASES = (
    "unknown-key-backup-retention-typo",
    "backup-schedule-hour-25",
    "retention-days-zero",
    "tracker-udp-trackers-same-port",
    "mysql-driver-without-mysql-section",
    "many-errors-across-sections",
)


def _write_case(case: InvalidCase, directory: Path) -> Path:
    path = directory / f"{case.name}.json"
    path.write_text(json.dumps(case.data(), indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def _json(data: object) -> str:
    return json.dumps(data, sort_keys=True)


def _load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_env(path)
    return caught.value


def _matches(issue: ConfigIssue, where: str, fragment: str) -> bool:
    return issue.path == where and fragment in f"{issue.message} {issue.hint or ''}"


def test_corpus_has_the_cases_the_issue_asks_for() -> None:
    assert len(CASES) >= 60
    assert {case.base for case in CASES} == {"manual-test-mysql", "manual-test-sqlite"}
    assert any(
        len(case.expect) >= 5 and len({w.split(".")[0] for w, _ in case.expect}) >= 5
        for case in CASES
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_case_really_changes_its_base(case: InvalidCase) -> None:
    assert case.description.strip()
    # Compared as JSON text: 7.0 == 7 in Python, but not in the file.
    assert _json(case.data()) != _json(sample_data(case.base))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_load_env_reports_every_expected_issue(case: InvalidCase, tmp_path: Path) -> None:
    path = _write_case(case, tmp_path)

    error = _load_error(path)

    issues = "\n".join(repr(issue) for issue in error.issues)
    for where, fragment in case.expect:
        assert any(_matches(issue, where, fragment) for issue in error.issues), (
            f"no issue at {where!r} containing {fragment!r}; got:\n{issues}"
        )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_error_message_names_the_file_and_each_path(case: InvalidCase, tmp_path: Path) -> None:
    path = _write_case(case, tmp_path)

    error = _load_error(path)

    text = str(error)
    assert error.source == str(path)
    assert len(text.splitlines()) == len(error.issues)
    for line in text.splitlines():
        assert line.startswith(f"{path}: at ")
    for where, _ in case.expect:
        assert f"{path}: at '{where}': " in text


@pytest.mark.parametrize("name", CLI_CASES)
def test_inv_validate_exits_1_with_the_issues_and_no_traceback(name: str, tmp_path: Path) -> None:
    case = next(case for case in CASES if case.name == name)
    path = _write_case(case, tmp_path)
    inv = Path(sys.executable).parent / "inv"

    result = subprocess.run(
        [str(inv), "validate", "--env", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for where, _ in case.expect:
        assert f"{path}: at '{where}': " in result.stderr
    count = len(_load_error(path).issues)
    assert f"error: {count} problem{'s' if count != 1 else ''} in {path}" in result.stderr


# --------------------------------------------------------------------------- text-level cases


def test_duplicate_keys_are_refused_not_silently_merged() -> None:
    text = '{"environment": {"name": "a"}, "environment": {"name": "b"}}'

    with pytest.raises(ConfigError) as caught:
        parse_env_text(text, source="envs/dup.json")

    (issue,) = caught.value.issues
    assert issue.path == ""
    assert "key 'environment' appears twice" in issue.message
    assert "envs/dup.json: at the top level: key 'environment' appears twice" in str(caught.value)


def test_duplicate_keys_in_a_nested_object_are_refused() -> None:
    text = json.dumps(sample_data("manual-test-sqlite")).replace(
        '"retention_days": 7', '"retention_days": 7, "retention_days": 30'
    )

    with pytest.raises(ConfigError) as caught:
        parse_env_text(text, source="envs/dup.json")

    assert "key 'retention_days' appears twice" in caught.value.issues[0].message


def test_broken_json_names_line_and_column() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_env_text(
            '{\n  "environment": {"name": "a"}\n  "tracker": {}\n}', source="envs/x.json"
        )

    (issue,) = caught.value.issues
    assert "not valid JSON" in issue.message
    assert "(line 3, column 3)" in issue.message
    assert issue.hint is not None


@pytest.mark.parametrize("text", ["[]", '"config"', "null", "42"])
def test_a_config_that_is_not_an_object_is_refused(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_env_text(text, source="envs/x.json")

    assert [issue.path for issue in caught.value.issues] == [""]
    assert "must be an object" in caught.value.issues[0].message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    error = _load_error(tmp_path / "nope.json")

    assert error.issues[0].message == "file not found"


# --------------------------------------------------------------------------- the patch helper


def test_patch_path_splits_keys_and_indices() -> None:
    assert patch_path("tracker.udp_trackers[0].bind_address") == [
        "tracker",
        "udp_trackers",
        0,
        "bind_address",
    ]


@pytest.mark.parametrize("path", ["", ".a", "a..b", "a[x]", "a[0", "a]"])
def test_patch_path_refuses_malformed_paths(path: str) -> None:
    with pytest.raises(ValueError, match="bad patch path"):
        patch_path(path)


def test_apply_patch_sets_appends_and_deletes_on_a_copy() -> None:
    base = sample_data("manual-test-sqlite")

    patched = apply_patch(
        base,
        {"backup.retention_days": 30, "tracker.udp_trackers[1]": {"bind_address": "0.0.0.0:6868"}},
        ["grafana", "tracker.core.private"],
    )

    assert patched["backup"]["retention_days"] == 30
    assert patched["tracker"]["udp_trackers"][1] == {"bind_address": "0.0.0.0:6868"}
    assert "grafana" not in patched
    assert "private" not in patched["tracker"]["core"]
    assert base == sample_data("manual-test-sqlite")


@pytest.mark.parametrize(
    ("set_", "delete"),
    [({"nope.key": 1}, []), ({"tracker.udp_trackers[5]": {}}, []), ({}, ["backup.nope"])],
)
def test_apply_patch_fails_loudly_on_a_path_that_does_not_exist(
    set_: dict[str, object], delete: list[str]
) -> None:
    with pytest.raises(KeyError, match="patch path"):
        apply_patch(sample_data("manual-test-sqlite"), set_, delete)


# --------------------------------------------------------------------------- edge cases
# Configs that once slipped through the parser (found by the schema/corpus work).


@pytest.mark.parametrize(
    ("where", "patch"),
    [
        ("backup.mailto", {"backup.mailto": "ops@example.com\n"}),
        ("backup.notify_url", {"backup.notify_url": "https://hc-ping.com/uuid\n"}),
        ("environment.name", {"environment.name": "tracker\n"}),
        ("ssh_credentials.username", {"ssh_credentials.username": "torrust\n"}),
        ("images.tracker", {"images": {"tracker": "torrust/tracker:v3.0.0\n"}}),
        ("grafana.domain", {"grafana.domain": "grafana.example.com\n"}),
    ],
    ids=["mailto", "notify_url", "environment-name", "ssh-username", "image", "domain"],
)
def test_parser_refuses_a_trailing_newline(where: str, patch: dict[str, object]) -> None:
    data = apply_patch(sample_data("manual-test-sqlite"), patch)

    with pytest.raises(ConfigError) as caught:
        parse(data)

    assert [issue.path for issue in caught.value.issues] == [where]


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("tracker.udp_trackers[0].bind_address", "0.0.0.0:²"),
        ("backup.schedule", "² 3 * * *"),
        ("backup.schedule", "*/² * * * *"),
    ],
    ids=["bind-address-port", "cron-value", "cron-step"],
)
def test_parser_refuses_non_ascii_digits_without_crashing(where: str, value: str) -> None:
    data = apply_patch(sample_data("manual-test-sqlite"), {where: value})

    with pytest.raises(ConfigError) as caught:
        parse(data)

    assert [issue.path for issue in caught.value.issues] == [where]


@pytest.mark.parametrize("schedule", ["0 3 30 2 *", "0 3 31 2 *", "0 3 31 4 *"])
def test_parser_refuses_a_schedule_that_never_fires(schedule: str) -> None:
    data = apply_patch(sample_data("manual-test-sqlite"), {"backup.schedule": schedule})

    with pytest.raises(ConfigError) as caught:
        parse(data)

    assert [issue.path for issue in caught.value.issues] == ["backup.schedule"]
