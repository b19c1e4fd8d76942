"""Shared fixtures: sample configs."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import sample_data


@pytest.fixture
def mysql_data() -> dict[str, Any]:
    return sample_data("manual-test-mysql")


@pytest.fixture
def sqlite_data() -> dict[str, Any]:
    return sample_data("manual-test-sqlite")
