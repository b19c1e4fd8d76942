"""Publish the backup image: every check first, then tag and push.

``inv publish`` pushes ``REPO:X.Y.Z`` and ``REPO:latest`` of the image that
``inv build-image`` built. It refuses to push unless every check passes:

- the version is a release version ``X.Y.Z`` and equals ``BACKUP_IMAGE_VERSION``
  (the version ``inv build-image`` passes to the Dockerfile as ``--build-arg
  VERSION``) and the image's own ``org.opencontainers.image.version`` label;
- the local image exists and carries the marker of its bats test stage, which
  records the stage's summary and every test it skipped (the plan lists them:
  a skip is never silent);
- the git working tree is clean, and the release tag ``backup-image-vX.Y.Z``
  (the one that makes CI publish the image) is absent or points at HEAD.

The checks are pure functions over plain data (:class:`GitState`,
:class:`ImageFacts`), so tests need neither Docker nor git. Only
:func:`read_git_state`, :func:`read_image_facts` and :func:`push` talk to the
outside world, and only :func:`push` changes anything.
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
from collections.abc import Callable, Iterable, Mapping
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
from tracker_deployer.image import TESTS_PASSED_MARKER
from tracker_deployer.say import Say

DEFAULT_REPOSITORY = BACKUP_IMAGE_REPOSITORY
GIT_TAG_PREFIX = "backup-image-v"
VERSION_LABEL = "org.opencontainers.image.version"
_RELEASE_VERSION = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
_SHOWN_PATHS = 5


def git_tag_for(version: str) -> str:
    """The git tag that marks the commit a version was built from."""
    return f"{GIT_TAG_PREFIX}{version}"


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True, slots=True)
class GitState:
    """What the checks need to know about the checkout."""

    root: Path
    head: str
    changed: tuple[str, ...]  # `git status --porcelain` paths: modified, staged, untracked
    tag: str
    tag_commit: str | None  # the commit ``tag`` points at; None when there is no such tag


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What the checks need to know about the local image."""

    reference: str
    image_id: str
    version_label: str | None
    tests_passed: bool  # the image contains TESTS_PASSED_MARKER
    # The tests the bats stage skipped, as the marker records them ("NAME # REASON");
    # None when the marker has no record (missing, or from a build before it had one).
    skipped_tests: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a publish may not happen: a one-line message and a hint."""

    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.message} — hint: {self.hint}"


@dataclass(frozen=True, slots=True)
class Check:
    """One named check and its outcome (``refusal`` is None when it passed)."""

    name: str
    refusal: Refusal | None

    @property
    def passed(self) -> bool:
        return self.refusal is None


class PublishRefused(DeployError):
    """One or more checks failed: each is reported on its own line."""

    def __init__(self, refusals: Iterable[Refusal]) -> None:
        self.refusals = tuple(refusals)
        first = self.refusals[0]
        super().__init__(first.message, first.hint)

    def __str__(self) -> str:
        # The CLI prefixes the first line with "error: "; the others get the same prefix.
        return "\nerror: ".join(str(refusal) for refusal in self.refusals)


# --------------------------------------------------------------------------- pure checks


def check_version(version: str) -> Refusal | None:
    if _RELEASE_VERSION.fullmatch(version):
        return None
    return Refusal(
        f"version {version!r} is not a release version X.Y.Z",
        "use three numbers without a prefix or suffix, e.g. --version 1.0.0",
    )


def check_repository(repository: str) -> Refusal | None:
    hint = "use a repository name without a tag or digest, e.g. --repository torrust/tracker-backup"
    try:
        parse_image(repository)
    except InvalidValue:
        return Refusal(f"{repository!r} is not an image repository name", hint)
    if "@" in repository or ":" in repository.rsplit("/", 1)[-1]:
        return Refusal(f"repository {repository!r} includes a tag or digest", hint)
    return None


def check_owner_version(version: str, owner: str) -> Refusal | None:
    """The version is the one ``inv build-image`` builds (its ``--build-arg VERSION``)."""
    if version == owner:
        return None
    return Refusal(
        f"version {version} is not the version inv build-image builds "
        f"(BACKUP_IMAGE_VERSION={owner})",
        f"publish --version {owner}, or bump BACKUP_IMAGE_VERSION "
        "(lib/tracker_deployer/config/model.py) and rebuild",
    )


def check_image_exists(image: ImageFacts | None, reference: str) -> Refusal | None:
    if image is not None:
        return None
    return Refusal(
        f"there is no local image {reference}",
        f"build it first: inv build-image --tag {reference}",
    )


def check_tests_passed(image: ImageFacts) -> Refusal | None:
    """The final image holds the marker only when its bats test stage ran and passed;
    the marker records what the stage skipped."""
    hint = (
        f"rebuild it with `inv build-image --tag {image.reference}` (the tests run during "
        "the build) and publish only that image"
    )
    shown = f"image {image.reference} ({short_id(image.image_id)})"
    if not image.tests_passed:
        return Refusal(
            f"{shown} has no {TESTS_PASSED_MARKER}: its bats test stage did not run or did "
            "not pass",
            hint,
        )
    if image.skipped_tests is None:
        return Refusal(
            f"{shown} has a {TESTS_PASSED_MARKER} without the bats record: it cannot say "
            "which tests its build skipped",
            hint,
        )
    return None


TESTS_RECORD_HEADER = "bats summary: "  # docker/backup/tests/run.sh --record
_SKIPPED_PREFIX = "skipped: "


def parse_tests_record(text: str) -> tuple[str, ...] | None:
    """The skipped tests of a tests-passed marker; None when it holds no record."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith(TESTS_RECORD_HEADER):
        return None
    return tuple(
        line.removeprefix(_SKIPPED_PREFIX) for line in lines[1:] if line.startswith(_SKIPPED_PREFIX)
    )


def check_image_version(version: str, image: ImageFacts) -> Refusal | None:
    """The image was built from the Dockerfile of this version (not an older build)."""
    if image.version_label == version:
        return None
    shown = "no version label" if image.version_label is None else image.version_label
    return Refusal(
        f"image {image.reference} ({short_id(image.image_id)}) was built from a Dockerfile "
        f"labelled {shown}, not {version}",
        f"rebuild it from the current Dockerfile: inv build-image --tag {image.reference}",
    )


def check_clean_tree(git: GitState) -> Refusal | None:
    if not git.changed:
        return None
    count = len(git.changed)
    shown = ", ".join(git.changed[:_SHOWN_PATHS]) + (", …" if count > _SHOWN_PATHS else "")
    return Refusal(
        f"the git working tree {git.root} has uncommitted changes "
        f"({count} path{'s' if count != 1 else ''}: {shown})",
        "commit (or remove) them first, so the published image is exactly a commit",
    )


def check_git_tag(version: str, git: GitState) -> Refusal | None:
    if git.tag_commit is None or git.tag_commit == git.head:
        return None
    return Refusal(
        f"git tag {git.tag} points at {git.tag_commit[:12]}, not at HEAD ({git.head[:12]}): "
        f"version {version} was released from another commit",
        "bump the version (the Dockerfile label and BACKUP_IMAGE_VERSION) for new image content",
    )


def short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class PublishPlan:
    """What a publish would push, and every check's outcome."""

    repository: str
    version: str
    source: str  # the local image: REPOSITORY:VERSION, as `inv build-image` tags it
    image: ImageFacts | None
    git: GitState
    checks: tuple[Check, ...]

    @property
    def tags(self) -> tuple[str, str]:
        return (f"{self.repository}:{self.version}", f"{self.repository}:latest")

    @property
    def refusals(self) -> list[Refusal]:
        return [check.refusal for check in self.checks if check.refusal is not None]

    @property
    def ok(self) -> bool:
        return not self.refusals


def evaluate(
    *,
    repository: str,
    version: str,
    owner_version: str,
    image: ImageFacts | None,
    git: GitState,
) -> PublishPlan:
    """Run every check over the gathered facts (pure)."""
    source = f"{repository}:{version}"
    if image is None:
        image_checks = [Check(f"local image {source} exists", check_image_exists(image, source))]
    else:
        image_checks = [
            Check("image passed its bats test stage", check_tests_passed(image)),
            Check(f"image labelled version {version}", check_image_version(version, image)),
        ]
    checks = (
        Check("repository name", check_repository(repository)),
        Check("release version X.Y.Z", check_version(version)),
        Check("same version as BACKUP_IMAGE_VERSION", check_owner_version(version, owner_version)),
        *image_checks,
        Check("clean git working tree", check_clean_tree(git)),
        Check(f"git tag {git.tag} absent or at HEAD", check_git_tag(version, git)),
    )
    return PublishPlan(repository, version, source, image, git, checks)


def refuse_early(repository: str, version: str) -> None:
    """Checks that make the others meaningless (a bad name or version): raise at once."""
    refusals = [
        refusal
        for refusal in (check_repository(repository), check_version(version))
        if refusal is not None
    ]
    if refusals:
        raise PublishRefused(refusals)


def describe(plan: PublishPlan, *, dry_run: bool) -> str:
    """The plan as the CLI prints it: what would be pushed, then every check."""
    image_id = plan.image.image_id if plan.image else "(no such local image)"
    verb = "would push" if dry_run else "push"
    lines = [
        f"publish {plan.source}" + (" (dry run: nothing is tagged or pushed)" if dry_run else ""),
        f"  {'image':<11}{image_id}",
        *(f"  {verb:<11}{tag}" for tag in plan.tags),
    ]
    if plan.image is not None and plan.image.skipped_tests:
        lines += [f"  {'skipped':<11}{test}" for test in plan.image.skipped_tests]
        lines.append(
            f"  {'':<11}(bats tests the image build skipped: they run in `nox -s bats` on a host)"
        )
    lines.append(f"  {'commit':<11}{plan.git.head}")
    state = "absent" if plan.git.tag_commit is None else f"at {plan.git.tag_commit[:12]}"
    lines.append(f"  {'git tag':<11}{plan.git.tag} ({state})")
    lines.append("checks:")
    for check in plan.checks:
        mark = "ok  " if check.passed else "FAIL"
        lines.append(f"  {mark}  {check.name}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- git and docker


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise DeployError("git is not installed", "install git (apt-get install git)") from None


def read_git_state(path: Path, tag: str) -> GitState:
    """HEAD, uncommitted changes and the release tag of the checkout holding ``path``."""
    top = _git(path, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise DeployError(
            f"{path} is not inside a git checkout",
            "publish from a clone of the repository, so the image matches a commit",
        )
    root = Path(top.stdout.strip())
    head = _git(root, "rev-parse", "--verify", "HEAD^{commit}")
    if head.returncode != 0:
        raise DeployError(f"the git checkout {root} has no commit yet", "commit first")
    status = _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    if status.returncode != 0:
        raise DeployError(f"git status failed in {root}: {status.stderr.strip()}")
    tagged = _git(root, "rev-parse", "-q", "--verify", f"refs/tags/{tag}^{{commit}}")
    return GitState(
        root=root,
        head=head.stdout.strip(),
        changed=parse_porcelain(status.stdout),
        tag=tag,
        tag_commit=tagged.stdout.strip() if tagged.returncode == 0 else None,
    )


def parse_porcelain(output: str) -> tuple[str, ...]:
    """Paths of ``git status --porcelain=v1 -z`` (a rename's source entry is skipped)."""
    paths: list[str] = []
    entries = iter(output.split("\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        paths.append(entry[3:])
        if entry[0] in "RC":
            next(entries, None)  # -z puts a rename's original path in the next entry
    return tuple(paths)


def read_image_facts(client: Any, reference: str) -> ImageFacts | None:
    """The local image's ID, version label and test marker; None when it does not exist."""
    from docker.errors import APIError, ImageNotFound

    try:
        found = client.images.get(reference)
    except ImageNotFound:
        return None
    labels = (found.attrs.get("Config") or {}).get("Labels") or {}
    try:
        # A created (never started) container exposes the image's file system.
        container = client.containers.create(found.id, entrypoint=["true"], network_disabled=True)
        try:
            record = _read_file(container, TESTS_PASSED_MARKER)
        finally:
            container.remove(force=True)
    except APIError as error:
        raise DeployError(
            f"cannot look inside the image {reference}: {error.explanation}",
            "check the Docker daemon (docker info) and retry",
        ) from None
    return ImageFacts(
        reference=reference,
        image_id=str(found.id),
        version_label=labels.get(VERSION_LABEL),
        tests_passed=record is not None,
        skipped_tests=None if record is None else parse_tests_record(record),
    )


def _read_file(container: Any, path: str) -> str | None:
    """A small text file of a container; None when it does not exist."""
    from docker.errors import NotFound

    try:
        chunks, _ = container.get_archive(path)
    except NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
        member = archive.next()
        extracted = archive.extractfile(member) if member is not None else None
        return "" if extracted is None else extracted.read().decode("utf-8", "replace")


def prepare(
    context: Path,
    *,
    repository: str,
    version: str | None,
    connect: Callable[[], Any],
    owner_version: str = BACKUP_IMAGE_VERSION,
) -> PublishPlan:
    """Gather the facts for publishing ``context``'s image and run every check.

    ``version`` defaults to ``owner_version`` (BACKUP_IMAGE_VERSION, what
    ``inv build-image`` builds); ``context``'s git checkout must be clean;
    ``connect`` returns a Docker client (called only once the version and
    repository are known to be valid).
    """
    chosen = version or owner_version
    refuse_early(repository, chosen)
    git = read_git_state(context, git_tag_for(chosen))
    source = f"{repository}:{chosen}"
    return evaluate(
        repository=repository,
        version=chosen,
        owner_version=owner_version,
        image=read_image_facts(connect(), source),
        git=git,
    )


@dataclass(frozen=True, slots=True)
class Pushed:
    reference: str
    digest: str


def push_digest(reference: str, events: Iterable[Mapping[str, Any]], say: Say) -> str:
    """The digest from a push's progress stream; an error event raises."""
    digest: str | None = None
    for event in events:
        if event.get("error"):
            raise DeployError(
                f"pushing {reference} failed: {str(event['error']).strip()}",
                "log in first (docker login) with an account that may push to the repository",
            )
        aux = event.get("aux")
        if isinstance(aux, Mapping) and aux.get("Digest"):
            digest = str(aux["Digest"])
        status = event.get("status")
        if status in ("Pushed", "Layer already exists"):
            say(f"  {event.get('id', '')}: {status}")
    if digest is None:
        raise DeployError(
            f"pushing {reference} reported no digest", "check the push with docker push"
        )
    return digest


def push(plan: PublishPlan, client: Any, say: Say) -> list[Pushed]:
    """Tag the image REPO:X.Y.Z and REPO:latest and push both. Refuses unless every check passed."""
    from docker.errors import APIError

    if not plan.ok or plan.image is None:
        raise PublishRefused(plan.refusals)
    image = client.images.get(plan.image.image_id)
    pushed: list[Pushed] = []
    for reference in plan.tags:
        repository, _, tag = reference.rpartition(":")
        image.tag(repository, tag)
        say(f"pushing {reference}")
        try:
            events = client.images.push(repository, tag=tag, stream=True, decode=True)
            pushed.append(Pushed(reference, push_digest(reference, events, say)))
        except APIError as error:
            raise DeployError(
                f"pushing {reference} failed: {error.explanation}",
                "log in first (docker login) with an account that may push to the repository",
            ) from None
    return pushed
