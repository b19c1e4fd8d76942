"""`inv publish` against the real Docker daemon, real git checkouts and a real registry.

The real backup image takes minutes to build, so these tests build a tiny
stand-in FROM debian:bookworm-slim with (or without) the tests-passed marker,
in a temporary git checkout whose docker/backup/Dockerfile is that stand-in's.
Its repository is a throw-away name in a registry started for the test
(tests/integration/registry.py: Debian's docker-registry on 127.0.0.1), so a
publish really pushes, and the tests read what arrived through the registry's
HTTP API. The local tags are removed afterwards and the registry is stopped.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tracker_deployer import publish
from tracker_deployer.config.model import BACKUP_IMAGE_VERSION
from tracker_deployer.image import TESTS_PASSED_MARKER

from tests.helpers import REPO_ROOT
from tests.integration.registry import Registry, start_registry

pytestmark = pytest.mark.integration

VERSION = BACKUP_IMAGE_VERSION  # what publish expects by default
_major, _minor, _patch = VERSION.split(".")
OTHER_VERSION = f"{_major}.{_minor}.{int(_patch) + 1}"
SKIPPED = "disk full while compressing # cannot mount a tmpfs here"


@pytest.fixture(scope="module")
def docker_client() -> Any:
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env()
        client.ping()
    except DockerException as error:
        pytest.fail(f"the Docker daemon is not reachable ({error}): run scripts/setup.sh")
    return client


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    started = start_registry(tmp_path / "registry")
    try:
        yield started
    finally:
        started.stop()


def git(root: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def dockerfile(with_marker: bool, name: str = "") -> str:
    # Like docker/backup/Dockerfile: the version comes in as a build argument. The
    # release's own label makes its image its own: tests side by side built one
    # image (one id), and one's temporary container kept another's from removing it.
    lines = [
        "FROM debian:bookworm-slim",
        "ARG VERSION",
        'LABEL org.opencontainers.image.version="${VERSION}"',
        f'LABEL io.tracker-deployer.test-release="{name}"',
    ]
    if with_marker:
        # What docker/backup/tests/run.sh --record writes: the summary, then the skips.
        marker = Path(TESTS_PASSED_MARKER)
        record = f"{publish.TESTS_RECORD_HEADER}2 tests, 1 passed, 0 failed, 1 skipped\\n"
        record += f"skipped: {SKIPPED}\\n"
        lines.append(f"RUN mkdir -p {marker.parent} && printf '{record}' >{marker}")
    return "\n".join(lines) + "\n"


@dataclass
class Release:
    """A temporary checkout with a built stand-in image, ready to publish."""

    root: Path
    registry: Registry
    name: str  # the repository's name inside the registry
    image_id: str

    @property
    def repository(self) -> str:
        return f"{self.registry.address}/{self.name}"

    @property
    def context(self) -> Path:
        return self.root / "docker" / "backup"


def make_release(tmp_path: Path, client: Any, registry: Registry, *, with_marker: bool) -> Release:
    root = tmp_path / "checkout"
    context = root / "docker" / "backup"
    context.mkdir(parents=True)
    name = f"tdtest/tracker-backup-{uuid.uuid4().hex[:10]}"
    (context / "Dockerfile").write_text(dockerfile(with_marker, name))
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "test@example.com")
    git(root, "config", "user.name", "publish test")
    git(root, "config", "commit.gpgsign", "false")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "stand-in backup image")
    image, _ = client.images.build(
        path=str(context),
        tag=f"{registry.address}/{name}:{VERSION}",
        rm=True,
        forcerm=True,
        buildargs={"VERSION": VERSION},
    )
    return Release(root, registry, name, str(image.id))


def remove_release(client: Any, release: Release) -> None:
    from docker.errors import ImageNotFound

    for tag in (VERSION, "latest"):
        with contextlib.suppress(ImageNotFound):
            client.images.remove(f"{release.repository}:{tag}", noprune=False)


@pytest.fixture
def release(tmp_path: Path, docker_client: Any, registry: Registry) -> Iterator[Release]:
    built = make_release(tmp_path, docker_client, registry, with_marker=True)
    yield built
    remove_release(docker_client, built)


@pytest.fixture
def untested_release(tmp_path: Path, docker_client: Any, registry: Registry) -> Iterator[Release]:
    built = make_release(tmp_path, docker_client, registry, with_marker=False)
    yield built
    remove_release(docker_client, built)


def inv_publish(release: Release, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "invoke",
        "publish",
        "--repository",
        release.repository,
        "--context",
        str(release.context),
        *args,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=REPO_ROOT, timeout=300
    )


def has_tag(client: Any, reference: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(reference)
    except ImageNotFound:
        return False
    return True


def assert_nothing_pushed(release: Release) -> None:
    assert release.registry.catalog() == []
    assert release.registry.tags(release.name) == []


# --------------------------------------------------------------------------- pushing


def test_publish_pushes_the_checked_image_as_version_and_latest(release: Release) -> None:
    result = inv_publish(release, "--version", VERSION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    registry, name = release.registry, release.name
    assert registry.catalog() == [name]
    assert registry.tags(name) == [VERSION, "latest"]
    digest, manifest = registry.manifest(name, VERSION)
    latest_digest, _ = registry.manifest(name, "latest")
    assert latest_digest == digest  # both tags name the same manifest
    # What arrived is the image the checks looked at: its config is the local image's ID.
    assert manifest["config"]["digest"] == release.image_id
    config = registry.blob_json(name, manifest["config"]["digest"])
    assert config["config"]["Labels"]["org.opencontainers.image.version"] == VERSION
    # The CLI reports the registry's digests and how to pin the image.
    assert f"pushed {release.repository}:{VERSION}  digest {digest}\n" in result.stdout
    assert f"pushed {release.repository}:latest  digest {digest}\n" in result.stdout
    assert f'"images": {{"backup": "{release.repository}:{VERSION}@{digest}"}}' in result.stdout
    assert f"then tag the release: git tag {publish.git_tag_for(VERSION)} " in result.stdout


def test_publishing_again_pushes_the_same_digest(release: Release) -> None:
    first = inv_publish(release)
    assert first.returncode == 0, first.stdout + first.stderr
    digest, _ = release.registry.manifest(release.name, VERSION)
    again = inv_publish(release)
    assert again.returncode == 0, again.stdout + again.stderr
    assert release.registry.manifest(release.name, VERSION)[0] == digest
    assert release.registry.tags(release.name) == [VERSION, "latest"]


def test_an_unreachable_registry_is_a_one_line_error(release: Release) -> None:
    release.registry.stop()
    result = inv_publish(release, "--version", VERSION)
    assert result.returncode == 1, result.stdout
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: pushing {release.repository}:{VERSION} failed: ")
    assert "127.0.0.1" in errors[0]
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- dry runs


def test_dry_run_prints_both_tags_and_the_image_id(release: Release, docker_client: Any) -> None:
    result = inv_publish(release, "--dry-run", "--version", VERSION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"  would push {release.repository}:{VERSION}" in result.stdout
    assert f"  would push {release.repository}:latest" in result.stdout
    assert f"  image      {release.image_id}" in result.stdout
    assert f"  skipped    {SKIPPED}\n" in result.stdout  # what the marker records
    assert "FAIL" not in result.stdout
    assert "dry run: every check passed; nothing was tagged or pushed" in result.stdout
    assert result.stderr == ""
    # A dry run changes nothing: not the registry, not even the local tags.
    assert_nothing_pushed(release)
    assert not has_tag(docker_client, f"{release.repository}:latest")


def test_dry_run_defaults_to_the_owners_version(release: Release) -> None:
    result = inv_publish(release, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"publish {release.repository}:{VERSION} (dry run" in result.stdout
    assert_nothing_pushed(release)


# --------------------------------------------------------------------------- refusals


def test_an_image_without_the_marker_is_refused(
    untested_release: Release, docker_client: Any
) -> None:
    for args in (["--dry-run", "--version", VERSION], ["--version", VERSION]):
        result = inv_publish(untested_release, *args)
        assert result.returncode == 1, result.stdout
        assert "  FAIL  image passed its bats test stage" in result.stdout
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 1, result.stderr
        assert errors[0].startswith(
            f"error: image {untested_release.repository}:{VERSION} "
            f"({publish.short_id(untested_release.image_id)}) has no {TESTS_PASSED_MARKER}: "
            "its bats test stage did not run or did not pass — hint: rebuild it with "
        )
        assert "Traceback" not in result.stderr
    assert_nothing_pushed(untested_release)
    assert not has_tag(docker_client, f"{untested_release.repository}:latest")


def test_a_dirty_working_tree_is_refused(release: Release) -> None:
    (release.root / "notes.txt").write_text("not committed\n")
    for args in (["--dry-run"], []):
        result = inv_publish(release, "--version", VERSION, *args)
        assert result.returncode == 1
        assert "  FAIL  clean git working tree" in result.stdout
        assert result.stderr.strip() == (
            f"error: the git working tree {release.root.resolve()} has uncommitted changes "
            "(1 path: notes.txt) — hint: commit (or remove) them first, so the published "
            "image is exactly a commit"
        )
    assert_nothing_pushed(release)


def test_a_release_tag_on_another_commit_is_refused(release: Release) -> None:
    git(release.root, "tag", publish.git_tag_for(VERSION))
    tagged = git(release.root, "rev-parse", "HEAD")
    (release.context / "README.md").write_text("changed after the release\n")
    git(release.root, "add", "-A")
    git(release.root, "commit", "-q", "-m", "after the release")
    result = inv_publish(release, "--version", VERSION)
    assert result.returncode == 1
    assert (
        f"error: git tag backup-image-v{VERSION} points at {tagged[:12]}, not at HEAD"
        in result.stderr
    )
    assert_nothing_pushed(release)


def test_a_release_tag_at_head_is_fine(release: Release, docker_client: Any) -> None:
    git(release.root, "tag", "-a", publish.git_tag_for(VERSION), "-m", "release")
    plan = publish.prepare(
        release.context,
        repository=release.repository,
        version=VERSION,
        connect=lambda: docker_client,
    )
    assert plan.ok, plan.refusals
    assert plan.git.tag_commit == plan.git.head


def test_a_version_other_than_the_owners_is_refused(release: Release) -> None:
    result = inv_publish(release, "--version", OTHER_VERSION)
    assert result.returncode == 1
    assert (
        f"error: version {OTHER_VERSION} is not the version inv build-image builds "
        f"(BACKUP_IMAGE_VERSION={VERSION})"
    ) in result.stderr
    assert f"error: there is no local image {release.repository}:{OTHER_VERSION}" in result.stderr
    assert_nothing_pushed(release)


def test_a_malformed_version_is_refused_before_anything_else(release: Release) -> None:
    result = inv_publish(release, "--version", "v1.0")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "error: version 'v1.0' is not a release version X.Y.Z — hint: use three numbers "
        "without a prefix or suffix, e.g. --version 1.0.0"
    )
    assert_nothing_pushed(release)


def test_the_library_push_refuses_a_failing_plan_before_tagging(
    untested_release: Release, docker_client: Any
) -> None:
    plan = publish.prepare(
        untested_release.context,
        repository=untested_release.repository,
        version=VERSION,
        connect=lambda: docker_client,
    )
    assert not plan.ok
    with pytest.raises(publish.PublishRefused, match="bats test stage did not run"):
        publish.push(plan, docker_client, print)
    assert not has_tag(docker_client, f"{untested_release.repository}:latest")
    assert_nothing_pushed(untested_release)


# --------------------------------------------------------------------------- facts


def test_library_reads_the_image_facts(release: Release, docker_client: Any) -> None:
    facts = publish.read_image_facts(docker_client, f"{release.repository}:{VERSION}")
    assert facts == publish.ImageFacts(
        reference=f"{release.repository}:{VERSION}",
        image_id=release.image_id,
        version_label=VERSION,
        tests_passed=True,
        skipped_tests=(SKIPPED,),
    )
    assert publish.read_image_facts(docker_client, f"{release.repository}:9.9.9") is None
    # Reading the facts leaves no container behind.
    leftovers = docker_client.containers.list(all=True, filters={"ancestor": release.image_id})
    assert leftovers == []


def test_outside_a_git_checkout_publish_is_refused(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile(with_marker=True))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "publish",
            "--dry-run",
            "--context",
            str(context),
            "--repository",
            "tdtest/never-built",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: {context} is not inside a git checkout")
