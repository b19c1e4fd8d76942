"""The ``docker compose`` command line of the deployed stack, built here only.

Python runs :func:`command` over SSH; the host scripts get :func:`argv` as a
bash array (the ``compose_argv`` template global).
"""

from __future__ import annotations

import shlex

from tracker_deployer import paths


def argv(project_dir: str = str(paths.DEPLOY_DIR)) -> tuple[str, ...]:
    """``docker compose`` for the stack in ``project_dir`` (tests use a scratch one)."""
    compose_file = f"{project_dir}/{paths.COMPOSE_FILE.name}"
    return ("docker", "compose", "--project-directory", project_dir, "-f", compose_file)


def command(project_dir: str = str(paths.DEPLOY_DIR)) -> str:
    """:func:`argv` as one shell word list."""
    return shlex.join(argv(project_dir))
