"""A small real filesystem for the disk-full cases (a tmpfs: the tests run as root)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs at ``path`` (root's, 0755), unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def fill(disk: Path) -> None:
    """Fill ``disk`` until a write fails with ENOSPC."""
    with (disk / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 4096)
    with pytest.raises(OSError, match="No space left on device"):
        (disk / "probe").write_bytes(b"\0" * 4096)
