"""A small real filesystem for the disk-full cases (a tmpfs: the tests run as root)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


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
