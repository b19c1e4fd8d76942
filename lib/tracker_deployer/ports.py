"""The fixed ports of the stack's own services (the tracker's come from the config).

topology.py publishes them, templates take them from here, and config/load.py
reserves them (tests/unit/test_owners.py checks that the two agree).
"""

from __future__ import annotations

PROMETHEUS = 9090  # published on PROMETHEUS_HOST_IP only
PROMETHEUS_HOST_IP = "127.0.0.1"
GRAFANA = 3000  # published unless grafana is behind the TLS proxy
CADDY_HTTP = 80
CADDY_HTTPS = 443  # tcp, and udp for HTTP/3
MYSQL = 3306  # on the database network only
