"""Helpers shared by the test tiers: sample configs and variants of them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tracker_deployer.config import Env, parse_env

REPO_ROOT = Path(__file__).resolve().parents[1]
ENVS_DIR = REPO_ROOT / "envs"
SAMPLES = ("manual-test-mysql", "manual-test-sqlite", "manual-test-sqlite-no-backup")


def sample_data(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ENVS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return data


def parse(data: dict[str, Any], source: str = "envs/test.json") -> Env:
    return parse_env(copy.deepcopy(data), source=source, path=Path(source))
