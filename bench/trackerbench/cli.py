"""`python bench/run.py [--sizes 1e5,1e6] [--engines sqlite,mysql] [--quick] ...`."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trackerbench import constant as container_constant
from trackerbench import data
from trackerbench import offsite as offsite_bench
from trackerbench.report import (
    BASELINE,
    FLOOR,
    OURS,
    MethodResult,
    SizeResult,
    check_targets,
    format_table,
    format_targets,
    write_json,
    write_plot,
)
from trackerbench.scenarios import (
    Run,
    make_config_tree,
    reset_dir,
    run_baseline_mysql,
    run_baseline_sqlite,
    run_floor,
    run_ours,
    write_backup_conf,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SIZES = (100_000, 1_000_000, 10_000_000)
QUICK_SIZES = (10_000, 100_000)
DEFAULT_OFFSITE_SIZE = 1_000_000
QUICK_OFFSITE_SIZE = 100_000
DEFAULT_OFFSITE_CHANGES = 10
DEFAULT_CACHE_DIR = Path("/var/tmp/tracker-deployer-bench")  # noqa: S108 - survives reboots, same disk
ENGINES = ("sqlite", "mysql")
MIN_ROWS = 10
BASELINE_LEVEL = 6  # the naive backup: gzip -6, gzip's own default
MAX_ROWS = 100_000_000

Log = Callable[[str], None]


def parse_sizes(text: str) -> list[int]:
    """'1e5,1e6' -> [100000, 1000000] (sorted, unique)."""
    sizes: set[int] = set()
    for part in text.split(","):
        try:
            value = float(part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {part.strip()!r}") from None
        if not value.is_integer() or not MIN_ROWS <= value <= MAX_ROWS:
            raise argparse.ArgumentTypeError(
                f"{part.strip()}: sizes are whole numbers of torrents from {MIN_ROWS} to {MAX_ROWS:.0e}"
            )
        sizes.add(int(value))
    return sorted(sizes)


def parse_engines(text: str) -> list[str]:
    """'sqlite,mysql' -> ['sqlite', 'mysql'] (in that order)."""
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = wanted - set(ENGINES)
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(f"engines are {', '.join(ENGINES)}; got {text!r}")
    return [engine for engine in ENGINES if engine in wanted]


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description=(
            "Benchmark the backup's maintenance window (tracker downtime), total time, "
            "throughput and memory against a naive baseline and the cp floor. "
            "See bench/README.md."
        ),
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        help="comma-separated numbers of torrents, e.g. 1e5,1e6 (default 1e5,1e6,1e7)",
    )
    parser.add_argument(
        "--engines",
        type=parse_engines,
        default=list(ENGINES),
        help="comma-separated: sqlite, mysql (default both)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small sizes only ({','.join(f'{s:.0e}' for s in QUICK_SIZES)}); not with --sizes",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per method and size; medians (default 3)"
    )
    parser.add_argument(
        "--compression",
        choices=("gzip", "zstd"),
        default="zstd",
        help="BACKUP_COMPRESSION of ours (default zstd, the deployer's default; gzip runs "
        "through pigz)",
    )
    parser.add_argument(
        "--compression-level",
        type=int,
        choices=range(1, 20),
        metavar="1-19",
        help="BACKUP_COMPRESSION_LEVEL of ours (gzip 1-9, default 6; zstd 1-19, default 3); "
        "the baseline always uses gzip -6",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help=f"generated SQLite files and scratch space (default {DEFAULT_CACHE_DIR})",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=REPO_ROOT / "bench" / "results",
        help="where latest.json and downtime.png go (default bench/results)",
    )
    parser.add_argument(
        "--backup-sh",
        type=Path,
        default=REPO_ROOT / "docker" / "backup" / "backup.sh",
        help="the backup.sh to measure (default docker/backup/backup.sh)",
    )
    parser.add_argument(
        "--offsite-sh",
        type=Path,
        default=REPO_ROOT / "docker" / "backup" / "offsite.sh",
        help="the offsite.sh to measure (default docker/backup/offsite.sh)",
    )
    offsite = parser.add_mutually_exclusive_group()
    offsite.add_argument(
        "--offsite-only",
        action="store_true",
        help="only the off-host upload bench (restic to `rclone serve restic`; a minute or two)",
    )
    offsite.add_argument("--no-offsite", action="store_true", help="skip the off-host upload bench")
    parser.add_argument(
        "--offsite-size",
        type=parse_sizes,
        help=f"torrents in the uploaded database (default {DEFAULT_OFFSITE_SIZE:.0e}; "
        f"{QUICK_OFFSITE_SIZE:.0e} with --quick)",
    )
    parser.add_argument(
        "--offsite-changes",
        type=int,
        default=DEFAULT_OFFSITE_CHANGES,
        help="between the two uploaded sets, this many torrents get one more completed "
        f"download and this many new ones are added (default {DEFAULT_OFFSITE_CHANGES})",
    )
    parser.add_argument(
        "--probe-image",
        default="debian:bookworm-slim",
        help="image for measuring the container constant C (default debian:bookworm-slim)",
    )
    parser.add_argument(
        "--no-docker", action="store_true", help="do not measure C with docker (C = 0)"
    )
    parser.add_argument(
        "--mysql-host", default=os.environ.get("MARIADB_HOST", "127.0.0.1"), help="MariaDB host"
    )
    parser.add_argument(
        "--mysql-port",
        type=int,
        default=int(os.environ.get("MARIADB_PORT", "3306")),
        help="MariaDB port",
    )
    parser.add_argument(
        "--mysql-user",
        default=os.environ.get("MARIADB_USER", "root"),
        help="MariaDB admin user: creates and drops the bench database and user",
    )
    parser.add_argument(
        "--mysql-password",
        default=os.environ.get("MARIADB_PASSWORD", ""),
        help="MariaDB admin password (default: $MARIADB_PASSWORD, else empty)",
    )
    return parser


def _make_logger() -> Log:
    started = time.perf_counter()

    def log(message: str) -> None:
        print(
            f"[bench {time.perf_counter() - started:7.1f}s] {message}", file=sys.stderr, flush=True
        )

    return log


def _version(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    except OSError:
        return "missing"
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _git_commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def _warm(path: Path) -> None:
    """Read a file once so every method starts with a warm page cache."""
    with path.open("rb") as source:
        while source.read(8 * 2**20):
            pass


def _settle() -> None:
    """Flush dirty pages between runs, so one run's writeback does not slow the next."""
    os.sync()


def _check_tools(engines: Sequence[str], offsite: bool, compression: str, log: Log) -> None:
    needed = ["bash", "sqlite3", "gzip", "tar", "flock", "sha256sum", "cp"]
    if compression == "zstd":
        needed.append("zstd")
    if "mysql" in engines:
        needed += ["mariadb", "mariadb-dump"]
    if offsite:
        needed += ["restic", "rclone"]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"bench: missing tools: {', '.join(missing)} (run scripts/setup.sh)")
    if shutil.which("pigz") is None:
        log("warning: pigz is not installed: backup.sh falls back to single-threaded gzip")


def _sqlite_conf(args: argparse.Namespace, work: Path) -> Callable[[Path, Path], Path]:
    """backup.conf for a SQLite database, with the bench's compression settings."""

    def write(path: Path, database: Path) -> Path:
        return write_backup_conf(
            path,
            {
                "BACKUP_MODE": "single",
                "BACKUP_RETENTION_DAYS": "7",
                "BACKUP_PATHS_FILE": str(work / "config" / "backup-paths.txt"),
                "BACKUP_COMPRESSION": args.compression,
                "BACKUP_COMPRESSION_LEVEL": str(args.compression_level),
                "DB_TYPE": "sqlite",
                "DB_PATH": str(database),
            },
        )

    return write


def bench_sqlite(
    args: argparse.Namespace, size: int, database: Path, work: Path, log: Log
) -> SizeResult:
    """Floor, ours and baseline on the SQLite database of `size` torrents."""
    conf = _sqlite_conf(args, work)(work / "backup-sqlite.conf", database)
    _warm(database)
    runs: dict[str, list[Run]] = {FLOOR: [], OURS: [], BASELINE: []}
    for index in range(args.repeat):
        _settle()
        runs[FLOOR].append(run_floor(database, reset_dir(work / "out")))
        reset_dir(work / "out")
        _settle()
        runs[OURS].append(run_ours(args.backup_sh, conf, reset_dir(work / "backups")))
        reset_dir(work / "backups")
        _settle()
        runs[BASELINE].append(
            run_baseline_sqlite(database, reset_dir(work / "out"), BASELINE_LEVEL)
        )
        reset_dir(work / "out")
        log(
            f"sqlite {size:.0e} run {index + 1}/{args.repeat}: "
            f"floor {runs[FLOOR][-1].window_seconds:.3f} s, "
            f"ours {runs[OURS][-1].window_seconds:.3f} s window / "
            f"{runs[OURS][-1].total_seconds:.2f} s total, "
            f"baseline {runs[BASELINE][-1].total_seconds:.2f} s"
        )
    return SizeResult(
        engine="sqlite",
        rows=size,
        source_bytes=database.stat().st_size,
        source_note="size of the SQLite database file",
        methods={
            method: MethodResult.of(method, method_runs) for method, method_runs in runs.items()
        },
    )


def bench_mysql(
    args: argparse.Namespace,
    size: int,
    admin_options: Path,
    account: data.MysqlAccount,
    database: str,
    work: Path,
    log: Log,
) -> SizeResult:
    """Ours and baseline on the MariaDB copy of the database of `size` torrents."""
    conf = write_backup_conf(
        work / "backup-mysql.conf",
        {
            "BACKUP_MODE": "single",
            "BACKUP_RETENTION_DAYS": "7",
            "BACKUP_PATHS_FILE": str(work / "config" / "backup-paths.txt"),
            "BACKUP_COMPRESSION": args.compression,
            "BACKUP_COMPRESSION_LEVEL": str(args.compression_level),
            "DB_TYPE": "mysql",
            "DB_HOST": account.host,
            "DB_PORT": str(account.port),
            "DB_USER": account.user,
            "DB_PASSWORD": account.password,
            "DB_NAME": database,
        },
    )
    user_options = account.write_option_file(work / "bench-user.cnf")
    data.mariadb(
        admin_options,
        "SELECT COUNT(*), SUM(LENGTH(info_hash)) FROM torrents;",
        database=database,
    )
    runs: dict[str, list[Run]] = {OURS: [], BASELINE: []}
    for index in range(args.repeat):
        _settle()
        runs[OURS].append(run_ours(args.backup_sh, conf, reset_dir(work / "backups")))
        reset_dir(work / "backups")
        _settle()
        runs[BASELINE].append(
            run_baseline_mysql(user_options, database, reset_dir(work / "out"), BASELINE_LEVEL)
        )
        reset_dir(work / "out")
        log(
            f"mysql {size:.0e} run {index + 1}/{args.repeat}: "
            f"ours {runs[OURS][-1].window_seconds:.3f} s window / "
            f"{runs[OURS][-1].total_seconds:.2f} s total, "
            f"baseline {runs[BASELINE][-1].total_seconds:.2f} s"
        )
    dump_bytes = int(sorted(run.staged_bytes for run in runs[OURS])[len(runs[OURS]) // 2])
    return SizeResult(
        engine="mysql",
        rows=size,
        source_bytes=dump_bytes,
        source_note="size of the uncompressed mariadb-dump output",
        methods={
            method: MethodResult.of(method, method_runs) for method, method_runs in runs.items()
        },
        extra={"innodb_bytes": data.mysql_size_bytes(admin_options, database)},
    )


def run_mysql_sizes(
    args: argparse.Namespace, sizes: Sequence[int], work: Path, log: Log
) -> list[SizeResult]:
    """Create a bench database and user, benchmark each size, drop them again."""
    admin = data.MysqlAccount(
        args.mysql_host, args.mysql_port, args.mysql_user, args.mysql_password
    )
    admin_options = admin.write_option_file(work / "admin.cnf")
    try:
        data.mariadb(admin_options, "SELECT 1;")
    except RuntimeError as error:
        raise SystemExit(
            f"bench: cannot reach MariaDB at {admin.host}:{admin.port} as {admin.user} ({error}); "
            "set --mysql-* / MARIADB_*, or use --engines sqlite"
        ) from None
    suffix = f"{os.getpid()}_{secrets.token_hex(3)}"
    database = f"tdbench_{suffix}"
    account = data.MysqlAccount(
        args.mysql_host, args.mysql_port, f"tdbench_{suffix}", secrets.token_urlsafe(18)
    )
    password = data.sql_string(account.password)
    results: list[SizeResult] = []
    try:
        data.mariadb(
            admin_options,
            f"CREATE USER '{account.user}'@'%' IDENTIFIED BY {password};"
            f"CREATE USER '{account.user}'@'localhost' IDENTIFIED BY {password};"
            f"GRANT ALL ON `{database}`.* TO '{account.user}'@'%';"
            f"GRANT ALL ON `{database}`.* TO '{account.user}'@'localhost';",
        )
        for size in sizes:
            sqlite_path = data.ensure_sqlite(args.cache_dir, size, log)
            data.load_mysql(admin_options, database, sqlite_path, work, log)
            results.append(bench_mysql(args, size, admin_options, account, database, work, log))
            data.mariadb(admin_options, f"DROP DATABASE IF EXISTS `{database}`;")
    finally:
        data.mariadb(
            admin_options,
            f"DROP DATABASE IF EXISTS `{database}`;"
            f"DROP USER IF EXISTS '{account.user}'@'%';"
            f"DROP USER IF EXISTS '{account.user}'@'localhost';",
        )
        log(f"mysql: dropped database and user {database}")
    return results


def run_offsite(args: argparse.Namespace, work: Path, log: Log) -> offsite_bench.OffsiteResult:
    """The off-host upload bench on the SQLite database of args.offsite_size torrents."""
    size: int = args.offsite_size
    settings = offsite_bench.OffsiteSettings(
        backup_sh=args.backup_sh,
        offsite_sh=args.offsite_sh,
        source_database=data.ensure_sqlite(args.cache_dir, size, log),
        rows=size,
        changes=args.offsite_changes,
        repeat=args.repeat,
        compression=args.compression,
        write_conf=_sqlite_conf(args, work),
    )
    return offsite_bench.bench_offsite(settings, work / "offsite", log)


def backup_sh_digest(script: Path) -> str:
    """sha256 over backup.sh and the lib/*.sh it sources (names and contents, in order)."""
    digest = hashlib.sha256()
    for path in [script, *sorted((script.parent / "lib").glob("*.sh"))]:
        digest.update(f"{path.relative_to(script.parent)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _metadata(
    args: argparse.Namespace,
    sizes: Sequence[int],
    runtime: float,
    load_at_start: tuple[float, ...],
) -> dict[str, Any]:
    script = args.backup_sh.resolve()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "runtime_seconds": runtime,
        "git_commit": _git_commit(),
        "backup_sh": {
            "path": str(script),
            "sha256": backup_sh_digest(script),
        },
        "settings": {
            "sizes": list(sizes),
            "engines": args.engines,
            "repeat": args.repeat,
            "compression": args.compression,
            "compression_level": args.compression_level,
            "baseline_compression_level": BASELINE_LEVEL,
            "window_bench": not args.offsite_only,
            "offsite_bench": not args.no_offsite,
            "offsite_size": args.offsite_size,
            "offsite_changes": args.offsite_changes,
            "cache": "warm page cache for every method (nothing is dropped)",
            "statistic": "median of the runs; peak RSS: maximum of the runs",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "memory_bytes": _memory_total_bytes(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            # Other work on the machine shows here (1, 5, 15 minute averages).
            "load_average_at_start": list(load_at_start),
            "load_average_at_end": list(os.getloadavg()),
        },
        "tools": {
            "sqlite3": _version(["sqlite3", "--version"]),
            "pigz": _version(["pigz", "--version"]),
            "gzip": _version(["gzip", "--version"]),
            "mariadb_client": _version(["mariadb", "--version"]),
            "cp": _version(["cp", "--version"]),
            "restic": _version(["restic", "version"]),
            "rclone": _version(["rclone", "version"]),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it completed (missed targets are reported, not fatal)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick and args.sizes:
        parser.error("--quick and --sizes exclude each other")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.offsite_changes < 1:
        parser.error("--offsite-changes must be at least 1")
    if args.offsite_size is not None and len(args.offsite_size) != 1:
        parser.error("--offsite-size takes one size")
    args.offsite_size = (
        args.offsite_size[0]
        if args.offsite_size
        else (QUICK_OFFSITE_SIZE if args.quick else DEFAULT_OFFSITE_SIZE)
    )
    if not args.no_offsite and not args.offsite_sh.is_file():
        parser.error(f"--offsite-sh {args.offsite_sh} does not exist")
    default_level, highest = {"gzip": (6, 9), "zstd": (3, 19)}[args.compression]
    if args.compression_level is None:
        args.compression_level = default_level
    if args.compression_level > highest:
        parser.error(f"--compression-level runs from 1 to {highest} for {args.compression}")
    sizes: list[int] = args.sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if not args.backup_sh.is_file():
        parser.error(f"--backup-sh {args.backup_sh} does not exist")
    log = _make_logger()
    if args.repeat < 3:
        log(f"warning: --repeat {args.repeat}: medians of fewer than 3 runs are noisy")
    window_bench = not args.offsite_only
    _check_tools(args.engines if window_bench else [], not args.no_offsite, args.compression, log)
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if window_bench:
        log(f"sizes {', '.join(f'{s:.0e}' for s in sizes)}; engines {', '.join(args.engines)}")
    if not args.no_offsite:
        log(f"off-host upload: sqlite {args.offsite_size:.0e}")

    constant = (
        container_constant.not_measured(args.probe_image, "--no-docker")
        if args.no_docker or not window_bench
        else container_constant.measure(args.probe_image, max(args.repeat, 3), log)
    )
    work = Path(tempfile.mkdtemp(prefix="work-", dir=args.cache_dir))
    results: list[SizeResult] = []
    offsite: offsite_bench.OffsiteResult | None = None
    try:
        make_config_tree(work / "config")
        if window_bench and "sqlite" in args.engines:
            for size in sizes:
                database = data.ensure_sqlite(args.cache_dir, size, log)
                results.append(bench_sqlite(args, size, database, work, log))
        if window_bench and "mysql" in args.engines:
            results.extend(run_mysql_sizes(args, sizes, work, log))
        if not args.no_offsite:
            offsite = run_offsite(args, work, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    runtime = time.perf_counter() - started
    checks = check_targets(results, constant)
    if window_bench:
        print(f"\nResults (C = {constant.seconds:.3f} s: {constant.note})\n")
        print(format_table(results, constant))
        print("\nTargets\n")
        print(format_targets(checks))
    if offsite is not None:
        print(
            f"\nOff-host upload (sqlite {offsite.rows:.0e}, medians of {args.repeat} rounds; "
            f"{offsite.restic_version}; {offsite.rclone_version})\n"
        )
        print(offsite_bench.format_offsite(offsite))
    json_path = args.results_dir / "latest.json"
    write_json(
        json_path,
        metadata=_metadata(args, sizes if window_bench else [], runtime, load_at_start),
        constant=constant,
        results=results,
        checks=checks,
        offsite=(None if offsite is None else {**asdict(offsite), "summary": offsite.summary()}),
    )
    plot_path = args.results_dir / "downtime.png"
    if not results:
        log(f"wrote {json_path}")
    elif write_plot(plot_path, results, constant):
        log(f"wrote {json_path} and {plot_path}")
    else:
        log(f"wrote {json_path}; no plot: matplotlib is not installed (nox -s bench installs it)")
    log(f"total bench runtime {runtime:.0f} s")
    return 0
