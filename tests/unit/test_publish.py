"""The publish checks over plain data: each refusal with its message (no Docker, no git)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tracker_deployer import publish
from tracker_deployer.errors import DeployError
from tracker_deployer.image import TESTS_PASSED_MARKER
from tracker_deployer.publish import (
    GitState,
    ImageFacts,
    PublishPlan,
    PublishRefused,
    Refusal,
)

HEAD = "a" * 40
OTHER = "b" * 40
IMAGE_ID = "sha256:" + "c" * 64
REPOSITORY = "torrust/tracker-backup"


def ignore(line: str) -> None:
    """A ``say`` that drops progress lines."""


def git_state(changed: tuple[str, ...] = (), tag_commit: str | None = None) -> GitState:
    return GitState(
        root=Path("/src/deployer"),
        head=HEAD,
        changed=changed,
        tag="backup-image-v1.0.0",
        tag_commit=tag_commit,
    )


def image_facts(
    tests_passed: bool = True,
    version_label: str | None = "1.0.0",
    skipped_tests: tuple[str, ...] | None = (),
) -> ImageFacts:
    return ImageFacts(
        reference=f"{REPOSITORY}:1.0.0",
        image_id=IMAGE_ID,
        version_label=version_label,
        tests_passed=tests_passed,
        skipped_tests=skipped_tests if tests_passed else None,
    )


def plan_for(
    *,
    version: str = "1.0.0",
    owner: str = "1.0.0",
    image: ImageFacts | None = None,
    git: GitState | None = None,
    repository: str = REPOSITORY,
) -> PublishPlan:
    return publish.evaluate(
        repository=repository,
        version=version,
        owner_version=owner,
        image=image_facts() if image is None else image,
        git=git or git_state(),
    )


def only_refusal(plan: PublishPlan) -> Refusal:
    assert len(plan.refusals) == 1, plan.refusals
    return plan.refusals[0]


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize("version", ["1.0.0", "0.0.1", "10.20.30", "1.10.0"])
def test_check_version_accepts_release_versions(version: str) -> None:
    assert publish.check_version(version) is None


@pytest.mark.parametrize(
    "version", ["v1.0.0", "1.0", "1.0.0-rc1", "01.0.0", "1.0.0.0", "", " 1.0.0", "latest", "1.0.٣"]
)
def test_check_version_refuses_anything_but_x_y_z(version: str) -> None:
    refusal = publish.check_version(version)
    assert refusal is not None
    assert refusal.message == f"version {version!r} is not a release version X.Y.Z"
    assert "--version 1.0.0" in refusal.hint


def test_a_version_other_than_the_owners_is_refused() -> None:
    refusal = only_refusal(
        plan_for(version="1.1.0", owner="1.0.0", image=image_facts(version_label="1.1.0"))
    )
    assert refusal.message == (
        "version 1.1.0 is not the version inv build-image builds (BACKUP_IMAGE_VERSION=1.0.0)"
    )
    assert refusal.hint == (
        "publish --version 1.0.0, or bump BACKUP_IMAGE_VERSION "
        "(lib/tracker_deployer/config/model.py) and rebuild"
    )


def test_check_owner_version_accepts_the_owners_version() -> None:
    assert publish.check_owner_version("1.0.0", "1.0.0") is None


@pytest.mark.parametrize(
    "repository", ["torrust/tracker-backup", "tracker-backup", "localhost:5000/team/backup"]
)
def test_check_repository_accepts_repository_names(repository: str) -> None:
    assert publish.check_repository(repository) is None


@pytest.mark.parametrize(
    ("repository", "fragment"),
    [
        ("torrust/tracker-backup:1.0.0", "includes a tag or digest"),
        ("torrust/tracker-backup@sha256:" + "d" * 64, "includes a tag or digest"),
        ("Torrust/Backup", "is not an image repository name"),
        ("", "is not an image repository name"),
    ],
)
def test_check_repository_refuses_tags_and_bad_names(repository: str, fragment: str) -> None:
    refusal = publish.check_repository(repository)
    assert refusal is not None
    assert fragment in refusal.message
    assert "--repository torrust/tracker-backup" in refusal.hint


def test_refuse_early_raises_for_a_bad_version() -> None:
    with pytest.raises(PublishRefused) as caught:
        publish.refuse_early(REPOSITORY, "1.0")
    assert str(caught.value) == (
        "version '1.0' is not a release version X.Y.Z — hint: use three numbers without a "
        "prefix or suffix, e.g. --version 1.0.0"
    )


# --------------------------------------------------------------------------- the image


def test_a_missing_image_is_refused_with_a_build_hint() -> None:
    plan = publish.evaluate(
        repository=REPOSITORY,
        version="1.0.0",
        owner_version="1.0.0",
        image=None,
        git=git_state(),
    )
    refusal = only_refusal(plan)
    assert refusal.message == "there is no local image torrust/tracker-backup:1.0.0"
    assert refusal.hint == "build it first: inv build-image --tag torrust/tracker-backup:1.0.0"


def test_an_image_without_the_tests_passed_marker_is_refused() -> None:
    refusal = only_refusal(plan_for(image=image_facts(tests_passed=False)))
    assert refusal.message == (
        f"image torrust/tracker-backup:1.0.0 (cccccccccccc) has no {TESTS_PASSED_MARKER}: "
        "its bats test stage did not run or did not pass"
    )
    assert "inv build-image --tag torrust/tracker-backup:1.0.0" in refusal.hint


def test_a_marker_without_the_bats_record_is_refused() -> None:
    refusal = only_refusal(plan_for(image=image_facts(skipped_tests=None)))
    assert refusal.message == (
        f"image torrust/tracker-backup:1.0.0 (cccccccccccc) has a {TESTS_PASSED_MARKER} "
        "without the bats record: it cannot say which tests its build skipped"
    )
    assert "inv build-image --tag torrust/tracker-backup:1.0.0" in refusal.hint


def test_parse_tests_record_returns_the_skipped_tests() -> None:
    record = (
        "bats summary: 120 tests, 118 passed, 0 failed, 2 skipped\n"
        "skipped: disk full during the snapshot: exit 3 # cannot mount a tmpfs here\n"
        "skipped: config paths: a tar error # no file unreadable for root\n"
    )
    assert publish.parse_tests_record(record) == (
        "disk full during the snapshot: exit 3 # cannot mount a tmpfs here",
        "config paths: a tar error # no file unreadable for root",
    )
    assert (
        publish.parse_tests_record("bats summary: 3 tests, 3 passed, 0 failed, 0 skipped\n") == ()
    )


@pytest.mark.parametrize("text", ["", "\n", "skipped: x # y\n", "ok 1 something\n"])
def test_parse_tests_record_without_a_summary_is_none(text: str) -> None:
    assert publish.parse_tests_record(text) is None


def test_describe_lists_every_test_the_build_skipped() -> None:
    skipped = ("disk full while compressing # cannot mount a tmpfs here", "b # why")
    text = publish.describe(plan_for(image=image_facts(skipped_tests=skipped)), dry_run=True)
    lines = text.splitlines()
    assert "  skipped    disk full while compressing # cannot mount a tmpfs here" in lines
    assert "  skipped    b # why" in lines
    assert "they run in `nox -s bats` on a host" in text
    assert "skipped" not in publish.describe(plan_for(), dry_run=True)


@pytest.mark.parametrize(("label", "shown"), [("0.9.0", "0.9.0"), (None, "no version label")])
def test_an_image_built_from_another_dockerfile_version_is_refused(
    label: str | None, shown: str
) -> None:
    refusal = only_refusal(plan_for(image=image_facts(version_label=label)))
    assert refusal.message == (
        "image torrust/tracker-backup:1.0.0 (cccccccccccc) was built from a Dockerfile "
        f"labelled {shown}, not 1.0.0"
    )


# --------------------------------------------------------------------------- git


def test_a_dirty_working_tree_is_refused_naming_the_paths() -> None:
    refusal = only_refusal(plan_for(git=git_state(changed=("tasks.py", "docker/backup/x.sh"))))
    assert refusal.message == (
        "the git working tree /src/deployer has uncommitted changes "
        "(2 paths: tasks.py, docker/backup/x.sh)"
    )
    assert refusal.hint.startswith("commit (or remove) them first")


def test_a_dirty_tree_message_stays_one_line_with_many_paths() -> None:
    changed = tuple(f"file{number}.txt" for number in range(9))
    refusal = publish.check_clean_tree(git_state(changed=changed))
    assert refusal is not None
    assert "(9 paths: file0.txt, file1.txt, file2.txt, file3.txt, file4.txt, …)" in (
        refusal.message
    )
    assert "\n" not in str(refusal)


def test_one_changed_path_is_singular() -> None:
    refusal = publish.check_clean_tree(git_state(changed=("a.txt",)))
    assert refusal is not None
    assert "(1 path: a.txt)" in refusal.message


def test_a_release_tag_on_another_commit_is_refused() -> None:
    refusal = only_refusal(plan_for(git=git_state(tag_commit=OTHER)))
    assert refusal.message == (
        "git tag backup-image-v1.0.0 points at bbbbbbbbbbbb, not at HEAD (aaaaaaaaaaaa): "
        "version 1.0.0 was released from another commit"
    )
    assert "bump the version" in refusal.hint


@pytest.mark.parametrize("tag_commit", [None, HEAD])
def test_a_release_tag_that_is_absent_or_at_head_is_fine(tag_commit: str | None) -> None:
    assert publish.check_git_tag("1.0.0", git_state(tag_commit=tag_commit)) is None


def test_git_tag_name_is_backup_image_v_version() -> None:
    assert publish.git_tag_for("1.2.3") == "backup-image-v1.2.3"


def test_parse_porcelain_reads_modified_untracked_and_renamed_paths() -> None:
    output = " M tasks.py\0?? new file.txt\0R  new.py\0old.py\0A  lib/a.py\0"
    assert publish.parse_porcelain(output) == ("tasks.py", "new file.txt", "new.py", "lib/a.py")
    assert publish.parse_porcelain("") == ()


# --------------------------------------------------------------------------- the whole plan


def test_a_plan_that_passes_every_check_pushes_version_and_latest() -> None:
    plan = plan_for()
    assert plan.ok
    assert plan.tags == ("torrust/tracker-backup:1.0.0", "torrust/tracker-backup:latest")
    assert plan.source == "torrust/tracker-backup:1.0.0"
    assert all(check.passed for check in plan.checks)


def test_every_failing_check_is_reported_at_once() -> None:
    plan = plan_for(
        version="1.1.0",
        owner="1.0.0",
        image=image_facts(tests_passed=False),
        git=git_state(changed=("x",), tag_commit=OTHER),
    )
    failed = [check.name for check in plan.checks if not check.passed]
    assert failed == [
        "same version as BACKUP_IMAGE_VERSION",
        "image passed its bats test stage",
        "image labelled version 1.1.0",
        "clean git working tree",
        "git tag backup-image-v1.0.0 absent or at HEAD",
    ]
    error = PublishRefused(plan.refusals)
    lines = str(error).split("\n")
    assert len(lines) == 5
    assert all(line.startswith("error: ") for line in lines[1:])
    assert all(" — hint: " in line for line in lines)


def test_describe_a_dry_run_shows_both_tags_the_image_and_each_check() -> None:
    text = publish.describe(plan_for(git=git_state(changed=("x",))), dry_run=True)
    assert "publish torrust/tracker-backup:1.0.0 (dry run: nothing is tagged or pushed)" in text
    assert f"  image      {IMAGE_ID}" in text
    assert "  would push torrust/tracker-backup:1.0.0" in text
    assert "  would push torrust/tracker-backup:latest" in text
    assert "  git tag    backup-image-v1.0.0 (absent)" in text
    assert "  FAIL  clean git working tree" in text
    assert "  ok    image passed its bats test stage" in text


# --------------------------------------------------------------------------- pushing


def test_push_digest_returns_the_digest_of_the_push() -> None:
    said: list[str] = []
    events: list[dict[str, Any]] = [
        {"status": "The push refers to repository [docker.io/torrust/tracker-backup]"},
        {"status": "Pushed", "id": "abc"},
        {"status": "1.0.0: digest: sha256:ee size: 1234"},
        {"aux": {"Tag": "1.0.0", "Digest": "sha256:" + "e" * 64, "Size": 1234}},
    ]
    assert publish.push_digest("r:1.0.0", events, said.append) == "sha256:" + "e" * 64
    assert said == ["  abc: Pushed"]


def test_push_digest_raises_on_an_error_event() -> None:
    events = [{"status": "Preparing"}, {"error": "denied: requested access is denied\n"}]
    with pytest.raises(DeployError) as caught:
        publish.push_digest("torrust/tracker-backup:1.0.0", events, ignore)
    assert caught.value.message == (
        "pushing torrust/tracker-backup:1.0.0 failed: denied: requested access is denied"
    )
    assert caught.value.hint is not None
    assert "docker login" in caught.value.hint


def test_push_digest_without_a_digest_is_an_error() -> None:
    with pytest.raises(DeployError, match="reported no digest"):
        publish.push_digest("r:1", [{"status": "done"}], ignore)


# Tagging and pushing (and refusing to, for a failing plan) run against a real registry:
# tests/integration/test_publish.py.
