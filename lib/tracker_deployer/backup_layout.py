"""The backup-set layout: the names of a set's files (Python's one owner).

The image's owner is ``set_file`` in docker/backup/lib/layout.sh; the host's
inventory gets the files from ``backup.sh list --records`` (its format version is
LIST_FORMAT). tests/unit/test_backup_layout.py holds the two owners to each other.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

# A set id: YYYYMMDD_HHMMSS in ASCII digits (``\\d`` and str.isdigit would take
# any Unicode digit). Always used with fullmatch.
SET_ID = re.compile(r"[0-9]{8}_[0-9]{6}")
SET_ID_FORMAT = "%Y%m%d_%H%M%S"  # its strptime form
# The parts a set is shown with (the database file's directory, or config).
PARTS = ("mysql", "sqlite", "config")
# The version of `backup.sh list --records` this deployer reads (its first line).
LIST_FORMAT = "1"

Kind = Literal["mysql", "sqlite", "config", "meta", "sums"]
Compression = Literal["gzip", "zstd"]


def is_set_id(text: str) -> bool:
    """YYYYMMDD_HHMMSS of a moment that exists (a set is named by when it was taken):
    a host's ``20261399_999999`` is no set id."""
    if SET_ID.fullmatch(text) is None:
        return False
    try:
        datetime.strptime(text, SET_ID_FORMAT)
    except ValueError:
        return False
    return True


def set_file(kind: Kind, set_id: str, compression: Compression = "zstd") -> str:
    """A set file's name relative to the backup directory (layout.sh ``set_file``)."""
    suffix = "gz" if compression == "gzip" else "zst"
    return {
        "mysql": f"mysql/mysql_{set_id}.sql.{suffix}",
        "sqlite": f"sqlite/sqlite_{set_id}.db.{suffix}",
        "config": f"config/config_{set_id}.tar.gz",
        "meta": f"manifests/set_{set_id}.meta",
        "sums": f"manifests/set_{set_id}.sha256",
    }[kind]


def database_files(set_id: str) -> list[str]:
    """Every name a set's database file may have (one of them exists)."""
    return [
        set_file(kind, set_id, compression)
        for kind in ("mysql", "sqlite")
        for compression in ("gzip", "zstd")
    ]


def set_layout(set_id: str) -> dict[str, str]:
    """Every file a set may hold -> its part (its directory), the checksum manifest
    last: layout.sh ``set_layout``, in the same order."""
    names = database_files(set_id)
    names += [set_file("config", set_id), set_file("meta", set_id), checksum_manifest(set_id)]
    return {name: name.split("/")[0] for name in names}


def checksum_manifest(set_id: str) -> str:
    """The set's sha256sum manifest (relative to the backup directory); written last."""
    return set_file("sums", set_id)


def checksum_manifest_affixes() -> tuple[str, str]:
    """What comes before and after the set id in :func:`checksum_manifest`: the host
    scripts that look for complete sets glob ``PREFIX*SUFFIX`` and cut the id out."""
    prefix, _, suffix = checksum_manifest("\0").partition("\0")
    return prefix, suffix


# A scheduled restore drill's evidence file (in paths.DRILL_DIR): when the drill
# started (UTC, like a set id) and the set it restored. POSIX ERE as well, for the
# host's inventory script.
EVIDENCE = re.compile(r"drill_([0-9]{8}_[0-9]{6})_set_([0-9]{8}_[0-9]{6})[.]json")


def evidence_name(started: str, set_id: str) -> str:
    """The evidence file's name; ``'%s'`` for both gives the drill script's printf format."""
    return f"drill_{started}_set_{set_id}.json"
