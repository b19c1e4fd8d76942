"""Aggregate runs, check the targets, print the table, write JSON and the plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trackerbench.constant import ContainerConstant
from trackerbench.measure import median
from trackerbench.scenarios import Run

OURS = "ours"
BASELINE = "baseline"
FLOOR = "floor"
METHODS = (OURS, BASELINE, FLOOR)
MB = 1_000_000

# Targets of issues 7 and 15 (see bench/README.md).
FLOOR_RATIO_MAX = 1.5
FLOOR_RATIO_MIN_ROWS = 1_000_000
# baseline downtime / ours at the largest size: MySQL's from issue 15, SQLite's from issue 7.
BASELINE_DOWNTIME_RATIO_MIN = {"mysql": 10.0, "sqlite": 5.0}
THROUGHPUT_RATIO_MIN = 2.0
THROUGHPUT_MIN_ROWS = 1_000_000
PEAK_RSS_MAX_BYTES = 200 * MB
# Issue 15: the MySQL window at every size, and its growth from 10^5 to 10^7.
MYSQL_WINDOW_MAX_SECONDS = 0.5
MYSQL_WINDOW_GROWTH_MAX = 2.0
MYSQL_WINDOW_GROWTH_SIZES = (100_000, 10_000_000)


@dataclass(frozen=True, slots=True)
class MethodResult:
    """The runs of one method on one database, and their medians."""

    method: str
    runs: tuple[Run, ...]
    window_seconds: float
    total_seconds: float
    peak_rss_bytes: int  # the largest of all runs
    output_bytes: int

    @classmethod
    def of(cls, method: str, runs: Sequence[Run]) -> MethodResult:
        """Medians of the runs (peak RSS: the maximum, to be safe)."""
        return cls(
            method=method,
            runs=tuple(runs),
            window_seconds=median([run.window_seconds for run in runs]),
            total_seconds=median([run.total_seconds for run in runs]),
            peak_rss_bytes=max(run.peak_rss_bytes for run in runs),
            output_bytes=int(median([run.output_bytes for run in runs])),
        )

    def downtime(self, constant: ContainerConstant) -> float:
        """The downtime model: window + C."""
        return self.window_seconds + constant.seconds


@dataclass(frozen=True, slots=True)
class SizeResult:
    """All methods on one database (engine, number of torrents)."""

    engine: str
    rows: int
    source_bytes: int
    source_note: str
    methods: dict[str, MethodResult]
    extra: dict[str, Any] = field(default_factory=dict)

    def throughput(self, method: str) -> float:
        """Source MB per second of total backup time."""
        return self.source_bytes / MB / self.methods[method].total_seconds


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """One target at one engine/size, with and without the constant C."""

    target: str
    engine: str
    rows: int
    limit: str
    value_window: float
    value_with_constant: float
    met_window: bool
    met_with_constant: bool


def check_targets(results: Sequence[SizeResult], constant: ContainerConstant) -> list[TargetCheck]:
    """Evaluate the targets of issues 7 and 15."""
    checks: list[TargetCheck] = []
    c = constant.seconds
    for result in results:
        ours = result.methods[OURS]
        floor = result.methods.get(FLOOR)
        if floor is not None and result.rows >= FLOOR_RATIO_MIN_ROWS:
            window = ours.window_seconds / floor.window_seconds
            with_c = (ours.window_seconds + c) / (floor.window_seconds + c)
            checks.append(
                TargetCheck(
                    "downtime / cp floor",
                    result.engine,
                    result.rows,
                    f"<= {FLOOR_RATIO_MAX}",
                    window,
                    with_c,
                    window <= FLOOR_RATIO_MAX,
                    with_c <= FLOOR_RATIO_MAX,
                )
            )
        if result.rows >= THROUGHPUT_MIN_ROWS:
            ratio = result.throughput(OURS) / result.throughput(BASELINE)
            checks.append(
                TargetCheck(
                    "throughput / baseline",
                    result.engine,
                    result.rows,
                    f">= {THROUGHPUT_RATIO_MIN}",
                    ratio,
                    ratio,
                    ratio >= THROUGHPUT_RATIO_MIN,
                    ratio >= THROUGHPUT_RATIO_MIN,
                )
            )
        peak = ours.peak_rss_bytes / 2**20
        checks.append(
            TargetCheck(
                "peak RSS MiB",
                result.engine,
                result.rows,
                f"< {PEAK_RSS_MAX_BYTES / 2**20:.1f} (200 MB)",
                peak,
                peak,
                ours.peak_rss_bytes < PEAK_RSS_MAX_BYTES,
                ours.peak_rss_bytes < PEAK_RSS_MAX_BYTES,
            )
        )
        if result.engine == "mysql":
            window = ours.window_seconds
            checks.append(
                TargetCheck(
                    "MySQL window s",
                    result.engine,
                    result.rows,
                    f"<= {MYSQL_WINDOW_MAX_SECONDS}",
                    window,
                    window + c,
                    window <= MYSQL_WINDOW_MAX_SECONDS,
                    window <= MYSQL_WINDOW_MAX_SECONDS,
                )
            )
    mysql = {r.rows: r.methods[OURS].window_seconds for r in results if r.engine == "mysql"}
    small, large = MYSQL_WINDOW_GROWTH_SIZES
    if small in mysql and large in mysql:
        growth = mysql[large] / mysql[small]
        checks.append(
            TargetCheck(
                "MySQL window(1e7) / window(1e5)",
                "mysql",
                large,
                f"<= {MYSQL_WINDOW_GROWTH_MAX}",
                growth,
                growth,
                growth <= MYSQL_WINDOW_GROWTH_MAX,
                growth <= MYSQL_WINDOW_GROWTH_MAX,
            )
        )
    for engine in sorted({result.engine for result in results}):
        largest = max((r for r in results if r.engine == engine), key=lambda r: r.rows)
        ours = largest.methods[OURS]
        baseline = largest.methods[BASELINE]
        window = baseline.window_seconds / ours.window_seconds
        with_c = (baseline.window_seconds + c) / (ours.window_seconds + c)
        least = BASELINE_DOWNTIME_RATIO_MIN[engine]
        checks.append(
            TargetCheck(
                "baseline downtime / ours (largest)",
                engine,
                largest.rows,
                f">= {least}",
                window,
                with_c,
                window >= least,
                with_c >= least,
            )
        )
    return checks


def _yes(met: bool) -> str:
    return "met" if met else "MISSED"


def format_table(results: Sequence[SizeResult], constant: ContainerConstant) -> str:
    """The results as a Markdown table (medians; peak RSS: max of runs)."""
    lines = [
        "| engine | torrents | source MB | method | window s | downtime s (window + C) "
        "| total s | MB/s | peak RSS MiB | output MB |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        for method in METHODS:
            if method not in result.methods:
                continue
            m = result.methods[method]
            total = f"{m.total_seconds:.3f}" if method != FLOOR else "-"
            rate = f"{result.throughput(method):.1f}" if method != FLOOR else "-"
            lines.append(
                f"| {result.engine} | {result.rows:.0e} | {result.source_bytes / MB:.1f} "
                f"| {method} | {m.window_seconds:.3f} | {m.downtime(constant):.3f} | {total} "
                f"| {rate} | {m.peak_rss_bytes / 2**20:.1f} | {m.output_bytes / MB:.1f} |"
            )
    return "\n".join(lines)


def format_targets(checks: Sequence[TargetCheck]) -> str:
    """The target checks as a Markdown table."""
    lines = [
        "| target | engine | torrents | limit | window only | | with C | |",
        "| --- | --- | ---: | --- | ---: | --- | ---: | --- |",
    ]
    for check in checks:
        lines.append(
            f"| {check.target} | {check.engine} | {check.rows:.0e} | {check.limit} "
            f"| {check.value_window:.2f} | {_yes(check.met_window)} "
            f"| {check.value_with_constant:.2f} | {_yes(check.met_with_constant)} |"
        )
    return "\n".join(lines)


def write_json(
    path: Path,
    *,
    metadata: dict[str, Any],
    constant: ContainerConstant,
    results: Sequence[SizeResult],
    checks: Sequence[TargetCheck],
    offsite: dict[str, Any] | None = None,
) -> None:
    """Everything, raw runs included, as JSON (``offsite``: the upload bench's)."""
    document = {
        **metadata,
        "container_constant": asdict(constant),
        "results": [
            {
                **asdict(result),
                "throughput_mb_s": {
                    method: result.throughput(method)
                    for method in result.methods
                    if method != FLOOR
                },
                "downtime_seconds": {
                    method: m.downtime(constant) for method, m in result.methods.items()
                },
            }
            for result in results
        ],
        "targets": [asdict(check) for check in checks],
        "offsite": offsite,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_plot(path: Path, results: Sequence[SizeResult], constant: ContainerConstant) -> bool:
    """Log-log plot of the window vs database size; False when matplotlib is missing."""
    try:
        import matplotlib as mpl  # optional: only the plot needs it

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    styles = {
        ("sqlite", OURS): ("tab:blue", "o", "-"),
        ("sqlite", BASELINE): ("tab:red", "s", "-"),
        ("sqlite", FLOOR): ("tab:gray", "^", "-"),
        ("mysql", OURS): ("tab:blue", "o", "--"),
        ("mysql", BASELINE): ("tab:red", "s", "--"),
    }
    figure, axes = plt.subplots(figsize=(8, 5.5))
    for (engine, method), (color, marker, line) in styles.items():
        points = sorted(
            (r.rows, r.methods[method].window_seconds)
            for r in results
            if r.engine == engine and method in r.methods
        )
        if not points:
            continue
        label = {OURS: "ours (backup.sh snapshot)", BASELINE: "baseline (dump + gzip -6)"}.get(
            method, "floor (cp)"
        )
        axes.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            color=color,
            marker=marker,
            linestyle=line,
            label=f"{engine}: {label}",
        )
    if constant.seconds > 0:
        axes.axhline(
            constant.seconds,
            color="tab:green",
            linestyle=":",
            label=f"C = {constant.seconds:.2f} s (container stop + start + go/open)",
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("torrents (rows)")
    axes.set_ylabel("seconds the database is held (median)")
    axes.set_title("Tracker downtime = window + C, vs database size")
    axes.grid(visible=True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
