"""The sandbox: ``envs/sandbox-sqlite.json`` on a local LXD host.

There is no separate sandbox code path: ``inv deploy --env sandbox-sqlite``
provisions the LXD instance through the lxd provider, configures it and
deploys, exactly as for any environment. ``inv sandbox.up|down|status`` are
short names for deploy, ``destroy --delete-backups`` and status of that
environment. What is special about the sandbox is only its images: the
tracker is a stand-in (a test double built on this machine from
``test-doubles/images/``), because no image registry is reachable here.
"""

from __future__ import annotations

DEFAULT_ENV = "sandbox-sqlite"

# Test doubles that scripts/setup.sh builds (scripts/e2e-setup.sh, from test-doubles/images/).
STANDIN_IMAGE = "tracker-deployer-test/tracker-standin:e2e"
MARIADB_IMAGE = "tracker-deployer-test/mariadb:e2e"
# Debian-built stand-ins for prom/prometheus and prom/node-exporter (the e2e
# environments and the integration tests run them with Prometheus on).
PROMETHEUS_IMAGE = "tracker-deployer-test/prometheus:e2e"
NODE_EXPORTER_IMAGE = "tracker-deployer-test/node-exporter:e2e"
# Every test double scripts/e2e-setup.sh builds (scripts/e2e-common.sh names them).
TEST_DOUBLE_IMAGES = (MARIADB_IMAGE, STANDIN_IMAGE, PROMETHEUS_IMAGE, NODE_EXPORTER_IMAGE)

STANDIN_NOTICE = (
    "note: the sandbox runs the tracker STAND-IN image ({image}), a test double, not the "
    "Torrust tracker: torrust/tracker cannot be pulled on this machine (no image registry). "
    "Everything else (compose stack, cron, backups, restore) is the real thing."
)
