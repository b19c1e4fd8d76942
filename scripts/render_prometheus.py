"""Render an env's Prometheus files and put the rule unit tests next to them.

Usage: python scripts/render_prometheus.py OUT_DIR [ENV_NAME]

Writes OUT_DIR/prometheus.yml, OUT_DIR/backup-alerts.yml (as rendered for
envs/ENV_NAME.json, default manual-test-mysql), the same two files for
tests/data/valid/every-option.json (the only config with backup.offsite, so the
only one with the off-host rules) in OUT_DIR/every-option/, and a copy of every
tests/rules/*.test.yml, so that `promtool check config` on both prometheus.yml
and `promtool test rules OUT_DIR/*.test.yml` see exactly what lands on a host.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tracker_deployer import paths
from tracker_deployer.config import load_env
from tracker_deployer.render import render

DEFAULT_ENV = "manual-test-mysql"
EVERY_OPTION = paths.REPO_ROOT / "tests/data/valid/every-option.json"


def _write(config: Path, out_dir: Path) -> None:
    tree = render(load_env(config))
    out_dir.mkdir(parents=True)
    for host_path in (paths.PROMETHEUS_CONFIG, paths.PROMETHEUS_RULES):
        (out_dir / host_path.name).write_bytes(tree.file(host_path).content)


def main(out_dir: Path, env_name: str) -> int:
    shutil.rmtree(out_dir, ignore_errors=True)
    _write(paths.ENVS_DIR / f"{env_name}.json", out_dir)
    _write(EVERY_OPTION, out_dir / EVERY_OPTION.stem)
    tests = sorted((paths.REPO_ROOT / "tests/rules").glob("*.test.yml"))
    for test in tests:
        shutil.copyfile(test, out_dir / test.name)
    print(
        f"rendered {env_name}'s and {EVERY_OPTION.stem}'s Prometheus files "
        f"and {len(tests)} rule test file(s) into {out_dir}"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        sys.exit(64)
    sys.exit(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) == 3 else DEFAULT_ENV))
