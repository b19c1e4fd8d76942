"""The backup image the stacks run is pinned to the version the Dockerfile builds."""

from __future__ import annotations

from tracker_deployer.config.model import (
    BACKUP_IMAGE_REPOSITORY,
    BACKUP_IMAGE_VERSION,
    DEFAULT_IMAGES,
    Images,
)
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
