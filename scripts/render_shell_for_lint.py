"""Render every env in envs/ and copy its shell scripts to OUT_DIR for shellcheck.

Usage: python scripts/render_shell_for_lint.py OUT_DIR
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from tracker_deployer import image, paths
from tracker_deployer.config import load_env
from tracker_deployer.remote import mysql_passwords
from tracker_deployer.remote.offsite import listing_script
from tracker_deployer.remote.offsite_fetch import download_script, fetch_script
from tracker_deployer.remote.offsite_fetch import verify_script as offsite_verify_script
from tracker_deployer.render import inventory_script, operation_script, render

# Example values: shellcheck looks at the scripts' shape, not at these.
OPERATIONS: dict[str, dict[str, object]] = {
    "run-detached": {},
    "verify": {
        "deploy_dir": "/opt/torrust",
        "backup_dir": "/opt/torrust/storage/backup",
        "sets_subdir": ".offsite-verify-20261127_030000/set",
        "set_id": "20261127_030000",
        "db_type": "mysql",
        "drill": True,
        "lock_file": str(paths.BACKUP_LOCK),
        "lock_wait_seconds": 600,
        "backup_image": image.default_tag(),
        "mysql_image": "mysql:8.4",
        "app_uid": 1000,
        "app_gid": 1000,
    },
    "restore": {
        "deploy_dir": "/opt/torrust",
        "backup_dir": "/opt/torrust/storage/backup",
        "set_id": "20261127_030000",
        "db_type": "sqlite",
        "only": "all",
        "verify_first": True,
        "safety_backup": True,
        "skip_safety_backup": False,
        "new_host": False,
        "lock_file": str(paths.BACKUP_LOCK),
        "log_file": str(paths.BACKUP_LOG),
        "status_dir": str(paths.BACKUP_STATUS_DIR),
        "env_name": "tracker-prod",
        "sqlite_dir": str(paths.SQLITE_DIR),
        "sqlite_name": "tracker.db",
    },
}


BACKUP_DIR = paths.REPO_ROOT / "docker/backup"
SOURCE_LINE = re.compile(r'source "\$\{BACKUP_LIB_DIR\}/([a-z-]+\.sh)"')


def backup_sh_as_one_file() -> str:
    """backup.sh with every lib/*.sh it sources inlined: shellcheck checks each lib
    file on its own (variables that cross files disabled there), and this copy
    as one program, where those variables are visible."""
    lines: list[str] = []
    for line in (BACKUP_DIR / "backup.sh").read_text().splitlines(keepends=True):
        if line.startswith(
            ("# shellcheck source=lib/", "BACKUP_LIB_DIR=", "readonly BACKUP_LIB_DIR")
        ):
            continue  # the loader: the parts are inlined below
        match = SOURCE_LINE.fullmatch(line.rstrip("\n"))
        if match:
            part = (BACKUP_DIR / "lib" / match[1]).read_text().splitlines(keepends=True)
            lines += part[1:]  # without its file-wide shellcheck directive
        else:
            lines.append(line)
    return "".join(lines)


def main(out_dir: Path) -> int:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    count = 0
    # envs/ plus the every-option config (the only one with backup.offsite).
    every_option = paths.REPO_ROOT / "tests/data/valid/every-option.json"
    for env_file in [*sorted(paths.ENVS_DIR.glob("*.json")), every_option]:
        tree = render(load_env(env_file))
        for item in tree.files:
            if item.content.startswith(b"#!/usr/bin/env bash") or item.path.suffix == ".sh":
                target = out_dir / env_file.stem / item.path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(item.content)
                count += 1
    (out_dir / "operations").mkdir(exist_ok=True)
    (out_dir / "operations" / "inventory.sh").write_text(
        inventory_script(verify=True, backup_image=image.default_tag())
    )
    count += 1
    # The off-host scripts (python-built; shebang added for shellcheck).
    offsite_scripts = (
        ("offsite-sets.sh", listing_script()),
        ("offsite-fetch.sh", fetch_script()),
        ("offsite-verify.sh", offsite_verify_script()),
        ("offsite-download.sh", download_script()),
    )
    for name, text in offsite_scripts:
        (out_dir / "operations" / name).write_text("#!/usr/bin/env bash\n" + text)
        count += 1
    (out_dir / "operations" / "mysql-passwords.sh").write_text(mysql_passwords.script())
    count += 1
    (out_dir / "backup-one-file.sh").write_text(backup_sh_as_one_file())
    count += 1
    for name, context in OPERATIONS.items():
        (out_dir / "operations" / f"{name}.sh").write_text(operation_script(name, **context))
        count += 1
    print(f"rendered {count} shell scripts into {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
