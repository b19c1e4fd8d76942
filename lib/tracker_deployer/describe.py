"""Human summaries of parsed configs (what `inv validate` prints)."""

from __future__ import annotations

from datetime import datetime

from tracker_deployer.config.model import Env
from tracker_deployer.topology import derive


def describe_env(env: Env, *, now: datetime) -> str:
    """A few lines saying what this environment deploys; ``now`` for next backups."""
    topology = derive(env)
    lines = [
        f"  environment: {env.name} (provider {env.provider.kind})",
        f"  database:    {env.database.driver}",
        f"  services:    {', '.join(topology.service_names)}",
    ]
    if env.backup is None:
        lines.append('  backups:     off (add a "backup" section to turn them on)')
    else:
        runs = env.backup.schedule.next_runs(now, 3)
        when = ", ".join(run.strftime("%Y-%m-%d %H:%M") for run in runs)
        lines.append(
            f'  backups:     "{env.backup.schedule}", keep {env.backup.retention_days} days'
        )
        lines.append(f"  next runs:   {when} (host time)")
        drill = env.backup.drill_schedule.next_runs(now, 1)[0]
        lines.append(
            f'  drills:      "{env.backup.drill_schedule}", next {drill:%Y-%m-%d %H:%M} (host time)'
        )
    return "\n".join(lines)
