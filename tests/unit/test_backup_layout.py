"""The set layout's two owners, backup.sh (docker/backup/lib/layout.sh) and
tracker_deployer.backup_layout, held to each other; and `backup.sh list --records`,
which the host's inventory reads, against parse_inventory."""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import pytest
from tracker_deployer.backup_layout import (
    EVIDENCE,
    LIST_FORMAT,
    checksum_manifest,
    checksum_manifest_affixes,
    evidence_name,
    set_file,
    set_layout,
)
from tracker_deployer.errors import DeployError
from tracker_deployer.remote.backups import HostDataError, parse_inventory
from tracker_deployer.render.tree import backup_listing_shell

from tests.helpers import REPO_ROOT

SET = "20261127_030000"
BACKUP_SH = REPO_ROOT / "docker/backup/backup.sh"


def backup_sh(script: str, **environment: str) -> str:
    result = subprocess.run(
        ["bash", "-c", f"source {BACKUP_SH}; {script}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env=environment or None,
    )
    return result.stdout


def test_set_layout_of_backup_sh_and_python_list_the_same_files_in_order() -> None:
    """The checksum manifest comes last in both (it is moved into place last)."""
    assert backup_sh(f"set_layout {SET}").splitlines() == list(set_layout(SET))
    assert list(set_layout(SET))[-1] == checksum_manifest(SET)


@pytest.mark.parametrize(
    ("kind", "compression"),
    [
        *itertools.product(("mysql", "sqlite"), ("gzip", "zstd")),
        *((kind, "gzip") for kind in ("config", "meta", "sums")),
    ],
)
def test_set_file_of_backup_sh_and_python_agree(kind: str, compression: str) -> None:
    shell = backup_sh(f"set_file {kind} {SET} {compression}")
    assert shell == set_file(kind, SET, compression)  # type: ignore[arg-type]


def make_sets(root: Path) -> None:
    for relative in set_layout(SET):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(relative.encode())
    # Names that only look like a set's, and one set without its manifest.
    (root / "mysql/mysql_20261127_030000.x.sql.gz").write_bytes(b"stray")
    (root / "config/config_2026.tar.gz").write_bytes(b"stray")
    (root / "config/config_20261128_030000.tar.gz").write_bytes(b"incomplete")


def test_list_records_are_the_layout_and_parse_inventory_reads_them(tmp_path: Path) -> None:
    make_sets(tmp_path)
    output = subprocess.run(
        ["bash", str(BACKUP_SH), "list", "--records"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={"BACKUP_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"},
    ).stdout
    assert output.splitlines()[0] == f"LIST\t{LIST_FORMAT}"
    inventory = parse_inventory(output)
    complete, incomplete = inventory.sets
    assert complete.set_id == SET
    assert complete.complete
    assert complete.checksums == "unchecked"
    assert sorted(complete.files) == sorted(set_layout(SET))
    assert complete.files[checksum_manifest(SET)] == len(checksum_manifest(SET))
    assert (incomplete.set_id, incomplete.complete, incomplete.checksums) == (
        "20261128_030000",
        False,
        "-",
    )


def test_the_inventory_fallback_is_backup_sh_own_code(tmp_path: Path) -> None:
    """The text the inventory script inlines (for a host where the container cannot
    run) lists exactly what `backup.sh list --records` lists."""
    make_sets(tmp_path)
    listing_env = {"BACKUP_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"}
    by_backup_sh = subprocess.run(
        ["bash", str(BACKUP_SH), "list", "--records", "--checksums"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env=listing_env,
    ).stdout
    script = (
        "readonly TS_REGEX='^[0-9]{8}_[0-9]{6}$'\n"
        f"ROOT_DIR={tmp_path}\n{backup_listing_shell()}\nlist_records yes\n"
    )
    inlined = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert inlined == by_backup_sh
    assert "\tFAILED" in inlined  # the files are not what the manifest would list


def test_parse_inventory_refuses_another_list_format() -> None:
    with pytest.raises(HostDataError, match="lists sets in format '2'") as error:
        parse_inventory("LIST\t2\n")
    assert isinstance(error.value, DeployError)
    assert parse_inventory(f"LIST\t{LIST_FORMAT}\n").sets == []


# --------------------------------------------------------------------------- host scripts


def test_host_scripts_take_the_manifest_and_evidence_names_from_the_owner() -> None:
    """The drill, metrics and inventory scripts glob for sets and drill evidence;
    the names they glob come from backup_layout, not from a copy in a template."""
    spelled = re.compile(r"manifests/set_|[.]sha256\b|drill_(?:%s|[*\[(]|[0-9]{8})")
    found = [
        f"{template.relative_to(REPO_ROOT)}:{number}"
        for template in (REPO_ROOT / "templates").rglob("*.j2")
        for number, line in enumerate(template.read_text().splitlines(), 1)
        if spelled.search(line) and not line.lstrip().startswith("#")
    ]
    assert found == []


def test_evidence_names_made_by_the_owner_match_its_pattern() -> None:
    name = evidence_name("20261129_040001", SET)
    matched = EVIDENCE.fullmatch(name)
    assert matched is not None
    assert matched.groups() == ("20261129_040001", SET)
    assert checksum_manifest_affixes() == tuple(checksum_manifest(SET).split(SET))
