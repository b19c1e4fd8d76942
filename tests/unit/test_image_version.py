"""The backup image the stacks run is pinned to the version the Dockerfile builds."""

from __future__ import annotations

import pytest
from tracker_deployer import image
from tracker_deployer.config.model import (
    BACKUP_IMAGE_REPOSITORY,
    BACKUP_IMAGE_VERSION,
    DEFAULT_IMAGES,
    Images,
)
from tracker_deployer.errors import DeployError
from tracker_deployer.image import build_args, default_tag
from tracker_deployer.paths import COMPOSE_FILE
from tracker_deployer.publish import check_version
from tracker_deployer.render import render

from tests.helpers import REPO_ROOT, parse, sample_data

BACKUP_CONTEXT = REPO_ROOT / "docker" / "backup"


def test_default_backup_image_is_the_version_the_build_gets() -> None:
    assert DEFAULT_IMAGES["backup"] == f"{BACKUP_IMAGE_REPOSITORY}:{BACKUP_IMAGE_VERSION}"
    assert build_args()["VERSION"] == BACKUP_IMAGE_VERSION  # `inv build-image --build-arg`
    assert default_tag() == DEFAULT_IMAGES["backup"]  # what `inv build-image` tags


def test_backup_image_version_is_a_release_version() -> None:
    assert check_version(BACKUP_IMAGE_VERSION) is None  # never "latest" or a moving tag


def test_rendered_stack_runs_the_pinned_backup_image() -> None:
    tree = render(parse(sample_data("manual-test-mysql")))
    compose = tree.text(COMPOSE_FILE)
    assert f'image: "{DEFAULT_IMAGES["backup"]}"' in compose  # the yaml filter quotes it
    assert Images().backup == DEFAULT_IMAGES["backup"]


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
