"""Benchmark of the backup's maintenance window: `nox -s bench` (bench/README.md).

Runs as a script (`python bench/run.py --help`); its modules live in
bench/trackerbench/, which is importable because Python puts this file's
directory first on sys.path.
"""

from __future__ import annotations

import subprocess
import sys

from trackerbench.cli import main
from trackerbench.measure import CommandFailedError

if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CommandFailedError, RuntimeError, subprocess.CalledProcessError) as error:
        sys.exit(f"bench: failed: {error}")
    except KeyboardInterrupt:
        sys.exit("bench: interrupted (the bench database, user and scratch files were removed)")
