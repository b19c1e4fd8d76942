"""Backup health as Prometheus data: metric names, alert thresholds, scrape target.

Pure: everything here is derived from an :class:`Env` (time is never read), so
rendering stays deterministic. This module owns the metric names; the metrics
script, the alert rules and the dashboard get them from here as data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import pairwise

from tracker_deployer.config.model import CronSchedule, Env, cron_fires

METRIC_PREFIX = "tracker_backup_"
NODE_EXPORTER_SERVICE = "node-exporter"
NODE_EXPORTER_PORT = 9100
SCRAPE_JOB = "tracker_backup"
# The tracker's own scrape jobs (its API): statistics, and metrics.
TRACKER_STATS_JOB = "tracker_stats"
TRACKER_METRICS_JOB = "tracker_metrics"
# With the alert rules (backup monitoring on), the backup job, the tracker_stats
# job (TrackerDown's `up`) and the rule evaluation run at least this often,
# whatever prometheus.scrape_interval_in_secs says: a rule sees a series only
# within Prometheus' lookback (5 minutes) of its last sample, so a slower scrape
# could leave the alerts without data at every evaluation, and a slower
# evaluation would miss or delay every `for:`.
MAX_SCRAPE_SECONDS = 60
TEXTFILE_NAME = "tracker_backup.prom"

# The metrics, by role. Values are full metric names (prefix included).
METRICS: dict[str, str] = {
    "run_start": "tracker_backup_last_run_start_timestamp_seconds",
    "run_end": "tracker_backup_last_run_end_timestamp_seconds",
    "run_success": "tracker_backup_last_run_success",
    "run_exit_code": "tracker_backup_last_run_exit_code",
    "run_duration": "tracker_backup_last_run_duration_seconds",
    "run_downtime": "tracker_backup_last_run_downtime_seconds",
    "last_success": "tracker_backup_last_success_timestamp_seconds",
    "set_bytes": "tracker_backup_set_bytes",
    "set_rows": "tracker_backup_set_rows",
    "local_sets": "tracker_backup_local_sets",
    "oldest_set": "tracker_backup_oldest_set_timestamp_seconds",
    "newest_set": "tracker_backup_newest_set_timestamp_seconds",
    "oldest_set_age": "tracker_backup_oldest_set_age_seconds",
    "newest_set_age": "tracker_backup_newest_set_age_seconds",
    "drill_success": "tracker_backup_last_drill_success",
    "drill_time": "tracker_backup_last_drill_timestamp_seconds",
    "drill_duration": "tracker_backup_last_drill_duration_seconds",
    "drill_last_success": "tracker_backup_last_drill_success_timestamp_seconds",
    "written": "tracker_backup_metrics_written_timestamp_seconds",
    # off-host copies (backup.offsite): the last upload and the last restic check
    "offsite_success": "tracker_backup_offsite_last_upload_success",
    "offsite_time": "tracker_backup_offsite_last_upload_timestamp_seconds",
    "offsite_exit_code": "tracker_backup_offsite_last_upload_exit_code",
    "offsite_last_success": "tracker_backup_offsite_last_success_timestamp_seconds",
    "offsite_check_success": "tracker_backup_offsite_last_check_success",
    "offsite_check_time": "tracker_backup_offsite_last_check_timestamp_seconds",
}

# BackupMissing / BackupDrillMissing (and the off-host ones) fire after period x 1.5 plus this margin
# (a run's own length, a host clock change).
MISSING_FACTOR = 1.5
MISSING_MARGIN_SECONDS = 1800

# The window over which the period of a schedule is measured: a fixed start
# (rendering must not depend on today), at least MIN_DAYS days it fires on, and
# 28 years: the calendar's cycle of weekdays and dates (2001-2028 has no century
# year), which a day of month AND-ed with a day of week ("*/7 * mon") needs.
_PERIOD_START = datetime(2001, 1, 1)
_PERIOD_WINDOW = timedelta(days=28 * 366)
_MIN_DAYS = 3
_DAY = timedelta(days=1)


def schedule_period_seconds(schedule: CronSchedule) -> int:
    """The longest gap between two consecutive fires of ``schedule``, in seconds.

    "0 3 * * *" gives a day, "0 3 * * mon-fri" three days (Friday to Monday),
    "*/5 * * * mon-fri" too, "0 4 * * 0" a week, "0 3 29 2 *" four years.
    """
    return _period_seconds(schedule.expression)


@lru_cache(maxsize=64)
def _period_seconds(expression: str) -> int:
    # Cron's day fields and time fields are independent: a day matches or not, and a
    # matching day fires at every hour and minute of the time fields. So the gaps are
    # those within a day and those from a day's last fire to the next day's first,
    # whatever the number of fires (every minute for a year: half a million).
    minute, hour, *day_fields = expression.split()
    midnight = _PERIOD_START - timedelta(minutes=1)
    in_day = cron_fires(f"{minute} {hour} * * *", midnight)
    times: list[timedelta] = []
    while (fire := in_day.get_next(datetime)) < _PERIOD_START + _DAY:
        times.append(fire - _PERIOD_START)
    longest = max((b - a for a, b in pairwise(times)), default=timedelta())
    days = cron_fires(f"0 0 {' '.join(day_fields)}", midnight)
    previous: datetime = days.get_next(datetime)
    # From the first day: a schedule of 29 February first fires in 2004, past a
    # window from the start, and its fires of that one day were all it measured.
    end, count = previous + _PERIOD_WINDOW, 1
    while count < _MIN_DAYS or previous < end:
        current: datetime = days.get_next(datetime)
        longest = max(longest, current - previous + times[0] - times[-1])
        previous, count = current, count + 1
    return int(longest.total_seconds())


def missing_after_seconds(schedule: CronSchedule) -> int:
    """How long without a success before an alert says the job stopped."""
    return int(schedule_period_seconds(schedule) * MISSING_FACTOR) + MISSING_MARGIN_SECONDS


def prometheus_duration(seconds: float) -> str:
    """A Prometheus duration literal (``for:``), e.g. 37h30m."""
    whole = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts) or "0s"


@dataclass(frozen=True, slots=True)
class OffsiteAlertSettings:
    """Thresholds of the off-host alert rules (only with ``backup.offsite``).

    An upload runs after each backup run, so its threshold follows
    ``backup.schedule``; the repository check follows ``check_schedule``.
    """

    missing_after_seconds: int
    check_missing_after_seconds: int
    check_schedule: str

    @property
    def missing_for(self) -> str:
        return prometheus_duration(self.missing_after_seconds)

    @property
    def check_missing_for(self) -> str:
        return prometheus_duration(self.check_missing_after_seconds)


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """Thresholds of the rendered alert rules."""

    missing_after_seconds: int
    drill_missing_after_seconds: int
    downtime_budget_seconds: float
    schedule: str
    drill_schedule: str
    offsite: OffsiteAlertSettings | None = None

    @property
    def missing_for(self) -> str:
        return prometheus_duration(self.missing_after_seconds)

    @property
    def drill_missing_for(self) -> str:
        return prometheus_duration(self.drill_missing_after_seconds)

    # The newest set may be named this far after the host's clock (a set the
    # metrics saw a moment after it was named: 0 or more seconds old) before
    # BackupSetAheadOfClock fires.
    set_ahead_tolerance_seconds: int = 300

    # How long node-exporter may go unscraped, or its textfile collector fail,
    # before BackupMetricsUnavailable fires (every other backup alert is blind
    # meanwhile, and one that fires clears).
    metrics_unavailable_for: str = "15m"
    job: str = SCRAPE_JOB
    # How long the tracker's API may go unscraped before TrackerDown fires: short
    # enough to catch a tracker that a killed run or restore left stopped, longer
    # than a backup run's stop takes as a rule (seconds; downtime_budget_seconds,
    # default 60). Not longer than backup.max_downtime_seconds (default 600): a run
    # that keeps the tracker stopped more than 5 minutes within that bound fires it
    # too, and it clears once the run starts the tracker again.
    tracker_down_for: str = "5m"
    tracker_job: str = TRACKER_STATS_JOB

    @property
    def downtime_budget(self) -> str:
        """The budget as PromQL writes numbers (no trailing .0)."""
        budget = self.downtime_budget_seconds
        return str(int(budget)) if float(budget).is_integer() else repr(float(budget))


def alert_settings(env: Env) -> AlertSettings:
    assert env.backup is not None
    offsite = None
    if env.backup.offsite is not None:
        offsite = OffsiteAlertSettings(
            missing_after_seconds=missing_after_seconds(env.backup.schedule),
            check_missing_after_seconds=missing_after_seconds(env.backup.offsite.check_schedule),
            check_schedule=str(env.backup.offsite.check_schedule),
        )
    return AlertSettings(
        missing_after_seconds=missing_after_seconds(env.backup.schedule),
        drill_missing_after_seconds=missing_after_seconds(env.backup.drill_schedule),
        downtime_budget_seconds=env.backup.downtime_budget_seconds,
        schedule=str(env.backup.schedule),
        drill_schedule=str(env.backup.drill_schedule),
        offsite=offsite,
    )


def backup_scrape_seconds(env: Env) -> int:
    """The backup job's scrape interval: the stack's, at most MAX_SCRAPE_SECONDS."""
    assert env.prometheus is not None
    return min(env.prometheus.scrape_interval_in_secs, MAX_SCRAPE_SECONDS)


def alerting_seconds(env: Env) -> int:
    """The rule evaluation interval, and the tracker_stats job's scrape interval: the
    stack's scrape interval, capped like the backup job's when the alert rules are on.

    A rule sees a series only within Prometheus' lookback (5 minutes) of its last
    sample, and an alert's ``for`` counts evaluations that see the condition:
    TrackerDown reads this job's ``up``, and scraped or evaluated every 10 minutes
    it would fire late or never.
    """
    assert env.prometheus is not None
    if monitors_backups(env):
        return backup_scrape_seconds(env)
    return env.prometheus.scrape_interval_in_secs


def monitors_backups(env: Env) -> bool:
    """node-exporter, the scrape job, the rules: only with backup and prometheus."""
    return env.backup is not None and env.prometheus is not None
