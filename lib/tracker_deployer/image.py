"""The backup image: build it (its bats stage must pass) with the Docker SDK."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracker_deployer.config.model import (
    BACKUP_IMAGE_REPOSITORY,
    BACKUP_IMAGE_VERSION,
    InvalidValue,
    parse_image,
)
from tracker_deployer.errors import DeployError
from tracker_deployer.say import Say
from tracker_deployer.topology import APP_GID, APP_UID

# Set by the Dockerfile's final stage: proof that the bats stage ran and passed.
# It holds that stage's record (tests/run.sh --record): the summary line and one
# line per skipped test, which `inv publish` shows.
TESTS_PASSED_MARKER = "/usr/share/tracker-backup/tests-passed"


@dataclass(frozen=True, slots=True)
class BuiltImage:
    tags: tuple[str, ...]
    image_id: str


def default_tag() -> str:
    return f"{BACKUP_IMAGE_REPOSITORY}:{BACKUP_IMAGE_VERSION}"


TAG_HINT = "use NAME:VERSION in lowercase, e.g. torrust/tracker-backup:1.0.0"


def check_tag(tag: str) -> str:
    """``tag`` if it is a Docker image reference NAME:VERSION (no digest): a bad one is
    a DeployError naming --tag, before anything is built (docker-py refused it only
    after the daemon was reached, with a traceback)."""
    try:
        parse_image(tag)
    except InvalidValue:
        raise DeployError(f"--tag {tag!r} is not a Docker image reference", TAG_HINT) from None
    if "@" in tag:
        raise DeployError(f"--tag {tag!r} has a digest, which a build cannot have", TAG_HINT)
    if ":" not in tag.rsplit("/", 1)[-1]:
        raise DeployError(f"--tag {tag!r} has no version", TAG_HINT)
    return tag


def build_args() -> dict[str, str]:
    """The Dockerfile's build arguments: the image version (its label and version
    file, from the one owner BACKUP_IMAGE_VERSION) and the user the image declares
    (compose runs the service as this uid:gid anyway)."""
    return {
        "VERSION": BACKUP_IMAGE_VERSION,
        "BACKUP_UID": str(APP_UID),
        "BACKUP_GID": str(APP_GID),
    }


def docker_client() -> Any:
    """A client of the local Docker daemon; a DeployError when it cannot be reached."""
    import docker  # only the image tasks need the SDK
    from docker.errors import DockerException

    try:
        client = docker.from_env()
        client.ping()
    except DockerException as error:
        raise DeployError(
            f"cannot reach the Docker daemon: {error}",
            "start dockerd (scripts/setup.sh does) and check DOCKER_HOST",
        ) from None
    return client


def build(context: Path, tags: list[str], say: Say) -> BuiltImage:
    """Build ``context`` (running its test stage); tag it with every tag."""
    from docker.errors import APIError, BuildError, DockerException

    client = docker_client()
    say(f"building {context} (the bats test stage runs as part of the build)")
    try:
        image, logs = client.images.build(
            path=str(context),
            tag=tags[0],
            rm=True,
            forcerm=True,
            buildargs=build_args(),
        )
        for chunk in logs:
            line = str(chunk.get("stream", "")).rstrip()
            if line:
                say(line)
        for tag in tags[1:]:
            repository, _, version = tag.rpartition(":")
            image.tag(repository, version)
    except BuildError as error:
        tail = [str(c.get("stream", "")).rstrip() for c in error.build_log][-25:]
        for line in tail:
            if line:
                say(line)
        raise DeployError(
            f"building the backup image failed: {error.msg}",
            "a failing bats test fails the build; run `nox -s bats` to see it on the host",
        ) from None
    except APIError as error:
        raise DeployError(f"Docker refused the build: {error.explanation}") from None
    except DockerException as error:
        # Anything else docker-py refuses (a tag it cannot parse, a context it cannot read).
        raise DeployError(
            f"Docker refused the build: {error}",
            f"check --tag ({TAG_HINT}) and that docker/backup is readable",
        ) from None
    return BuiltImage(tuple(tags), image.id)
