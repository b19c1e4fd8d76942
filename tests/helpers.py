"""Helpers shared by the test tiers: sample configs and variants of them."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracker_deployer.config import Env, parse_env
from tracker_deployer.config.template import starter_config

REPO_ROOT = Path(__file__).resolve().parents[1]
ENVS_DIR = REPO_ROOT / "envs"
SAMPLES = ("manual-test-mysql", "manual-test-sqlite", "manual-test-sqlite-no-backup")


def sample_data(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ENVS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return data


def parse(data: dict[str, Any], source: str = "envs/test.json") -> Env:
    return parse_env(copy.deepcopy(data), source=source, path=Path(source))


# --------------------------------------------------------------------------- patched variants

INVALID_DIR = REPO_ROOT / "tests" / "data" / "invalid"
VALID_DIR = REPO_ROOT / "tests" / "data" / "valid"

_PATH_PART = re.compile(r"(?:^|\.)([^.\[\]]+)|\[(\d+)\]")


def patch_path(path: str) -> list[str | int]:
    """``'a.b[0].c'`` -> ``['a', 'b', 0, 'c']`` (keys and list indices)."""
    tokens: list[str | int] = []
    end = 0
    for match in _PATH_PART.finditer(path):
        if match.start() != end:
            break
        key, index = match.groups()
        tokens.append(key if key is not None else int(index))
        end = match.end()
    if not tokens or end != len(path) or path.startswith("."):
        raise ValueError(
            f"bad patch path {path!r}: use dotted keys and [i] indices, e.g. 'a.b[0].c'"
        )
    return tokens


def _parent(data: Any, tokens: list[str | int], path: str) -> Any:
    node = data
    for token in tokens[:-1]:
        try:
            node = node[token]
        except (KeyError, IndexError, TypeError):
            raise KeyError(f"patch path {path!r}: {token!r} does not exist") from None
    return node


def apply_patch(
    data: Mapping[str, Any],
    set: Mapping[str, Any] | None = None,  # named like the corpus files' key
    delete: Iterable[str] = (),
) -> dict[str, Any]:
    """A patched deep copy of ``data``: first every ``set``, then every ``delete``.

    Paths are dotted keys with ``[i]`` indices (``tracker.udp_trackers[0].bind_address``).
    ``set`` adds or replaces the last key (an index equal to the list's length appends);
    ``delete`` removes it. Every path before the last part must exist, so a typo in a
    test case fails loudly instead of patching nothing.
    """
    result: dict[str, Any] = copy.deepcopy(dict(data))
    for path, value in (set or {}).items():
        tokens = patch_path(path)
        parent, last = _parent(result, tokens, path), tokens[-1]
        if isinstance(parent, list) and isinstance(last, int) and last <= len(parent):
            parent[last : last + 1] = [copy.deepcopy(value)]  # replace, or append at the end
        elif isinstance(parent, dict) and isinstance(last, str):
            parent[last] = copy.deepcopy(value)
        else:
            raise KeyError(f"patch path {path!r}: cannot set {last!r} here")
    for path in delete:
        tokens = patch_path(path)
        parent, last = _parent(result, tokens, path), tokens[-1]
        try:
            del parent[last]
        except (KeyError, IndexError, TypeError):
            raise KeyError(f"patch path {path!r}: nothing to delete") from None
    return result


@dataclass(frozen=True, slots=True)
class InvalidCase:
    """One file of ``tests/data/invalid``: a sample config, a patch, the issues it causes."""

    name: str
    description: str
    base: str
    set: dict[str, Any]
    delete: tuple[str, ...]
    expect: tuple[tuple[str, str], ...]
    schema_rejects: bool

    def data(self) -> dict[str, Any]:
        return apply_patch(sample_data(self.base), self.set, self.delete)


_CASE_KEYS = {"description", "base", "set", "delete", "expect", "schema_rejects"}
_CASE_REQUIRED = {"description", "base", "expect", "schema_rejects"}
_CASE_BASES = ("manual-test-mysql", "manual-test-sqlite")


def load_invalid_case(path: Path) -> InvalidCase:
    raw = json.loads(path.read_text(encoding="utf-8"))
    if (
        not isinstance(raw, dict)
        or set(raw) - _CASE_KEYS
        or not set(raw) >= _CASE_REQUIRED
        or not isinstance(raw["schema_rejects"], bool)
    ):
        raise ValueError(
            f"{path}: a case has the keys {sorted(_CASE_REQUIRED)} (schema_rejects true or "
            "false), and optionally 'set' and 'delete'"
        )
    if raw["base"] not in _CASE_BASES:
        raise ValueError(f"{path}: base must be one of {_CASE_BASES}")
    expect = tuple((str(where), str(fragment)) for where, fragment in raw["expect"])
    if not expect:
        raise ValueError(f"{path}: 'expect' lists no issue")
    return InvalidCase(
        name=path.stem,
        description=str(raw["description"]),
        base=raw["base"],
        set=dict(raw.get("set", {})),
        delete=tuple(raw.get("delete", ())),
        expect=expect,
        schema_rejects=raw["schema_rejects"],
    )


def invalid_cases() -> list[InvalidCase]:
    """Every case of the invalid-config corpus, sorted by name."""
    return [load_invalid_case(path) for path in sorted(INVALID_DIR.glob("*.json"))]


def valid_configs() -> dict[str, dict[str, Any]]:
    """Known-good configs: the samples in envs/, both starter templates, tests/data/valid."""
    configs = {name: sample_data(name) for name in SAMPLES}
    configs["create-template-sqlite3"] = starter_config(database="sqlite3")
    configs["create-template-mysql"] = starter_config(database="mysql")
    for path in sorted(VALID_DIR.glob("*.json")):
        configs[f"valid-{path.stem}"] = json.loads(path.read_text(encoding="utf-8"))
    return configs


def ssh_argv(key: Path, port: int, known_hosts: Path, login: str, *options: str) -> list[str]:
    """The system ssh client's command line for a test host (its key checked, no
    prompts), without the command; ``options`` are more ``-o`` values."""
    argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port)]
    for option in (
        f"UserKnownHostsFile={known_hosts}",
        "StrictHostKeyChecking=yes",
        "BatchMode=yes",
        *options,
    ):
        argv += ["-o", option]
    return [*argv, login]
