"""The operator's command line: `inv --list` shows every task.

Thin on purpose: parse flags, call the library, print, exit. Every expected
failure is a DeployError, turned here into one message and a non-zero exit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from tracker_deployer import paths
from tracker_deployer.config import Env, env_path, load_env
from tracker_deployer.config.template import starter_config_text
from tracker_deployer.describe import describe_env
from tracker_deployer.errors import ConfigError, DeployError
from tracker_deployer.render import render as render_tree
from tracker_deployer.render import write_tree

ENV_HELP = "environment: NAME for envs/NAME.json, or a path to a config file"


@contextmanager
def _errors() -> Iterator[None]:
    """Expected failures: one clear message on stderr and a non-zero exit."""
    try:
        yield
    except ConfigError as error:
        count = len(error.issues)
        summary = f"{count} problem{'s' if count != 1 else ''} in {error.source}"
        raise Exit(f"{error}\nerror: {summary}", code=error.exit_code) from None
    except DeployError as error:
        raise Exit(f"error: {error}", code=error.exit_code) from None
    except KeyboardInterrupt:
        raise Exit("interrupted", code=130) from None


def _load(env: str) -> Env:
    if not env:
        raise DeployError("no environment given", "pass --env NAME (see envs/) or --env PATH")
    path = env_path(env, paths.ENVS_DIR)
    shown = path
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        shown = path.relative_to(Path.cwd())
    return load_env(path, display=str(shown))


def _out_dir(env: Env, out: str) -> Path:
    return Path(out) if out else paths.BUILD_DIR / env.name


@task(help={"env": ENV_HELP})
def validate(c: Context, env: str = "") -> None:
    """Check an environment config; list every problem with its path and a hint."""
    with _errors():
        parsed = _load(env)
        print(f"{parsed.source}: valid")
        print(describe_env(parsed, now=datetime.now(UTC)))


@task(help={"env": ENV_HELP, "out": "write the tree here instead of build/NAME"})
def render(c: Context, env: str = "", out: str = "") -> None:
    """Render the stack's files for an environment into build/NAME (host paths)."""
    with _errors():
        parsed = _load(env)
        tree = render_tree(parsed)
        target = write_tree(tree, _out_dir(parsed, out))
        print(f"rendered {len(tree.files)} files for {parsed.name} into {target}")
        for item in tree.files:
            flag = "  (secret)" if item.secret else ""
            print(f"  {item.mode:04o} {item.uid}:{item.gid}  {item.path}{flag}")


@task(
    name="create-template",
    help={
        "out": "write the starter config to this file (default: print it)",
        "name": "environment name to put in the template",
        "database": "sqlite3 or mysql",
        "force": "overwrite --out if it exists",
    },
)
def create_template(
    c: Context,
    out: str = "",
    name: str = "my-tracker",
    database: str = "sqlite3",
    force: bool = False,
) -> None:
    """Write a complete starter environment config (backups included)."""
    with _errors():
        if database not in ("sqlite3", "mysql"):
            raise DeployError(
                f"--database {database!r} is not supported", "use --database sqlite3 or mysql"
            )
        text = starter_config_text(name, database)
        if not out:
            sys.stdout.write(text)
            return
        target = Path(out)
        if target.exists() and not force:
            raise DeployError(f"{target} already exists", "pick another --out, or pass --force")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target}; edit the 'change-me' values, then: inv validate --env {target}")


ns = Collection(validate, render, create_template)
