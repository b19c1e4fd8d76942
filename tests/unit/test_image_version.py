"""The backup image's version: the stacks run and `inv build-image` builds
BACKUP_IMAGE_VERSION, and the image's content is recorded for that version
(docker/backup/content.sha256), so content that changes without a version bump
fails here. That the Dockerfile takes the version as a build argument and holds
none of its own is checked in tests/unit/test_owners.py."""

from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path

import pytest
from tracker_deployer import image
from tracker_deployer.config.model import BACKUP_IMAGE_VERSION, DEFAULT_IMAGES
from tracker_deployer.errors import DeployError
from tracker_deployer.image import build_args, default_tag
from tracker_deployer.paths import COMPOSE_FILE
from tracker_deployer.publish import check_version
from tracker_deployer.render import render

from tests.helpers import REPO_ROOT, parse, sample_data

BACKUP_CONTEXT = REPO_ROOT / "docker" / "backup"
CONTENT_RECORD = BACKUP_CONTEXT / "content.sha256"
# The files of the build context that make the final image: the Dockerfile (its
# packages, user, label, links and entry point) and what its final stage copies
# from the test stage (backup.sh, offsite.sh, lib/). Not in it: tests/ (the bats
# suite, only in the test stage), README.md and content.sha256.
IMAGE_INPUTS = ("Dockerfile", "backup.sh", "offsite.sh", "lib")


def image_content_sha256(context: Path = BACKUP_CONTEXT) -> str:
    """sha256 over every file of IMAGE_INPUTS, sorted by path: each file's path
    relative to ``context``, whether it is executable, its size and its bytes (so a
    rename, a chmod and an edit each change it)."""
    files = sorted(
        (path.relative_to(context).as_posix(), path)
        for name in IMAGE_INPUTS
        for path in [context / name, *(context / name).rglob("*")]
        if path.is_file()
    )
    digest = hashlib.sha256()
    for relative, path in files:
        data = path.read_bytes()
        executable = "x" if path.stat().st_mode & stat.S_IXUSR else "-"
        digest.update(f"{relative}\0{executable}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def recorded_content() -> tuple[str, str]:
    """The one ``VERSION SHA256`` line of docker/backup/content.sha256."""
    lines = [
        line.strip()
        for line in CONTENT_RECORD.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(lines) == 1, f"{CONTENT_RECORD.name}: expected one 'VERSION SHA256' line: {lines}"
    match = re.fullmatch(r"(\S+) ([0-9a-f]{64})", lines[0])
    assert match is not None, f"{CONTENT_RECORD.name}: not 'VERSION SHA256': {lines[0]!r}"
    return match[1], match[2]


def test_the_recorded_image_content_is_the_current_versions() -> None:
    """A bump without recording the new version's content fails too."""
    version, _ = recorded_content()
    assert version == BACKUP_IMAGE_VERSION, (
        f"docker/backup/content.sha256 records the content of {version}, but "
        f"BACKUP_IMAGE_VERSION is {BACKUP_IMAGE_VERSION}: record {BACKUP_IMAGE_VERSION} "
        f"with its content, {image_content_sha256()}"
    )


def test_the_image_content_is_the_one_recorded_for_its_version() -> None:
    """A published version is never pushed again with other content
    (docs/user-guide/backup-image.md): content that changed needs a new version."""
    version, recorded = recorded_content()
    actual = image_content_sha256()
    assert actual == recorded, (
        f"docker/backup's image content changed since {version} was recorded: bump "
        "BACKUP_IMAGE_VERSION (docs/user-guide/backup-image.md) and record the new "
        f"version's content in docker/backup/content.sha256 (now {actual})"
    )


def test_the_content_hash_covers_what_the_dockerfile_puts_into_the_image() -> None:
    """IMAGE_INPUTS are the context's files the Dockerfile copies, except tests/,
    which only the test stage has: a file a new COPY adds must be hashed too."""
    text = (BACKUP_CONTEXT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    final = text[text.rindex("\nFROM ") :]
    copies = re.findall(r"^(?:COPY|ADD)\s+(.*)$", text, re.MULTILINE)
    from_context = {
        source.rstrip("/")
        for line in copies
        if not line.startswith("--from=")
        for source in line.split()[:-1]
        if not source.startswith("--")
    }
    hint = "update IMAGE_INPUTS in tests/unit/test_image_version.py"
    assert from_context == {*IMAGE_INPUTS, "tests"} - {"Dockerfile"}, hint
    shipped = [
        s for line in re.findall(r"^COPY\s+(.*)$", final, re.MULTILINE) for s in line.split()
    ]
    assert not [s for s in shipped if s.startswith("/opt/backup/tests/")], hint
    assert not re.search(r"^ADD\s", text, re.MULTILINE), hint


def test_the_content_hash_sees_an_edit_a_rename_and_a_chmod(tmp_path: Path) -> None:
    for name in IMAGE_INPUTS:
        source = BACKUP_CONTEXT / name
        target = tmp_path / name
        if source.is_dir():
            target.mkdir()
            for file in source.rglob("*"):
                if file.is_file():
                    copy = target / file.relative_to(source)
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    copy.write_bytes(file.read_bytes())
                    copy.chmod(file.stat().st_mode)
        else:
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "new.bats").write_text("# not in the image\n")
    (tmp_path / "README.md").write_text("# not in the image\n")
    original = image_content_sha256(tmp_path)
    assert original == image_content_sha256()  # tests/ and README.md do not count
    seen = {original}
    script = tmp_path / "offsite.sh"
    script.write_bytes(script.read_bytes() + b"# a comment\n")
    seen.add(image_content_sha256(tmp_path))
    script.chmod(0o644)
    seen.add(image_content_sha256(tmp_path))
    part = sorted((tmp_path / "lib").glob("*.sh"))[0]
    part.rename(part.with_name("renamed.sh"))
    seen.add(image_content_sha256(tmp_path))
    assert len(seen) == 4


def test_default_backup_image_is_the_version_the_build_gets() -> None:
    assert build_args()["VERSION"] == BACKUP_IMAGE_VERSION  # `inv build-image --build-arg`
    assert default_tag() == DEFAULT_IMAGES["backup"]  # what `inv build-image` tags


def test_backup_image_version_is_a_release_version() -> None:
    assert check_version(BACKUP_IMAGE_VERSION) is None  # never "latest" or a moving tag


def test_rendered_stack_runs_the_pinned_backup_image() -> None:
    tree = render(parse(sample_data("manual-test-mysql")))
    compose = tree.text(COMPOSE_FILE)
    assert f'image: "{DEFAULT_IMAGES["backup"]}"' in compose  # the yaml filter quotes it


def test_a_build_docker_py_refuses_is_one_deploy_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-py raises a plain DockerException (a tag it cannot parse): it was a
    traceback, as only BuildError and APIError were caught (a review)."""
    from docker.errors import DockerException

    class Images:
        def build(self, **options: object) -> object:
            raise DockerException(f"invalid tag {options['tag']!r}: invalid reference format")

    class Client:
        images = Images()

    monkeypatch.setattr(image, "docker_client", Client)
    with pytest.raises(DeployError) as caught:
        image.build(BACKUP_CONTEXT, ["x y:1"], lambda _: None)
    assert "Docker refused the build: invalid tag 'x y:1'" in str(caught.value)
    assert "hint: check --tag" in str(caught.value)
