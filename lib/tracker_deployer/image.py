"""The backup image: build it (its bats stage must pass) with the Docker SDK."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracker_deployer.config.model import BACKUP_IMAGE_REPOSITORY, BACKUP_IMAGE_VERSION
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
    from docker.errors import APIError, BuildError

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
    for tag in tags[1:]:
        repository, _, version = tag.rpartition(":")
        image.tag(repository, version)
    return BuiltImage(tuple(tags), image.id)
